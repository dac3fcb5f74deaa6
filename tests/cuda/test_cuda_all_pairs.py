"""CUDA kernels of batch_all_triplet_loss and contrastive_loss against the float64 oracle (run on
the GPU too) at sizes past the tiles, CPU agreement, determinism and NaN in large batches.
Skipped without a GPU (every test here carries the ``cuda`` marker); what every op owes on
every device at the table's sizes (degenerate batches, compile, ...) is
properties/test_contract.py's. The batch-all oracle materialises the B x M x M triplet cube in anchor
chunks: its sizes stay where that fits in GPU memory (B = 1024: 8.6 GB of float64 terms)."""

from __future__ import annotations

import itertools

import pytest
import torch

import fastmine
from fastmine import reference as R
from helpers import RTOL, assert_bitwise, assert_close_rel, check_batch_all, check_contrastive, hub_batch, run_all_pairs
from strategies import Case, make_embeddings, make_labels, shape_labels

pytestmark = pytest.mark.cuda

DEV = "cuda"
METRICS = R.METRICS
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# B: not a multiple of any tile size (and 1); D: from 1 to past 2048 (a K-loop remainder).
BS = (1, 7, 65, 257, 1000)
DS = (1, 3, 64, 129, 513, 2050)
NEG_MARGIN = {"euclidean": 1.0, "sqeuclidean": 4.0, "cosine": 0.8}


def _case(b, d, seed, *, lkind="pk", ekind="clustered", ref_m=None, self_offset=None, scale=None):
    g = torch.Generator().manual_seed(seed)
    lab = shape_labels(make_labels(lkind, b, g), shuffle=True, shift=10**12, gen=g)
    x = make_embeddings(ekind, b, d, lab, g)
    if scale is not None:
        x = x * scale
    case = Case(x, lab)
    if ref_m is not None:
        rl = torch.cat([lab, lab.max() + 1 + torch.arange(2)])[torch.randint(0, b + 2, (ref_m,), generator=g)]
        rx = make_embeddings(ekind, ref_m, d, rl, g)
        if scale is not None:
            rx = rx * scale
        if self_offset is not None:
            rx = torch.cat([rx[:self_offset], x, rx[self_offset:]])
            rl = torch.cat([rl[:self_offset], lab, rl[self_offset:]])
        case = Case(x, lab, rx, rl, self_offset)
    return case


def _unit_scale(d):
    """Clustered data with per-coordinate spread 1/sqrt(D): distances O(1) for every D, so
    that the margins meet active and inactive terms alike."""
    return 1.0 / (d**0.5)


# ---- every (B, D) of the grid, every dtype ---------------------------------------------------
# The metric rotates so each (B, D) sees all three across dtypes without a 360-case product.

GRID = [
    (b, d, dt, METRICS[(i + j + k) % 3])
    for (i, b), (j, d), (k, dt) in itertools.product(enumerate(BS), enumerate(DS), enumerate(DTYPES))
]
GRID_BATCH_ALL = [p for p in GRID if p[0] <= 257]  # the oracle's cube: B^3 <= 1.7e7
GRID_CONTRASTIVE = [p for p in GRID if p[0] * p[0] * p[1] <= 3 * 10**8]


@pytest.mark.parametrize("b, d, dtype, metric", GRID_BATCH_ALL, ids=lambda v: str(v).replace("torch.", ""))
def test_batch_all_grid_against_oracle(b, d, dtype, metric):
    case = _case(b, d, seed=b * 7919 + d, scale=_unit_scale(d))
    for reduction, soft, margin in (("mean_positive", False, 0.3), ("sum", True, 0.1), ("mean", False, 1.0)):
        check_batch_all(case, dtype=dtype, device=DEV, metric=metric, reduction=reduction, soft=soft, margin=margin)


@pytest.mark.parametrize("b, d, dtype, metric", GRID_CONTRASTIVE, ids=lambda v: str(v).replace("torch.", ""))
def test_contrastive_grid_against_oracle(b, d, dtype, metric):
    case = _case(b, d, seed=b * 7919 + d, scale=_unit_scale(d))
    nm = NEG_MARGIN[metric] * (3.0 if metric != "cosine" else 1.0)
    for power, reduction in ((2, "mean"), (1, "mean_nonzero"), (1.5, "sum")):
        check_contrastive(
            case,
            dtype=dtype,
            device=DEV,
            metric=metric,
            power=power,
            pos_margin=0.1,
            neg_margin=nm,
            reduction=reduction,
        )


