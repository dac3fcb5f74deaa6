"""fastmine.pairwise_distance against the oracle: values and gradients."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given

import fastmine
from fastmine import reference as R
from helpers import RTOL, assert_close_rel
from strategies import matrices

METRICS = R.METRICS
F64 = torch.float64


def _run(fn, x, y, metric, grad_out):
    xr = x.clone().requires_grad_(True)
    yr = None if y is None else y.clone().requires_grad_(True)
    d = fn(xr, yr, metric=metric)
    inputs = [xr] if yr is None else [xr, yr]
    grads = torch.autograd.grad((d * grad_out).sum(), inputs)
    return d.detach(), grads


def _grad_floor(x, y, metric, grad_out):
    """Absolute floor for gradient entries: the size of the summed terms (they may cancel)."""
    rows = x if y is None else torch.cat([x, y])
    n = rows.norm(dim=1)
    m = grad_out.shape[1] + grad_out.shape[0]
    g = {"euclidean": 1.0, "sqeuclidean": 4 * float(n.max()), "cosine": 2.0 / max(float(n.min()), 1e-3)}[metric]
    return g * m * float(grad_out.abs().max())


def check_pairwise(x, y, metric, dtype, rtol=None):
    rtol = rtol or RTOL[dtype]
    x = x.to(dtype)
    y = None if y is None else y.to(dtype)
    m = x.shape[0] if y is None else y.shape[0]
    gen = torch.Generator().manual_seed(x.shape[0] * 1000 + m)
    grad_out = torch.randn(x.shape[0], m, generator=gen, dtype=F64)
    dk, gk = _run(fastmine.pairwise_distance, x, y, metric, grad_out.to(dtype))
    do, go = _run(R.pairwise_distance, x.double(), None if y is None else y.double(), metric, grad_out)
    assert dk.dtype == dtype and dk.shape == (x.shape[0], m)
    # Cosine 1 - cos cancels near 0: its error is absolute (relative to 1), so floor at 1.
    floor = 1.0 if metric == "cosine" else None
    assert_close_rel(dk, do, rtol, floor=floor, what=f"{metric} distances")
    if metric != "cosine":
        assert bool((dk >= 0).all()), "distances must be >= 0"
    gfloor = _grad_floor(x.double(), None if y is None else y.double(), metric, grad_out)
    for a, b, name in zip(gk, go, ("x", "y")):
        assert a.dtype == dtype
        assert torch.isfinite(a).all(), f"non-finite gradient for {name}"
        # Cosine's gradient terms (-v / (|u||v|) and (1 - d) u / |u|^2) cancel intrinsically
        # (e.g. D = 1: the exact gradient is 0): floor at the size of the terms. Euclidean
        # gradients are sums of unit vectors (u - v) / d: no intrinsic cancellation, so the
        # floor is the gradient's own max (normwise relative error, as docs/semantics.md owes).
        gf = gfloor if metric == "cosine" else gfloor * 1e-2
        assert_close_rel(a, b, rtol, floor=max(gf, float(b.abs().max())), what=f"{metric} grad {name}")
    return dk


@pytest.mark.parametrize("metric", METRICS)
@given(xy=matrices())
def test_float64_parity(metric, xy):
    x, y = xy
    check_pairwise(x, y, metric, F64)


@pytest.mark.parametrize("metric", METRICS)
@given(xy=matrices(max_n=24, max_d=24))
def test_float32_vs_float64_oracle(metric, xy):
    x, y = xy
    check_pairwise(x, y, metric, torch.float32)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_self_distance_diagonal_is_zero(metric, dtype):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(37, 19, generator=g, dtype=F64) * 30 + 100).to(dtype)
    d = fastmine.pairwise_distance(x, metric=metric)
    diag = d.diagonal()
    if metric == "cosine":
        assert diag.abs().max() < 10 * torch.finfo(dtype).eps
    else:
        assert torch.equal(diag, torch.zeros_like(diag)), "d(x, x) must be exactly 0"
    assert torch.equal(d, fastmine.pairwise_distance(x, x, metric=metric))


@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_euclidean_duplicates_gradient_is_zero_not_nan(dtype):
    g = torch.Generator().manual_seed(1)
    base = torch.randn(3, 5, generator=g, dtype=F64)
    x = base[torch.tensor([0, 1, 0, 2, 1, 0])].to(dtype)
    d, (gx,) = _run(fastmine.pairwise_distance, x, None, "euclidean", torch.ones(6, 6, dtype=dtype))
    assert torch.isfinite(gx).all(), "euclidean gradient at d = 0 must be 0, not NaN"
    check_pairwise(x.double(), None, "euclidean", dtype)
    # All rows identical: every distance is 0, every gradient entry exactly 0.
    x = torch.ones(4, 3, dtype=dtype)
    _, (gx,) = _run(fastmine.pairwise_distance, x, None, "euclidean", torch.ones(4, 4, dtype=dtype))
    assert torch.equal(gx, torch.zeros_like(gx))
    y = torch.ones(2, 3, dtype=dtype)
    _, (gx, gy) = _run(fastmine.pairwise_distance, x, y, "euclidean", torch.ones(4, 2, dtype=dtype))
    assert torch.equal(gx, torch.zeros_like(gx)) and torch.equal(gy, torch.zeros_like(gy))


@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean"])
def test_near_duplicates_float32(metric):
    """Rows 1e-3 apart at norm ~100: the expanded form |x|^2 + |y|^2 - 2xy cancels
    catastrophically here. docs/semantics.md owes 1e-5 relative against the float64 oracle anyway."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(8, 16, generator=g, dtype=F64) * 25
    x[1] = x[0] + 1e-3 * torch.randn(16, generator=g, dtype=F64)
    x[5] = x[3] + 1e-2 * torch.randn(16, generator=g, dtype=F64)
    check_pairwise(x, None, metric, torch.float32)
    check_pairwise(x[:4], x[4:], metric, torch.float32)


