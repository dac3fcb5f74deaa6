"""Argument checks shared by every public function. Each error names the argument.

Everything here only reads shapes, dtypes and devices (never tensor values), so it traces
under torch.compile(fullgraph=True) without graph breaks.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

from ._ops import CUDA_AVAILABLE

METRICS = {"euclidean": 0, "sqeuclidean": 1, "cosine": 2}
_FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def embeddings(t, name: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 2:
        raise ValueError(f"{name} must be 2-D (N, D), got shape {tuple(t.shape)}")
    if t.dtype not in _FLOAT_DTYPES:
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
        raise ValueError(
            f"{name} must have shape ({n},) to match {rows_name}, got {tuple(t.shape)}"
        )
    return t.to(torch.int64)


def same_device(named: Sequence[tuple]) -> None:
    (first_name, first), *rest = named
    for name, t in rest:
        if t.device != first.device:
            raise ValueError(
                f"{name} is on {t.device} but {first_name} is on {first.device}: "
                "all tensors must be on the same device"
            )


def same_features(x: torch.Tensor, x_name: str, r: torch.Tensor, r_name: str) -> None:
    if r.shape[1] != x.shape[1]:
        raise ValueError(f"{r_name} has D = {r.shape[1]} features but {x_name} has D = {x.shape[1]}")
    if r.dtype != x.dtype:
        raise TypeError(f"{r_name} has dtype {r.dtype} but {x_name} has {x.dtype}; they must match")


def metric(value: str) -> int:
    if value not in METRICS:
        raise ValueError(f"metric must be one of {sorted(METRICS)}, got {value!r}")
    return METRICS[value]


def reduction(value: str, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise ValueError(f"reduction must be one of {list(allowed)}, got {value!r}")
    return value


def finite_number(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return float(value)


def self_offset(value: Optional[int], has_ref: bool, b: int, m: int) -> Optional[int]:
    if value is None:
        return None
    if not has_ref:
        raise ValueError("self_offset needs ref_embeddings: without a reference set the anchor "
                         "itself is always excluded")
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"self_offset must be an int, got {type(value).__name__}")
    if value < 0 or value + b > m:
        raise ValueError(f"self_offset must satisfy 0 <= self_offset and self_offset + B <= M "
                         f"(B = {b}, M = {m}), got {value}")
    return value


def compute_dtype(t: torch.Tensor) -> torch.Tensor:
    """The CPU kernels run float32/float64; half inputs are upcast (a copy, by design)."""
    if t.device.type == "cpu" and t.dtype in (torch.float16, torch.bfloat16):
        return t.float()
    return t
