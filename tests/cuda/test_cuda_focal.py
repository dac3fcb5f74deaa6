"""The focal-loss family and the centroid bound on the GPU: against the float64 oracle in
every dtype at sizes from one element to past the kernels' block counts, against the CPU
kernel, extreme logits. Skipped without a GPU (every test carries the ``cuda`` marker).
What every op owes on every device (determinism, NaN, bad input, compile) is
properties/test_contract.py's."""

from __future__ import annotations

import pytest
import torch

import fastmine
from fastmine import reference as R
from helpers import RTOL, assert_close_rel

pytestmark = pytest.mark.cuda

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
F64 = torch.float64
SIZES = (1, 3, 4, 5, 1023, 4096 + 7, 300_001)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _loss_and_grad(fn, x, *args, **kw):
    x = x.detach().clone().requires_grad_(True)
    loss = fn(x, *args, **kw)
    w = torch.linspace(0.5, 1.5, loss.numel(), dtype=loss.dtype, device=loss.device).reshape(loss.shape)
    (g,) = torch.autograd.grad((loss * w).sum(), x)
    return loss.detach(), g


def _tol(dtype):
    return RTOL[dtype] * (4 if dtype in (torch.float32, F64) else 2)


def _check(fn, oracle, x, args, dtype, **kw):
    """CUDA result in `dtype` against the float64 oracle on the same (rounded) inputs."""
    xd = x.to(dtype)
    lk, gk = _loss_and_grad(fn, xd.cuda(), *[a.cuda() if isinstance(a, torch.Tensor) else a for a in args], **kw)
    oargs = [a.double() if isinstance(a, torch.Tensor) and a.dtype.is_floating_point else a for a in args]
    lo, go = _loss_and_grad(oracle, xd.double(), *oargs, **kw)
    assert lk.dtype == (torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype)
    assert gk.dtype == dtype
    assert_close_rel(lk.cpu(), lo, _tol(dtype), what="loss")
    finite = torch.isfinite(go)
    assert_close_rel(
        gk.cpu()[finite], go[finite], _tol(dtype) * (1 if dtype in (torch.float32, F64) else 4), what="grad"
    )


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_sigmoid_focal(dtype, n, gamma):
    g = _gen(n)
    x = torch.randn(n, generator=g, dtype=F64) * 4
    t = (torch.rand(n, generator=g, dtype=F64) > 0.7).to(dtype)
    for reduction in ("none", "mean", "sum"):
        _check(fastmine.sigmoid_focal_loss, R.sigmoid_focal_loss, x, (t,), dtype, gamma=gamma, reduction=reduction)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", SIZES)
def test_focal_star(dtype, n):
    g = _gen(n + 1)
    x = torch.randn(n, generator=g, dtype=F64) * 4
    t = torch.randint(0, 2, (n,), generator=g) * 2 - 1
    for reduction in ("none", "mean"):
        _check(fastmine.focal_star_loss, R.focal_star_loss, x, (t,), dtype, gamma=2.0, beta=0.5, reduction=reduction)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n, c", [(1, 1), (5, 3), (33, 80), (1000, 7), (17, 1000)])
def test_softmax_focal(dtype, n, c):
    g = _gen(n * c)
    x = torch.randn(n, c, generator=g, dtype=F64) * 3
    y = torch.randint(0, c, (n,), generator=g)
    a = torch.rand(c, generator=g, dtype=F64).to(dtype)
    for gamma in (0.0, 2.0, 0.7):
        _check(
            fastmine.softmax_focal_loss, R.softmax_focal_loss, x, (y,), dtype, alpha=0.25, gamma=gamma, reduction="none"
        )
    xd = x.to(dtype)
    ours = fastmine.softmax_focal_loss(xd.cuda(), y.cuda(), alpha=a.cuda(), reduction="sum")
    assert_close_rel(ours.cpu(), R.softmax_focal_loss(xd.double(), y, alpha=a.double(), reduction="sum"), _tol(dtype))


@pytest.mark.parametrize("need_c", [True, False])
def test_centroid_backward_without_features(need_c):
    """D = 0 (raw op calls, opcheck): zero-size gradients, no launch of an empty grid."""
    x, c = torch.empty(5, 0, device="cuda"), torch.empty(3, 0, device="cuda")
    labels = torch.tensor([0, 1, 2, 0, 1], device="cuda")
    loss, dist = torch.ops.fastmine.centroid_triplet(x, labels, c)
    gx, gc = torch.ops.fastmine.centroid_triplet_backward(torch.ones(5, device="cuda"), x, labels, c, dist, need_c)
    assert gx.shape == (5, 0) and gc.shape == ((3, 0) if need_c else (0,))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("b, d, nc", [(1, 1, 2), (7, 3, 3), (300, 64, 10), (2000, 129, 5)])
def test_centroid(dtype, b, d, nc):
    g = _gen(b * d)
    c = torch.randn(nc, d, generator=g, dtype=F64)
    labels = torch.randint(0, nc, (b,), generator=g)
    x = c[labels] + torch.randn(b, d, generator=g, dtype=F64)
    x[0] = c[labels[0]]
    xd, cd = x.to(dtype), c.to(dtype)
    xk, ck = xd.cuda().requires_grad_(), cd.cuda().requires_grad_()
    loss = fastmine.centroid_triplet_loss(xk, labels.cuda(), ck)
    gx, gc = torch.autograd.grad(loss, (xk, ck))
    xo, co = xd.double().requires_grad_(), cd.double().requires_grad_()
    lo = R.centroid_triplet_loss(xo, labels, co)
    gxo, gco = torch.autograd.grad(lo, (xo, co))
    tol = _tol(dtype)
    assert_close_rel(loss.cpu(), lo, tol)
    assert_close_rel(gx.cpu(), gxo, tol * 4)
    assert_close_rel(gc.cpu(), gco, tol * 4)


def test_sigmoid_focal_cuda_matches_cpu():
    """A million terms (about a thousand blocks of partial sums) agree with the CPU kernel."""
    g = _gen(0)
    n = 1_000_003
    x = torch.randn(n, generator=g) * 5
    t = torch.rand(n, generator=g)
    cpu = _loss_and_grad(fastmine.sigmoid_focal_loss, x, t, reduction="mean")
    gpu = _loss_and_grad(fastmine.sigmoid_focal_loss, x.cuda(), t.cuda(), reduction="mean")
    assert_close_rel(gpu[0].cpu(), cpu[0], 1e-5)
    assert_close_rel(gpu[1].cpu(), cpu[1], 1e-5)


def test_extreme_logits():
    x = torch.tensor([1000.0, -1000.0, 1000.0, -1000.0], device="cuda", requires_grad=True)
    t = torch.tensor([1.0, 0.0, 0.0, 1.0], device="cuda")
    loss = fastmine.sigmoid_focal_loss(x, t, gamma=0.5)
    (g,) = torch.autograd.grad(loss.sum(), x)
    assert torch.isfinite(loss).all() and torch.isfinite(g).all()
    assert loss.tolist() == pytest.approx([0.0, 0.0, 750.0, 250.0])
