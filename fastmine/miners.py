"""Miners: index tuples (a, p, n) in pytorch-metric-learning's format, for ``indices_tuple``.

No gradient flows through mining: the miners run under ``torch.no_grad()`` on detached
inputs and return int64 tensors on the embeddings' device.

* :func:`mine_batch_hard` is ``BatchHardMiner``: one triplet per valid anchor. It reuses the
  fused batch-hard op (the B x M distance matrix is never materialised).
* :func:`mine_triplets` is ``TripletMarginMiner(margin, type_of_triplets=type)``: every
  triplet whose margin passes a test, counted per anchor first (sorted negatives and
  bisection, never the B x M x M cube), then written into one output allocated once.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from . import _validate as check
from ._ops import ops

__all__ = ["mine_batch_hard", "mine_triplets", "TRIPLET_TYPES"]

#: ``type=`` values of :func:`mine_triplets` and their ids in the compiled op
#: (csrc/common/miners.h, TripletType).
TRIPLET_TYPES = {"all": 0, "hard": 1, "semihard": 2, "easy": 3}

Triplets = Tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _detached(t):
    """t without autograd history (non-tensors pass through to the validation's errors)."""
    return t.detach() if isinstance(t, torch.Tensor) else t


def mine_batch_hard(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    *,
    metric: str = "euclidean",
    ref_embeddings: Optional[torch.Tensor] = None,
    ref_labels: Optional[torch.Tensor] = None,
    self_offset: Optional[int] = None,
) -> Triplets:
    """Batch-hard mining: for each anchor with a positive and a negative, its farthest
    positive and its nearest negative.

    The same triplets as pytorch-metric-learning's ``BatchHardMiner`` on the same distances
    (its anchors without a positive or a negative are dropped the same way). Exact ties go
    to the lowest index; candidates closer than rounding may go either way. A NaN distance
    among an anchor's candidates is selected (never skipped), as PML's ``torch.max`` does,
    so a loss computed on the triplet is NaN, not silently finite.

    Args:
        embeddings: (B, D) float tensor, the anchors.
        labels: (B,) integer class ids.
        metric: ``"euclidean"`` (default), ``"sqeuclidean"`` or ``"cosine"`` (1 - cos;
            it selects exactly what PML's ``CosineSimilarity`` selects).
        ref_embeddings, ref_labels: mine against this (M, D) reference set instead of the
            batch (indices p and n then point into it).
        self_offset: with a reference set, row ``self_offset + i`` of it is anchor i
            itself and is not a positive.

    Returns:
        ``(a, p, n)``, three int64 tensors of the same length (the number of valid anchors),
        anchors ascending.

    Example:
        >>> emb = torch.randn(8, 16)
        >>> labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
        >>> a, p, n = fastmine.mine_batch_hard(emb, labels)
        >>> a
        tensor([0, 1, 2, 3, 4, 5, 6, 7])
        >>> bool((labels[p] == labels[a]).all() and (labels[n] != labels[a]).all())
        True
    """
    metric_id = check.metric(metric)
    with torch.no_grad():
        x, lab, ref, ref_lab, has_exclude, offset = check.reference_set(
            _detached(embeddings), labels, _detached(ref_embeddings), ref_labels, self_offset
        )
        # The loss terms that come with the indices cost O(B) on top of the mining.
        _, pos_idx, neg_idx, _, _ = ops.batch_hard_triplet(
            x, lab, ref, ref_lab, 0.0, metric_id, False, has_exclude, offset
        )
        anchors = torch.nonzero(pos_idx >= 0).squeeze(1)
        return anchors, pos_idx[anchors], neg_idx[anchors]


def mine_triplets(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    *,
    margin: float = 0.2,
    type: str = "all",
    metric: str = "euclidean",
    ref_embeddings: Optional[torch.Tensor] = None,
    ref_labels: Optional[torch.Tensor] = None,
    self_offset: Optional[int] = None,
) -> Triplets:
    """Margin-filtered triplets, as pytorch-metric-learning's
    ``TripletMarginMiner(margin, type_of_triplets=type)``.

    With t = d(a, n) - d(a, p) for every anchor a, positive p and negative n:

    * ``"all"``: t <= margin (the triplets whose hinge max(margin - t, 0) is active, plus
      those exactly at the margin);
    * ``"hard"``: t <= margin and t <= 0 (the negative is no farther than the positive);
    * ``"semihard"``: 0 < t <= margin (strict at 0);
    * ``"easy"``: t > margin (strict).

    These are PML's comparisons. ``metric="cosine"`` (fastmine's distance 1 - cos) gives
    t = cos(a, p) - cos(a, n), which is exactly PML's margin with ``CosineSimilarity``
    (an inverted, similarity "distance"), so the same ``margin`` selects the same
    triplets. Triplets within rounding of a threshold may go either way.

    The output is PML's order: anchors ascending, then positives, then negatives (row-major
    over (a, p, n)). Its length is data-dependent and can be huge (up to B x K x M):
    it is counted per anchor first (O(B M log M)) and allocated once.

    A NaN or infinite distance between a valid anchor and one of its candidates raises
    ``ValueError`` (PML would silently drop those triplets: every comparison with NaN is
    false).

    Args:
        embeddings, labels, metric, ref_embeddings, ref_labels, self_offset: as in
            :func:`mine_batch_hard`.
        margin: the margin (default 0.2, PML's), compared in the distance's dtype
            (float32 for half inputs, which are upcast).
        type: ``"all"`` (default), ``"hard"``, ``"semihard"`` or ``"easy"``.

    Returns:
        ``(a, p, n)``, three int64 tensors of one length (0 when nothing is selected).

    Example:
        >>> emb = torch.randn(32, 16)
        >>> labels = torch.arange(8).repeat_interleave(4)
        >>> a, p, n = fastmine.mine_triplets(emb, labels, margin=0.2, type="semihard")
        >>> d = fastmine.pairwise_distance(emb)
        >>> t = d[a, n] - d[a, p]
        >>> bool(((t > 0) & (t <= 0.2 + 1e-6)).all())
        True
    """
    margin = check.finite_number(margin, "margin")
    check.one_of(type, list(TRIPLET_TYPES), "type")
    metric_id = check.metric(metric)
    with torch.no_grad():
        x, lab, ref, ref_lab, has_exclude, offset = check.reference_set(
            _detached(embeddings), labels, _detached(ref_embeddings), ref_labels, self_offset
        )
        # The CUDA kernels compare float32/float64 distances; half inputs are upcast
        # (on the CPU check.reference_set has done it already).
        if x.device.type == "cuda" and x.dtype in (torch.float16, torch.bfloat16):
            x, ref = x.float(), ref.float()
        args = (x, lab, ref, ref_lab, margin, TRIPLET_TYPES[type], metric_id, has_exclude, offset)
        if x.device.type != "cuda" or torch.compiler.is_compiling():
            return ops.mine_triplets(*args)  # the CPU kernel raises ValueError itself
        try:
            return ops.mine_triplets(*args)
        except RuntimeError as e:
            # The stable ABI has no ValueError: the CUDA kernel's refusal arrives as a
            # RuntimeError; give it the CPU's type.
            if "non-finite distance" in str(e):
                raise ValueError(str(e)) from None
            raise
