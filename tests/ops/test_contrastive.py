"""fastmine.contrastive_loss against the float64 oracle (fastmine/reference.py), and the
seeds' Hadsell formula.

See tests/support/helpers.py::check_contrastive for what one comparison checks (loss and gradients,
non-zero counts within the rounding band of the hinge's kink for "mean_nonzero").
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fastmine
from fastmine import reference as R
from helpers import assert_close_rel, check_contrastive, run_all_pairs
from strategies import Case, batch_hard_cases, examples, make_embeddings, make_labels, shape_labels

METRICS = R.METRICS
REDUCTIONS = R.REDUCTIONS_CONTRASTIVE
F64 = torch.float64
powers = st.sampled_from([1, 2, 1.5, 3.0])
powers64 = st.sampled_from([1, 2, 1.5, 3.0, 0.5])  # power < 1: steep near the kink, float64 only
pos_margins = st.sampled_from([0.0, 0.0, 0.1, 0.5, 2.0, -0.5])
neg_margins = st.sampled_from([0.0, 0.5, 1.0, 2.0, 5.0, 30.0, -1.0])


# ---- float64 parity over hypothesis cases --------------------------------------------------


@pytest.mark.parametrize("metric", METRICS)
@given(
    case=batch_hard_cases(max_b=48, ref=False),
    power=powers64,
    pos_margin=pos_margins,
    neg_margin=neg_margins,
    reduction=st.sampled_from(REDUCTIONS),
)
@settings(max_examples=examples(15))
def test_float64_parity(metric, case, power, pos_margin, neg_margin, reduction):
    check_contrastive(
        case, metric=metric, power=power, pos_margin=pos_margin, neg_margin=neg_margin, reduction=reduction
    )


@pytest.mark.parametrize("metric", METRICS)
@given(
    case=batch_hard_cases(max_b=48, ref=True),
    power=powers64,
    pos_margin=pos_margins,
    neg_margin=neg_margins,
    reduction=st.sampled_from(REDUCTIONS),
)
@settings(max_examples=examples(15))
def test_float64_parity_ref_set(metric, case, power, pos_margin, neg_margin, reduction):
    check_contrastive(
        case, metric=metric, power=power, pos_margin=pos_margin, neg_margin=neg_margin, reduction=reduction
    )


@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean"])
@given(
    case=batch_hard_cases(max_b=48, embedding_kinds=("grid",)),
    power=powers,
    pos_margin=st.sampled_from([0.0, 1.0, 2.0]),
    neg_margin=st.sampled_from([1.0, 2.0, 4.0]),
    reduction=st.sampled_from(REDUCTIONS),
    dtype=st.sampled_from([F64, torch.float32]),
)
@settings(max_examples=examples(12))
def test_exact_grid_data(metric, case, power, pos_margin, neg_margin, reduction, dtype):
    """Integer data: many pairs exactly at a margin (d = pos_margin or d = neg_margin): a term
    at its kink is 0, has gradient 0 and is not counted by mean_nonzero."""
    check_contrastive(
        case, dtype=dtype, metric=metric, power=power, pos_margin=pos_margin, neg_margin=neg_margin, reduction=reduction
    )


@pytest.mark.parametrize("metric", METRICS)
@given(
    case=batch_hard_cases(max_b=48, embedding_kinds=("gaussian", "clustered", "duplicates")),
    power=powers,
    pos_margin=pos_margins,
    neg_margin=neg_margins,
    reduction=st.sampled_from(REDUCTIONS),
)
@settings(max_examples=examples(10))
def test_float32_vs_float64_oracle(metric, case, power, pos_margin, neg_margin, reduction):
    check_contrastive(
        case,
        dtype=torch.float32,
        metric=metric,
        power=power,
        pos_margin=pos_margin,
        neg_margin=neg_margin,
        reduction=reduction,
    )


@pytest.mark.parametrize("b, d, ref_m", [(300, 8, None), (270, 8, 100)])
@pytest.mark.parametrize("metric", METRICS)
def test_larger_float32(b, d, ref_m, metric):
    """Two CPU row panels (a panel holds at most 256 anchors), float32 against the float64
    oracle."""
    g = torch.Generator().manual_seed(b + d)
    lab = shape_labels(make_labels("pk", b, g), shuffle=True, shift=10**12, gen=g)
    x = make_embeddings("gaussian", b, d, lab, g)
    case = Case(x, lab)
    if ref_m is not None:
        rl = lab[torch.randint(0, b, (ref_m,), generator=g)]
        case = Case(x, lab, make_embeddings("gaussian", ref_m, d, rl, g), rl)
    nm = {"euclidean": 4.0, "sqeuclidean": 16.0, "cosine": 1.0}[metric]
    for power, reduction in ((2, "mean"), (1, "mean_nonzero"), (1.5, "sum")):
        check_contrastive(
            case, dtype=torch.float32, metric=metric, power=power, neg_margin=nm, pos_margin=0.5, reduction=reduction
        )


@pytest.mark.parametrize("self_offset", [None, 0, 1, 49, 60])
@pytest.mark.parametrize("metric", METRICS)
def test_unpaired_columns_at_simd_block_edges(self_offset, metric):
    """The CPU pass splits each row into blocks of 64 columns and runs a SIMD loop over the
    paired runs of a block: the excluded column (i + self_offset) and the triangle's edge
    (j <= i) fall on every position of a block here, its first and last included, and one
    anchor has an exact copy in the reference set (that block goes pair by pair)."""
    g = torch.Generator().manual_seed(7 + (self_offset or 0))
    b, m, d = 140, 200, 5
    lab = make_labels("pk", b, g)
    x = torch.randn(b, d, generator=g, dtype=F64)
    if self_offset is None:
        x[100] = x[3]  # a copy inside the batch: its pair (3, 100) is a near-duplicate
        case = Case(x, lab)
    else:
        rl = lab[torch.randint(0, b, (m,), generator=g)]
        ref = torch.randn(m, d, generator=g, dtype=F64)
        ref[70] = x[5]  # a copy in the reference set, in the second block of anchor 5's row
        case = Case(x, lab, ref, rl, self_offset)
    for dtype in (F64, torch.float32):
        for power, reduction in ((2, "mean"), (1, "mean_nonzero")):
            check_contrastive(case, dtype=dtype, metric=metric, power=power, neg_margin=2.0, reduction=reduction)


# ---- hand-computed values and the seeds' formula ------------------------------------------------


def _line(*vals):
    return torch.tensor([[float(v)] for v in vals], dtype=F64)


@pytest.mark.parametrize(
    "power, reduction, expected",
    [
        (2, "sum", 10.25),
        (2, "mean", 10.25 / 6),
        (2, "mean_nonzero", 5.25),
        (1, "sum", 4.5),
        (1, "mean", 4.5 / 6),
        (1, "mean_nonzero", 2.5),
        (1.5, "sum", 1 + 27**0.5 + 0.5**1.5),
    ],
)
def test_line_hand_values(power, reduction, expected):
    # points 0, 1 (class 0), 3, 6 (class 1); neg_margin 2.5. Unordered pairs:
    # (0,1) same d=1; (2,3) same d=3; (0,2) d=3, (0,3) d=6, (1,2) d=2, (1,3) d=5 different:
    # only (1,2) is inside the negative margin (2.5 - 2 = 0.5).
    x = _line(0, 1, 3, 6).requires_grad_(True)
    y = torch.tensor([0, 0, 1, 1])
    loss = fastmine.contrastive_loss(x, y, neg_margin=2.5, power=power, reduction=reduction)
    assert loss.item() == pytest.approx(expected, rel=1e-14)
    o = R.contrastive_loss(x, y, neg_margin=2.5, power=power, reduction=reduction)
    assert o.item() == pytest.approx(expected, rel=1e-14)
    (g,) = torch.autograd.grad(loss, x)
    (go,) = torch.autograd.grad(o, x)
    assert_close_rel(g, go, 1e-13, what="grad")
    if power == 2 and reduction == "sum":
        # d/dx: (x1-x0)^2 -> x0: -2, x1: +2; (x3-x2)^2 -> x2: -6, x3: +6; (2.5-(x2-x1))^2 ->
        # x1: +2*0.5 = 1, x2: -1
        assert g.flatten().tolist() == pytest.approx([-2, 3, -7, 6], abs=1e-14)


def test_pos_margin():
    x = _line(0, 1, 3, 6)
    y = torch.tensor([0, 0, 1, 1])
    # same-label pairs at d = 1 and 3, pos_margin 2: only the second, by 1
    loss = fastmine.contrastive_loss(x, y, pos_margin=2.0, neg_margin=0.0, reduction="sum")
    assert loss.item() == pytest.approx(1.0, rel=1e-14)


def _hadsell_loops(x, y, m):
    """The seeds' formula verbatim: L = 1/(2N) sum over the N unordered pairs of
    y d^2 + (1 - y) max(m - d, 0)^2, with y = 1 for a same-label pair."""
    xs, ys = x.tolist(), y.tolist()
    total, n = 0.0, 0
    for i in range(len(xs)):
        for j in range(i + 1, len(xs)):
            d = math.sqrt(sum((a - b) ** 2 for a, b in zip(xs[i], xs[j])))
            same = 1.0 if ys[i] == ys[j] else 0.0
            total += same * d * d + (1 - same) * max(m - d, 0.0) ** 2
            n += 1
    return total / (2 * n)


def _hadsell_torch(x, y, m):
    """The same, vectorised with torch.pdist (an independent distance code path)."""
    d = torch.nn.functional.pdist(x)
    iu = torch.triu_indices(x.shape[0], x.shape[0], 1)
    same = (y[iu[0]] == y[iu[1]]).to(x.dtype)
    return (same * d**2 + (1 - same) * torch.relu(m - d) ** 2).sum() / (2 * d.numel())


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("m", [0.5, 1.0, 2.0, 4.0])
def test_seeds_hadsell_formula_is_half_the_mean(seed, m):
    g = torch.Generator().manual_seed(seed)
    b = 6 + 5 * seed
    y = torch.randint(0, 3, (b,), generator=g)
    x = torch.randn(b, 5, generator=g, dtype=F64)  # distinct points: pdist's gradient is finite
    xe, xh = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ours = fastmine.contrastive_loss(xe, y, neg_margin=m)  # defaults: pos_margin 0, power 2, mean
    seeds = _hadsell_torch(xh, y, m)
    assert ours.item() * 0.5 == pytest.approx(_hadsell_loops(x, y, m), rel=1e-12)
    assert_close_rel(0.5 * ours, seeds, 1e-12, what="0.5 x mean vs the seeds' formula")
    (g1,) = torch.autograd.grad(0.5 * ours, xe)
    (g2,) = torch.autograd.grad(seeds, xh)
    assert_close_rel(g1, g2, 1e-12, what="gradient vs the seeds' formula")


# ---- degenerate batches -----------------------------------------------------------------------


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("power", [1, 2, 1.5])
def test_no_pair(metric, reduction, power):
    """B = 1 (no pair), and a one-row reference set that is the anchor itself: 0.0, attached."""
    x = torch.randn(1, 5, dtype=F64, requires_grad=True)
    for kw in ({}, dict(ref_embeddings=x, ref_labels=torch.tensor([3]), self_offset=0)):
        loss = fastmine.contrastive_loss(x, torch.tensor([3]), metric=metric, power=power, reduction=reduction, **kw)
        assert loss.requires_grad, "a zero loss must stay attached to the graph"
        assert loss.shape == () and loss.item() == 0.0
        (gx,) = torch.autograd.grad(loss, x)
        assert torch.equal(gx, torch.zeros_like(x))
        o = R.contrastive_loss(x, torch.tensor([3]), metric=metric, power=power, reduction=reduction, **kw)
        assert o.requires_grad and o.item() == 0.0


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("labels", [[2, 2, 2, 2, 2], [0, 1, 2, 3, 4]], ids=["one-class", "distinct"])
def test_one_sided_batches(metric, reduction, labels):
    """One class: only positive pairs; all labels distinct: only negative pairs. The empty part
    contributes 0 (mean_nonzero never divides by zero)."""
    g = torch.Generator().manual_seed(len(labels))
    x = torch.randn(len(labels), 4, generator=g, dtype=F64)
    y = torch.tensor(labels)
    for kw in (dict(pos_margin=0.5, neg_margin=1.0), dict(pos_margin=100.0, neg_margin=0.0)):
        loss = check_contrastive(Case(x, y), metric=metric, reduction=reduction, **kw)
        assert torch.isfinite(loss)
        if kw["pos_margin"] == 100.0:  # no term is non-zero at all
            assert loss.item() == 0.0


def test_no_nonzero_term_is_attached_zero():
    x = torch.tensor([[0.0], [0.1], [10.0], [10.1]], dtype=F64, requires_grad=True)
    for reduction in REDUCTIONS:
        loss = fastmine.contrastive_loss(
            x, torch.tensor([0, 0, 1, 1]), pos_margin=1.0, neg_margin=1.0, reduction=reduction
        )
        assert loss.requires_grad and loss.item() == 0.0
        (gx,) = torch.autograd.grad(loss, x)
        assert torch.equal(gx, torch.zeros_like(x))


# ---- pairs: unordered without a reference set, ordered with one --------------------------------


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("power", [1, 2, 1.5])
def test_self_offset_ref_counts_ordered_pairs(metric, power):
    """ref = x with self_offset = 0 counts every pair twice ((i, j) and (j, i)): the sum doubles,
    the means (numerator and denominators doubled) are unchanged."""
    g = torch.Generator().manual_seed(6)
    x = torch.randn(20, 6, generator=g, dtype=F64)
    lab = torch.arange(20) % 4
    kw = dict(metric=metric, power=power, pos_margin=0.2, neg_margin=1.5 if metric != "sqeuclidean" else 12.0)
    ref = dict(ref_embeddings=x, ref_labels=lab, self_offset=0)
    for reduction in REDUCTIONS:
        a = fastmine.contrastive_loss(x, lab, reduction=reduction, **kw)
        b = fastmine.contrastive_loss(x, lab, reduction=reduction, **ref, **kw)
        factor = 2.0 if reduction == "sum" else 1.0
        assert_close_rel(b, factor * a, 1e-12, what=reduction)
    pre = torch.randn(7, 6, generator=g, dtype=F64) + 3
    post = torch.randn(3, 6, generator=g, dtype=F64) - 3
    refx = torch.cat([pre, x, post])
    refl = torch.cat([torch.full((7,), 50), lab, torch.full((3,), 1)])
    for off in (None, 0, 7, 10):
        for reduction in REDUCTIONS:
            check_contrastive(Case(x, lab, refx, refl, off), reduction=reduction, **kw)


def test_without_self_offset_own_copy_is_a_pair():
    x = _line(0, 4)
    y = torch.tensor([0, 1])
    ref = _line(0, 4, 1)
    ref_y = torch.tensor([0, 1, 0])
    # pairs: (0,0) d0 same, (0,1) d4 diff, (0,2) d1 same, (1,0) d4 diff, (1,1) d0 same, (1,2) d3 diff
    loss = fastmine.contrastive_loss(
        x, y, ref_embeddings=ref, ref_labels=ref_y, neg_margin=3.5, power=1, reduction="mean"
    )
    assert loss.item() == pytest.approx((1 + 0.5) / 6, rel=1e-14)
    loss = fastmine.contrastive_loss(
        x, y, ref_embeddings=ref, ref_labels=ref_y, neg_margin=3.5, power=1, reduction="mean", self_offset=0
    )
    assert loss.item() == pytest.approx((1 + 0.5) / 4, rel=1e-14)


# ---- labels, layouts ------------------------------------------------------------------------------


def test_defaults():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(12, 3, generator=g, dtype=F64)
    y = torch.arange(12) % 3
    assert torch.equal(
        fastmine.contrastive_loss(x, y),
        fastmine.contrastive_loss(x, y, pos_margin=0.0, neg_margin=1.0, power=2, metric="euclidean", reduction="mean"),
    )
    x = torch.zeros(3, 2, dtype=F64)  # all distances 0: negatives cost (1 - 0)^2 = 1
    assert fastmine.contrastive_loss(x, torch.tensor([0, 0, 1])).item() == pytest.approx(2 / 3)


@pytest.mark.parametrize("metric", METRICS)
def test_duplicate_embeddings(metric):
    g = torch.Generator().manual_seed(3)
    base = torch.randn(4, 6, generator=g, dtype=F64)
    x = base[torch.tensor([0, 0, 1, 1, 2, 2, 3, 0, 1, 2])]
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 3, 3])
    for reduction in REDUCTIONS:
        for power in (1, 2, 1.5):
            loss = check_contrastive(Case(x, labels), metric=metric, reduction=reduction, power=power, neg_margin=2.0)
            assert torch.isfinite(loss)
    _, _, gx, _ = run_all_pairs(fastmine.contrastive_loss, Case(x, labels), metric=metric, power=1)
    assert torch.isfinite(gx).all()


@pytest.mark.parametrize("metric", METRICS)
def test_huge_and_negative_labels(metric):
    g = torch.Generator().manual_seed(1)
    lab0 = make_labels("pk", 24, g)
    x = make_embeddings("gaussian", 24, 5, lab0, g)
    base = check_contrastive(Case(x, lab0), metric=metric, neg_margin=3.0)
    for shift in (10**12, -(10**12), -7, 2**62):
        lab = shape_labels(lab0, shuffle=False, shift=shift, gen=g)
        loss = check_contrastive(Case(x, lab), metric=metric, neg_margin=3.0)
        assert torch.equal(loss, base), f"labels shifted by {shift} changed the loss"
    lab = torch.tensor([0, 2**40, 0, 2**40] * 6, dtype=torch.int64)
    check_contrastive(Case(x, lab), metric=metric, neg_margin=3.0, reduction="mean_nonzero")


def test_unsorted_labels_equal_permuted_sorted():
    g = torch.Generator().manual_seed(2)
    lab = make_labels("random", 40, g)
    x = make_embeddings("gaussian", 40, 7, lab, g)
    perm = torch.randperm(40, generator=g)
    for reduction in REDUCTIONS:
        a = fastmine.contrastive_loss(x, lab, neg_margin=4.0, reduction=reduction)
        b = fastmine.contrastive_loss(x[perm], lab[perm], neg_margin=4.0, reduction=reduction)
        assert_close_rel(b, a, 1e-12, what=f"permuted loss {reduction}")


@pytest.mark.parametrize("label_dtype", [torch.int32, torch.int16, torch.uint8, torch.int8])
def test_other_integer_label_dtypes(label_dtype):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(16, 4, generator=g, dtype=F64)
    lab = torch.arange(16) % 4
    a = fastmine.contrastive_loss(x, lab, neg_margin=3.0)
    b = fastmine.contrastive_loss(x, lab.to(label_dtype), neg_margin=3.0)
    assert torch.equal(a, b)


def test_non_contiguous_inputs():
    g = torch.Generator().manual_seed(5)
    xt = torch.randn(6, 20, generator=g, dtype=F64)
    lab = (torch.arange(40) % 5)[::2]
    ref_t = torch.randn(6, 30, generator=g, dtype=F64)
    ref_lab = (torch.arange(60) % 5)[::2]
    for metric in METRICS:
        for kw in ({}, dict(ref_embeddings=ref_t.T, ref_labels=ref_lab)):
            a = fastmine.contrastive_loss(xt.T, lab, metric=metric, neg_margin=3.0, **kw)
            b = R.contrastive_loss(xt.T, lab, metric=metric, neg_margin=3.0, **kw)
            assert_close_rel(a, b, 1e-12, what="non-contiguous")
    check_contrastive(Case(xt.T, lab, ref_t.T, ref_lab), neg_margin=3.0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_on_cpu(dtype):
    g = torch.Generator().manual_seed(8)
    lab = torch.arange(32) % 4
    x = make_embeddings("gaussian", 32, 8, lab, g)
    for power, reduction in ((2, "mean"), (1, "mean_nonzero")):
        check_contrastive(Case(x, lab), dtype=dtype, power=power, neg_margin=4.0, reduction=reduction)
