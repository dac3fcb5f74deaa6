"""The centroid triplet bound and one-hot centroids on the CPU, against the float64 oracle:
hypothesis parity with gradients (to embeddings and centroids), gradcheck, the zero-distance
subgradient, NaN, determinism, opcheck, torch.compile. Bad input and double backward:
properties/test_contract.py."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import fastmine
from fastmine import reference as R
from helpers import RTOL, assert_close_rel

ops = torch.ops.fastmine
F64 = torch.float64
REDUCTIONS = ("mean", "sum", "none")


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _run(fn, x, labels, c, reduction, *, centroid_grad=True):
    x = x.detach().clone().requires_grad_(True)
    c = c.detach().clone().requires_grad_(centroid_grad)
    loss = fn(x, labels, c, reduction=reduction)
    w = torch.linspace(0.5, 1.5, loss.numel(), dtype=loss.dtype).reshape(loss.shape)
    grads = torch.autograd.grad((loss * w).sum(), (x, c) if centroid_grad else (x,))
    return (loss.detach(),) + tuple(grads)


def _case(b, d, nc, seed, *, on_centroid=0, dtype=F64):
    g = _gen(seed)
    c = torch.randn(nc, d, generator=g, dtype=F64)
    labels = torch.randint(0, nc, (b,), generator=g)
    x = c[labels] + 0.7 * torch.randn(b, d, generator=g, dtype=F64)
    x[:on_centroid] = c[labels[:on_centroid]]  # zero distances: the subgradient 0
    return x.to(dtype), labels, c.to(dtype)


@given(
    b=st.integers(1, 40),
    d=st.integers(1, 24),
    nc=st.integers(2, 12),
    seed=st.integers(0, 2**31 - 1),
    on_centroid=st.integers(0, 3),
    reduction=st.sampled_from(REDUCTIONS),
    dtype=st.sampled_from([torch.float32, F64]),
    centroid_grad=st.booleans(),
)
def test_matches_oracle(b, d, nc, seed, on_centroid, reduction, dtype, centroid_grad):
    x, labels, c = _case(b, d, nc, seed, on_centroid=min(on_centroid, b), dtype=dtype)
    ours = _run(fastmine.centroid_triplet_loss, x, labels, c, reduction, centroid_grad=centroid_grad)
    oracle = _run(R.centroid_triplet_loss, x.double(), labels, c.double(), reduction, centroid_grad=centroid_grad)
    for a, e, what in zip(ours, oracle, ("loss", "grad x", "grad centroids")):
        assert a.dtype == dtype
        floor = None if what == "loss" else _grad_floor(e, reduction, b)
        assert_close_rel(a, e, RTOL[dtype] * 4, floor=floor, what=what)


def _grad_floor(expected, reduction, b):
    """A gradient entry is a sum of terms g_i coef (x_i - c_m) / d_im, each of size up to
    |g_i|: its rounding error scales with |g_i|, not with the sum. Where the oracle's gradient
    is exactly 0 by symmetry (B = 1, D = 1, the sample on its centroid with as many centroids
    on either side) no floating-point evaluation matches it to the default floor of 1e-12
    (the previous kernel neither, in float64): floor at the largest |g_i| (upstream
    linspace(0.5, 1.5), divided by B for the mean)."""
    g = 1.5 / b if reduction == "mean" else 1.5
    return max(float(expected.abs().max()), g)


# ---- the GEMM path (B >= 2): inputs where the expanded form |x|^2 + |c|^2 - 2<x, c> cancels ----

# Per-dimension offset putting d^2 ~ 0.011 (|x|^2 + |c|^2), just above the exact-recompute
# threshold (1e-2), for unit centroids and samples at 0.7 from them: the worst case for the
# dot-product form unless the kernel centres the data first.
_THRESHOLD_OFFSET = math.sqrt(1.25 / 0.011)


def _adversarial(kind, seed=11):
    """float32 (x, labels, centroids) of a cancellation-prone kind."""
    g = _gen(seed)
    b, d, nc = {"threshold_offset": (128, 4096, 4), "overflow": (64, 8, 4)}.get(kind, (300, 33, 9))
    c = torch.randn(nc, d, generator=g, dtype=F64)
    labels = torch.randint(0, nc, (b,), generator=g)
    noise = torch.randn(b, d, generator=g, dtype=F64)
    x = c[labels] + 0.7 * noise
    if kind == "near_own":  # a sample 1e-6 from its centroid: its distance and 1/d weight
        x = c[labels] + 1e-6 * noise
    elif kind == "on_own":  # exactly on it: distance 0, subgradient 0
        x[::2] = c[labels[::2]]
    elif kind == "near_other":  # 1e-6 from another class's centroid
        x = c[(labels + 1) % nc] + 1e-6 * noise
    elif kind == "on_other":
        x[::2] = c[(labels[::2] + 1) % nc]
    elif kind == "offset":  # large norms, small differences
        c, x = c + 1e4, x + 1e4
    elif kind == "threshold_offset":
        c, x = c + _THRESHOLD_OFFSET, x + _THRESHOLD_OFFSET
    elif kind == "overflow":  # <x, c> overflows float32; the distances do not
        c, x = c * 1e19, x * 1e19
    elif kind == "underflow":  # the products underflow float32
        c, x = c * 1e-22, x * 1e-22
    elif kind == "duplicate_centroids":
        c[3] = c[5]
    return x.float(), labels, c.float()


ADVERSARIAL = (
    "near_own",
    "on_own",
    "near_other",
    "on_other",
    "offset",
    "threshold_offset",
    "overflow",
    "underflow",
    "duplicate_centroids",
)


@pytest.mark.parametrize("kind", ADVERSARIAL)
def test_gemm_path_adversarial_matches_oracle(kind):
    """float32 loss and both gradients within 1e-5 of the float64 oracle where the GEMM form
    alone is wrong; zero distances give finite (0) subgradients."""
    x, labels, c = _adversarial(kind)
    ours = _run(fastmine.centroid_triplet_loss, x, labels, c, "none")
    oracle = _run(R.centroid_triplet_loss, x.double(), labels, c.double(), "none")
    for a, e, what in zip(ours, oracle, ("loss", "grad x", "grad centroids")):
        assert torch.isfinite(a).all(), what
        scale = float(e.abs().max())  # assert_close_rel's floor is at least 1e-12: rescale
        assert_close_rel(a.double() / scale, e / scale, RTOL[torch.float32], what=f"{kind}: {what}")
    if kind.startswith("on_"):
        _, dist = ops.centroid_triplet(x, labels, c)
        other = 1 if kind == "on_other" else 0
        assert (dist[torch.arange(0, x.shape[0], 2), (labels[::2] + other) % c.shape[0]] == 0).all()


@pytest.mark.parametrize("b,d,nc", [(2, 1, 2), (3, 1, 2), (2, 128, 2), (5, 2, 3), (2, 1, 7)])
@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=str)
def test_smallest_gemm_shapes_match_oracle(b, d, nc, dtype):
    """The GEMM path from B = 2 (two blocks of one sample), D = 1, C = 2 up; one sample on its
    centroid, the others 0.7 or 1e-5 from theirs."""
    for spread, seed in ((0.7, 0), (1e-5, 1)):
        g = _gen(seed)
        c = torch.randn(nc, d, generator=g, dtype=F64)
        labels = torch.arange(b) % nc
        x = c[labels] + spread * torch.randn(b, d, generator=g, dtype=F64)
        x[0] = c[labels[0]]
        ours = _run(fastmine.centroid_triplet_loss, x.to(dtype), labels, c.to(dtype), "none")
        oracle = _run(R.centroid_triplet_loss, x.to(dtype).double(), labels, c.to(dtype).double(), "none")
        for a, e, what in zip(ours, oracle, ("loss", "grad x", "grad centroids")):
            assert_close_rel(
                a, e, RTOL[dtype] * 4, floor=_grad_floor(e, "none", b) if what != "loss" else None, what=what
            )


@pytest.mark.parametrize("b,d,nc", [(9, 16, 33), (5, 64, 16), (33, 16, 9), (700, 33, 9), (130, 8, 65)])
def test_thread_count_does_not_change_the_gemm_path(b, d, nc):
    """Shapes where one multi-threaded MKL call gives different bits for 1 and 2 threads
    (M = 5 or 9 rows, N >= 16): the kernel's fixed GEMM blocks must not."""
    x, labels, c = _case(b, d, nc, seed=12, on_centroid=1, dtype=torch.float32)
    threads = torch.get_num_threads()
    runs = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            runs.append(_run(fastmine.centroid_triplet_loss, x, labels, c, "none"))
    finally:
        torch.set_num_threads(threads)
    for other in runs[1:]:
        for u, v in zip(runs[0], other):
            assert torch.equal(u, v)


