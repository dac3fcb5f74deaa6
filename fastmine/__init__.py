"""fastmine: fused CPU/CUDA kernels for mined metric-learning losses.

    >>> import fastmine
    >>> loss = fastmine.batch_hard_triplet_loss(embeddings, labels)

Submodules: :mod:`fastmine.nn` (loss modules), :mod:`fastmine.distributed` (mining over
torch.distributed), :mod:`fastmine.contrib.pml` (pytorch-metric-learning drop-ins, imported
on demand: it needs that package).
"""

from ._ops import CUDA_AVAILABLE
from ._version import __version__
from ._types import BatchAllInfo, BatchHardInfo, SemiHardInfo
from .centroid import centroid_triplet_loss, onehot_centroids
from .focal import focal_star_loss, sigmoid_focal_loss, softmax_focal_loss
from .functional import (
    batch_all_triplet_loss,
    batch_hard_triplet_loss,
    contrastive_loss,
    pairwise_distance,
)
from .miners import mine_batch_hard, mine_triplets
from .semi_hard import mine_semi_hard, semi_hard_triplet_loss
from .xbm import CrossBatchMemory

# Submodules reachable as attributes (fastmine.nn.*, fastmine.distributed.*); imported after
# the functions they wrap.
from . import distributed, nn  # noqa: E402,I001

__all__ = [
    "CUDA_AVAILABLE",
    # losses
    "batch_hard_triplet_loss",
    "batch_all_triplet_loss",
    "semi_hard_triplet_loss",
    "contrastive_loss",
    "centroid_triplet_loss",
    "sigmoid_focal_loss",
    "softmax_focal_loss",
    "focal_star_loss",
    # distances, miners, helpers
    "pairwise_distance",
    "mine_batch_hard",
    "mine_semi_hard",
    "mine_triplets",
    "onehot_centroids",
    "CrossBatchMemory",
    # return_info structures
    "BatchHardInfo",
    "BatchAllInfo",
    "SemiHardInfo",
]