# ---- options: metrics x reductions x dtypes, reference sets --------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("reduction", R.REDUCTIONS_BATCH_ALL)
def test_batch_all_dtypes_metrics_reductions(dtype, metric, reduction):
    case = _case(150, 48, seed=1, lkind="random", ekind="gaussian", scale=_unit_scale(48))
    for soft in (False, True):
        check_batch_all(case, dtype=dtype, device=DEV, metric=metric, reduction=reduction, soft=soft)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("reduction", R.REDUCTIONS_CONTRASTIVE)
def test_contrastive_dtypes_metrics_reductions(dtype, metric, reduction):
    case = _case(300, 48, seed=1, lkind="random", ekind="gaussian", scale=_unit_scale(48))
    for power in (1, 2, 1.5):
        check_contrastive(
            case,
            dtype=dtype,
            device=DEV,
            metric=metric,
            reduction=reduction,
            power=power,
            pos_margin=0.2,
            neg_margin=NEG_MARGIN[metric],
        )


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("self_offset", [None, 0, 37])
def test_ref_set_and_self_offset(dtype, metric, self_offset):
    case = _case(129, 65, seed=2, ref_m=300, self_offset=self_offset, scale=_unit_scale(65))
    check_batch_all(case, dtype=dtype, device=DEV, metric=metric, reduction="mean_positive")
    check_batch_all(case, dtype=dtype, device=DEV, metric=metric, reduction="sum", soft=True)
    check_contrastive(
        case, dtype=dtype, device=DEV, metric=metric, reduction="mean_nonzero", power=1, neg_margin=NEG_MARGIN[metric]
    )
    check_contrastive(
        case, dtype=dtype, device=DEV, metric=metric, reduction="mean", power=2, neg_margin=NEG_MARGIN[metric]
    )


