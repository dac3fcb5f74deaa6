"""Drop-in replacements for sentence-transformers' batch triplet losses, computed by fastmine.

    from fastmine.contrib.sentence_transformers import BatchHardTripletLoss   # instead of
    # from sentence_transformers.losses import BatchHardTripletLoss

    loss = BatchHardTripletLoss(model, margin=5)      # same constructor as the original
    trainer = SentenceTransformerTrainer(model=model, train_dataset=ds, loss=loss)

``BatchHardTripletLoss``, ``BatchHardSoftMarginTripletLoss``, ``BatchAllTripletLoss`` and
``BatchSemiHardTripletLoss`` subclass sentence-transformers' own classes: the constructor
(``model``, ``distance_metric``, ``margin``), ``forward``, ``compute_loss_from_embeddings``,
``get_config_dict``, ``citation`` and the model card are theirs; only the loss of a batch of
embeddings is fastmine's (no B x B distance matrix, no B x B masks, no batch-all cube).

``distance_metric`` is fused when it is one of sentence-transformers' own
``BatchHardTripletLossDistanceFunction.euclidean_distance`` (also its ``eucledian_distance``
alias, or a ``functools.partial`` of it with ``squared=True`` or ``False``) or
``.cosine_distance``, or :func:`squared_euclidean_distance` of this module. Any other callable
is computed by the parent class's own code, with a warning the first time each loss object
does so. ``uses_fastmine`` says which applies.

The numbers are sentence-transformers' (to float rounding, loss and gradient) on every batch,
including those its documentation rules out (a label seen once, a single label), except:

* ``BatchAllTripletLoss`` averages over the triplets with a loss > 0; sentence-transformers
  counts those with a loss > 1e-16. The two differ only when some triplet's loss lies in
  (0, 1e-16], i.e. a margin within 1e-16 of d(a, n) - d(a, p): then sentence-transformers
  divides by a smaller count (by 1e-16 when no other triplet is active).
* Distances are computed from the two vectors rather than from ||a||² + ||b||² - 2 a·b, so
  near-duplicate embeddings (whose expanded-form distance is rounding noise) and exact ties
  between candidates may select differently; cosine distances clamp norms at 1e-8
  (sentence-transformers: 1e-12), which only matters for embeddings of norm below 1e-8.

Needs sentence-transformers (a test and benchmark peer of fastmine, not a dependency); its
training extras (``datasets``, ``accelerate``) only for training.
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import Callable, Optional, Tuple, cast

from torch import Tensor

try:
    from sentence_transformers.sentence_transformer import losses as _st_losses
except ImportError:  # releases before the per-model-type layout
    try:
        from sentence_transformers import losses as _st_losses  # type: ignore[attr-defined,no-redef]
    except ImportError as exc:  # pragma: no cover - exercised by a test that hides the package
        raise ImportError(
            "fastmine.contrib.sentence_transformers needs sentence-transformers: `pip install "
            "sentence-transformers` (fastmine itself does not depend on it)"
        ) from exc

import fastmine

DistanceFunction = _st_losses.BatchHardTripletLossDistanceFunction

__all__ = [
    "BatchHardTripletLoss",
    "BatchHardSoftMarginTripletLoss",
    "BatchAllTripletLoss",
    "BatchSemiHardTripletLoss",
    "squared_euclidean_distance",
    "fused_metric",
]


def squared_euclidean_distance(embeddings: Tensor) -> Tensor:
    """sentence-transformers' ``euclidean_distance(embeddings, squared=True)`` under a name:
    a ``distance_metric`` that fastmine fuses, that ``get_config_dict`` reports by name, and
    that sentence-transformers' own classes accept too.

    >>> loss = BatchHardTripletLoss(model, distance_metric=squared_euclidean_distance)
    """
    return DistanceFunction.euclidean_distance(embeddings, squared=True)


def fused_metric(distance_metric: Callable) -> Optional[str]:
    """fastmine's ``metric`` for a sentence-transformers ``distance_metric``, or None when
    fastmine cannot fuse it (an arbitrary callable).

    >>> fused_metric(DistanceFunction.cosine_distance)
    'cosine'
    """
    if distance_metric is DistanceFunction.euclidean_distance:  # eucledian_distance too
        return "euclidean"
    if distance_metric is DistanceFunction.cosine_distance:
        return "cosine"
    if distance_metric is squared_euclidean_distance:
        return "sqeuclidean"
    if (
        isinstance(distance_metric, functools.partial)
        and distance_metric.func is DistanceFunction.euclidean_distance
        and not distance_metric.args
        and set(distance_metric.keywords) <= {"squared"}
    ):
        return "sqeuclidean" if distance_metric.keywords.get("squared") else "euclidean"
    return None


class _Fused:
    """What the four losses share: resolving ``distance_metric`` at each call (it is a
    plain attribute a user may reassign) and warning once per object on a fallback."""

    distance_metric: Callable

    @property
    def uses_fastmine(self) -> bool:
        """Whether this loss computes through fastmine with its current ``distance_metric``."""
        return fused_metric(self.distance_metric) is not None

    def _metric_or_fallback(self) -> Optional[str]:
        metric = fused_metric(self.distance_metric)
        if metric is None and not self.__dict__.get("_fastmine_fallback_warned", False):
            self.__dict__["_fastmine_fallback_warned"] = True
            name = getattr(self.distance_metric, "__name__", repr(self.distance_metric))
            warnings.warn(
                f"{type(self).__name__}: distance_metric {name} is not one fastmine can fuse "
                "(euclidean_distance, cosine_distance, squared_euclidean_distance); computing "
                "with sentence-transformers' own implementation (B x B tensors)",
                stacklevel=4,
            )
        return metric


def _loss(value: object) -> Tensor:
    """A loss function's result without return_info: the loss alone (its declared return
    type also allows the (loss, info) pair)."""
    return cast(Tensor, value)


def _all_same(labels: Tensor) -> bool:
    return bool((labels == labels[0]).all())


def _batch_hard(embeddings: Tensor, labels: Tensor, margin: float, metric: str, soft: bool) -> Tensor:
    """sentence-transformers' batch-hard loss: the mean over *all* B anchors of
    hinge(d+ - d- + margin) (softplus(d+ - d-) when ``soft``), where an anchor without a
    positive has d+ = 0 and, in a single-label batch, d- = d+ (sentence-transformers adds the
    row maximum to the non-negatives, and the anchor itself, at distance 0, is then the
    minimum)."""
    b = embeddings.shape[0]
    total, info = cast(
        Tuple[Tensor, fastmine.BatchHardInfo],
        fastmine.batch_hard_triplet_loss(
            embeddings, labels, margin=margin, metric=metric, soft=soft, reduction="sum", return_info=True
        ),
    )
    if int(info.num_valid) == b:  # the documented case: every label at least twice
        return total / b
    if _all_same(labels):
        # No anchor has a negative: each contributes hinge(margin) (softplus(0)), a constant.
        return total + (math.log(2.0) if soft else max(margin, 0.0))
    # The invalid anchors are those seen once: d+ = 0. Against the whole batch *including*
    # themselves (no exclusion), each one's only positive is itself at distance 0 and its
    # negatives are all the others: fastmine's batch-hard of those rows is then exactly
    # sentence-transformers' term, with its gradient.
    once = ~info.valid
    singles = _loss(
        fastmine.batch_hard_triplet_loss(
            embeddings[once],
            labels[once],
            ref_embeddings=embeddings,
            ref_labels=labels,
            margin=margin,
            metric=metric,
            soft=soft,
            reduction="sum",
        )
    )
    return (total + singles) / b


class BatchHardTripletLoss(_Fused, _st_losses.BatchHardTripletLoss):
    """sentence-transformers' ``BatchHardTripletLoss`` computed by
    :func:`fastmine.batch_hard_triplet_loss`: same constructor and defaults
    (``distance_metric=euclidean_distance``, ``margin=5``), same numbers.

    Example:
        >>> from fastmine.contrib.sentence_transformers import BatchHardTripletLoss
        >>> loss = BatchHardTripletLoss(model, margin=5)
        >>> value = loss.compute_loss_from_embeddings([embeddings], labels)
    """

    def batch_hard_triplet_loss(self, labels: Tensor, embeddings: Tensor) -> Tensor:
        metric = self._metric_or_fallback()
        if metric is None:
            return super().batch_hard_triplet_loss(labels, embeddings)
        return _batch_hard(embeddings, labels.view(-1), float(self.triplet_margin), metric, soft=False)


class BatchHardSoftMarginTripletLoss(_Fused, _st_losses.BatchHardSoftMarginTripletLoss):
    """sentence-transformers' ``BatchHardSoftMarginTripletLoss`` (softplus(d+ - d-), no
    margin) computed by :func:`fastmine.batch_hard_triplet_loss` with ``soft=True``.

    Example:
        >>> from fastmine.contrib.sentence_transformers import BatchHardSoftMarginTripletLoss
        >>> loss = BatchHardSoftMarginTripletLoss(model)
    """

    def batch_hard_triplet_soft_margin_loss(self, labels: Tensor, embeddings: Tensor) -> Tensor:
        metric = self._metric_or_fallback()
        if metric is None:
            return super().batch_hard_triplet_soft_margin_loss(labels, embeddings)
        return _batch_hard(embeddings, labels.view(-1), 0.0, metric, soft=True)


class BatchAllTripletLoss(_Fused, _st_losses.BatchAllTripletLoss):
    """sentence-transformers' ``BatchAllTripletLoss`` (the sum over every valid triplet's
    hinge, divided by the number of active triplets) computed exactly by
    :func:`fastmine.batch_all_triplet_loss` without enumerating a triplet.

    Example:
        >>> from fastmine.contrib.sentence_transformers import BatchAllTripletLoss
        >>> loss = BatchAllTripletLoss(model, margin=5)
    """

    def batch_all_triplet_loss(self, labels: Tensor, embeddings: Tensor) -> Tensor:
        metric = self._metric_or_fallback()
        if metric is None:
            return super().batch_all_triplet_loss(labels, embeddings)
        return _loss(
            fastmine.batch_all_triplet_loss(
                embeddings,
                labels.view(-1),
                margin=float(self.triplet_margin),
                metric=metric,
                reduction="mean_positive",
            )
        )


class BatchSemiHardTripletLoss(_Fused, _st_losses.BatchSemiHardTripletLoss):
    """sentence-transformers' ``BatchSemiHardTripletLoss`` (TensorFlow Addons' rule: per
    positive pair the nearest negative farther than the positive, else the farthest; the mean
    over positive pairs) computed by :func:`fastmine.semi_hard_triplet_loss`.

    Example:
        >>> from fastmine.contrib.sentence_transformers import BatchSemiHardTripletLoss
        >>> loss = BatchSemiHardTripletLoss(model, margin=5)
    """

    def batch_semi_hard_triplet_loss(self, labels: Tensor, embeddings: Tensor) -> Tensor:
        metric = self._metric_or_fallback()
        if metric is None:
            return super().batch_semi_hard_triplet_loss(labels, embeddings)
        labels = labels.view(-1)
        margin = float(self.margin)
        if _all_same(labels):
            # No negative anywhere: sentence-transformers' fallback negative is then the
            # row minimum, the anchor itself at distance 0, so each ordered pair (a, p) costs
            # max(d(a, p) + margin, 0), averaged over the pairs. That is a contrastive loss
            # whose every pair is positive, with pos_margin = -margin (its mean over the
            # unordered pairs equals the mean over the ordered ones).
            return fastmine.contrastive_loss(
                embeddings,
                labels,
                pos_margin=-margin,
                neg_margin=0.0,
                power=1,
                metric=metric,
                reduction="mean",
            )
        # With two labels or more every anchor has a negative, so fastmine's pairs are all of
        # sentence-transformers' positive pairs and the two means agree.
        return _loss(fastmine.semi_hard_triplet_loss(embeddings, labels, margin=margin, metric=metric))