def test_hand_values():
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0]], dtype=F64)
    y = torch.tensor([[3.0, 0.0], [0.0, 4.0], [3.0, 4.0]], dtype=F64)
    assert torch.equal(fastmine.pairwise_distance(x, y), torch.tensor([[3.0, 4.0, 5.0], [4.0, 3.0, 0.0]], dtype=F64))
    assert torch.equal(
        fastmine.pairwise_distance(x, y, metric="sqeuclidean"),
        torch.tensor([[9.0, 16.0, 25.0], [16.0, 9.0, 0.0]], dtype=F64),
    )
    c = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0], [0.0, 0.0]], dtype=F64)
    expected = torch.tensor([[0, 1, 2, 1], [1, 0, 1, 1], [2, 1, 0, 1], [1, 1, 1, 1]], dtype=F64)
    assert_close_rel(fastmine.pairwise_distance(c, metric="cosine"), expected, 1e-15, floor=1.0)


def test_default_metric_is_euclidean():
    x = torch.randn(5, 3, dtype=F64)
    assert torch.equal(fastmine.pairwise_distance(x), fastmine.pairwise_distance(x, metric="euclidean"))


@pytest.mark.parametrize("metric", METRICS)
def test_shapes_and_one_column(metric):
    x = torch.randn(1, 1, dtype=F64)
    assert fastmine.pairwise_distance(x, metric=metric).shape == (1, 1)
    y = torch.randn(300, 1, dtype=F64)
    check_pairwise(x, y, metric, F64)
    check_pairwise(y, x, metric, F64)


@pytest.mark.parametrize("metric", METRICS)
def test_large_float32(metric):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(300, 64, generator=g, dtype=F64)
    y = torch.randn(257, 64, generator=g, dtype=F64)
    check_pairwise(x, y, metric, torch.float32)


def test_cosine_zero_vector():
    x = torch.tensor([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]], dtype=F64)
    d = fastmine.pairwise_distance(x, metric="cosine")
    assert_close_rel(d, R.pairwise_distance(x, metric="cosine"), 1e-14, floor=1.0)
    assert d[0, 0].item() == pytest.approx(1.0)
    check_pairwise(x, None, "cosine", F64)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_on_cpu(dtype):
    x = torch.randn(6, 4, dtype=dtype, requires_grad=True)
    d = fastmine.pairwise_distance(x)
    expected = R.pairwise_distance(x.detach().double())
    assert_close_rel(d, expected, 2e-2, what="half distances")
    d.sum().backward()
    assert x.grad.dtype == dtype
