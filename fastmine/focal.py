"""The focal-loss family: sigmoid (RetinaNet), softmax (multi-class) and FL*.

Each is one fused kernel per direction. Sigmoid focal and FL* (elementwise): the forward
computes the loss (or its sum) and keeps nothing; the backward recomputes the terms and
writes upstream * d loss / d logits in one pass. Softmax focal: the forward's pass over each
row also gives d loss / d logits, which the backward scales. Formulas: SPEC.md "Focal loss" (docs/semantics.md), csrc/common/focal.h.
"""
from __future__ import annotations

from typing import Union

import torch

from . import _validate as check
from ._ops import ops, require_kernel

__all__ = ["sigmoid_focal_loss", "softmax_focal_loss", "focal_star_loss"]

FOCAL_REDUCTIONS = ("none", "mean", "sum")
_FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _logits(t, name: str = "logits") -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float64, float16 or bfloat16, got {t.dtype}")
    if t.device.type not in ("cpu", "cuda", "meta"):
        raise ValueError(f"{name} is on {t.device}; fastmine supports cpu and cuda")
    if t.device.type == "cuda" and not check.CUDA_AVAILABLE:
        raise RuntimeError(f"{name} is on CUDA but fastmine's CUDA module is not built/loaded")
    return t


def _same_shape_targets(targets, logits: torch.Tensor, name: str, *, allow_int: bool) -> None:
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(targets).__name__}")
    if targets.dtype.is_complex or not (targets.dtype.is_floating_point or allow_int):
        kinds = "a float, integer or bool" if allow_int else "a floating-point"
        raise TypeError(f"{name} must have {kinds} dtype, got {targets.dtype}")
    if targets.shape != logits.shape:
        raise ValueError(f"{name} must have the shape of logits {tuple(logits.shape)}, "
                         f"got {tuple(targets.shape)} (nothing is broadcast)")
    if targets.requires_grad:
        raise ValueError(f"{name} requires grad, but fastmine computes no gradient with respect "
                         f"to {name}: pass {name}.detach()")
    check.same_device([("logits", logits), (name, targets)])


def sigmoid_alpha(value, name: str = "alpha") -> float:
    """sigmoid_focal_loss's alpha: in [0, 1], or negative to disable the weighting."""
    value = check.finite_number(value, name)
    if value > 1:
        raise ValueError(f"{name} must be in [0, 1] (or negative to disable it), got {value}")
    return value


def focal_gamma(value, name: str = "gamma") -> float:
    """The focusing exponent of the sigmoid and softmax focal losses: >= 0."""
    value = check.finite_number(value, name)
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def star_gamma(value, name: str = "gamma") -> float:
    """FL*'s gamma: > 0 (the loss divides by it)."""
    value = check.finite_number(value, name)
    if value <= 0:
        raise ValueError(f"{name} must be > 0 (the loss divides by it), got {value}")
    return value


def _finish(loss: torch.Tensor, reduction: str, count: int) -> torch.Tensor:
    """The kernel returns the per-element loss ("none") or its sum; "mean" divides here."""
    if reduction == "mean":
        return loss / count if count else loss * float("nan")  # an empty mean is NaN, as torch's
    return loss


