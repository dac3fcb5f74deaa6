"""CUDA batch-hard and pairwise kernels against the float64 oracle (run on the GPU too) at
sizes past the tiles, CPU agreement, determinism and NaN in large batches. Skipped without a
GPU (every test here carries the ``cuda`` marker). What every op owes on every device at
the table's sizes (degenerate batches, compile, ...) is properties/test_contract.py's."""

from __future__ import annotations

import itertools

import pytest
import torch

import fastmine
from fastmine import reference as R
from helpers import RTOL, assert_bitwise, assert_close_rel, check_batch_hard, hub_batch, run_fastmine
from helpers import run_twice_inputs as run
from strategies import Case, make_embeddings, make_labels, shape_labels

pytestmark = pytest.mark.cuda

METRICS = R.METRICS
REDUCTIONS = R.REDUCTIONS_BATCH_HARD
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
BS = (1, 7, 65, 257, 1000)
DS = (1, 3, 64, 129, 513, 2050)


def _case(b, d, seed, *, lkind="pk", ekind="clustered", ref_m=None, self_offset=None):
    g = torch.Generator().manual_seed(seed)
    lab = shape_labels(make_labels(lkind, b, g), shuffle=True, shift=10**12, gen=g)
    x = make_embeddings(ekind, b, d, lab, g)
    case = Case(x, lab)
    if ref_m is not None:
        rl = torch.cat([lab, lab.max() + 1 + torch.arange(2)])[torch.randint(0, b + 2, (ref_m,), generator=g)]
        rx = make_embeddings(ekind, ref_m, d, rl, g)
        if self_offset is not None:
            rx = torch.cat([rx[:self_offset], x, rx[self_offset:]])
            rl = torch.cat([rl[:self_offset], lab, rl[self_offset:]])
        case = Case(x, lab, rx, rl, self_offset)
    return case


# Every (B, D) of the grid, every dtype; the metric rotates so each (B, D) sees all three
# across dtypes without a 360-case product.
GRID = [
    (b, d, dt, METRICS[(i + j + k) % 3])
    for (i, b), (j, d), (k, dt) in itertools.product(enumerate(BS), enumerate(DS), enumerate(DTYPES))
    if b * b * d <= 3 * 10**8
]


@pytest.mark.parametrize("b, d, dtype, metric", GRID, ids=lambda v: str(v).replace("torch.", ""))
def test_grid_against_oracle(b, d, dtype, metric):
    case = _case(b, d, seed=b * 7919 + d)
    for reduction, soft in (("mean", False), ("none", True)):
        check_batch_hard(case, dtype=dtype, device="cuda", metric=metric, reduction=reduction, soft=soft)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_dtypes_metrics_reductions(dtype, metric, reduction):
    case = _case(300, 48, seed=1, lkind="random", ekind="gaussian")
    for soft in (False, True):
        check_batch_hard(case, dtype=dtype, device="cuda", metric=metric, reduction=reduction, soft=soft)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("self_offset", [None, 0, 37])
def test_ref_set_and_self_offset(dtype, metric, self_offset):
    case = _case(129, 65, seed=2, ref_m=777, self_offset=self_offset)
    check_batch_hard(case, dtype=dtype, device="cuda", metric=metric, reduction="mean_nonzero")
    check_batch_hard(case, dtype=dtype, device="cuda", metric=metric, reduction="none", soft=True)


