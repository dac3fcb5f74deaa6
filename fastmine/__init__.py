"""fastmine: fused CPU/CUDA kernels for mined metric-learning losses.

    >>> import fastmine
    >>> loss = fastmine.batch_hard_triplet_loss(embeddings, labels)
"""
from ._ops import CUDA_AVAILABLE
from ._types import BatchHardInfo
from .functional import batch_hard_triplet_loss, pairwise_distance

__version__ = "0.1.0"

__all__ = [
    "BatchHardInfo",
    "CUDA_AVAILABLE",
    "batch_hard_triplet_loss",
    "pairwise_distance",
]
