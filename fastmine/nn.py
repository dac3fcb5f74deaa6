"""``torch.nn.Module`` wrappers of the fastmine losses.

Each module holds the options of its functional op (keyword-only, validated when the module
is built, so a typo fails at construction rather than at the first batch) and calls the op
in ``forward``. The options travel in ``state_dict`` (as extra state) and through pickling.
Only :class:`CentroidTripletLoss` has a parameter (its class centroids); a tensor ``alpha`` of
:class:`SoftmaxFocalLoss` is a buffer (it follows ``.to(device)``).

    >>> import fastmine.nn
    >>> criterion = fastmine.nn.BatchHardTripletLoss(margin=0.3)
    >>> loss = criterion(embeddings, labels)

Adding a module for a new loss takes a few lines: subclass :class:`MinedLoss` (losses of
``(embeddings, labels)`` with an optional reference set) or :class:`FocalLoss` (losses of
``(logits, targets)``), set ``functional`` and ``reductions``, and give ``__init__`` the op's
keyword options (the defaults must equal the function's; a test checks it).
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Dict, Optional, Sequence, Tuple, Union

import torch

from . import _validate as check
from . import focal as _focal
from . import functional as F
from .centroid import CENTROID_REDUCTIONS, centroid_triplet_loss, onehot_centroids
from .semi_hard import SEMI_HARD_REDUCTIONS, semi_hard_triplet_loss

__all__ = [
    "OptionsLoss",
    "MinedLoss",
    "FocalLoss",
    "BatchHardTripletLoss",
    "BatchAllTripletLoss",
    "SemiHardTripletLoss",
    "ContrastiveLoss",
    "CentroidTripletLoss",
    "SigmoidFocalLoss",
    "SoftmaxFocalLoss",
    "FocalStarLoss",
]


# One check per option name, shared by every module (reduction is checked per class; a
# class whose option of the same name means something else overrides it in option_checks).
_OPTION_CHECKS: Dict[str, Callable[[Any, str], Any]] = {
    "margin": check.finite_number,
    "pos_margin": check.finite_number,
    "neg_margin": check.finite_number,
    "power": check.positive_number,
    "metric": check.metric_name,
    "soft": check.boolean,
    "gamma": check.focal_gamma,
    "beta": check.finite_number,
}


class OptionsLoss(torch.nn.Module):
    """Base of the fastmine loss modules: validated keyword options of a functional op,
    kept in ``state_dict`` and shown by ``repr``.

    Subclasses set ``functional`` (the fastmine function), ``reductions`` (the names it
    accepts) and, for options whose check differs from the shared one, ``option_checks``,
    and define ``forward`` (or use :class:`MinedLoss` / :class:`FocalLoss`, which do).

    Example (a module over a function ``f(x, y, *, gamma, reduction)``):
        >>> class MyLoss(fastmine.nn.OptionsLoss):
        ...     functional = staticmethod(f)
        ...     reductions = ("mean", "sum")
        ...     def __init__(self, *, gamma: float = 2.0, reduction: str = "mean") -> None:
        ...         super().__init__(gamma=gamma, reduction=reduction)
        ...     def forward(self, x, y):
        ...         return f(x, y, **self.options())
    """

    functional: ClassVar[Callable[..., Any]]
    reductions: ClassVar[Sequence[str]]
    option_checks: ClassVar[Dict[str, Callable[[Any, str], Any]]] = {}

    def __init__(self, **options: Any) -> None:
        super().__init__()
        self._option_names: Tuple[str, ...] = tuple(options)
        for name, value in self._validate(options).items():
            self._set_option(name, value)

    def _set_option(self, name: str, value: Any) -> None:
        setattr(self, name, value)

    def _validate(self, options: Dict[str, Any]) -> Dict[str, Any]:
        out = {}
        for name, value in options.items():
            if name == "reduction":
                out[name] = check.reduction(value, self.reductions)
            elif name in self.option_checks:
                out[name] = self.option_checks[name](value, name)
            elif name in _OPTION_CHECKS:
                out[name] = _OPTION_CHECKS[name](value, name)
            else:
                raise TypeError(f"{type(self).__name__} got an unknown option {name!r}")
        return out

    def options(self) -> Dict[str, Any]:
        """The keyword options passed to the functional op, e.g. ``{"margin": 0.3, ...}``."""
        return {name: getattr(self, name) for name in self._option_names}

    def _state_options(self) -> Tuple[str, ...]:
        """The options saved as extra state: all but those held as buffers or parameters,
        which ``state_dict`` saves by itself."""
        tensors = set(dict(self.named_buffers(recurse=False))) | set(dict(self.named_parameters(recurse=False)))
        return tuple(n for n in self._option_names if n not in tensors)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.options().items())

    # The options are the module's state: save them in state_dict so that load_state_dict
    # restores a configured loss (validated again on the way in).
    def get_extra_state(self) -> Dict[str, Any]:
        return {name: getattr(self, name) for name in self._state_options()}

    def set_extra_state(self, state: Dict[str, Any]) -> None:
        expected = set(self._state_options())
        if set(state) != expected:
            raise ValueError(f"{type(self).__name__}: state has options {sorted(state)}, expected {sorted(expected)}")
        for name, value in self._validate(dict(state)).items():
            self._set_option(name, value)


class MinedLoss(OptionsLoss):
    """Base of the modules over mined losses of ``(embeddings, labels)``, optionally against a
    reference set. ``supports_info`` says whether the op takes ``return_info``.

    Example (how :class:`SemiHardTripletLoss` is written):
        >>> class SemiHard(fastmine.nn.MinedLoss):
        ...     functional = staticmethod(fastmine.semi_hard_triplet_loss)
        ...     reductions = ("mean", "sum", "none")
        ...     supports_info = True
        ...     def __init__(self, *, margin: float = 0.3, metric: str = "euclidean",
        ...                  reduction: str = "mean") -> None:
        ...         super().__init__(margin=margin, metric=metric, reduction=reduction)
    """

    supports_info: ClassVar[bool] = False

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
            embeddings,
            labels,
            ref_embeddings=ref_embeddings,
            ref_labels=ref_labels,
            self_offset=self_offset,
            **self.options(),
            **kwargs,
        )


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

    def __init__(
        self, *, margin: float = 0.3, metric: str = "euclidean", soft: bool = False, reduction: str = "mean"
    ) -> None:
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

    def __init__(
        self, *, margin: float = 0.3, metric: str = "euclidean", soft: bool = False, reduction: str = "mean_positive"
    ) -> None:
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

    def __init__(
        self,
        *,
        pos_margin: float = 0.0,
        neg_margin: float = 1.0,
        power: float = 2,
        metric: str = "euclidean",
        reduction: str = "mean",
    ) -> None:
        super().__init__(pos_margin=pos_margin, neg_margin=neg_margin, power=power, metric=metric, reduction=reduction)


class SemiHardTripletLoss(MinedLoss):
    """Module form of :func:`fastmine.semi_hard_triplet_loss` (FaceNet / TF-Addons).

    Example:
        >>> criterion = fastmine.nn.SemiHardTripletLoss(margin=0.3)
        >>> emb = torch.randn(8, 16, requires_grad=True)
        >>> criterion(emb, torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])).backward()
    """

    functional = staticmethod(semi_hard_triplet_loss)
    reductions = SEMI_HARD_REDUCTIONS
    supports_info = True

    def __init__(self, *, margin: float = 0.3, metric: str = "euclidean", reduction: str = "mean") -> None:
        super().__init__(margin=margin, metric=metric, reduction=reduction)


class CentroidTripletLoss(OptionsLoss):
    """Module form of :func:`fastmine.centroid_triplet_loss` that owns its class centroids:
    a ``(num_classes, dim)`` parameter initialised one-hot (:func:`fastmine.onehot_centroids`,
    ``scale`` times the unit vectors), learned with the model unless ``learnable=False``
    (then a buffer: fixed, but saved and moved with the module).

    The centroids are used in the embeddings' dtype (cast when they differ, e.g. under
    autocast: a (C, D) copy whose gradient still reaches the parameter).

    Example:
        >>> criterion = fastmine.nn.CentroidTripletLoss(10, 64)
        >>> emb = torch.randn(32, 64, requires_grad=True)
        >>> criterion(emb, torch.randint(0, 10, (32,))).backward()
        >>> criterion.centroids.grad.shape
        torch.Size([10, 64])
    """

    functional = staticmethod(centroid_triplet_loss)
    reductions = CENTROID_REDUCTIONS
    centroids: torch.Tensor

    def __init__(
        self, num_classes: int, dim: int, *, scale: float = 1.0, learnable: bool = True, reduction: str = "mean"
    ) -> None:
        super().__init__(reduction=reduction)
        centroids = onehot_centroids(num_classes, dim, scale=scale)
        if check.boolean(learnable, "learnable"):
            self.centroids = torch.nn.Parameter(centroids)
        else:
            self.register_buffer("centroids", centroids)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The bound for ``embeddings`` (B, dim) with ``labels`` (B,) in [0, num_classes)."""
        centroids = self.centroids
        if (
            isinstance(embeddings, torch.Tensor)
            and embeddings.dtype != centroids.dtype
            and embeddings.dtype.is_floating_point
        ):
            centroids = centroids.to(embeddings.dtype)
        return centroid_triplet_loss(embeddings, labels, centroids, **self.options())

    def extra_repr(self) -> str:
        c, d = self.centroids.shape
        learnable = isinstance(self.centroids, torch.nn.Parameter)
        return f"num_classes={c}, dim={d}, learnable={learnable}, " + super().extra_repr()


