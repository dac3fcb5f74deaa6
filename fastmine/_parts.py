"""A loss over a subset of its anchors, as numerators and denominators.

Cross-batch memory (a batch split by the ring's wrap-around) and torch.distributed (each
rank owns some anchors of the global batch) both compute a loss in pieces, each piece a set
of anchors against the same reference set. A piece cannot be reduced on its own: the "mean"
of the whole is not the mean of the pieces' means. So a piece returns its reduction as
terms ``(numerator, denominator)``, and the whole loss is

    sum over terms k of (sum over pieces of numerator_k) / max(sum over pieces of denominator_k, 1)

(``denominator`` None means 1: a plain sum), exactly how the functional ops reduce.
``reduction="none"`` has no terms: its per-anchor vectors are concatenated.

A new loss slots in by adding one function to ``_DECOMPOSERS``.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, NamedTuple, Optional, cast

import torch

from . import functional as F
from ._ops import ops
from ._sum import fixed_sum
from .semi_hard import semi_hard_triplet_loss


class Term(NamedTuple):
    numerator: torch.Tensor  # () differentiable partial sum of the loss
    denominator: Optional[torch.Tensor]  # () count to divide by after summing pieces; None = 1


class Parts(NamedTuple):
    terms: List[Term]  # empty for reduction="none"
    per_anchor: Optional[torch.Tensor]  # (B,) for reduction="none", else None


def _batch_hard(emb, labels, ref, ref_labels, offset, options, symmetric):
    opts = dict(options)
    reduction = opts.pop("reduction")
    per, info = F.batch_hard_triplet_loss(
        emb,
        labels,
        ref_embeddings=ref,
        ref_labels=ref_labels,
        self_offset=offset,
        reduction="none",
        return_info=True,
        **opts,
    )
    if reduction == "none":
        return Parts([], per)
    total = fixed_sum(per)
    den = {"sum": None, "mean": info.num_valid, "mean_nonzero": (per > 0).sum()}[reduction]
    return Parts([Term(total, den)], None)


def _batch_all(emb, labels, ref, ref_labels, offset, options, symmetric):
    opts = dict(options)
    reduction = opts.pop("reduction")
    total, info = F.batch_all_triplet_loss(
        emb,
        labels,
        ref_embeddings=ref,
        ref_labels=ref_labels,
        self_offset=offset,
        reduction="sum",
        return_info=True,
        **opts,
    )
    den = {"sum": None, "mean": info.num_valid, "mean_positive": info.num_active}[reduction]
    return Parts([Term(total, den)], None)


def _semi_hard(emb, labels, ref, ref_labels, offset, options, symmetric):
    # One loss per positive pair (i, p), pairs in row-major order: the pieces' "none" vectors
    # concatenate in anchor order, and "mean" divides by the pairs of all pieces. "sum" (not
    # "none" summed here) keeps the op's NaN for non-finite anchors without pairs.
    opts = dict(options)
    reduction = opts.pop("reduction")
    loss, info = semi_hard_triplet_loss(
        emb,
        labels,
        ref_embeddings=ref,
        ref_labels=ref_labels,
        self_offset=offset,
        reduction="none" if reduction == "none" else "sum",
        return_info=True,
        **opts,
    )
    if reduction == "none":
        return Parts([], loss)
    return Parts([Term(loss, info.num_pairs if reduction == "mean" else None)], None)


def _contrastive(emb, labels, ref, ref_labels, offset, options, symmetric):
    # The op's per-anchor sums and counts (pos_sum, pos_nonzero, pos_pairs, neg_...), from
    # the arguments fastmine.contrastive_loss gives it (checked the same way).
    opts = dict(options)
    reduction = opts.pop("reduction")
    args = F._contrastive_args(
        emb,
        labels,
        ref,
        ref_labels,
        offset,
        opts["pos_margin"],
        opts["neg_margin"],
        opts["power"],
        opts["metric"],
        triangle=False,
    )
    pos_sum, pos_nz, pos_n, neg_sum, neg_nz, neg_n = ops.contrastive(*args)
    # symmetric: the single-process equivalent pairs the batch with itself, i < j; here each
    # unordered pair is seen twice (from both anchors), so sums are halved. Means need no
    # halving: numerator and denominator both doubled.
    half = 0.5 if symmetric else 1.0
    pos, neg = fixed_sum(pos_sum), fixed_sum(neg_sum)
    if reduction == "sum":
        return Parts([Term((pos + neg) * half, None)], None)
    if reduction == "mean":
        return Parts([Term(pos + neg, pos_n.sum() + neg_n.sum())], None)
    return Parts([Term(pos, pos_nz.sum()), Term(neg, neg_nz.sum())], None)


_DECOMPOSERS: Dict[Callable[..., Any], Callable[..., Parts]] = {
    F.batch_hard_triplet_loss: _batch_hard,
    F.batch_all_triplet_loss: _batch_all,
    F.contrastive_loss: _contrastive,
    semi_hard_triplet_loss: _semi_hard,
}


def supports(functional: Callable[..., Any]) -> bool:
    return functional in _DECOMPOSERS


def loss_parts(
    functional, embeddings, labels, ref, ref_labels, self_offset, options, *, symmetric: bool = False
) -> Parts:
    """``functional``'s loss of these anchors against (ref, ref_labels), as terms.

    symmetric: the pieces together pair a batch with itself (torch.distributed), so the
    single-process equivalent is the op without a reference set."""
    return _DECOMPOSERS[functional](embeddings, labels, ref, ref_labels, self_offset, options, symmetric)


def combine(terms_per_piece: List[List[Term]], dtype: torch.dtype) -> torch.Tensor:
    """The loss from the pieces' terms (all pieces have the same number of terms)."""
    loss: Optional[torch.Tensor] = None
    for k in range(len(terms_per_piece[0])):
        num = cast(torch.Tensor, sum(p[k].numerator for p in terms_per_piece))
        dens = [p[k].denominator for p in terms_per_piece]
        value = num if dens[0] is None else num / cast(torch.Tensor, sum(dens)).clamp(min=1).to(dtype)
        loss = value if loss is None else loss + value
    return cast(torch.Tensor, loss)
