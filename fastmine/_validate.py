"""Every argument rule of fastmine's Python API, in one place: the functional ops, the
``nn`` modules, cross-batch memory, torch.distributed and the contrib drop-ins all call
these. Each error names the argument.

Everything here reads only shapes, dtypes, devices and Python scalars, so it traces under
torch.compile(fullgraph=True) without graph breaks, except :func:`class_indices`, which
reads values and is skipped while compiling (the C++ contracts of csrc/common/ check the
same rule inside the op). The C++ entry points check their own arguments again: they are
public too (``torch.ops.fastmine.*``).
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence, Tuple, Union

import torch

from ._ops import CUDA_AVAILABLE

METRICS = {"euclidean": 0, "sqeuclidean": 1, "cosine": 2}
FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def embeddings(t, name: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 2:
        raise ValueError(f"{name} must be 2-D (N, D), got shape {tuple(t.shape)}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float64, float16 or bfloat16, got {t.dtype}")
    if t.shape[0] == 0:
        raise ValueError(f"{name} is empty (N = 0): at least one row is needed")
    if t.shape[1] == 0:
        raise ValueError(f"{name} has D = 0 features")
    if t.device.type == "cuda" and not CUDA_AVAILABLE:
        raise RuntimeError(f"{name} is on CUDA but fastmine's CUDA module is not built/loaded")
    if t.device.type not in ("cpu", "cuda", "meta"):
        raise ValueError(f"{name} is on {t.device}; fastmine supports cpu and cuda")
    return t


def labels(t, n: int, name: str, rows_name: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of integer class ids, got {type(t).__name__}")
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer class ids, got dtype {t.dtype}")
    if t.dim() != 1 or t.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},) to match {rows_name}, got {tuple(t.shape)}")
    return t.to(torch.int64)


def same_device(named: Sequence[tuple]) -> None:
    (first_name, first), *rest = named
    for name, t in rest:
        if t.device != first.device:
            raise ValueError(
                f"{name} is on {t.device} but {first_name} is on {first.device}: all tensors must be on the same device"
            )


def same_features(x: torch.Tensor, x_name: str, r: torch.Tensor, r_name: str) -> None:
    if r.shape[1] != x.shape[1]:
        raise ValueError(f"{r_name} has D = {r.shape[1]} features but {x_name} has D = {x.shape[1]}")
    if r.dtype != x.dtype:
        raise TypeError(f"{r_name} has dtype {r.dtype} but {x_name} has {x.dtype}; they must match")


def metric(value: str) -> int:
    """The op's metric id of a metric name."""
    if value not in METRICS:
        raise ValueError(f"metric must be one of {sorted(METRICS)}, got {value!r}")
    return METRICS[value]


def metric_name(value: Any, name: str = "metric") -> str:
    """A valid metric name, returned as it is (the modules keep the name)."""
    metric(value)
    return value


