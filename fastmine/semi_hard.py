"""Semi-hard triplet loss (FaceNet; TensorFlow Addons' ``triplet_semihard_loss``) and the
semi-hard miner. Semantics: docs/semantics.md; oracle:
``fastmine.reference.semi_hard_triplet_loss``.
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

import torch

from . import _validate as check
from ._ops import ops
from ._sum import fixed_sum
from ._types import SemiHardInfo

__all__ = ["semi_hard_triplet_loss", "mine_semi_hard"]

SEMI_HARD_REDUCTIONS = ("mean", "sum", "none")


def _semi_hard(embeddings, labels, margin, metric, ref_embeddings, ref_labels, self_offset):
    """Validates, then runs the fused op: (per_pair, anchor, pos, neg, pos_d, neg_d, nonfinite)."""
    metric_id = check.metric(metric)
    x, lab, ref, ref_lab, has_exclude, offset = check.reference_set(
        embeddings, labels, ref_embeddings, ref_labels, self_offset
    )
    return ops.semi_hard_triplet(x, lab, ref, ref_lab, margin, metric_id, has_exclude, offset)


def semi_hard_triplet_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    *,
    margin: float = 0.3,
    metric: str = "euclidean",
    reduction: str = "mean",
    ref_embeddings: Optional[torch.Tensor] = None,
    ref_labels: Optional[torch.Tensor] = None,
    self_offset: Optional[int] = None,
    return_info: bool = False,
) -> Union[torch.Tensor, Tuple[torch.Tensor, SemiHardInfo]]:
    """Semi-hard triplet loss (Schroff et al., FaceNet 2015), with TensorFlow Addons'
    ``triplet_semihard_loss`` rule, fused: one pass over each anchor's distances serves all
    its positives, and the B x M distance matrix is never materialised.

    For every positive pair (i, p) (same label, not the anchor itself) whose anchor has a
    negative, the negative n* is the nearest one that is farther than the positive
    (d_in > d_ip); when no negative is farther, the farthest negative (TF's fallback). The
    pair costs max(d_ip - d_in* + margin, 0). Exact ties go to the lowest index.

    Args:
        embeddings: (B, D) float tensor, the anchors.
        labels: (B,) integer class ids (any values, any order).
        margin: the triplet margin (default 0.3).
        metric: ``"euclidean"`` (default), ``"sqeuclidean"`` or ``"cosine"``.
        reduction: ``"mean"`` over the pairs (default), ``"sum"``, or ``"none"``: one value
            per pair, pairs in row-major (i, p) order (a data-dependent length P).
        ref_embeddings, ref_labels: mine against this (M, D) reference set instead of the
            batch itself (a cross-batch memory, an all-gathered batch).
        self_offset: with a reference set, row ``self_offset + i`` of it is anchor i itself
            and is not a positive.
        return_info: also return a :class:`fastmine.SemiHardInfo` (the triplets, their
            distances and counts).

    Returns:
        The loss: float32 for half inputs, otherwise the input dtype. With no pair it is 0.0
        (TF returns NaN), still attached to the graph. ``"mean"``/``"sum"`` are NaN when any
        embedding is non-finite. With ``return_info``, ``(loss, info)``.

    Example:
        >>> emb = torch.randn(8, 16, requires_grad=True)
        >>> labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
        >>> loss, info = fastmine.semi_hard_triplet_loss(emb, labels, return_info=True)
        >>> int(info.num_pairs)  # 8 anchors x 1 positive each
        8
        >>> loss.backward()
    """
    margin = check.finite_number(margin, "margin")
    check.reduction(reduction, SEMI_HARD_REDUCTIONS)
    per_pair, anchor, pos, neg, pos_dist, neg_dist, nonfinite = _semi_hard(
        embeddings, labels, margin, metric, ref_embeddings, ref_labels, self_offset
    )
    num_pairs = (anchor >= 0).sum()
    if reduction == "none":
        loss = per_pair
    elif reduction == "sum":
        loss = fixed_sum(per_pair) + nonfinite
    else:
        loss = fixed_sum(per_pair) / num_pairs.clamp(min=1).to(per_pair.dtype) + nonfinite
    if not return_info:
        return loss
    num_active = (per_pair.detach() > 0).sum()
    info = SemiHardInfo(
        anchor_idx=anchor,
        pos_idx=pos,
        neg_idx=neg,
        pos_dist=pos_dist.detach(),
        neg_dist=neg_dist.detach(),
        num_pairs=num_pairs,
        num_active=num_active,
        active_fraction=num_active.to(torch.float32) / num_pairs.clamp(min=1).to(torch.float32),
    )
    return loss, info


def mine_semi_hard(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    *,
    metric: str = "euclidean",
    ref_embeddings: Optional[torch.Tensor] = None,
    ref_labels: Optional[torch.Tensor] = None,
    self_offset: Optional[int] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Semi-hard mining without the loss: int64 ``(a, p, n)``, one triplet per positive pair
    (i, p) whose anchor has a negative, in row-major (i, p) order, chosen exactly as
    :func:`semi_hard_triplet_loss` chooses them. No gradient.

    The tuple is pytorch-metric-learning's ``indices_tuple`` format: ``a`` indexes
    ``embeddings``, ``p`` and ``n`` index the reference set (``embeddings`` itself when no
    ``ref_embeddings`` is given).

    Example:
        >>> emb = torch.randn(8, 16)
        >>> labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
        >>> a, p, n = fastmine.mine_semi_hard(emb, labels)
        >>> a.tolist()
        [0, 1, 2, 3, 4, 5, 6, 7]
        >>> bool((labels[a] == labels[p]).all() and (labels[a] != labels[n]).all())
        True
    """
    with torch.no_grad():
        _, anchor, pos, neg, _, _, _ = _semi_hard(
            embeddings, labels, 0.0, metric, ref_embeddings, ref_labels, self_offset
        )
    return anchor, pos, neg