def test_formula_by_hand():
    """Two classes on a line: the bound is d_own - d_other / 3."""
    c = torch.tensor([[0.0, 0.0], [4.0, 0.0]], dtype=F64)
    x = torch.tensor([[1.0, 0.0], [4.0, 3.0]], dtype=F64)
    labels = torch.tensor([0, 1])
    loss = fastmine.centroid_triplet_loss(x, labels, c, reduction="none")
    assert loss.tolist() == pytest.approx([1.0 - 3.0 / 3, 3.0 - 5.0 / 3])
    # C = 3: the others' weight is 1/6.
    c3 = torch.cat([c, torch.tensor([[0.0, 6.0]], dtype=F64)])
    loss3 = fastmine.centroid_triplet_loss(x[:1], labels[:1], c3, reduction="sum")
    assert loss3.item() == pytest.approx(1.0 - (3.0 + math.sqrt(37.0)) / 6)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradcheck(reduction):
    x, labels, c = _case(7, 5, 4, seed=2)
    labels[0] = 3
    torch.autograd.gradcheck(
        lambda a, b: fastmine.centroid_triplet_loss(a, labels, b, reduction=reduction),
        (x.requires_grad_(), c.requires_grad_()),
    )


def test_zero_distance_subgradient_is_zero():
    c = fastmine.onehot_centroids(3, 4, dtype=F64)
    x = c[[0, 1]].clone().requires_grad_()
    labels = torch.tensor([0, 1])
    cc = c.clone().requires_grad_()
    loss = fastmine.centroid_triplet_loss(x, labels, cc, reduction="sum")
    gx, gc = torch.autograd.grad(loss, (x, cc))
    assert torch.isfinite(gx).all() and torch.isfinite(gc).all()
    # Only the other classes act: grad x_i = -k sum_{m != y_i} (x_i - c_m) / |x_i - c_m|,
    # k = 1/(3 (C - 1)) = 1/6, |x_i - c_m| = sqrt 2 between one-hot centroids.
    k, s = 1 / 6, math.sqrt(2)
    expected = torch.stack([-k * ((c[0] - c[1]) + (c[0] - c[2])) / s, -k * ((c[1] - c[0]) + (c[1] - c[2])) / s])
    assert_close_rel(gx, expected, 1e-12)
    assert_close_rel(gx, torch.autograd.grad(R.centroid_triplet_loss(x, labels, c, reduction="sum"), x)[0], 1e-12)