def boolean(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def one_of(value: Any, allowed: Sequence[str], name: str) -> Any:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")
    return value


def reduction(value: str, allowed: Sequence[str]) -> str:
    return one_of(value, allowed, "reduction")


def integer(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    return value


def positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def float_dtype(dtype: Any, name: str = "dtype") -> torch.dtype:
    """A floating dtype fastmine computes in."""
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating dtype fastmine supports, got {dtype}")
    return dtype


def mined_loss_module(loss: Any) -> None:
    """What cross-batch memory and torch.distributed wrap: a fastmine.nn module whose loss
    takes a reference set."""
    from . import _parts
    from .nn import MinedLoss

    if not isinstance(loss, MinedLoss) or not _parts.supports(type(loss).functional):
        raise TypeError(
            "loss must be a fastmine.nn loss module that takes a reference set "
            f"(e.g. fastmine.nn.BatchHardTripletLoss), got {type(loss).__name__}"
        )


def finite_number(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return float(value)


def positive_number(value: Any, name: str) -> float:
    value = finite_number(value, name)
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")
    return value


def self_offset(value: Optional[int], has_ref: bool, b: int, m: int) -> Optional[int]:
    if value is None:
        return None
    if not has_ref:
        raise ValueError(
            "self_offset needs ref_embeddings: without a reference set the anchor itself is always excluded"
        )
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"self_offset must be an int, got {type(value).__name__}")
    if value < 0 or value + b > m:
        raise ValueError(
            f"self_offset must satisfy 0 <= self_offset and self_offset + B <= M (B = {b}, M = {m}), got {value}"
        )
    return value


def compute_dtype(t: torch.Tensor) -> torch.Tensor:
    """The CPU kernels run float32/float64; half inputs are upcast (a copy, by design)."""
    if t.device.type == "cpu" and t.dtype in (torch.float16, torch.bfloat16):
        return t.float()
    return t


def reference_set(emb, lab, ref_emb, ref_lab, offset):
    """The mined ops' tensors, checked and resolved: ``(x, labels, ref, ref_labels,
    has_exclude, exclude_offset)`` with the batch itself as the reference set when none is
    given (its anchor excluded, offset 0), and half inputs upcast on the CPU. The arguments
    are the public functions' ``embeddings, labels, ref_embeddings, ref_labels,
    self_offset``."""
    embeddings(emb, "embeddings")
    b = emb.shape[0]
    lab = labels(lab, b, "labels", "embeddings")
    if (ref_emb is None) != (ref_lab is None):
        raise ValueError("ref_embeddings and ref_labels must be given together")
    if ref_emb is None:
        self_offset(offset, False, b, b)
        same_device([("embeddings", emb), ("labels", lab)])
        x = compute_dtype(emb)
        return x, lab, x, lab, True, 0
    embeddings(ref_emb, "ref_embeddings")
    m = ref_emb.shape[0]
    ref_lab = labels(ref_lab, m, "ref_labels", "ref_embeddings")
    same_device([("embeddings", emb), ("labels", lab), ("ref_embeddings", ref_emb), ("ref_labels", ref_lab)])
    same_features(emb, "embeddings", ref_emb, "ref_embeddings")
    offset = self_offset(offset, True, b, m)
    x, r = compute_dtype(emb), compute_dtype(ref_emb)
    return x, lab, r, ref_lab, offset is not None, offset or 0


def contrastive_options(pos_margin: Any, neg_margin: Any, power: Any) -> Tuple[float, float, float]:
    return (
        finite_number(pos_margin, "pos_margin"),
        finite_number(neg_margin, "neg_margin"),
        positive_number(power, "power"),
    )


def class_indices(t: torch.Tensor, num_classes: int, message: str) -> None:
    """Every entry of an int64 tensor in [0, num_classes), else ``ValueError(f"{message}
    [0, num_classes), got v")``. Reads the values (a device synchronisation on CUDA);
    skipped under torch.compile, where the op checks the same rule itself."""
    if torch.compiler.is_compiling() or t.numel() == 0:
        return
    bad = (t < 0) | (t >= num_classes)
    if bool(bad.any()):
        raise ValueError(f"{message} [0, {num_classes}), got {t[bad][0].item()}")


def centroid_count(c: int) -> None:
    if c < 2:
        raise ValueError(f"centroids must hold C >= 2 classes (the bound divides by C - 1), got C = {c}")


# ---- the focal losses' tensors and options ---------------------------------------------------


def logits(t, name: str = "logits") -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float64, float16 or bfloat16, got {t.dtype}")
    if t.device.type not in ("cpu", "cuda", "meta"):
        raise ValueError(f"{name} is on {t.device}; fastmine supports cpu and cuda")
    if t.device.type == "cuda" and not CUDA_AVAILABLE:
        raise RuntimeError(f"{name} is on CUDA but fastmine's CUDA module is not built/loaded")
    return t


def same_shape_targets(targets, logits_: torch.Tensor, name: str, *, allow_int: bool) -> None:
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(targets).__name__}")
    if targets.dtype.is_complex or not (targets.dtype.is_floating_point or allow_int):
        kinds = "a float, integer or bool" if allow_int else "a floating-point"
        raise TypeError(f"{name} must have {kinds} dtype, got {targets.dtype}")
    if targets.shape != logits_.shape:
        raise ValueError(f"{name} must have the shape of logits {tuple(logits_.shape)}, got {tuple(targets.shape)}")
    no_grad_input(targets, name)
    same_device([("logits", logits_), (name, targets)])


def no_grad_input(t: torch.Tensor, name: str) -> None:
    if t.requires_grad:
        raise ValueError(
            f"{name} requires grad, but fastmine computes no gradient with respect to {name}: pass {name}.detach()"
        )


def sigmoid_alpha(value, name: str = "alpha") -> float:
    """sigmoid_focal_loss's alpha: in [0, 1], or negative to disable the weighting."""
    value = finite_number(value, name)
    if value > 1:
        raise ValueError(f"{name} must be in [0, 1] (or negative to disable it), got {value}")
    return value


def focal_gamma(value, name: str = "gamma") -> float:
    """The focusing exponent of the sigmoid and softmax focal losses: >= 0."""
    value = finite_number(value, name)
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def star_gamma(value, name: str = "gamma") -> float:
    """FL*'s gamma: > 0 (the loss divides by it)."""
    value = finite_number(value, name)
    if value <= 0:
        raise ValueError(f"{name} must be > 0 (the loss divides by it), got {value}")
    return value


def softmax_alpha(alpha, name: str = "alpha") -> Union[None, float, torch.Tensor]:
    """softmax_focal_loss's alpha without the class count: None, a finite float, or a 1-D
    floating-point tensor that does not require grad."""
    if alpha is None:
        return None
    if isinstance(alpha, torch.Tensor):
        if alpha.dim() != 1:
            raise ValueError(
                f"{name} must be a float or a (C,) tensor of class weights, got shape {tuple(alpha.shape)}"
            )
        if not alpha.dtype.is_floating_point:
            raise TypeError(f"{name} must be a floating-point tensor, got {alpha.dtype}")
        no_grad_input(alpha, name)
        return alpha
    return finite_number(alpha, name)


def class_logits(t: torch.Tensor) -> int:
    """softmax_focal_loss's logits layout, (N, C) or (N, C, d1, ...): returns C."""
    if t.dim() < 2:
        raise ValueError(f"logits must be (N, C) or (N, C, d1, ...), got shape {tuple(t.shape)}")
    if t.shape[1] == 0:
        raise ValueError("logits has C = 0 classes")
    return t.shape[1]


def class_targets(target, logits_: torch.Tensor) -> Tuple[int, ...]:
    """softmax_focal_loss's target: integer class indices of shape (N,) or (N, d1, ...), as
    logits without its class dimension. Returns that shape."""
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target must be a torch.Tensor of class indices, got {type(target).__name__}")
    if target.dtype.is_floating_point or target.dtype.is_complex or target.dtype == torch.bool:
        raise TypeError(f"target must hold integer class indices, got dtype {target.dtype}")
    expected = (logits_.shape[0],) + tuple(logits_.shape[2:])
    if tuple(target.shape) != expected:
        raise ValueError(
            f"target must have shape {expected} to match logits {tuple(logits_.shape)}, got {tuple(target.shape)}"
        )
    return expected


def class_weights_shape(alpha: torch.Tensor, c: int, name: str = "alpha") -> None:
    if alpha.shape[0] != c:
        raise ValueError(f"{name} must be a float or a ({c},) tensor of class weights, got shape {tuple(alpha.shape)}")
