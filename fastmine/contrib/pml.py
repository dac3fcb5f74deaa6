"""Drop-in replacements for pytorch-metric-learning (PML) losses, computed by fastmine.

    from fastmine.contrib.pml import TripletMarginLoss, ContrastiveLoss   # instead of
    # from pytorch_metric_learning.losses import TripletMarginLoss, ContrastiveLoss

The classes subclass PML's own, take the same constructor arguments with the same defaults
and give the same numbers (to float rounding) on the same inputs and configuration; only
the computation is fastmine's (no B x B x B triplet tensor, no B x B matrix).

Supported configurations (anything else raises ``ValueError`` when built, or when called if
an attribute was changed afterwards):

``TripletMarginLoss(margin=0.05, swap=False, smooth_loss=False, triplets_per_anchor="all",
distance=..., reducer=...)``, no miner = every triplet of the batch
(:func:`fastmine.batch_all_triplet_loss`):

* ``distance``: ``LpDistance(p=2, power=1 or 2, normalize_embeddings=True|False)`` (PML's
  default is ``LpDistance()``: euclidean on L2-normalised embeddings) or
  ``CosineSimilarity()`` (power 1).
* ``reducer``: ``AvgNonZeroReducer()`` (the default: mean over triplets with a positive
  loss), ``MeanReducer()`` (over all triplets) or ``SumReducer()``.
* ``smooth_loss=True`` (softplus) is supported; ``swap=True``, an integer
  ``triplets_per_anchor`` (random sampling) and an ``embedding_regularizer`` are not.

``ContrastiveLoss(pos_margin=0, neg_margin=1, distance=..., reducer=...)``:

* ``distance``: as above; with ``CosineSimilarity`` the margins are similarities, as in PML.
* ``reducer``: ``AvgNonZeroReducer()`` (the default) or ``SumReducer()``. ``MeanReducer``
  (PML averages positive and negative pairs separately) and an ``embedding_regularizer``
  are not supported.

Both accept ``ref_emb``/``ref_labels`` (mined against a reference set, as in PML: with a
reference set no pair is excluded unless ``ref_labels`` *is* ``labels``). ``labels`` are
required. With an ``indices_tuple`` (mined by a PML miner) the call is passed to PML's own
implementation unchanged: the numbers are PML's, without fastmine's speed-up.
"""
from __future__ import annotations

from typing import Tuple

import torch

try:
    from pytorch_metric_learning import distances as _distances
    from pytorch_metric_learning import losses as _losses
    from pytorch_metric_learning import reducers as _reducers
except ImportError as exc:  # pragma: no cover - exercised by a test that hides the package
    raise ImportError(
        "fastmine.contrib.pml needs pytorch-metric-learning: `pip install "
        "pytorch-metric-learning` (fastmine itself does not depend on it)"
    ) from exc

import fastmine

__all__ = ["TripletMarginLoss", "ContrastiveLoss"]


def _metric(distance) -> Tuple[str, bool]:
    """(fastmine metric, whether to L2-normalise first) for a PML distance, or ValueError."""
    if type(distance) is _distances.LpDistance:
        if distance.p != 2 or distance.power not in (1, 2):
            raise ValueError("distance: only LpDistance(p=2) with power 1 or 2 is supported, "
                             f"got p={distance.p}, power={distance.power}")
        return ("euclidean" if distance.power == 1 else "sqeuclidean"), distance.normalize_embeddings
    if type(distance) is _distances.CosineSimilarity:
        if distance.power != 1:
            raise ValueError(f"distance: CosineSimilarity is supported with power 1, got {distance.power}")
        return "cosine", False  # the metric normalises itself
    raise ValueError("distance: fastmine.contrib.pml supports LpDistance(p=2) and "
                     f"CosineSimilarity, got {type(distance).__name__}")


def _single_reducer(reducer, allowed: dict, what: str) -> str:
    kind = type(reducer)
    if kind is _reducers.AvgNonZeroReducer and (reducer.low != 0 or reducer.high is not None):
        kind = None
    for cls, name in allowed.items():
        if kind is cls:
            return name
    names = ", ".join(c.__name__ + "()" for c in allowed)
    raise ValueError(f"reducer: {what} supports {names}, got {type(reducer).__name__}")


def _no_regularizer(loss) -> None:
    if getattr(loss, "embedding_regularizer", None) is not None:
        raise ValueError("embedding_regularizer is not supported by fastmine.contrib.pml")


def _reference(embeddings, labels, ref_emb, ref_labels, normalize) -> Tuple[dict, bool]:
    """The fastmine reference-set keywords for PML's (ref_emb, ref_labels), and whether the
    batch is paired with itself."""
    if labels is None:
        raise ValueError("labels are required by fastmine.contrib.pml losses (or pass an "
                         "indices_tuple to use PML's own computation)")
    if ref_emb is None:
        return {}, True
    if ref_labels is None:
        raise ValueError("ref_labels are required with ref_emb")
    ref = torch.nn.functional.normalize(ref_emb, p=2, dim=1) if normalize else ref_emb
    kw = dict(ref_embeddings=ref, ref_labels=ref_labels.to(ref_emb.device))
    if ref_labels is labels:  # PML then drops the diagonal (get_matches_and_diffs)
        kw["self_offset"] = 0
    return kw, False


