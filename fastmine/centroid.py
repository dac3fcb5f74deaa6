"""The centroid triplet bound (Do et al., "A Theoretically Sound Upper Bound on the Triplet
Loss"; docs/semantics.md) and its one-hot centroids."""

from __future__ import annotations

from typing import Optional

import torch

from . import _validate as check
from ._ops import ops
from ._sum import fixed_sum

__all__ = ["centroid_triplet_loss", "onehot_centroids"]

CENTROID_REDUCTIONS = ("mean", "sum", "none")


def centroid_triplet_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    centroids: torch.Tensor,
    *,
    reduction: str = "mean",
) -> torch.Tensor:
    """Centroid upper bound on the triplet loss: per sample
    ``||x_i - c_{y_i}|| - 1/(3(C-1)) * sum_{m != y_i} ||x_i - c_m||`` (euclidean; the paper's
    constant scale G is left out). Pulls each sample to its class centroid, pushes it from
    the others; O(B C D), no triplets.

    Gradients flow to ``embeddings`` and, when it requires grad, to ``centroids``. Where a
    sample sits exactly on a centroid (distance 0) that distance's subgradient is taken as 0.
    Deterministic (fixed-order sums, no atomics).

    Args:
        embeddings: (B, D) float tensor, B >= 1.
        labels: (B,) integer class ids in [0, C): row ``labels[i]`` of centroids is sample
            i's class centre (ValueError otherwise; on CUDA that check synchronises, and under
            torch.compile the op checks it itself: a ValueError on the CPU, a RuntimeError on
            CUDA).
        centroids: (C, D) float tensor, C >= 2, same dtype and device as embeddings (e.g.
            :func:`onehot_centroids`, or learnable).
        reduction: ``"mean"`` over samples (default), ``"sum"`` or ``"none"`` ((B,)).

    Returns:
        float32 for half inputs, otherwise the input dtype.

    Example:
        >>> emb = torch.randn(32, 16, requires_grad=True)
        >>> labels = torch.randint(0, 10, (32,))
        >>> c = fastmine.onehot_centroids(10, 16)
        >>> fastmine.centroid_triplet_loss(emb, labels, c).backward()
    """
    check.embeddings(embeddings, "embeddings")
    b = embeddings.shape[0]
    labels = check.labels(labels, b, "labels", "embeddings")
    check.embeddings(centroids, "centroids")
    check.same_device([("embeddings", embeddings), ("labels", labels), ("centroids", centroids)])
    check.same_features(embeddings, "embeddings", centroids, "centroids")
    c = centroids.shape[0]
    check.centroid_count(c)
    check.reduction(reduction, CENTROID_REDUCTIONS)
    check.class_indices(labels, c, "labels must be in [0, C) =")
    x = check.compute_dtype(embeddings).contiguous()
    cc = check.compute_dtype(centroids).contiguous()
    per_sample, _ = ops.centroid_triplet(x, labels.contiguous(), cc)
    if reduction == "none":
        return per_sample
    if reduction == "sum":
        return fixed_sum(per_sample)
    return fixed_sum(per_sample) / b


def onehot_centroids(
    num_classes: int,
    dim: int,
    *,
    scale: float = 1.0,
    dtype: Optional[torch.dtype] = None,
    device=None,
) -> torch.Tensor:
    """One-hot class centroids: c_m = scale * e_m, a (num_classes, dim) tensor. Every pair of
    centroids is at the same distance scale * sqrt(2), the even spread the bound's tightness
    theorem asks for. Needs dim >= num_classes.

    Example:
        >>> fastmine.onehot_centroids(3, 4, scale=2.0)
        tensor([[2., 0., 0., 0.],
                [0., 2., 0., 0.],
                [0., 0., 2., 0.]])
    """
    check.integer(num_classes, "num_classes")
    check.integer(dim, "dim")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if dim < num_classes:
        raise ValueError(
            f"dim must be >= num_classes for one-hot centroids, got dim = {dim} < num_classes = {num_classes}"
        )
    scale = check.finite_number(scale, "scale")
    if dtype is not None and not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point dtype, got {dtype}")
    return torch.eye(num_classes, dim, dtype=dtype, device=device) * scale