@pytest.mark.parametrize("lkind", ["one_class", "distinct", "singletons", "random"])
@pytest.mark.parametrize("ekind", ["grid", "duplicates"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_label_and_tie_patterns(lkind, ekind, dtype):
    for metric in METRICS:
        case = _case(200, 9, seed=3, lkind=lkind, ekind=ekind)
        check_batch_hard(case, dtype=dtype, device="cuda", metric=metric, reduction="none")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("metric", METRICS)
def test_cuda_agrees_with_cpu(dtype, metric):
    case = _case(1000, 129, seed=4, ref_m=1500, self_offset=200)
    cpu = run_fastmine(case, dtype=dtype, device="cpu", metric=metric, reduction="none")
    gpu = run_fastmine(case, dtype=dtype, device="cuda", metric=metric, reduction="none")
    rtol = RTOL[dtype]
    floor = 1.0 if metric == "cosine" else None
    assert_close_rel(gpu[0], cpu[0], rtol, floor=1.0, what="loss cuda vs cpu")
    assert_close_rel(gpu[1].pos_dist, cpu[1].pos_dist, rtol, floor=floor, what="pos_dist cuda vs cpu")
    assert_close_rel(gpu[1].neg_dist, cpu[1].neg_dist, rtol, floor=floor, what="neg_dist cuda vs cpu")
    assert torch.equal(gpu[1].valid.cpu(), cpu[1].valid)
    # clustered random data: no near-ties, the same choices
    assert torch.equal(gpu[1].pos_idx.cpu(), cpu[1].pos_idx)
    assert torch.equal(gpu[1].neg_idx.cpu(), cpu[1].neg_idx)
    assert_close_rel(gpu[2], cpu[2], rtol, what="grad x cuda vs cpu")
    assert_close_rel(gpu[3], cpu[3], rtol, what="grad ref cuda vs cpu")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("metric", METRICS)
def test_determinism_hub(dtype, metric):
    """One point is every anchor's hardest negative: its gradient row sums ~B contributions."""
    x, lab = hub_batch(b=4097, dtype=dtype, device="cuda")
    _, info = fastmine.batch_hard_triplet_loss(x, lab, metric=metric, return_info=True)
    if metric != "cosine":  # (cosine: the origin is at distance 1 from everyone)
        assert bool((info.neg_idx[:-1] == x.shape[0] - 1).all())
    first = run(x, lab, metric=metric, margin=30.0)
    for _ in range(3):
        assert_bitwise(first, run(x, lab, metric=metric, margin=30.0))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_determinism_ref_set(dtype):
    case = _case(3000, 256, seed=5, ref_m=9000, self_offset=100)
    c = case.to(device="cuda", dtype=dtype)
    kw = dict(ref_embeddings=c.ref, ref_labels=c.ref_labels, self_offset=100, soft=True, reduction="none")
    first = run(c.x, c.labels, **kw)
    for _ in range(2):
        assert_bitwise(first, run(c.x, c.labels, **kw))


@pytest.mark.parametrize("metric", METRICS)
def test_return_info_on_cuda(metric):
    case = _case(65, 33, seed=6, lkind="singletons")
    loss, info = check_batch_hard(case, dtype=torch.float32, device="cuda", metric=metric)
    for t in info:
        assert t.device.type == "cuda" or t.dim() == 0
    _, info_cuda = fastmine.batch_hard_triplet_loss(
        case.x.float().cuda(), case.labels.cuda(), metric=metric, return_info=True
    )
    for t in info_cuda:
        assert t.device.type == "cuda", "info tensors live on the input's device"
    assert info_cuda.pos_idx.dtype == torch.int64 and info_cuda.valid.dtype == torch.bool


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("metric", METRICS)
def test_nan_on_cuda(dtype, metric):
    x = torch.randn(300, 17, device="cuda", dtype=dtype)
    lab = (torch.arange(300) % 5).cuda()
    x[123, 4] = float("nan")
    for reduction in REDUCTIONS:
        loss = fastmine.batch_hard_triplet_loss(x, lab, metric=metric, reduction=reduction)
        assert not torch.isfinite(loss).all(), reduction
    per = fastmine.batch_hard_triplet_loss(x, lab, metric=metric, reduction="none")
    assert torch.isnan(per).all(), "row 123 is a candidate of every anchor"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("b, m, d", [(1, 1, 1), (7, 65, 3), (257, 129, 513), (1000, 999, 64), (65, 33, 2050)])
def test_pairwise_cuda(dtype, metric, b, m, d):
    g = torch.Generator().manual_seed(b + m + d)
    x = torch.randn(b, d, generator=g, dtype=torch.float64).to(dtype)
    y = torch.randn(m, d, generator=g, dtype=torch.float64).to(dtype)
    y[: min(b, m) // 2] = x[: min(b, m) // 2]  # zero distances
    w = torch.randn(b, m, generator=g, dtype=torch.float64)
    xc, yc = x.cuda().requires_grad_(True), y.cuda().requires_grad_(True)
    dk = fastmine.pairwise_distance(xc, yc, metric=metric)
    gx, gy = torch.autograd.grad((dk * w.to(dk.dtype).cuda()).sum(), [xc, yc])
    assert gx.dtype == dtype and gy.dtype == dtype
    x64, y64 = x.double().cuda().requires_grad_(True), y.double().cuda().requires_grad_(True)
    do = R.pairwise_distance(x64, y64, metric=metric)
    ox, oy = torch.autograd.grad((do * w.cuda()).sum(), [x64, y64])
    rtol = RTOL[dtype]
    assert_close_rel(dk, do, rtol, floor=1.0 if metric == "cosine" else None, what="distances")
    assert torch.isfinite(gx).all() and torch.isfinite(gy).all()
    scale = float(w.abs().sum(1).max()) * (1.0 if metric == "euclidean" else 10.0)
    assert_close_rel(gx, ox, rtol, floor=max(float(ox.abs().max()), 1e-2 * scale), what="grad x")
    assert_close_rel(gy, oy, rtol, floor=max(float(oy.abs().max()), 1e-2 * scale), what="grad y")


def test_tf32_opt_in_tolerance():
    """With TF32 explicitly enabled, float32 owes 1e-4 (and may select within TF32 rounding)."""
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        case = _case(1000, 256, seed=7)
        for metric in METRICS:
            check_batch_hard(case, dtype=torch.float32, device="cuda", metric=metric, rtol=1e-4, sel_eps=2.0**-11)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
