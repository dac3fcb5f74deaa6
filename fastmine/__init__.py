"""fastmine: fused CPU/CUDA kernels for mined metric-learning losses.

    >>> import fastmine
    >>> loss = fastmine.batch_hard_triplet_loss(embeddings, labels)
"""
from ._ops import CUDA_AVAILABLE
from ._types import BatchAllInfo, BatchHardInfo
from .functional import (
    batch_all_triplet_loss,
    batch_hard_triplet_loss,
    contrastive_loss,
    pairwise_distance,
)
from ._types import SemiHardInfo
from .semi_hard import mine_semi_hard, semi_hard_triplet_loss

from .miners import mine_batch_hard, mine_triplets

__version__ = "0.1.0"

__all__ = [
    "BatchAllInfo",
    "BatchHardInfo",
    "batch_all_triplet_loss",
    "contrastive_loss",
    "CUDA_AVAILABLE",
    "batch_hard_triplet_loss",
    "pairwise_distance",
    "mine_batch_hard",
    "mine_triplets",
    "SemiHardInfo",
    "mine_semi_hard",
    "semi_hard_triplet_loss",
]

# Ecosystem layer (issue 6): loss modules, cross-batch memory, torch.distributed mining.
from . import distributed, nn  # noqa: E402  (submodules: fastmine.nn.*, fastmine.distributed.*)
from .xbm import CrossBatchMemory  # noqa: E402

__all__ += ["CrossBatchMemory"]

# The focal-loss family and the centroid triplet bound (issue 4).
from .focal import focal_star_loss, sigmoid_focal_loss, softmax_focal_loss  # noqa: E402

__all__ += ["focal_star_loss", "sigmoid_focal_loss", "softmax_focal_loss"]
from .centroid import centroid_triplet_loss, onehot_centroids  # noqa: E402

__all__ += ["centroid_triplet_loss", "onehot_centroids"]
