"""The focal-loss family (sigmoid, softmax, FL*) on the CPU against the float64 oracle
(fastmine/reference.py), torchvision's formula written out, F.cross_entropy at gamma = 0,
BCE-with-logits for FL* at gamma = 1, extreme logits, degenerate input, NaN, determinism,
opcheck and torch.compile. Bad input and double backward: properties/test_contract.py."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import fastmine
from fastmine import reference as R
from helpers import RTOL, assert_close_rel

ops = torch.ops.fastmine
F64 = torch.float64
GAMMAS = (0.0, 0.5, 1.0, 2.0, 3.3)
ALPHAS = (-1.0, 0.0, 0.25, 1.0)
REDUCTIONS = ("none", "mean", "sum")


def torchvision_sigmoid_focal_loss(inputs, targets, alpha=0.25, gamma=2.0, reduction="none"):
    """torchvision.ops.sigmoid_focal_loss (v0.20), written out: torchvision is not installed."""
    p = torch.sigmoid(inputs)
    ce_loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce_loss * ((1 - p_t) ** gamma)
    if alpha >= 0:
        alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
        loss = alpha_t * loss
    if reduction == "none":
        pass
    elif reduction == "mean":
        loss = loss.mean()
    elif reduction == "sum":
        loss = loss.sum()
    return loss


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _grad(fn, x, *args, **kw):
    """(loss, d sum(loss * w) / d x) for a fixed random upstream weight w."""
    x = x.detach().clone().requires_grad_(True)
    loss = fn(x, *args, **kw)
    w = torch.linspace(0.5, 1.5, loss.numel(), dtype=loss.dtype).reshape(loss.shape)
    (g,) = torch.autograd.grad((loss * w).sum(), x)
    return loss.detach(), g


def _assert_grad(gk, go, rtol):
    """Ours against the oracle's autograd gradient. Where the plain formula's autograd is NaN
    on finite input (pow(q, gamma - 1) at q = 0 for gamma < 1: inf * 0), ours must be finite
    and is compared with the limit 0; elsewhere to rtol."""
    limit = torch.isnan(go)
    assert torch.isfinite(gk[limit]).all(), "gradient not finite where its limit is"
    scale = float(go[~limit].abs().max()) if (~limit).any() else 1.0
    assert (gk[limit].abs() <= rtol * max(scale, 1e-30)).all(), "gradient far from its limit 0"
    assert_close_rel(gk[~limit], go[~limit], rtol, what="grad")


def _compare(fn_k, fn_o, x, args_k, args_o, dtype, **kw):
    lk, gk = _grad(fn_k, x.to(dtype), *args_k, **kw)
    lo, go = _grad(fn_o, x.to(F64), *args_o, **kw)
    assert lk.dtype == dtype
    assert gk.dtype == dtype
    assert_close_rel(lk, lo, RTOL[dtype] * 4, what="loss")
    _assert_grad(gk, go, RTOL[dtype] * 4)


# ---- oracle parity (hypothesis) ---------------------------------------------------------------


shapes = st.lists(st.integers(1, 9), min_size=1, max_size=3).map(tuple) | st.sampled_from(
    [(1,), (7,), (8,), (1000,), (3, 333)]
)


@given(
    shape=shapes,
    seed=st.integers(0, 2**31 - 1),
    scale=st.sampled_from([0.1, 1.0, 5.0, 25.0]),
    gamma=st.sampled_from(GAMMAS),
    alpha=st.sampled_from(ALPHAS),
    reduction=st.sampled_from(REDUCTIONS),
    dtype=st.sampled_from([torch.float32, F64]),
    soft=st.booleans(),
)
def test_sigmoid_focal_matches_oracle(shape, seed, scale, gamma, alpha, reduction, dtype, soft):
    g = _gen(seed)
    x = torch.randn(shape, generator=g, dtype=F64) * scale
    t = torch.rand(shape, generator=g, dtype=F64)
    if not soft:
        t = (t > 0.7).to(F64)
    kw = dict(alpha=alpha, gamma=gamma, reduction=reduction)
    _compare(fastmine.sigmoid_focal_loss, R.sigmoid_focal_loss, x, (t.to(dtype),), (t,), dtype, **kw)


@given(
    n=st.integers(1, 40),
    c=st.integers(1, 37),
    seed=st.integers(0, 2**31 - 1),
    scale=st.sampled_from([0.1, 1.0, 8.0]),
    gamma=st.sampled_from(GAMMAS),
    alpha=st.sampled_from(["none", "float", "tensor"]),
    reduction=st.sampled_from(REDUCTIONS),
    dtype=st.sampled_from([torch.float32, F64]),
)
def test_softmax_focal_matches_oracle(n, c, seed, scale, gamma, alpha, reduction, dtype):
    g = _gen(seed)
    x = torch.randn(n, c, generator=g, dtype=F64) * scale
    y = torch.randint(0, c, (n,), generator=g)
    a = {"none": None, "float": 0.3, "tensor": torch.rand(c, generator=g, dtype=F64)}[alpha]
    a_k = a.to(dtype) if isinstance(a, torch.Tensor) else a
    kw = dict(gamma=gamma, reduction=reduction)
    lk, gk = _grad(fastmine.softmax_focal_loss, x.to(dtype), y, alpha=a_k, **kw)
    lo, go = _grad(R.softmax_focal_loss, x, y, alpha=a_k.double() if isinstance(a_k, torch.Tensor) else a, **kw)
    assert_close_rel(lk, lo, RTOL[dtype] * 4, what="loss")
    _assert_grad(gk, go, RTOL[dtype] * 4)


@given(
    shape=shapes,
    seed=st.integers(0, 2**31 - 1),
    gamma=st.sampled_from([0.25, 1.0, 2.0, 5.0]),
    beta=st.sampled_from([0.0, 1.0, -2.5]),
    reduction=st.sampled_from(REDUCTIONS),
    dtype=st.sampled_from([torch.float32, F64]),
    labels=st.sampled_from(["pm1", "01", "bool"]),
)
def test_focal_star_matches_oracle(shape, seed, gamma, beta, reduction, dtype, labels):
    g = _gen(seed)
    x = torch.randn(shape, generator=g, dtype=F64) * 4
    y01 = torch.randint(0, 2, shape, generator=g)
    t = {"pm1": y01 * 2 - 1, "01": y01, "bool": y01.bool()}[labels]
    kw = dict(gamma=gamma, beta=beta, reduction=reduction)
    _compare(fastmine.focal_star_loss, R.focal_star_loss, x, (t,), (t,), dtype, **kw)


def test_softmax_focal_spatial_matches_oracle():
    g = _gen(3)
    x = torch.randn(4, 6, 3, 5, generator=g, dtype=F64)
    y = torch.randint(0, 6, (4, 3, 5), generator=g)
    for reduction in REDUCTIONS:
        _compare(fastmine.softmax_focal_loss, R.softmax_focal_loss, x, (y,), (y,), F64, reduction=reduction)
    assert fastmine.softmax_focal_loss(x, y, reduction="none").shape == (4, 3, 5)


# ---- gradcheck (float64) --------------------------------------------------------------------


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, 3.3])
def test_gradcheck(reduction, gamma):
    g = _gen(1)
    x = (torch.randn(3, 5, generator=g, dtype=F64) * 3).requires_grad_()
    t = torch.rand(3, 5, generator=g, dtype=F64)
    y = torch.randint(0, 5, (3,), generator=g)
    ypm = torch.randint(0, 2, (3, 5), generator=g) * 2 - 1
    a = torch.rand(5, generator=g, dtype=F64)
    torch.autograd.gradcheck(lambda v: fastmine.sigmoid_focal_loss(v, t, gamma=gamma, reduction=reduction), (x,))
    torch.autograd.gradcheck(
        lambda v: fastmine.softmax_focal_loss(v, y, alpha=a, gamma=gamma, reduction=reduction), (x,)
    )
    if gamma > 0:
        torch.autograd.gradcheck(
            lambda v: fastmine.focal_star_loss(v, ypm, gamma=gamma, beta=0.5, reduction=reduction), (x,)
        )


# ---- peers: torchvision's formula, F.cross_entropy, BCE-with-logits -----------------------------


@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=str)
@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("gamma", GAMMAS)
def test_sigmoid_focal_equals_torchvision_formula(dtype, alpha, gamma):
    g = _gen(7)
    x = (torch.randn(50, 20, generator=g, dtype=F64) * 4).to(dtype)
    t = (torch.rand(50, 20, generator=g) > 0.8).to(dtype)
    for reduction in REDUCTIONS:
        ours = fastmine.sigmoid_focal_loss(x, t, alpha=alpha, gamma=gamma, reduction=reduction)
        theirs = torchvision_sigmoid_focal_loss(x.double(), t.double(), alpha, gamma, reduction)
        assert_close_rel(ours, theirs, RTOL[dtype] * 4, what=reduction)
    # Soft targets too, and torchvision's formula run in the input dtype itself.
    ts = torch.rand(50, 20, generator=g).to(dtype)
    ours = fastmine.sigmoid_focal_loss(x, ts, alpha=alpha, gamma=gamma)
    assert_close_rel(ours, torchvision_sigmoid_focal_loss(x, ts, alpha, gamma), RTOL[dtype] * 40)


def test_sigmoid_focal_default_arguments_are_torchvisions():
    g = _gen(8)
    x, t = torch.randn(10, 4, generator=g), (torch.rand(10, 4, generator=g) > 0.5).float()
    assert fastmine.sigmoid_focal_loss(x, t).shape == (10, 4)  # reduction="none"
    assert_close_rel(fastmine.sigmoid_focal_loss(x, t), torchvision_sigmoid_focal_loss(x.double(), t.double()), 1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=str)
def test_softmax_focal_gamma0_is_cross_entropy(dtype):
    g = _gen(9)
    x = (torch.randn(64, 10, generator=g, dtype=F64) * 3).to(dtype)
    y = torch.randint(0, 10, (64,), generator=g)
    for reduction in REDUCTIONS:
        lk, gk = _grad(fastmine.softmax_focal_loss, x, y, gamma=0.0, reduction=reduction)
        lo, go = _grad(F.cross_entropy, x.double(), y, reduction=reduction)
        assert_close_rel(lk, lo, RTOL[dtype] * 4, what=reduction)
        assert_close_rel(gk, go, RTOL[dtype] * 4, what=reduction)
    # Class weights: the sums agree (F.cross_entropy's "mean" divides by the weights' sum).
    w = torch.rand(10, generator=g, dtype=F64)
    ours = fastmine.softmax_focal_loss(x, y, alpha=w.to(dtype), gamma=0.0, reduction="sum")
    assert_close_rel(ours, F.cross_entropy(x.double(), y, weight=w, reduction="sum"), RTOL[dtype] * 4)
    x4, y4 = torch.randn(2, 10, 3, 4, generator=g, dtype=F64), torch.randint(0, 10, (2, 3, 4), generator=g)
    assert_close_rel(fastmine.softmax_focal_loss(x4, y4, gamma=0.0), F.cross_entropy(x4, y4), 1e-12)


def test_focal_star_gamma1_is_bce_with_logits():
    g = _gen(10)
    x = torch.randn(300, generator=g, dtype=F64) * 5
    y01 = torch.randint(0, 2, (300,), generator=g)
    expected = F.binary_cross_entropy_with_logits(x, y01.double())
    for t in (y01, y01 * 2 - 1, y01.bool(), y01.double()):
        assert_close_rel(fastmine.focal_star_loss(x, t, gamma=1.0, beta=0.0), expected, 1e-12)


# ---- extreme logits -----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=str)
@pytest.mark.parametrize("gamma", GAMMAS)
def test_sigmoid_focal_logits_1000(dtype, gamma):
    x = torch.tensor([1000.0, -1000.0, 1000.0, -1000.0, 1000.0, -1000.0, 88.0, -104.0, 30.0], dtype=dtype)
    t = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.3, 0.3, 1.0, 0.0, 0.9], dtype=dtype)
    lk, gk = _grad(fastmine.sigmoid_focal_loss, x, t, gamma=gamma)
    lo = R.sigmoid_focal_loss(x.double(), t.double(), gamma=gamma)  # finite in float64 here
    assert torch.isfinite(lo).all()
    assert torch.isfinite(lk).all() and torch.isfinite(gk).all()
    assert_close_rel(lk, lo, RTOL[dtype] * 4, what="loss")
    # Saturated: a confident right answer costs nothing; a confident wrong one costs
    # alpha_t * |x| and its gradient is alpha_t * sign(x) (d softplus = 1, modulator = 1).
    assert lk[0] == 0 and lk[1] == 0
    assert lk[2] == pytest.approx(0.75 * 1000) and lk[3] == pytest.approx(0.25 * 1000)
    w = torch.linspace(0.5, 1.5, x.numel(), dtype=dtype)
    assert gk[2] == pytest.approx(0.75 * float(w[2]), rel=1e-6)
    assert gk[3] == pytest.approx(-0.25 * float(w[3]), rel=1e-6)
    assert gk[0] == 0 and gk[1] == 0


def test_softmax_focal_and_star_logits_1000():
    x = torch.tensor([[1000.0, -1000.0, 0.0], [-1000.0, 1000.0, 0.0]], dtype=torch.float32)
    y = torch.tensor([0, 0])
    for gamma in GAMMAS:
        lk, gk = _grad(fastmine.softmax_focal_loss, x, y, gamma=gamma, reduction="none")
        lo = R.softmax_focal_loss(x.double(), y, gamma=gamma, reduction="none")
        assert torch.isfinite(lk).all() and torch.isfinite(gk).all()
        assert_close_rel(lk, lo, 1e-5)
        assert lk[1] == pytest.approx(2000.0)
    xs = torch.tensor([1000.0, -1000.0, 1000.0], dtype=torch.float32)
    ts = torch.tensor([1, 1, -1])
    lk, gk = _grad(fastmine.focal_star_loss, xs, ts, gamma=2.0, beta=0.0, reduction="none")
    assert lk.tolist() == [0.0, 1000.0, 1000.0]
    assert torch.isfinite(gk).all()


# ---- degenerate input ---------------------------------------------------------------------------


def test_empty_inputs():
    x = torch.empty(0, 5, requires_grad=True)
    t = torch.empty(0, 5)
    for fn, tt in ((fastmine.sigmoid_focal_loss, t), (fastmine.focal_star_loss, t)):
        assert fn(x, tt, reduction="none").shape == (0, 5)
        s = fn(x, tt, reduction="sum")
        assert s.item() == 0.0
        s.backward()
        assert x.grad.shape == (0, 5)
        x.grad = None
        assert math.isnan(fn(x, tt, reduction="mean").item())  # as torch.mean of nothing
    y = torch.empty(0, dtype=torch.long)
    assert fastmine.softmax_focal_loss(x, y, reduction="none").shape == (0,)
    assert fastmine.softmax_focal_loss(x, y, reduction="sum").item() == 0.0
    assert math.isnan(fastmine.softmax_focal_loss(x, y).item())  # as F.cross_entropy


def test_single_class_softmax_is_zero():
    x = torch.randn(4, 1, requires_grad=True)
    loss = fastmine.softmax_focal_loss(x, torch.zeros(4, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(x.grad, torch.zeros_like(x))


# ---- NaN, dtypes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=str)
def test_nan_propagates(dtype):
    x = torch.randn(100, dtype=dtype)
    t = (torch.rand(100) > 0.5).to(dtype)
    xn, tn = x.clone(), t.clone()
    xn[17] = float("nan")
    tn[33] = float("nan")
    for fn in (fastmine.sigmoid_focal_loss, fastmine.focal_star_loss):
        for xx, tt, i in ((xn, t, 17), (x, tn, 33)):
            per = fn(xx, tt, reduction="none")
            assert torch.isnan(per[i]) and torch.isfinite(per[torch.arange(100) != i]).all()
            assert torch.isnan(fn(xx, tt, reduction="mean")) and torch.isnan(fn(xx, tt, reduction="sum"))
            _, g = _grad(fn, xx, tt, reduction="none")
            assert torch.isnan(g[i]) if i == 17 else True
    xs = torch.randn(6, 5, dtype=dtype)
    xs[2, 4] = float("nan")
    per = fastmine.softmax_focal_loss(xs, torch.zeros(6, dtype=torch.long), reduction="none")
    assert torch.isnan(per[2]) and torch.isfinite(per[torch.arange(6) != 2]).all()
    xs[2, 4] = float("inf")
    assert not torch.isfinite(fastmine.softmax_focal_loss(xs, torch.zeros(6, dtype=torch.long)))


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16], ids=str)
def test_half_inputs_on_cpu(half):
    x = torch.randn(40, 3).to(half).requires_grad_()
    t = (torch.rand(40, 3) > 0.5).to(half)
    y = torch.randint(0, 3, (40,))
    for loss in (
        fastmine.sigmoid_focal_loss(x, t, reduction="mean"),
        fastmine.focal_star_loss(x, t),
        fastmine.softmax_focal_loss(x, y),
    ):
        assert loss.dtype == torch.float32
        (g,) = torch.autograd.grad(loss, x)
        assert g.dtype == half
    assert_close_rel(fastmine.sigmoid_focal_loss(x, t), R.sigmoid_focal_loss(x.double(), t.double()), 2e-2)


# ---- SIMD layout, determinism -----------------------------------------------------------------------


def test_element_result_does_not_depend_on_position():
    """Tails go through the same vector code as the body: an element's bits are the same
    wherever it sits (no scalar/vector mismatch at the end of an array)."""
    g = _gen(11)
    x = torch.randn(1000, generator=g) * 6
    t = torch.rand(1000, generator=g)
    up = torch.rand(1000, generator=g)
    whole = ops.sigmoid_focal(x, t, 0.25, 2.0, False)
    gw = ops.sigmoid_focal_backward(up, x, t, 0.25, 2.0)
    for shift in (1, 3, 7, 995):
        xs, ts, us = (v[shift:].contiguous() for v in (x, t, up))
        part, gp = ops.sigmoid_focal(xs, ts, 0.25, 2.0, False), ops.sigmoid_focal_backward(us, xs, ts, 0.25, 2.0)
        assert torch.equal(part, whole[shift:]) and torch.equal(gp, gw[shift:])


@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=str)
def test_deterministic_across_runs_and_thread_counts(dtype):
    g = _gen(12)
    n = 3 * (1 << 14) + 123  # several chunks and a tail
    x = (torch.randn(n, generator=g, dtype=F64) * 3).to(dtype)
    t = torch.rand(n, generator=g, dtype=F64).to(dtype)
    y = torch.randint(0, 7, (n // 7,), generator=g)
    xs = x[: (n // 7) * 7].reshape(-1, 7)

    def run():
        out = []
        for fn, args in ((fastmine.sigmoid_focal_loss, (t,)), (fastmine.focal_star_loss, (t,))):
            out += list(_grad(fn, x, *args, reduction="mean"))
        out += list(_grad(fastmine.softmax_focal_loss, xs, y))
        return out

    threads = torch.get_num_threads()
    a = run()
    b = run()
    try:
        torch.set_num_threads(1)
        c = run()
    finally:
        torch.set_num_threads(threads)
    for u, v, w in zip(a, b, c):
        assert torch.equal(u, v) and torch.equal(u, w)
    # The chunked sum is also accurate: against the float64 sum of the same terms.
    per = fastmine.sigmoid_focal_loss(x, t, reduction="none").double()
    assert_close_rel(fastmine.sigmoid_focal_loss(x, t, reduction="sum"), per.sum(), RTOL[dtype])


# ---- custom-op machinery ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=str)
def test_opcheck(dtype):
    g = _gen(13)
    x = torch.randn(6, 5, generator=g, dtype=dtype).requires_grad_()
    t = torch.rand(6, 5, generator=g, dtype=dtype)
    y = torch.randint(0, 5, (6,), generator=g)
    a = torch.rand(5, generator=g, dtype=dtype)
    for reduce in (False, True):
        for gamma in (2.0, 0.7):
            torch.library.opcheck(ops.sigmoid_focal.default, (x, t, 0.25, gamma, reduce))
            torch.library.opcheck(ops.focal_star.default, (x, t * 2 - 1, gamma, 0.5, reduce))
        torch.library.opcheck(ops.sigmoid_focal.default, (x.detach(), t, -1.0, 2.0, reduce))
    for up in (torch.rand(6, 5, generator=g, dtype=dtype), torch.tensor(0.3, dtype=dtype)):
        torch.library.opcheck(ops.sigmoid_focal_backward.default, (up, x.detach(), t, 0.25, 0.7))
        torch.library.opcheck(ops.focal_star_backward.default, (up, x.detach(), t, 2.0, 0.5))
    torch.library.opcheck(ops.softmax_focal.default, (x, y, a, 2.0, True))
    torch.library.opcheck(ops.softmax_focal.default, (x.detach(), y, a, 1.5, False))


@pytest.mark.slow
def test_compile_fullgraph_matches_eager():
    g = _gen(14)
    x = torch.randn(16, 5, generator=g, requires_grad=True)
    t = (torch.rand(16, 5, generator=g) > 0.5).float()
    y = torch.randint(0, 5, (16,), generator=g)
    a = torch.rand(5, generator=g)

    def f(x, t, y, a):
        return (
            fastmine.sigmoid_focal_loss(x, t, reduction="mean")
            + fastmine.sigmoid_focal_loss(x, t, gamma=0.5).sum()
            + fastmine.focal_star_loss(x, t * 2 - 1, beta=0.3)
            + fastmine.softmax_focal_loss(x, y, alpha=a, gamma=1.5)
        )

    eager = f(x, t, y, a)
    (ge,) = torch.autograd.grad(eager, x)
    compiled = torch.compile(f, fullgraph=True)(x, t, y, a)
    (gc,) = torch.autograd.grad(compiled, x)
    assert_close_rel(compiled, eager, 1e-6)
    assert_close_rel(gc, ge, 1e-6)


def test_no_grad_skips_the_gradient():
    x = torch.randn(5, 3, requires_grad=True)
    y = torch.randint(0, 3, (5,))
    with torch.no_grad():
        assert fastmine.sigmoid_focal_loss(x, torch.rand(5, 3)).grad_fn is None
        assert fastmine.softmax_focal_loss(x, y).grad_fn is None
    _, grad = ops.softmax_focal(x.detach(), y, torch.ones(3), 2.0, False)
    assert grad.shape == (0,)


def test_backward_twice_with_retain_graph():
    """Nothing is consumed by a backward: a second one gives the same gradient."""
    x = torch.randn(10, 3, requires_grad=True)
    t, y = torch.rand(10, 3), torch.randint(0, 3, (10,))
    for loss in (
        fastmine.sigmoid_focal_loss(x, t, reduction="mean"),
        fastmine.focal_star_loss(x, t),
        fastmine.softmax_focal_loss(x, y),
    ):
        (g1,) = torch.autograd.grad(loss, x, retain_graph=True)
        (g2,) = torch.autograd.grad(loss, x)
        assert torch.equal(g1, g2)