def test_onehot_centroids():
    c = fastmine.onehot_centroids(3, 5, scale=2.0, dtype=F64)
    assert c.shape == (3, 5) and c.dtype == F64
    assert torch.equal(c, 2.0 * torch.eye(3, 5, dtype=F64))
    d = torch.cdist(c, c)
    assert torch.allclose(d[~torch.eye(3, dtype=torch.bool)], torch.full((6,), 2.0 * math.sqrt(2), dtype=F64))
    assert fastmine.onehot_centroids(2, 2).dtype == torch.get_default_dtype()
    with pytest.raises(ValueError, match="dim"):
        fastmine.onehot_centroids(5, 4)
    with pytest.raises(ValueError, match="num_classes"):
        fastmine.onehot_centroids(1, 4)
    with pytest.raises(TypeError, match="num_classes"):
        fastmine.onehot_centroids(2.0, 4)
    with pytest.raises(ValueError, match="scale"):
        fastmine.onehot_centroids(2, 4, scale=float("nan"))
    with pytest.raises(TypeError, match="dtype"):
        fastmine.onehot_centroids(2, 4, dtype=torch.long)


def test_onehot_training_separates_classes():
    """A few SGD steps on the bound with one-hot centroids lower it (sanity of sign)."""
    g = _gen(5)
    x = torch.randn(64, 8, generator=g, requires_grad=True)
    labels = torch.randint(0, 4, (64,), generator=g)
    c = fastmine.onehot_centroids(4, 8, scale=3.0)
    opt = torch.optim.SGD([x], lr=0.1)
    first = None
    for _ in range(20):
        opt.zero_grad()
        loss = fastmine.centroid_triplet_loss(x, labels, c)
        first = loss.item() if first is None else first
        (loss * x.shape[0]).backward()
        opt.step()
    assert loss.item() < first - 1.0


