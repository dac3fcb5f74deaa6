"""User-facing functions: validate, dispatch to the compiled ops, reduce.

Semantics: docs/semantics.md; the oracle that the
kernels are tested against is fastmine/reference.py.

Precision on CUDA: float16/bfloat16 embeddings (e.g. a model's output under
``torch.autocast``) go through tensor cores with fp32 accumulation and return float32
losses; float32 keeps full fp32 accuracy unless ``torch.backends.cuda.matmul.allow_tf32``
is True, in which case the distance tiles use TF32 tensor cores as cuBLAS matmuls then do.
The CPU computes in float32/float64 whatever the flag.
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

import torch

from . import _validate as check
from ._ops import CONTRASTIVE_WITH_GRAD_DEVICES, ops
from ._sum import fixed_sum
from ._types import BatchAllInfo, BatchHardInfo

__all__ = [
    "pairwise_distance",
    "batch_hard_triplet_loss",
    "batch_all_triplet_loss",
    "contrastive_loss",
]

BATCH_HARD_REDUCTIONS = ("mean", "sum", "none", "mean_nonzero")
BATCH_ALL_REDUCTIONS = ("mean_positive", "mean", "sum")
CONTRASTIVE_REDUCTIONS = ("mean", "sum", "mean_nonzero")


def pairwise_distance(x: torch.Tensor, y: Optional[torch.Tensor] = None, *, metric: str = "euclidean") -> torch.Tensor:
    """All distances between the rows of ``x`` (B, D) and of ``y`` (M, D): a (B, M) matrix.

    ``y=None`` means ``y = x``. ``metric`` is ``"euclidean"`` (gradient 0 where the distance
    is 0), ``"sqeuclidean"`` or ``"cosine"`` (1 - cos, norms clamped at 1e-8).
    Differentiable with respect to both inputs.

    >>> x = torch.randn(5, 3)
    >>> fastmine.pairwise_distance(x).shape
    torch.Size([5, 5])
    """
    check.embeddings(x, "x")
    metric_id = check.metric(metric)
    if y is None:
        xc = check.compute_dtype(x)
        dist = ops.pairwise_distance(xc, xc, metric_id, _tile_tf32(xc))
    else:
        check.embeddings(y, "y")
        check.same_device([("x", x), ("y", y)])
        check.same_features(x, "x", y, "y")
        xc = check.compute_dtype(x)
        dist = ops.pairwise_distance(xc, check.compute_dtype(y), metric_id, _tile_tf32(xc))
    return dist.to(x.dtype)  # a matrix, not a loss: the input dtype (CPU half is upcast inside)


def _tile_tf32(x: torch.Tensor) -> bool:
    """Whether float32 distance tiles may use TF32 tensor cores: on CUDA, exactly when
    ``torch.backends.cuda.matmul.allow_tf32`` lets cuBLAS do so for matmuls (off by default:
    full fp32 accuracy). Never on the CPU, where nothing is read.

    >>> _tile_tf32(torch.zeros(2, 3))
    False
    """
    return x.device.type == "cuda" and x.dtype == torch.float32 and bool(torch.backends.cuda.matmul.allow_tf32)


def _count(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return mask.sum().clamp(min=1).to(dtype)


def batch_hard_triplet_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    *,
    margin: float = 0.3,
    metric: str = "euclidean",
    soft: bool = False,
    reduction: str = "mean",
    ref_embeddings: Optional[torch.Tensor] = None,
    ref_labels: Optional[torch.Tensor] = None,
    self_offset: Optional[int] = None,
    return_info: bool = False,
) -> Union[torch.Tensor, Tuple[torch.Tensor, BatchHardInfo]]:
    """Batch-hard triplet loss (Hermans et al. 2017), fused: the B x M distance matrix is
    never materialised.

    For each anchor i: d+ = distance to its farthest positive (same label, not itself),
    d- = distance to its nearest negative, z = d+ - d- + margin, loss_i = max(z, 0), or
    softplus(z) with ``soft=True`` (use ``margin=0`` for the paper's soft margin). Anchors
    without a positive or a negative are invalid and contribute 0.

    Args:
        embeddings: (B, D) float tensor, the anchors.
        labels: (B,) integer class ids (any values, any order).
        margin: the triplet margin (default 0.3, the re-ID convention).
        metric: ``"euclidean"`` (default), ``"sqeuclidean"`` or ``"cosine"``.
        soft: softplus instead of the hinge.
        reduction: ``"mean"`` over valid anchors (default), ``"sum"``, ``"none"`` (a (B,)
            vector, 0 for invalid anchors) or ``"mean_nonzero"`` (sum over the number of
            anchors with a positive loss, pytorch-metric-learning's AvgNonZeroReducer).
        ref_embeddings, ref_labels: mine against this (M, D) reference set instead of the
            batch itself (e.g. a cross-batch memory or an all-gathered global batch).
        self_offset: with a reference set, row ``self_offset + i`` of it is anchor i itself
            and is not a positive.
        return_info: also return a :class:`fastmine.BatchHardInfo` with the mined indices,
            distances and counts.

    Returns:
        The loss (a scalar, or (B,) for ``reduction="none"``): float32 for half inputs,
        otherwise the input dtype. With no valid anchor it is 0.0, still attached to the
        graph. With ``return_info``, ``(loss, info)``.

    Example:
        >>> emb = torch.randn(8, 16, requires_grad=True)
        >>> labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
        >>> loss = fastmine.batch_hard_triplet_loss(emb, labels, margin=0.3)
        >>> loss.backward()
    """
    margin = check.finite_number(margin, "margin")
    metric_id = check.metric(metric)
    check.reduction(reduction, BATCH_HARD_REDUCTIONS)
    x, lab, ref, ref_lab, has_exclude, offset = check.reference_set(
        embeddings, labels, ref_embeddings, ref_labels, self_offset
    )
    per_anchor, pos_idx, neg_idx, pos_dist, neg_dist = ops.batch_hard_triplet(
        x, lab, ref, ref_lab, margin, metric_id, bool(soft), has_exclude, offset, _tile_tf32(x)
    )
    valid = pos_idx >= 0
    if reduction == "none":
        loss = per_anchor
    elif reduction == "sum":
        loss = fixed_sum(per_anchor)
    elif reduction == "mean":
        loss = fixed_sum(per_anchor) / _count(valid, per_anchor.dtype)
    else:  # mean_nonzero
        loss = fixed_sum(per_anchor) / _count(per_anchor > 0, per_anchor.dtype)
    if not return_info:
        return loss
    num_valid = valid.sum()
    num_active = (valid & (per_anchor > 0)).sum()
    info = BatchHardInfo(
        pos_idx=pos_idx,
        neg_idx=neg_idx,
        pos_dist=pos_dist.detach(),
        neg_dist=neg_dist.detach(),
        valid=valid,
        num_valid=num_valid,
        num_active=num_active,
        active_fraction=num_active.to(torch.float32) / num_valid.clamp(min=1).to(torch.float32),
    )
    return loss, info


def batch_all_triplet_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    *,
    margin: float = 0.3,
    metric: str = "euclidean",
    soft: bool = False,
    reduction: str = "mean_positive",
    ref_embeddings: Optional[torch.Tensor] = None,
    ref_labels: Optional[torch.Tensor] = None,
    self_offset: Optional[int] = None,
    return_info: bool = False,
) -> Union[torch.Tensor, Tuple[torch.Tensor, BatchAllInfo]]:
    """Batch-all triplet loss: every (anchor, positive, negative) triplet of the batch,
    computed exactly without ever materialising the triplets (nor the B x M matrix).

    Each triplet contributes max(d(a, p) - d(a, n) + margin, 0) (softplus with
    ``soft=True``). Positives exclude the anchor itself, as in batch-hard.

    Args:
        embeddings, labels, margin, metric, soft, ref_embeddings, ref_labels, self_offset:
            as in :func:`batch_hard_triplet_loss`.
        reduction: ``"mean_positive"`` (default; sum over the number of triplets with a
            positive loss, Moindrot's batch_all and pytorch-metric-learning's
            ``TripletMarginLoss`` with no miner), ``"mean"`` (over all valid triplets) or
            ``"sum"``.
        return_info: also return a :class:`fastmine.BatchAllInfo` with the triplet counts.

    Example:
        >>> emb = torch.randn(64, 32, requires_grad=True)
        >>> labels = torch.arange(16).repeat_interleave(4)
        >>> loss, info = fastmine.batch_all_triplet_loss(emb, labels, return_info=True)
        >>> info.num_valid   # 64 anchors x 3 positives x 60 negatives
        tensor(11520)
    """
    margin = check.finite_number(margin, "margin")
    metric_id = check.metric(metric)
    check.reduction(reduction, BATCH_ALL_REDUCTIONS)
    x, lab, ref, ref_lab, has_exclude, offset = check.reference_set(
        embeddings, labels, ref_embeddings, ref_labels, self_offset
    )
    per_anchor, valid, active = ops.batch_all_triplet(
        x, lab, ref, ref_lab, margin, metric_id, bool(soft), has_exclude, offset, _tile_tf32(x)
    )
    total = fixed_sum(per_anchor)
    if reduction == "sum":
        loss = total
    else:
        counts = active if reduction == "mean_positive" else valid
        loss = total / counts.sum().clamp(min=1).to(total.dtype)
    if not return_info:
        return loss
    num_valid, num_active = valid.sum(), active.sum()
    info = BatchAllInfo(
        num_valid=num_valid,
        num_active=num_active,
        active_fraction=num_active.to(torch.float32) / num_valid.clamp(min=1).to(torch.float32),
        valid_per_anchor=valid,
        active_per_anchor=active,
    )
    return loss, info


def contrastive_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    *,
    pos_margin: float = 0.0,
    neg_margin: float = 1.0,
    power: float = 2,
    metric: str = "euclidean",
    reduction: str = "mean",
    ref_embeddings: Optional[torch.Tensor] = None,
    ref_labels: Optional[torch.Tensor] = None,
    self_offset: Optional[int] = None,
) -> torch.Tensor:
    """Contrastive loss (Hadsell, Chopra & LeCun 2006) over all pairs, fused: the B x M
    distance matrix is never materialised.

    A same-label pair costs max(d - pos_margin, 0)^power, a different-label pair
    max(neg_margin - d, 0)^power. Pairs are the unordered pairs i < j of the batch, or every
    (anchor, reference) pair with a reference set (minus ``self_offset + i``).

    Args:
        pos_margin, neg_margin: the margins (defaults 0 and 1).
        power: the exponent (default 2; 1 gives pytorch-metric-learning's ContrastiveLoss).
        reduction: ``"mean"`` over all pairs (default; the seeds' 1/(2N) sum form is 0.5 x
            this), ``"sum"``, or ``"mean_nonzero"``: the positive part averaged over its
            non-zero terms plus the negative part averaged over its non-zero terms.
        other arguments: as in :func:`batch_hard_triplet_loss`.

    Example:
        >>> emb = torch.randn(32, 16, requires_grad=True)
        >>> labels = torch.arange(8).repeat_interleave(4)
        >>> fastmine.contrastive_loss(emb, labels, neg_margin=1.0).backward()
    """
    check.reduction(reduction, CONTRASTIVE_REDUCTIONS)
    triangle = ref_embeddings is None  # the batch against itself: each pair once
    args = _contrastive_args(
        embeddings, labels, ref_embeddings, ref_labels, self_offset, pos_margin, neg_margin, power, metric, triangle
    )
    x, ref = args[0], args[2]
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or ref.requires_grad)
    if reduction != "mean_nonzero" and needs_grad and x.device.type in CONTRASTIVE_WITH_GRAD_DEVICES:
        # One scalar scales the whole gradient: computed in the forward's pass, no recompute.
        total, num_pairs, _, _ = ops.contrastive_with_grad(*args)
        return total if reduction == "sum" else total / num_pairs.clamp(min=1).to(total.dtype)
    pos_sum, pos_nz, pos_n, neg_sum, neg_nz, neg_n = ops.contrastive(*args)
    pos_total, neg_total = fixed_sum(pos_sum), fixed_sum(neg_sum)
    if reduction == "sum":
        return pos_total + neg_total
    if reduction == "mean":
        return (pos_total + neg_total) / _count_sum(pos_n, neg_n, pos_total.dtype)
    return pos_total / _count_sum(pos_nz, None, pos_total.dtype) + neg_total / _count_sum(neg_nz, None, neg_total.dtype)


def _contrastive_args(
    embeddings, labels, ref_embeddings, ref_labels, self_offset, pos_margin, neg_margin, power, metric, triangle: bool
) -> tuple:
    """The arguments of ``ops.contrastive`` (and ``contrastive_with_grad``), checked:
    ``contrastive_loss`` and the pieces of a cross-batch or distributed loss call the op
    the same way. ``triangle``: the batch against itself, each unordered pair once."""
    pos_margin, neg_margin, power = check.contrastive_options(pos_margin, neg_margin, power)
    metric_id = check.metric(metric)
    x, lab, ref, ref_lab, has_exclude, offset = check.reference_set(
        embeddings, labels, ref_embeddings, ref_labels, self_offset
    )
    return (
        x,
        lab,
        ref,
        ref_lab,
        pos_margin,
        neg_margin,
        power,
        metric_id,
        triangle,
        has_exclude and not triangle,
        offset,
        _tile_tf32(x),
    )


def _count_sum(a: torch.Tensor, b: Optional[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    total = a.sum() if b is None else a.sum() + b.sum()
    return total.clamp(min=1).to(dtype)