class FocalLoss(OptionsLoss):
    """Base of the focal-loss modules: ``forward(logits, targets)`` calls ``functional``.

    Example (how :class:`FocalStarLoss` is written; ``star_gamma`` checks gamma > 0):
        >>> class FocalStar(fastmine.nn.FocalLoss):
        ...     functional = staticmethod(fastmine.focal_star_loss)
        ...     reductions = ("none", "mean", "sum")
        ...     option_checks = {"gamma": fastmine.focal.star_gamma}
        ...     def __init__(self, *, gamma: float = 2.0, beta: float = 0.0,
        ...                  reduction: str = "mean") -> None:
        ...         super().__init__(gamma=gamma, beta=beta, reduction=reduction)
    """

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return type(self).functional(logits, targets, **self.options())


class SigmoidFocalLoss(FocalLoss):
    """Module form of :func:`fastmine.sigmoid_focal_loss` (torchvision's numbers; its default
    reduction ``"none"`` too).

    Example:
        >>> criterion = fastmine.nn.SigmoidFocalLoss(alpha=0.25, gamma=2.0, reduction="mean")
        >>> logits = torch.randn(4, 80, requires_grad=True)
        >>> criterion(logits, (torch.rand(4, 80) > 0.9).float()).backward()
    """

    functional = staticmethod(_focal.sigmoid_focal_loss)
    reductions = _focal.FOCAL_REDUCTIONS
    option_checks = {"alpha": check.sigmoid_alpha}

    def __init__(self, *, alpha: float = 0.25, gamma: float = 2.0, reduction: str = "none") -> None:
        super().__init__(alpha=alpha, gamma=gamma, reduction=reduction)