@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=str)
def test_nan_propagates(dtype):
    x, labels, c = _case(10, 4, 3, seed=3, dtype=dtype)
    x[4, 2] = float("nan")
    x = x.requires_grad_()
    per = fastmine.centroid_triplet_loss(x, labels, c, reduction="none")
    assert torch.isnan(per[4]) and torch.isfinite(per[torch.arange(10) != 4]).all()
    loss = fastmine.centroid_triplet_loss(x, labels, c)
    assert torch.isnan(loss)
    (g,) = torch.autograd.grad(loss, x)
    assert torch.isnan(g[4]).all()
    cn = c.clone()
    cn[1, 0] = float("inf")
    assert not torch.isfinite(fastmine.centroid_triplet_loss(x.detach(), labels, cn))


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16], ids=str)
def test_half_inputs_on_cpu(half):
    x, labels, c = _case(12, 6, 3, seed=4)
    xh, ch = x.to(half).requires_grad_(), c.to(half).requires_grad_()
    loss = fastmine.centroid_triplet_loss(xh, labels, ch)
    assert loss.dtype == torch.float32
    gx, gc = torch.autograd.grad(loss, (xh, ch))
    assert gx.dtype == half and gc.dtype == half
    assert_close_rel(loss, R.centroid_triplet_loss(xh.double(), labels, ch.double()), 2e-2)


def test_deterministic_across_runs_and_thread_counts():
    x, labels, c = _case(700, 33, 9, seed=6, dtype=torch.float32)
    threads = torch.get_num_threads()
    a = _run(fastmine.centroid_triplet_loss, x, labels, c, "mean")
    b = _run(fastmine.centroid_triplet_loss, x, labels, c, "mean")
    try:
        torch.set_num_threads(1)
        d = _run(fastmine.centroid_triplet_loss, x, labels, c, "mean")
    finally:
        torch.set_num_threads(threads)
    for u, v, w in zip(a, b, d):
        assert torch.equal(u, v) and torch.equal(u, w)


@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=str)
def test_opcheck(dtype):
    x, labels, c = _case(9, 5, 4, seed=7, dtype=dtype)
    torch.library.opcheck(ops.centroid_triplet.default, (x.requires_grad_(), labels, c.requires_grad_()))
    torch.library.opcheck(ops.centroid_triplet.default, (x.detach(), labels, c.detach()))
    loss, dist = ops.centroid_triplet(x.detach(), labels, c.detach())
    for need_c in (True, False):
        torch.library.opcheck(
            ops.centroid_triplet_backward.default, (torch.rand_like(loss), x.detach(), labels, c.detach(), dist, need_c)
        )


@pytest.mark.slow
def test_compile_fullgraph_matches_eager():
    x, labels, c = _case(20, 6, 5, seed=8, dtype=torch.float32)
    x.requires_grad_()
    c.requires_grad_()

    def f(x, labels, c):
        return (
            fastmine.centroid_triplet_loss(x, labels, c)
            + fastmine.centroid_triplet_loss(x, labels, c, reduction="none")[3]
        )

    eager = f(x, labels, c)
    ge = torch.autograd.grad(eager, (x, c))
    compiled = torch.compile(f, fullgraph=True)(x, labels, c)
    gc = torch.autograd.grad(compiled, (x, c))
    assert_close_rel(compiled, eager, 1e-6)
    for a, b in zip(gc, ge):
        assert_close_rel(a, b, 1e-6)