@pytest.mark.parametrize("lkind", ["one_class", "distinct", "singletons", "random"])
@pytest.mark.parametrize("ekind", ["grid", "duplicates"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_label_and_tie_patterns(lkind, ekind, dtype):
    for metric in METRICS:
        case = _case(200, 9, seed=3, lkind=lkind, ekind=ekind)
        check_batch_all(case, dtype=dtype, device=DEV, metric=metric, margin=1.0)
        check_contrastive(
            case, dtype=dtype, device=DEV, metric=metric, power=1, neg_margin=2.0, reduction="mean_nonzero"
        )


# ---- large classes -----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("metric", METRICS)
def test_batch_all_two_classes_large_k_against_oracle(dtype, soft, metric):
    """B = 1024 in 2 classes: 511 positives and 512 negatives per anchor (2.7e8 triplets)."""
    case = _case(1024, 64, seed=8, lkind="one_class", ekind="gaussian", scale=_unit_scale(64))
    case.labels = shape_labels(torch.arange(1024) % 2, shuffle=True, shift=10**12, gen=torch.Generator().manual_seed(8))
    _, info = check_batch_all(
        case, dtype=dtype, device=DEV, metric=metric, soft=soft, reduction="mean_positive", margin=0.2
    )
    assert int(info.num_valid) == 1024 * 511 * 512


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_batch_all_two_classes_4096_cuda_vs_cpu(dtype):
    """The issue's large-class target: 2 classes in a batch of 4096 (K = 2047), CUDA against the
    CPU kernel (the oracle's cube would be 6.9e10 entries)."""
    g = torch.Generator().manual_seed(9)
    lab = torch.arange(4096) % 2
    x = (torch.randn(4096, 128, generator=g, dtype=torch.float64) / 128**0.5).to(dtype)
    cpu = run_all_pairs(fastmine.batch_all_triplet_loss, Case(x, lab), device="cpu", return_info=True, margin=0.2)
    gpu = run_all_pairs(fastmine.batch_all_triplet_loss, Case(x, lab), device=DEV, return_info=True, margin=0.2)
    # both within RTOL of the truth (docs/semantics.md): within 2 RTOL of each other
    rtol = 2 * RTOL[dtype]
    assert int(gpu[1].num_valid) == int(cpu[1].num_valid) == 4096 * 2047 * 2048
    assert abs(int(gpu[1].num_active) - int(cpu[1].num_active)) <= 1e-4 * int(cpu[1].num_active)
    assert_close_rel(gpu[0], cpu[0], rtol, floor=1.0, what="loss cuda vs cpu")
    assert_close_rel(gpu[2], cpu[2], rtol, what="grad cuda vs cpu")


# ---- CPU agreement -----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("metric", METRICS)
def test_cuda_agrees_with_cpu(dtype, metric):
    case = _case(600, 129, seed=4, ref_m=900, self_offset=200, scale=_unit_scale(129))
    rtol = 2 * RTOL[dtype]  # both within RTOL of the truth (docs/semantics.md): within 2 RTOL of each other
    for fn, kw in (
        (fastmine.batch_all_triplet_loss, dict(margin=0.3)),
        (fastmine.batch_all_triplet_loss, dict(margin=0.3, soft=True, reduction="sum")),
        (fastmine.contrastive_loss, dict(power=1, neg_margin=NEG_MARGIN[metric], reduction="mean_nonzero")),
        (fastmine.contrastive_loss, dict(power=2, neg_margin=NEG_MARGIN[metric])),
    ):
        cpu = run_all_pairs(fn, case, dtype=dtype, device="cpu", metric=metric, **kw)
        gpu = run_all_pairs(fn, case, dtype=dtype, device=DEV, metric=metric, **kw)
        assert_close_rel(gpu[0], cpu[0], rtol, floor=1.0, what=f"loss cuda vs cpu {kw}")
        assert_close_rel(gpu[2], cpu[2], rtol, what=f"grad x cuda vs cpu {kw}")
        assert_close_rel(gpu[3], cpu[3], rtol, what=f"grad ref cuda vs cpu {kw}")


# ---- determinism -------------------------------------------------------------------------------


def _once(fn, x, lab, **kw):
    xr = x.clone().requires_grad_(True)
    out = fn(xr, lab, **kw)
    loss, info = out if isinstance(out, tuple) else (out, ())
    return (loss.detach(), *torch.autograd.grad(loss, xr), *info)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("metric", METRICS)
def test_determinism_hub(dtype, metric):
    """One point near everybody (the origin): its gradient row sums ~B contributions."""
    x, lab = hub_batch(b=4097, dtype=dtype, device=DEV)
    cases = (
        (fastmine.batch_all_triplet_loss, dict(margin=30.0, return_info=True)),
        (fastmine.batch_all_triplet_loss, dict(margin=1.0, soft=True, reduction="sum")),
        (fastmine.contrastive_loss, dict(neg_margin=20.0)),
        (fastmine.contrastive_loss, dict(neg_margin=20.0, power=1, reduction="mean_nonzero")),
    )
    for fn, kw in cases:
        first = _once(fn, x, lab, metric=metric, **kw)
        for _ in range(3):
            assert_bitwise(first, _once(fn, x, lab, metric=metric, **kw))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_determinism_ref_set(dtype):
    case = _case(3000, 256, seed=5, ref_m=6000, self_offset=100, scale=_unit_scale(256))
    c = case.to(device=DEV, dtype=dtype)

    def once(fn, **kw):
        xr, rr = c.x.clone().requires_grad_(True), c.ref.clone().requires_grad_(True)
        loss = fn(xr, c.labels, ref_embeddings=rr, ref_labels=c.ref_labels, self_offset=100, **kw)
        return (loss.detach(), *torch.autograd.grad(loss, [xr, rr]))

    for fn, kw in (
        (fastmine.batch_all_triplet_loss, dict(soft=True)),
        (fastmine.contrastive_loss, dict(power=1.5, reduction="sum")),
    ):
        first = once(fn, **kw)
        for _ in range(2):
            assert_bitwise(first, once(fn, **kw))


# ---- NaN in large batches and beyond the first tiles of a reference set ---------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("metric", METRICS)
def test_nan_on_cuda(dtype, metric):
    x = torch.randn(300, 17, device=DEV, dtype=dtype)
    lab = (torch.arange(300) % 5).to(DEV)
    x[123, 4] = float("nan")
    for reduction in R.REDUCTIONS_BATCH_ALL:
        for soft in (False, True):
            loss = fastmine.batch_all_triplet_loss(x, lab, metric=metric, reduction=reduction, soft=soft)
            assert not torch.isfinite(loss), (reduction, soft)
    for reduction in R.REDUCTIONS_CONTRASTIVE:
        for power in (1, 2, 1.5):
            loss = fastmine.contrastive_loss(x, lab, metric=metric, reduction=reduction, power=power)
            assert not torch.isfinite(loss), (reduction, power)
    ref = torch.randn(700, 17, device=DEV, dtype=dtype)
    ref[513, 2] = float("nan")  # beyond the first tiles
    ref_lab = (torch.arange(700) % 5).to(DEV)
    y = x[:50]  # finite rows
    assert not torch.isfinite(
        fastmine.batch_all_triplet_loss(y, lab[:50], metric=metric, ref_embeddings=ref, ref_labels=ref_lab)
    )
    assert not torch.isfinite(
        fastmine.contrastive_loss(y, lab[:50], metric=metric, ref_embeddings=ref, ref_labels=ref_lab)
    )