def sigmoid_focal_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    alpha: float = 0.25,
    gamma: float = 2.0,
    reduction: str = "none",
) -> torch.Tensor:
    """Sigmoid focal loss (Lin et al., RetinaNet): the numbers of
    ``torchvision.ops.sigmoid_focal_loss``, computed stably from the logits.

    With p = sigmoid(x), p_t = p t + (1 - p)(1 - t) and
    alpha_t = alpha t + (1 - alpha)(1 - t): loss = -alpha_t (1 - p_t)^gamma log(p_t), i.e.
    alpha_t (1 - p_t)^gamma BCE-with-logits(x, t). Finite at logits of +-1000 (every term comes
    from exp(-|x|)), and so is its gradient, also for 0 < gamma < 1 where the plain formula's
    autograd gives NaN.

    Args:
        logits: float tensor of any shape.
        targets: float tensor of the same shape, values in [0, 1] (soft targets allowed).
            No gradient flows to it (an error if it requires grad).
        alpha: weight of the positive class in [0, 1]; a negative value disables the
            weighting (alpha_t = 1), as in torchvision. Default 0.25.
        gamma: focusing exponent >= 0 (default 2; 0 gives alpha-weighted BCE).
        reduction: ``"none"`` (default, torchvision's: the loss of every element),
            ``"mean"`` (over all elements; NaN for an empty input, as torch.mean) or ``"sum"``.

    Returns:
        The loss: float32 for float16/bfloat16 logits, otherwise the logits' dtype.

    Example:
        >>> logits = torch.randn(4, 80, requires_grad=True)
        >>> targets = (torch.rand(4, 80) > 0.9).float()
        >>> fastmine.sigmoid_focal_loss(logits, targets, reduction="mean").backward()
    """
    _logits(logits)
    _same_shape_targets(targets, logits, "targets", allow_int=False)
    alpha = sigmoid_alpha(alpha)
    gamma = focal_gamma(gamma)
    check.reduction(reduction, FOCAL_REDUCTIONS)
    require_kernel("sigmoid_focal", "sigmoid_focal_loss", logits.device)
    x = check.compute_dtype(logits).contiguous()
    t = targets.to(x.dtype).contiguous()
    loss = ops.sigmoid_focal(x, t, alpha, gamma, reduction != "none")
    return _finish(loss, reduction, logits.numel())


def focal_star_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    gamma: float = 2.0,
    beta: float = 0.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """FL* (Lin et al., appendix A; seed 002 section 3.1): with y in {-1, +1}, x_t = y x and
    p*_t = sigmoid(gamma x_t + beta), loss = -log(p*_t) / gamma, computed as
    softplus(-(gamma x_t + beta)) / gamma (finite at any finite logit).

    Args:
        logits: float tensor of any shape.
        targets: same shape; float, integer or bool. Entries > 0 are y = +1, entries <= 0
            are y = -1, so both {-1, +1} and {0, 1} labels work (a NaN target gives NaN).
        gamma: > 0 (default 2). gamma = 1, beta = 0 is BCE-with-logits.
        beta: shift (default 0).
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.

    Example:
        >>> logits = torch.randn(1000, requires_grad=True)
        >>> y = torch.randint(0, 2, (1000,)) * 2 - 1            # {-1, +1}
        >>> fastmine.focal_star_loss(logits, y, gamma=2.0, beta=1.0).backward()
    """
    _logits(logits)
    _same_shape_targets(targets, logits, "targets", allow_int=True)
    gamma = star_gamma(gamma)
    beta = check.finite_number(beta, "beta")
    check.reduction(reduction, FOCAL_REDUCTIONS)
    require_kernel("focal_star", "focal_star_loss", logits.device)
    x = check.compute_dtype(logits).contiguous()
    t = targets.to(x.dtype).contiguous()
    loss = ops.focal_star(x, t, gamma, beta, reduction != "none")
    return _finish(loss, reduction, logits.numel())


