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

__version__ = "0.1.0"

__all__ = [
    "BatchAllInfo",
    "BatchHardInfo",
    "batch_all_triplet_loss",
    "contrastive_loss",
    "CUDA_AVAILABLE",
    "batch_hard_triplet_loss",
    "pairwise_distance",
    "SemiHardInfo",
    "mine_semi_hard",
    "semi_hard_triplet_loss",
]
