"""``torch.nn.Module`` wrappers of the fastmine losses.

Each module holds the options of its functional op (keyword-only, validated when the module
is built, so a typo fails at construction rather than at the first batch) and calls the op
in ``forward``. They carry no parameters; their options travel in ``state_dict`` (as extra
state) and through pickling.

    >>> import fastmine.nn
    >>> criterion = fastmine.nn.BatchHardTripletLoss(margin=0.3)
    >>> loss = criterion(embeddings, labels)

Adding a module for a new loss takes a few lines: subclass :class:`MinedLoss`, set
``functional`` and ``reductions``, and give ``__init__`` the op's keyword options (the
defaults must equal the function's; a test checks it).
"""
from __future__ import annotations

from typing import Any, Callable, ClassVar, Dict, Optional, Sequence, Tuple

import torch

from . import _validate as check
from . import functional as F

__all__ = ["MinedLoss", "BatchHardTripletLoss", "BatchAllTripletLoss", "ContrastiveLoss"]


def _bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def _positive(value: Any, name: str) -> float:
    value = check.finite_number(value, name)
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")
    return value


def _metric(value: Any, name: str) -> str:
    check.metric(value)
    return value


# One check per option name, shared by every module (reduction is checked per class).
_OPTION_CHECKS: Dict[str, Callable[[Any, str], Any]] = {
    "margin": check.finite_number,
    "pos_margin": check.finite_number,
    "neg_margin": check.finite_number,
    "power": _positive,
    "metric": _metric,
    "soft": _bool,
}


class MinedLoss(torch.nn.Module):
    """Base of the fastmine loss modules: stores validated options, calls ``functional``.

    Subclasses set ``functional`` (the fastmine function), ``reductions`` (the names it
    accepts) and ``supports_info`` (whether it takes ``return_info``).
    """

    functional: ClassVar[Callable[..., Any]]
    reductions: ClassVar[Sequence[str]]
    supports_info: ClassVar[bool] = False

    def __init__(self, **options: Any) -> None:
        super().__init__()
        self._option_names: Tuple[str, ...] = tuple(options)
        for name, value in self._validate(options).items():
            setattr(self, name, value)

    def _validate(self, options: Dict[str, Any]) -> Dict[str, Any]:
        out = {}
        for name, value in options.items():
            if name == "reduction":
                out[name] = check.reduction(value, self.reductions)
            elif name in _OPTION_CHECKS:
                out[name] = _OPTION_CHECKS[name](value, name)
            else:
                raise TypeError(f"{type(self).__name__} got an unknown option {name!r}")
        return out

    def options(self) -> Dict[str, Any]:
        """The keyword options passed to the functional op, e.g. ``{"margin": 0.3, ...}``."""
        return {name: getattr(self, name) for name in self._option_names}

    def forward(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        ref_embeddings: Optional[torch.Tensor] = None,
        ref_labels: Optional[torch.Tensor] = None,
        self_offset: Optional[int] = None,
        **kwargs: Any,
    ) -> Any:
        """The loss of ``embeddings`` (B, D) with ``labels`` (B,), optionally mined against a
        reference set (see the functional op). Extra keywords (``return_info``) pass through."""
        if kwargs and not self.supports_info:
            raise TypeError(f"{type(self).__name__}.forward got unexpected arguments {sorted(kwargs)}")
        return type(self).functional(
            embeddings, labels, ref_embeddings=ref_embeddings, ref_labels=ref_labels,
            self_offset=self_offset, **self.options(), **kwargs)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.options().items())

    # The options are the module's whole state: save them in state_dict so that
    # load_state_dict restores a configured loss (validated again on the way in).
    def get_extra_state(self) -> Dict[str, Any]:
        return self.options()

    def set_extra_state(self, state: Dict[str, Any]) -> None:
        if set(state) != set(self._option_names):
            raise ValueError(f"{type(self).__name__}: state has options {sorted(state)}, "
                             f"expected {sorted(self._option_names)}")
        for name, value in self._validate(dict(state)).items():
            setattr(self, name, value)


class BatchHardTripletLoss(MinedLoss):
    """Module form of :func:`fastmine.batch_hard_triplet_loss`.

    Example:
        >>> criterion = fastmine.nn.BatchHardTripletLoss(margin=0.3, metric="euclidean")
        >>> emb = torch.randn(8, 16, requires_grad=True)
        >>> criterion(emb, torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])).backward()
    """

    functional = staticmethod(F.batch_hard_triplet_loss)
    reductions = F.BATCH_HARD_REDUCTIONS
    supports_info = True

    def __init__(self, *, margin: float = 0.3, metric: str = "euclidean", soft: bool = False,
                 reduction: str = "mean") -> None:
        super().__init__(margin=margin, metric=metric, soft=soft, reduction=reduction)


class BatchAllTripletLoss(MinedLoss):
    """Module form of :func:`fastmine.batch_all_triplet_loss`.

    Example:
        >>> criterion = fastmine.nn.BatchAllTripletLoss(margin=0.2)
        >>> emb = torch.randn(8, 16, requires_grad=True)
        >>> criterion(emb, torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])).backward()
    """

    functional = staticmethod(F.batch_all_triplet_loss)
    reductions = F.BATCH_ALL_REDUCTIONS
    supports_info = True

    def __init__(self, *, margin: float = 0.3, metric: str = "euclidean", soft: bool = False,
                 reduction: str = "mean_positive") -> None:
        super().__init__(margin=margin, metric=metric, soft=soft, reduction=reduction)


class ContrastiveLoss(MinedLoss):
    """Module form of :func:`fastmine.contrastive_loss`.

    Example:
        >>> criterion = fastmine.nn.ContrastiveLoss(pos_margin=0.0, neg_margin=1.0)
        >>> emb = torch.randn(8, 16, requires_grad=True)
        >>> criterion(emb, torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])).backward()
    """

    functional = staticmethod(F.contrastive_loss)
    reductions = F.CONTRASTIVE_REDUCTIONS

    def __init__(self, *, pos_margin: float = 0.0, neg_margin: float = 1.0, power: float = 2,
                 metric: str = "euclidean", reduction: str = "mean") -> None:
        super().__init__(pos_margin=pos_margin, neg_margin=neg_margin, power=power,
                         metric=metric, reduction=reduction)
