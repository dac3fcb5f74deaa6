"""Drop-in replacements for pytorch-metric-learning (PML) losses and miners, computed by
fastmine.

    from fastmine.contrib.pml import TripletMarginLoss, ContrastiveLoss   # instead of
    # from pytorch_metric_learning.losses import TripletMarginLoss, ContrastiveLoss
    from fastmine.contrib.pml import BatchHardMiner, TripletMarginMiner   # instead of
    # from pytorch_metric_learning.miners import BatchHardMiner, TripletMarginMiner

The classes subclass PML's own, take the same constructor arguments with the same defaults
and give the same numbers (to float rounding; the miners the same triplets) on the same
inputs and configuration; only the computation is fastmine's (no B x B x B triplet tensor,
no B x B matrix). ``SemiHardMiner`` is an addition (FaceNet semi-hard mining), not a PML
class.

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

Miners (:class:`pytorch_metric_learning.miners.BaseMiner` subclasses: PML's ``forward``
checks the inputs, handles ``ref_emb`` and records ``num_triplets``; fastmine computes
``mine``). Each returns int64 ``(a, p, n)`` for a PML loss's ``indices_tuple``:

``BatchHardMiner(distance=...)``: PML's ``BatchHardMiner`` (its ``(a, p, n)``, anchors
without a positive or a negative dropped), by :func:`fastmine.mine_batch_hard`.

``TripletMarginMiner(margin=0.2, type_of_triplets="all"|"hard"|"semihard"|"easy",
distance=...)``: PML's ``TripletMarginMiner``, in PML's row-major order, by
:func:`fastmine.mine_triplets` (counted per anchor, never the B x M x M cube).

``SemiHardMiner(distance=...)``: *not* a PML class (PML has no FaceNet miner, and it is not
``TripletMarginMiner("semihard")``, which keeps every triplet with 0 < d_an - d_ap <= margin):
FaceNet / TF-Addons semi-hard mining by :func:`fastmine.mine_semi_hard`, one triplet per
positive pair (a, p) whose anchor has a negative: the nearest negative farther than p, else
the farthest negative. Pairs in row-major (a, p) order.

* ``distance``: as for the losses (PML's default ``LpDistance()`` for all three); anything
  else raises ``ValueError``. ``BatchHardMiner``'s ``allowed_pos_range`` /
  ``allowed_neg_range`` are not supported.
* ``labels`` are required, and ``ref_labels`` with ``ref_emb``. The reference set is PML's:
  the anchor itself is excluded only when the batch is mined against itself or
  ``ref_labels`` *is* ``labels``.
* The triplets are PML's exactly, except for candidates within rounding of each other (a
  near tie in batch-hard, a margin within rounding of a threshold), which may go either way
  (fastmine recomputes close candidates from the vectors, PML reads its ``cdist`` matrix),
  and for non-finite distances: ``TripletMarginMiner`` raises ``ValueError`` (PML silently
  drops those triplets); ``BatchHardMiner`` selects a NaN candidate, as PML does.
* ``collect_stats=True`` records PML's statistics with PML's values (to rounding):
  ``BatchHardMiner``'s ``hardest_pos_pair`` etc. from the mined pairs (O(B D)),
  ``TripletMarginMiner``'s ``pos_pair_dist``, ``neg_pair_dist``, ``avg_triplet_margin``
  (means over *every* valid triplet, as PML's) from the distance matrix in row panels, never
  the cube; ``SemiHardMiner`` records ``pos_pair_dist``, ``neg_pair_dist`` and
  ``avg_triplet_margin`` over its mined triplets.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Tuple, cast

import torch

try:
    from pytorch_metric_learning import distances as _distances
    from pytorch_metric_learning import losses as _losses
    from pytorch_metric_learning import miners as _miners
    from pytorch_metric_learning import reducers as _reducers
except ImportError as exc:  # pragma: no cover - exercised by a test that hides the package
    raise ImportError(
        "fastmine.contrib.pml needs pytorch-metric-learning: `pip install "
        "pytorch-metric-learning` (fastmine itself does not depend on it)"
    ) from exc

import fastmine
from fastmine import _validate as check
from fastmine.miners import TRIPLET_TYPES

__all__ = ["TripletMarginLoss", "ContrastiveLoss", "BatchHardMiner", "TripletMarginMiner", "SemiHardMiner"]


def _metric(distance) -> Tuple[str, bool]:
    """(fastmine metric, whether to L2-normalise first) for a PML distance, or ValueError."""
    if type(distance) is _distances.LpDistance:
        if distance.p != 2 or distance.power not in (1, 2):
            raise ValueError(
                "distance: only LpDistance(p=2) with power 1 or 2 is supported, "
                f"got p={distance.p}, power={distance.power}"
            )
        return ("euclidean" if distance.power == 1 else "sqeuclidean"), distance.normalize_embeddings
    if type(distance) is _distances.CosineSimilarity:
        if distance.power != 1:
            raise ValueError(f"distance: CosineSimilarity is supported with power 1, got {distance.power}")
        return "cosine", False  # the metric normalises itself
    raise ValueError(
        f"distance: fastmine.contrib.pml supports LpDistance(p=2) and CosineSimilarity, got {type(distance).__name__}"
    )


def _single_reducer(reducer, allowed: dict, what: str) -> str:
    kind: Optional[type] = type(reducer)
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


def _require_labels(labels, ref_emb, ref_labels, users: str) -> None:
    if labels is None:
        raise ValueError(f"labels are required by fastmine.contrib.pml {users}")
    if ref_emb is not None and ref_labels is None:
        # PML would silently pair ref_emb with the batch's labels (or fail on a shape)
        raise ValueError("ref_labels are required with ref_emb")


def _reference(embeddings, labels, ref_emb, ref_labels, normalize) -> Tuple[dict, bool]:
    """The fastmine reference-set keywords for PML's (ref_emb, ref_labels), and whether the
    batch is paired with itself."""
    _require_labels(labels, ref_emb, ref_labels, "losses (or pass an indices_tuple to use PML's own computation)")
    if ref_emb is None:
        return {}, True
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

    _REDUCERS = {
        _reducers.AvgNonZeroReducer: "mean_positive",
        _reducers.MeanReducer: "mean",
        _reducers.SumReducer: "sum",
    }

    def __init__(
        self, margin: float = 0.05, swap: bool = False, smooth_loss: bool = False, triplets_per_anchor="all", **kwargs
    ) -> None:
        super().__init__(
            margin=margin, swap=swap, smooth_loss=smooth_loss, triplets_per_anchor=triplets_per_anchor, **kwargs
        )
        self._fastmine_options()  # fail at construction on an unsupported configuration

    def _fastmine_options(self) -> dict:
        if self.swap:
            raise ValueError("swap=True is not supported by fastmine.contrib.pml.TripletMarginLoss")
        if self.triplets_per_anchor != "all":
            raise ValueError(
                "triplets_per_anchor must be 'all' (random triplet sampling is "
                f"not supported), got {self.triplets_per_anchor!r}"
            )
        _no_regularizer(self)
        metric, normalize = _metric(self.distance)
        reduction = _single_reducer(self.reducer, self._REDUCERS, "TripletMarginLoss")
        return dict(
            margin=float(self.margin),
            metric=metric,
            soft=bool(self.smooth_loss),
            reduction=reduction,
            normalize=normalize,
        )

    def forward(self, embeddings, labels=None, indices_tuple=None, ref_emb=None, ref_labels=None) -> torch.Tensor:
        if indices_tuple is not None:
            return super().forward(embeddings, labels, indices_tuple, ref_emb, ref_labels)
        opts = self._fastmine_options()
        normalize = opts.pop("normalize")
        ref_kw, _ = _reference(embeddings, labels, ref_emb, ref_labels, normalize)
        x = torch.nn.functional.normalize(embeddings, p=2, dim=1) if normalize else embeddings
        # return_info is False: the loss alone (the declared return type also allows the pair)
        return cast(torch.Tensor, fastmine.batch_all_triplet_loss(x, labels.to(x.device), **ref_kw, **opts))


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
        if (
            not isinstance(self.reducer, _reducers.MultipleReducers)
            or reducers is None
            or set(reducers) != {"pos_loss", "neg_loss"}
        ):
            raise ValueError(
                "reducer: ContrastiveLoss supports AvgNonZeroReducer() or "
                f"SumReducer(), got {type(self.reducer).__name__}"
            )
        kinds = {_single_reducer(r, self._REDUCERS, "ContrastiveLoss") for r in reducers.values()}
        if len(kinds) != 1:
            raise ValueError("reducer: the positive and negative parts must use the same reducer")
        pos_margin, neg_margin = float(self.pos_margin), float(self.neg_margin)
        if metric == "cosine":  # PML's margins are similarities s = 1 - d
            pos_margin, neg_margin = 1.0 - pos_margin, 1.0 - neg_margin
        return dict(
            pos_margin=pos_margin,
            neg_margin=neg_margin,
            power=1,
            metric=metric,
            reduction=kinds.pop(),
            normalize=normalize,
        )

    def forward(self, embeddings, labels=None, indices_tuple=None, ref_emb=None, ref_labels=None) -> torch.Tensor:
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


# ---- miners ---------------------------------------------------------------------------------

#: Anchor rows of the distance matrix held at once for TripletMarginMiner's statistics (PML
#: means over every triplet; a panel keeps that O(rows x M) in memory, never B x M x M).
_STATS_PANEL_ROWS = 1024


class _MinerInputs(NamedTuple):
    x: torch.Tensor  # the anchors, L2-normalised when the distance would
    labels: torch.Tensor
    ref_kw: dict  # fastmine's reference-set keywords ({} for the batch itself)
    exclude_self: bool  # PML drops the diagonal (get_matches_and_diffs)


def _miner_inputs(miner, embeddings, labels, ref_emb, ref_labels) -> _MinerInputs:
    """fastmine's inputs for what PML's BaseMiner.forward hands ``mine`` (there ref_emb is
    never None: set_ref_emb has put the batch itself, the same objects, in its place)."""
    _require_labels(labels, ref_emb, ref_labels, "miners")
    _, normalize = _metric(miner.distance)
    _distance_stats(miner.distance, embeddings, ref_emb)
    x = torch.nn.functional.normalize(embeddings, p=2, dim=1) if normalize else embeddings
    if ref_emb is embeddings and ref_labels is labels:
        return _MinerInputs(x, labels, {}, True)
    ref = torch.nn.functional.normalize(ref_emb, p=2, dim=1) if normalize else ref_emb
    kw = dict(ref_embeddings=ref, ref_labels=ref_labels)
    if ref_labels is labels:  # PML excludes the diagonal on object identity alone
        kw["self_offset"] = 0
    return _MinerInputs(x, labels, kw, ref_labels is labels)


def _distance_stats(distance, embeddings, ref_emb) -> None:
    """The statistics PML's distance object records when the miner calls it (the norms
    before and after normalisation): O(B D), and only when asked for."""
    distance.reset_stats()
    if distance.collect_stats:
        distance.set_default_stats(
            embeddings, ref_emb, distance.maybe_normalize(embeddings), distance.maybe_normalize(ref_emb)
        )


def _stats_dtype(t: torch.Tensor) -> torch.Tensor:
    # torch.cdist has no half kernel on the CPU; statistics are Python floats anyway
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _pml_pair_values(distance, xa: torch.Tensor, rb: torch.Tensor) -> torch.Tensor:
    """PML's matrix entries distance(xa, rb)[i, i] for rows paired one to one, in PML's
    terms (a similarity for CosineSimilarity), from the vectors: O(pairs x D)."""
    xa, rb = distance.maybe_normalize(_stats_dtype(xa)), distance.maybe_normalize(_stats_dtype(rb))
    if distance.is_inverted:  # CosineSimilarity (power 1, checked by _metric)
        return (xa * rb).sum(1)
    d = torch.linalg.vector_norm(xa - rb, dim=1)
    return d if distance.power == 1 else d**distance.power


def _pml_matrix_panel(distance, xa: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Rows of PML's distance matrix for the (already normalised) anchors xa."""
    if distance.is_inverted:
        return xa @ ref.T
    d = torch.cdist(xa, ref, p=2)
    return d if distance.power == 1 else d**distance.power