def softmax_focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    alpha: Union[None, float, torch.Tensor] = None,
    gamma: float = 2.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Multi-class focal loss: loss = -alpha_y (1 - p_y)^gamma log p_y with p = softmax(logits).

    ``gamma=0`` and ``alpha=None`` give ``F.cross_entropy`` exactly (as a formula).

    Args:
        logits: (N, C), or (N, C, d1, d2, ...) with the class dimension second as in
            F.cross_entropy (that layout is moved to (N*d1*..., C) first: a copy).
        target: int64 class indices in [0, C), shape (N,) or (N, d1, ...). Out of range is a
            ValueError (on CUDA this check costs a device synchronisation; under
            torch.compile it is skipped there, and an out-of-range row gives NaN).
        alpha: None (no weighting), a float (every class), or a (C,) tensor of class
            weights (no gradient flows to it).
        gamma: focusing exponent >= 0 (default 2).
        reduction: ``"mean"`` (default; over samples: with class weights this is NOT
            F.cross_entropy's weighted mean, which divides by the sum of the weights; use
            "sum" to compare), ``"sum"`` or ``"none"`` (shape (N,) or (N, d1, ...)).
            An empty batch gives NaN for "mean", as F.cross_entropy.

    Example:
        >>> logits = torch.randn(8, 5, requires_grad=True)
        >>> target = torch.randint(0, 5, (8,))
        >>> fastmine.softmax_focal_loss(logits, target, alpha=torch.ones(5)).backward()
    """
    _logits(logits)
    if logits.dim() < 2:
        raise ValueError(f"logits must be (N, C) or (N, C, d1, ...), got shape {tuple(logits.shape)}")
    c = logits.shape[1]
    if c == 0:
        raise ValueError("logits has C = 0 classes")
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target must be a torch.Tensor of class indices, got {type(target).__name__}")
    if target.dtype.is_floating_point or target.dtype.is_complex or target.dtype == torch.bool:
        raise TypeError(f"target must hold integer class indices, got dtype {target.dtype}")
    expected = (logits.shape[0],) + tuple(logits.shape[2:])
    if tuple(target.shape) != expected:
        raise ValueError(f"target must have shape {expected} to match logits {tuple(logits.shape)}, "
                         f"got {tuple(target.shape)}")
    check.same_device([("logits", logits), ("target", target)])
    gamma = focal_gamma(gamma)
    check.reduction(reduction, FOCAL_REDUCTIONS)
    require_kernel("softmax_focal", "softmax_focal_loss", logits.device)
    x = check.compute_dtype(logits)
    if x.dim() > 2:
        x = x.movedim(1, -1)
    x = x.reshape(-1, c).contiguous()
    y = target.reshape(-1).to(torch.int64).contiguous()
    a = _class_weights(alpha, c, x)
    if x.device.type == "cuda" and not torch.compiler.is_compiling() and y.numel():
        if bool(((y < 0) | (y >= c)).any()):  # the CPU kernel checks this itself
            bad = y[(y < 0) | (y >= c)][0].item()
            raise ValueError(f"target must hold class indices in [0, {c}), got {bad}")
    with_grad = torch.is_grad_enabled() and logits.requires_grad
    loss, _ = ops.softmax_focal(x, y, a, gamma, with_grad)
    if reduction == "none":
        return loss.reshape(expected)
    return _finish(loss.sum(), reduction, y.numel())


def softmax_alpha(alpha, name: str = "alpha") -> Union[None, float, torch.Tensor]:
    """softmax_focal_loss's alpha without the class count: None, a finite float, or a 1-D
    floating-point tensor that does not require grad."""
    if alpha is None:
        return None
    if isinstance(alpha, torch.Tensor):
        if alpha.dim() != 1:
            raise ValueError(f"{name} must be a float or a (C,) tensor of class weights, got shape "
                             f"{tuple(alpha.shape)}")
        if not alpha.dtype.is_floating_point:
            raise TypeError(f"{name} must be a floating-point tensor, got {alpha.dtype}")
        if alpha.requires_grad:
            raise ValueError(f"{name} requires grad, but fastmine computes no gradient with respect "
                             f"to {name}: pass {name}.detach()")
        return alpha
    return check.finite_number(alpha, name)


def _class_weights(alpha, c: int, x: torch.Tensor) -> torch.Tensor:
    alpha = softmax_alpha(alpha)
    if alpha is None:
        return torch.ones(c, dtype=x.dtype, device=x.device)
    if isinstance(alpha, torch.Tensor):
        if alpha.shape[0] != c:
            raise ValueError(f"alpha must be a float or a ({c},) tensor of class weights, got shape "
                             f"{tuple(alpha.shape)}")
        check.same_device([("logits", x), ("alpha", alpha)])
        return alpha.to(x.dtype).contiguous()
    return torch.full((c,), alpha, dtype=x.dtype, device=x.device)