class TripletMarginLoss(_losses.TripletMarginLoss):
    """PML's ``TripletMarginLoss`` (no miner: every triplet), computed by
    :func:`fastmine.batch_all_triplet_loss`. Same arguments and defaults as PML's.

    Example:
        >>> from fastmine.contrib.pml import TripletMarginLoss
        >>> loss_fn = TripletMarginLoss(margin=0.1)
        >>> loss = loss_fn(embeddings, labels)
    """

    _REDUCERS = {_reducers.AvgNonZeroReducer: "mean_positive", _reducers.MeanReducer: "mean",
                 _reducers.SumReducer: "sum"}

    def __init__(self, margin: float = 0.05, swap: bool = False, smooth_loss: bool = False,
                 triplets_per_anchor="all", **kwargs) -> None:
        super().__init__(margin=margin, swap=swap, smooth_loss=smooth_loss,
                         triplets_per_anchor=triplets_per_anchor, **kwargs)
        self._fastmine_options()  # fail at construction on an unsupported configuration

    def _fastmine_options(self) -> dict:
        if self.swap:
            raise ValueError("swap=True is not supported by fastmine.contrib.pml.TripletMarginLoss")
        if self.triplets_per_anchor != "all":
            raise ValueError("triplets_per_anchor must be 'all' (random triplet sampling is "
                             f"not supported), got {self.triplets_per_anchor!r}")
        _no_regularizer(self)
        metric, normalize = _metric(self.distance)
        reduction = _single_reducer(self.reducer, self._REDUCERS, "TripletMarginLoss")
        return dict(margin=float(self.margin), metric=metric, soft=bool(self.smooth_loss),
                    reduction=reduction, normalize=normalize)

    def forward(self, embeddings, labels=None, indices_tuple=None, ref_emb=None,
                ref_labels=None) -> torch.Tensor:
        if indices_tuple is not None:
            return super().forward(embeddings, labels, indices_tuple, ref_emb, ref_labels)
        opts = self._fastmine_options()
        normalize = opts.pop("normalize")
        ref_kw, _ = _reference(embeddings, labels, ref_emb, ref_labels, normalize)
        x = torch.nn.functional.normalize(embeddings, p=2, dim=1) if normalize else embeddings
        return fastmine.batch_all_triplet_loss(x, labels.to(x.device), **ref_kw, **opts)


class ContrastiveLoss(_losses.ContrastiveLoss):
    """PML's ``ContrastiveLoss`` computed by :func:`fastmine.contrastive_loss` (power 1).
    Same arguments and defaults as PML's.

    Example:
        >>> from fastmine.contrib.pml import ContrastiveLoss
        >>> loss_fn = ContrastiveLoss(pos_margin=0.0, neg_margin=1.0)
        >>> loss = loss_fn(embeddings, labels)
    """

    _REDUCERS = {_reducers.AvgNonZeroReducer: "mean_nonzero", _reducers.SumReducer: "sum"}

    def __init__(self, pos_margin: float = 0, neg_margin: float = 1, **kwargs) -> None:
        super().__init__(pos_margin=pos_margin, neg_margin=neg_margin, **kwargs)
        self._fastmine_options()

    def _fastmine_options(self) -> dict:
        _no_regularizer(self)
        metric, normalize = _metric(self.distance)
        reducers = getattr(self.reducer, "reducers", None)
        if not isinstance(self.reducer, _reducers.MultipleReducers) or reducers is None or \
                set(reducers) != {"pos_loss", "neg_loss"}:
            raise ValueError("reducer: ContrastiveLoss supports AvgNonZeroReducer() or "
                             f"SumReducer(), got {type(self.reducer).__name__}")
        kinds = {_single_reducer(r, self._REDUCERS, "ContrastiveLoss") for r in reducers.values()}
        if len(kinds) != 1:
            raise ValueError("reducer: the positive and negative parts must use the same reducer")
        pos_margin, neg_margin = float(self.pos_margin), float(self.neg_margin)
        if metric == "cosine":  # PML's margins are similarities s = 1 - d
            pos_margin, neg_margin = 1.0 - pos_margin, 1.0 - neg_margin
        return dict(pos_margin=pos_margin, neg_margin=neg_margin, power=1, metric=metric,
                    reduction=kinds.pop(), normalize=normalize)

    def forward(self, embeddings, labels=None, indices_tuple=None, ref_emb=None,
                ref_labels=None) -> torch.Tensor:
        if indices_tuple is not None:
            return super().forward(embeddings, labels, indices_tuple, ref_emb, ref_labels)
        opts = self._fastmine_options()
        normalize = opts.pop("normalize")
        ref_kw, itself = _reference(embeddings, labels, ref_emb, ref_labels, normalize)
        x = torch.nn.functional.normalize(embeddings, p=2, dim=1) if normalize else embeddings
        labels = labels.to(x.device)
        if not itself and _pml_sees_no_pairs(labels, ref_kw["ref_labels"], "self_offset" in ref_kw):
            return torch.sum(embeddings * 0)  # PML's zero loss for <= 1 pair of each kind
        loss = fastmine.contrastive_loss(x, labels, **ref_kw, **opts)
        if opts["reduction"] == "sum" and itself:
            loss = loss * 2  # PML sums ordered pairs (i, j) and (j, i); fastmine i < j
        return loss


def _pml_sees_no_pairs(labels: torch.Tensor, ref_labels: torch.Tensor, diagonal: bool) -> bool:
    """PML's GenericPairLoss returns zero when there is at most one positive and at most one
    negative pair (so only possible with at most 2 pairs: checked only then)."""
    b = labels.shape[0]
    pairs = b * ref_labels.shape[0] - (b if diagonal else 0)
    if pairs > 2:
        return False
    n_pos = int((labels[:, None] == ref_labels[None, :]).sum()) - (b if diagonal else 0)
    return n_pos <= 1 and pairs - n_pos <= 1