class SoftmaxFocalLoss(FocalLoss):
    """Module form of :func:`fastmine.softmax_focal_loss`. A tensor ``alpha`` (class weights)
    is kept as a buffer, so it moves with ``.to(device)`` and is saved in ``state_dict``.

    Example:
        >>> criterion = fastmine.nn.SoftmaxFocalLoss(gamma=2.0, alpha=torch.ones(5))
        >>> logits = torch.randn(8, 5, requires_grad=True)
        >>> criterion(logits, torch.randint(0, 5, (8,))).backward()
    """

    functional = staticmethod(_focal.softmax_focal_loss)
    reductions = _focal.FOCAL_REDUCTIONS
    option_checks = {"alpha": check.softmax_alpha}

    def __init__(
        self, *, alpha: Union[None, float, torch.Tensor] = None, gamma: float = 2.0, reduction: str = "mean"
    ) -> None:
        super().__init__(alpha=alpha, gamma=gamma, reduction=reduction)

    def _set_option(self, name: str, value: Any) -> None:
        if name == "alpha" and isinstance(value, torch.Tensor):
            self.register_buffer("alpha", value.detach().clone())
        else:
            setattr(self, name, value)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.options().items() if not isinstance(v, torch.Tensor))


class FocalStarLoss(FocalLoss):
    """Module form of :func:`fastmine.focal_star_loss` (FL*).

    Example:
        >>> criterion = fastmine.nn.FocalStarLoss(gamma=2.0, beta=1.0)
        >>> logits = torch.randn(100, requires_grad=True)
        >>> criterion(logits, torch.randint(0, 2, (100,)) * 2 - 1).backward()
    """

    functional = staticmethod(_focal.focal_star_loss)
    reductions = _focal.FOCAL_REDUCTIONS
    option_checks = {"gamma": check.star_gamma}

    def __init__(self, *, gamma: float = 2.0, beta: float = 0.0, reduction: str = "mean") -> None:
        super().__init__(gamma=gamma, beta=beta, reduction=reduction)