def _all_triplet_means(
    distance, embeddings, labels, ref_emb, ref_labels, exclude_self: bool
) -> Tuple[float, float, float]:
    """PML TripletMarginMiner's statistics, the means over *every* valid triplet (a, p, n)
    of d(a, p), d(a, n) and the margin, without the triplets: anchor a weighs each of its
    positive distances by its number of negatives and vice versa. NaN when there is no
    triplet (PML's mean of nothing)."""
    x = distance.maybe_normalize(_stats_dtype(embeddings))
    ref = distance.maybe_normalize(_stats_dtype(ref_emb))
    sum_ap = sum_an = count = torch.zeros((), dtype=torch.float64, device=x.device)
    cols = torch.arange(ref.shape[0], device=x.device)
    for start in range(0, x.shape[0], _STATS_PANEL_ROWS):
        rows = torch.arange(start, min(start + _STATS_PANEL_ROWS, x.shape[0]), device=x.device)
        mat = _pml_matrix_panel(distance, x[rows], ref).double()
        same = labels[rows][:, None] == ref_labels[None, :]
        neg = ~same
        pos = same & (cols[None, :] != rows[:, None]) if exclude_self else same
        n_pos, n_neg = pos.sum(1).double(), neg.sum(1).double()
        zero = torch.zeros_like(mat)  # where(), not a product: 0 * inf would be NaN
        sum_ap = sum_ap + (torch.where(pos, mat, zero).sum(1) * n_neg).sum()
        sum_an = sum_an + (torch.where(neg, mat, zero).sum(1) * n_pos).sum()
        count = count + (n_pos * n_neg).sum()
    mean_ap, mean_an = float(sum_ap / count), float(sum_an / count)  # 0/0: NaN, as PML
    return mean_ap, mean_an, distance.margin(mean_an, mean_ap)


