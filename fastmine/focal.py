"""The focal-loss family: sigmoid (RetinaNet), softmax (multi-class) and FL*.

Each is one fused kernel per direction. Sigmoid focal and FL* (elementwise): the forward
computes the loss (or its sum) and keeps nothing; the backward recomputes the terms and
writes upstream * d loss / d logits in one pass. Softmax focal: the forward's pass over each
row also gives d loss / d logits, which the backward scales. Formulas: docs/semantics.md, csrc/common/focal.h.
"""

from __future__ import annotations

from typing import Union

import torch

from . import _validate as check
from ._ops import ops
from ._sum import fixed_sum

# The option rules, under the names the nn modules' option_checks use.
from ._validate import focal_gamma, sigmoid_alpha, softmax_alpha, star_gamma  # noqa: F401

__all__ = ["sigmoid_focal_loss", "softmax_focal_loss", "focal_star_loss"]

FOCAL_REDUCTIONS = ("none", "mean", "sum")


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
    check.logits(logits)
    check.same_shape_targets(targets, logits, "targets", allow_int=False)
    alpha = check.sigmoid_alpha(alpha)
    gamma = check.focal_gamma(gamma)
    check.reduction(reduction, FOCAL_REDUCTIONS)
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
    """FL* (Lin et al., "Focal Loss for Dense Object Detection", appendix A): with y in {-1, +1}, x_t = y x and
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
    check.logits(logits)
    check.same_shape_targets(targets, logits, "targets", allow_int=True)
    gamma = check.star_gamma(gamma)
    beta = check.finite_number(beta, "beta")
    check.reduction(reduction, FOCAL_REDUCTIONS)
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
            torch.compile the op checks it itself: a ValueError on the CPU, a RuntimeError
            on CUDA).
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
    check.logits(logits)
    c = check.class_logits(logits)
    expected = check.class_targets(target, logits)
    check.same_device([("logits", logits), ("target", target)])
    gamma = check.focal_gamma(gamma)
    check.reduction(reduction, FOCAL_REDUCTIONS)
    x = check.compute_dtype(logits)
    if x.dim() > 2:
        x = x.movedim(1, -1)
    x = x.reshape(-1, c).contiguous()
    y = target.reshape(-1).to(torch.int64).contiguous()
    a = _class_weights(alpha, c, x)
    check.class_indices(y, c, "target must hold class indices in")
    with_grad = torch.is_grad_enabled() and logits.requires_grad
    loss, _ = ops.softmax_focal(x, y, a, gamma, with_grad)
    if reduction == "none":
        return loss.reshape(expected)
    return _finish(fixed_sum(loss), reduction, y.numel())


def _class_weights(alpha, c: int, x: torch.Tensor) -> torch.Tensor:
    alpha = check.softmax_alpha(alpha)
    if alpha is None:
        return torch.ones(c, dtype=x.dtype, device=x.device)
    if isinstance(alpha, torch.Tensor):
        check.class_weights_shape(alpha, c)
        check.same_device([("logits", x), ("alpha", alpha)])
        return alpha.to(x.dtype).contiguous()
    return torch.full((c,), alpha, dtype=x.dtype, device=x.device)