class BatchHardMiner(_miners.BatchHardMiner):
    """PML's ``BatchHardMiner`` computed by :func:`fastmine.mine_batch_hard`. Same arguments
    and defaults as PML's (``distance``, ``collect_stats``).

    For every anchor with a positive and a negative: its farthest positive and its nearest
    negative. Returns ``(a, p, n)``, anchors ascending, as PML's (PML's ``BatchHardMiner``
    returns triplets, not ``BatchEasyHardMiner``'s pairs).

    Example:
        >>> from fastmine.contrib.pml import BatchHardMiner
        >>> from pytorch_metric_learning.losses import TripletMarginLoss
        >>> miner, loss_fn = BatchHardMiner(), TripletMarginLoss(margin=0.2)
        >>> loss = loss_fn(embeddings, labels, miner(embeddings, labels))
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._fastmine_options()  # fail at construction on an unsupported configuration

    def _fastmine_options(self) -> str:
        for name in ("allowed_pos_range", "allowed_neg_range"):
            if getattr(self, name) is not None:
                raise ValueError(f"{name} is not supported by fastmine.contrib.pml.BatchHardMiner")
        # settable attributes of PML's BatchEasyHardMiner: anything but hard/hard is another miner
        if self.pos_strategy != self.HARD or self.neg_strategy != self.HARD:
            raise ValueError(
                "pos_strategy and neg_strategy must both be 'hard' in "
                "fastmine.contrib.pml.BatchHardMiner, got "
                f"{self.pos_strategy!r}, {self.neg_strategy!r}"
            )
        return _metric(self.distance)[0]

    def mine(self, embeddings, labels, ref_emb, ref_labels):
        metric = self._fastmine_options()
        inp = _miner_inputs(self, embeddings, labels, ref_emb, ref_labels)
        a, p, n = fastmine.mine_batch_hard(inp.x, inp.labels, metric=metric, **inp.ref_kw)
        if self.collect_stats:  # PML's own set_stats, on PML's values of the mined pairs
            self.set_stats(
                _pml_pair_values(self.distance, embeddings[a], ref_emb[p]),
                _pml_pair_values(self.distance, embeddings[a], ref_emb[n]),
            )
        return a, p, n


class TripletMarginMiner(_miners.TripletMarginMiner):
    """PML's ``TripletMarginMiner`` computed by :func:`fastmine.mine_triplets`. Same
    arguments and defaults as PML's.

    Every triplet whose margin t = d(a, n) - d(a, p) passes ``type_of_triplets``
    (``"all"``: t <= margin, ``"hard"``: also t <= 0, ``"semihard"``: also t > 0,
    ``"easy"``: t > margin), in PML's row-major (a, p, n) order. Another
    ``type_of_triplets`` raises ``ValueError`` (PML would mine ``"all"``), so does a
    non-finite distance (PML would drop those triplets).

    Example:
        >>> from fastmine.contrib.pml import TripletMarginMiner
        >>> miner = TripletMarginMiner(margin=0.2, type_of_triplets="semihard")
        >>> a, p, n = miner(embeddings, labels)
    """

    def __init__(self, margin: float = 0.2, type_of_triplets: str = "all", **kwargs) -> None:
        super().__init__(margin=margin, type_of_triplets=type_of_triplets, **kwargs)
        self._fastmine_options()

    def _fastmine_options(self) -> dict:
        # PML treats any other string as "all"; a typo should not mine silently
        check.one_of(self.type_of_triplets, list(TRIPLET_TYPES), "type_of_triplets")
        margin = check.finite_number(float(self.margin), "margin")
        return dict(margin=margin, type=self.type_of_triplets, metric=_metric(self.distance)[0])

    def mine(self, embeddings, labels, ref_emb, ref_labels):
        opts = self._fastmine_options()
        inp = _miner_inputs(self, embeddings, labels, ref_emb, ref_labels)
        a, p, n = fastmine.mine_triplets(inp.x, inp.labels, **opts, **inp.ref_kw)
        if self.collect_stats:
            self.pos_pair_dist, self.neg_pair_dist, self.avg_triplet_margin = _all_triplet_means(
                self.distance, embeddings, labels, ref_emb, ref_labels, inp.exclude_self
            )
        return a, p, n


class SemiHardMiner(_miners.BaseMiner):
    """FaceNet / TensorFlow Addons semi-hard mining as a PML miner, computed by
    :func:`fastmine.mine_semi_hard` (not a PML class; not PML's
    ``TripletMarginMiner(type_of_triplets="semihard")``).

    PML's ``"semihard"`` keeps every triplet with 0 < d(a, n) - d(a, p) <= margin. Here each
    positive pair (a, p) whose anchor has a negative gets exactly one negative: the nearest
    one farther than p (with ``CosineSimilarity``: the most similar one less similar than
    p), else the farthest. No margin enters the choice. Returns ``(a, p, n)``, pairs in
    row-major (a, p) order.

    Args:
        distance: ``LpDistance(p=2, power=1 or 2)`` (default ``LpDistance()``, PML's miner
            default: euclidean on L2-normalised embeddings) or ``CosineSimilarity()``.
        collect_stats: PML's flag; records ``pos_pair_dist``, ``neg_pair_dist`` and
            ``avg_triplet_margin``, the means over the mined triplets.

    Example:
        >>> from fastmine.contrib.pml import SemiHardMiner
        >>> from pytorch_metric_learning.losses import TripletMarginLoss
        >>> miner, loss_fn = SemiHardMiner(), TripletMarginLoss(margin=0.2)
        >>> loss = loss_fn(embeddings, labels, miner(embeddings, labels))
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_to_recordable_attributes(
            list_of_names=["avg_triplet_margin", "pos_pair_dist", "neg_pair_dist"], is_stat=True
        )
        self._fastmine_options()

    def _fastmine_options(self) -> str:
        return _metric(self.distance)[0]

    def mine(self, embeddings, labels, ref_emb, ref_labels):
        metric = self._fastmine_options()
        inp = _miner_inputs(self, embeddings, labels, ref_emb, ref_labels)
        a, p, n = fastmine.mine_semi_hard(inp.x, inp.labels, metric=metric, **inp.ref_kw)
        if self.collect_stats:
            ap = _pml_pair_values(self.distance, embeddings[a], ref_emb[p])
            an = _pml_pair_values(self.distance, embeddings[a], ref_emb[n])
            self.pos_pair_dist = torch.mean(ap).item()
            self.neg_pair_dist = torch.mean(an).item()
            self.avg_triplet_margin = torch.mean(self.distance.margin(an, ap)).item()
        return a, p, n
