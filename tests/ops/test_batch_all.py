"""fastmine.batch_all_triplet_loss against the float64 oracle (fastmine/reference.py).

See tests/support/helpers.py::check_batch_all for what one comparison checks (info counts exactly or
within the rounding band of the hinge's kink, loss, gradients of embeddings and reference).
The oracle materialises the B x M x M triplet cube, so B stays small (<= 48, M <= 96) here.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fastmine
from fastmine import reference as R
from helpers import assert_close_rel, check_batch_all, run_all_pairs
from strategies import Case, batch_hard_cases, examples, make_embeddings, make_labels, shape_labels

METRICS = R.METRICS
REDUCTIONS = R.REDUCTIONS_BATCH_ALL
F64 = torch.float64
margins = st.sampled_from([0.0, 0.3, 1.0, 0.05, 2.5, -0.5])
MAX_B = 40  # the oracle's cube is B x M x M, M <= 2 * MAX_B with a reference set


# ---- float64 parity over hypothesis cases --------------------------------------------------


@pytest.mark.parametrize("metric", METRICS)
@given(
    case=batch_hard_cases(max_b=MAX_B, ref=False),
    soft=st.booleans(),
    reduction=st.sampled_from(REDUCTIONS),
    margin=margins,
)
@settings(max_examples=examples(15))
def test_float64_parity(metric, case, soft, reduction, margin):
    check_batch_all(case, metric=metric, soft=soft, reduction=reduction, margin=margin)


@pytest.mark.parametrize("metric", METRICS)
@given(
    case=batch_hard_cases(max_b=MAX_B, ref=True),
    soft=st.booleans(),
    reduction=st.sampled_from(REDUCTIONS),
    margin=margins,
)
@settings(max_examples=examples(15))
def test_float64_parity_ref_set(metric, case, soft, reduction, margin):
    check_batch_all(case, metric=metric, soft=soft, reduction=reduction, margin=margin)


@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean"])
@given(
    case=batch_hard_cases(max_b=MAX_B, embedding_kinds=("grid",)),
    soft=st.booleans(),
    reduction=st.sampled_from(REDUCTIONS),
    margin=st.sampled_from([0.0, 1.0, 2.0, 0.3]),
    dtype=st.sampled_from([torch.float64, torch.float32]),
)
@settings(max_examples=examples(12))
def test_exact_grid_data(metric, case, soft, reduction, margin, dtype):
    """Small-integer embeddings: many exact ties and terms exactly at the kink (z = 0 with
    margins 0, 1, 2): a kink term is inactive (0 loss, 0 gradient, not counted)."""
    check_batch_all(case, dtype=dtype, metric=metric, soft=soft, reduction=reduction, margin=margin)


@pytest.mark.parametrize("metric", METRICS)
@given(
    case=batch_hard_cases(max_b=32, embedding_kinds=("gaussian", "clustered", "duplicates")),
    soft=st.booleans(),
    reduction=st.sampled_from(REDUCTIONS),
    margin=margins,
)
@settings(max_examples=examples(10))
def test_float32_vs_float64_oracle(metric, case, soft, reduction, margin):
    check_batch_all(case, dtype=torch.float32, metric=metric, soft=soft, reduction=reduction, margin=margin)


# ---- large classes: K positives per anchor ~ B / 2 --------------------------------------------


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("soft", [False, True])
def test_two_classes_large_k(metric, soft):
    """2 classes in a batch of 96: 47 positives and 48 negatives per anchor (216 576 triplets),
    the case that breaks P x K-only designs (a positives buffer sized for small K)."""
    g = torch.Generator().manual_seed(96)
    lab = shape_labels(torch.arange(96) % 2, shuffle=True, shift=10**12, gen=g)
    x = make_embeddings("gaussian", 96, 16, lab, g)
    for dtype, reduction, margin in ((F64, "mean_positive", 0.3), (torch.float32, "mean", 1.0), (F64, "sum", 5.0)):
        _, info = check_batch_all(
            Case(x, lab), dtype=dtype, metric=metric, soft=soft, reduction=reduction, margin=margin
        )
        assert int(info.num_valid) == 96 * 47 * 48
        assert info.valid_per_anchor.tolist() == [47 * 48] * 96


def test_two_classes_large_k_ref_set_self_offset():
    g = torch.Generator().manual_seed(97)
    lab = torch.arange(40) % 2
    x = make_embeddings("gaussian", 40, 8, lab, g)
    extra = make_embeddings("gaussian", 30, 8, lab, g)
    extra_lab = torch.arange(30) % 2
    case = Case(x, lab, torch.cat([extra[:10], x, extra[10:]]), torch.cat([extra_lab[:10], lab, extra_lab[10:]]), 10)
    for soft in (False, True):
        _, info = check_batch_all(case, soft=soft, margin=0.5)
        assert info.valid_per_anchor.tolist() == [34 * 35] * 40


# ---- hand-computed values -------------------------------------------------------------------


def _line(*vals):
    return torch.tensor([[float(v)] for v in vals], dtype=F64)


@pytest.mark.parametrize("reduction, expected", [("mean_positive", 0.8), ("mean", 0.2), ("sum", 1.6)])
def test_line_hand_values(reduction, expected):
    # points 0, 1 (class 0) and 3, 6 (class 1), margin 0.3: the 8 triplets' z are
    # a0: 1-3, 1-6; a1: 1-2, 1-5; a2: 3-3, 3-2; a3: 3-6, 3-5 (+0.3): active 0.3 and 1.3.
    x = _line(0, 1, 3, 6).requires_grad_(True)
    y = torch.tensor([0, 0, 1, 1])
    loss, info = fastmine.batch_all_triplet_loss(x, y, reduction=reduction, return_info=True)
    assert loss.item() == pytest.approx(expected, rel=1e-14)
    assert info.valid_per_anchor.tolist() == [2, 2, 2, 2]
    assert info.active_per_anchor.tolist() == [0, 0, 2, 0]
    assert int(info.num_valid) == 8 and int(info.num_active) == 2
    assert float(info.active_fraction) == pytest.approx(0.25)
    loss.backward()
    # both active triplets have anchor 2 (x = 3), positive 3 (x = 6), negatives 0 and 1:
    # d/dx of (x3 - x2) - (x2 - x_n): x3 += 2, x2 -= 4 (2 from d_ap, 1 + 1 from d_an), x0, x1 += 1
    scale = {"mean_positive": 1 / 2, "mean": 1 / 8, "sum": 1.0}[reduction]
    assert x.grad.flatten().tolist() == pytest.approx([s * scale for s in (1, 1, -4, 2)], abs=1e-15)
    o, io = R.batch_all_triplet_loss(x.detach(), y, reduction=reduction, return_info=True)
    assert o.item() == pytest.approx(expected, rel=1e-14)
    for a, b in zip(info, io):
        assert torch.equal(a, b)


def test_line_soft_and_sqeuclidean():
    x = _line(0, 1, 3, 6)
    y = torch.tensor([0, 0, 1, 1])
    zs = [1 - 3, 1 - 6, 1 - 2, 1 - 5, 3 - 3, 3 - 2, 3 - 6, 3 - 5]
    sp = torch.nn.functional.softplus(torch.tensor(zs, dtype=F64))
    got = fastmine.batch_all_triplet_loss(x, y, soft=True, margin=0.0, reduction="sum")
    assert got.item() == pytest.approx(float(sp.sum()), rel=1e-14)
    got = fastmine.batch_all_triplet_loss(x, y, soft=True, margin=0.0)  # every softplus > 0
    assert got.item() == pytest.approx(float(sp.mean()), rel=1e-14)
    sq = [1 - 9, 1 - 36, 1 - 4, 1 - 25, 9 - 9, 9 - 4, 9 - 36, 9 - 25]
    got = fastmine.batch_all_triplet_loss(x, y, metric="sqeuclidean", margin=0.5, reduction="sum")
    assert got.item() == pytest.approx(sum(max(z + 0.5, 0) for z in sq), rel=1e-14)


def test_reductions_are_consistent():
    g = torch.Generator().manual_seed(1)
    lab = make_labels("random", 30, g)
    x = make_embeddings("clustered", 30, 6, lab, g)
    s, info = fastmine.batch_all_triplet_loss(x, lab, reduction="sum", margin=1.0, return_info=True)
    mp = fastmine.batch_all_triplet_loss(x, lab, reduction="mean_positive", margin=1.0)
    mn = fastmine.batch_all_triplet_loss(x, lab, reduction="mean", margin=1.0)
    assert int(info.num_active) > 0
    assert mp.item() == pytest.approx(s.item() / int(info.num_active), rel=1e-13)
    assert mn.item() == pytest.approx(s.item() / int(info.num_valid), rel=1e-13)


# ---- degenerate batches -----------------------------------------------------------------------


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize(
    "labels", [[0], [2, 2, 2, 2], [0, 1, 2, 3], [5, 6, 7]], ids=["B=1", "one-class", "distinct", "distinct3"]
)
def test_no_triplet(metric, reduction, soft, labels):
    g = torch.Generator().manual_seed(len(labels))
    x = torch.randn(len(labels), 5, generator=g, dtype=F64, requires_grad=True)
    loss, info = fastmine.batch_all_triplet_loss(
        x, torch.tensor(labels), metric=metric, soft=soft, reduction=reduction, return_info=True
    )
    assert loss.requires_grad, "a zero loss must stay attached to the graph"
    assert loss.shape == () and loss.item() == 0.0 and not torch.isnan(loss)
    (gx,) = torch.autograd.grad(loss, x)
    assert torch.equal(gx, torch.zeros_like(x))
    assert int(info.num_valid) == 0 and int(info.num_active) == 0
    assert float(info.active_fraction) == 0.0
    assert info.valid_per_anchor.tolist() == [0] * len(labels)
    o = R.batch_all_triplet_loss(x, torch.tensor(labels), metric=metric, soft=soft, reduction=reduction)
    assert o.requires_grad and o.item() == 0.0


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_no_active_triplet_is_attached_zero(reduction):
    """Valid triplets, none active (classes far apart, margin 0): 0.0, zero gradient, and
    mean_positive does not divide by zero."""
    x = torch.tensor([[0.0], [0.1], [10.0], [10.1]], dtype=F64, requires_grad=True)
    loss, info = fastmine.batch_all_triplet_loss(
        x, torch.tensor([0, 0, 1, 1]), margin=0.0, reduction=reduction, return_info=True
    )
    assert int(info.num_valid) == 8 and int(info.num_active) == 0
    assert loss.requires_grad and loss.item() == 0.0
    (gx,) = torch.autograd.grad(loss, x)
    assert torch.equal(gx, torch.zeros_like(x))


def test_singleton_anchor_is_a_negative_only():
    # class 9 (row 4) has no positive: no triplet of its own, but it is everyone's negative
    x = _line(0, 1, 3, 6, 2)
    y = torch.tensor([0, 0, 1, 1, 9])
    loss, info = fastmine.batch_all_triplet_loss(x, y, return_info=True)
    assert info.valid_per_anchor.tolist() == [3, 3, 3, 3, 0]
    check_batch_all(Case(x, y), reduction="sum")


# ---- info, labels, layouts ---------------------------------------------------------------------


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("soft", [False, True])
def test_return_info_fields(metric, soft):
    g = torch.Generator().manual_seed(7)
    lab = torch.tensor([0, 0, 1, 1, 2, 3, 3, 3])  # class sizes 2, 2, 1, 3
    x = torch.randn(8, 3, generator=g, dtype=F64, requires_grad=True)
    loss, info = fastmine.batch_all_triplet_loss(x, lab, metric=metric, soft=soft, return_info=True)
    assert isinstance(info, fastmine.BatchAllInfo)
    # K (positives) x N (negatives) per anchor
    assert info.valid_per_anchor.tolist() == [1 * 6, 1 * 6, 1 * 6, 1 * 6, 0, 2 * 5, 2 * 5, 2 * 5]
    assert int(info.num_valid) == 4 * 6 + 3 * 10
    for t in info:
        assert not t.requires_grad
    assert bool((info.active_per_anchor <= info.valid_per_anchor).all())
    if soft:  # softplus is > 0 everywhere (no underflow at these sizes)
        assert torch.equal(info.active_per_anchor, info.valid_per_anchor)
    for reduction in REDUCTIONS:  # the info does not depend on the reduction
        _, info2 = fastmine.batch_all_triplet_loss(
            x, lab, metric=metric, soft=soft, reduction=reduction, return_info=True
        )
        for a, b in zip(info, info2):
            assert torch.equal(a, b)
    check_batch_all(Case(x.detach(), lab), metric=metric, soft=soft)


def test_defaults():
    """Default margin 0.3 and reduction mean_positive."""
    x = torch.ones(4, 2, dtype=F64)  # every distance 0: every triplet's term is the margin
    loss, info = fastmine.batch_all_triplet_loss(x, torch.tensor([0, 0, 1, 1]), return_info=True)
    assert loss.item() == pytest.approx(0.3) and int(info.num_active) == 8
    g = torch.Generator().manual_seed(3)
    x = torch.randn(12, 3, generator=g, dtype=F64)
    y = torch.arange(12) % 3
    assert torch.equal(
        fastmine.batch_all_triplet_loss(x, y),
        fastmine.batch_all_triplet_loss(x, y, margin=0.3, reduction="mean_positive"),
    )


@pytest.mark.parametrize("metric", METRICS)
def test_duplicate_embeddings(metric):
    """Exact duplicates: zero distances (euclidean gradient 0, never NaN)."""
    g = torch.Generator().manual_seed(3)
    base = torch.randn(4, 6, generator=g, dtype=F64)
    x = base[torch.tensor([0, 0, 1, 1, 2, 2, 3, 0, 1, 2])]
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 3, 3])
    for reduction in REDUCTIONS:
        for soft in (False, True):
            loss, _ = check_batch_all(Case(x, labels), metric=metric, reduction=reduction, soft=soft)
            assert torch.isfinite(loss)
    _, _, gx, _ = run_all_pairs(fastmine.batch_all_triplet_loss, Case(x, labels), metric=metric)
    assert torch.isfinite(gx).all()


@pytest.mark.parametrize("metric", METRICS)
def test_huge_and_negative_labels(metric):
    g = torch.Generator().manual_seed(1)
    lab0 = make_labels("pk", 24, g)
    x = make_embeddings("gaussian", 24, 5, lab0, g)
    base, base_info = check_batch_all(Case(x, lab0), metric=metric, reduction="sum")
    for shift in (10**12, -(10**12), -7, 2**62):
        lab = shape_labels(lab0, shuffle=False, shift=shift, gen=g)
        loss, info = check_batch_all(Case(x, lab), metric=metric, reduction="sum")
        assert torch.equal(loss, base), f"labels shifted by {shift} changed the loss"
        assert torch.equal(info.active_per_anchor, base_info.active_per_anchor)
    lab = torch.tensor([0, 2**40, 0, 2**40] * 6, dtype=torch.int64)  # differ in high bits only
    _, info = check_batch_all(Case(x, lab), metric=metric)
    assert info.valid_per_anchor.tolist() == [11 * 12] * 24


def test_unsorted_labels_equal_permuted_sorted():
    g = torch.Generator().manual_seed(2)
    lab = make_labels("random", 40, g)
    x = make_embeddings("clustered", 40, 7, lab, g)
    perm = torch.randperm(40, generator=g)
    a, ia = fastmine.batch_all_triplet_loss(x, lab, reduction="sum", return_info=True)
    b, ib = fastmine.batch_all_triplet_loss(x[perm], lab[perm], reduction="sum", return_info=True)
    assert_close_rel(b, a, 1e-12, what="permuted loss")
    assert torch.equal(ib.valid_per_anchor, ia.valid_per_anchor[perm])
    assert torch.equal(ib.active_per_anchor, ia.active_per_anchor[perm])


@pytest.mark.parametrize("label_dtype", [torch.int32, torch.int16, torch.uint8, torch.int8])
def test_other_integer_label_dtypes(label_dtype):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(16, 4, generator=g, dtype=F64)
    lab = torch.arange(16) % 4
    a = fastmine.batch_all_triplet_loss(x, lab, reduction="sum")
    b = fastmine.batch_all_triplet_loss(x, lab.to(label_dtype), reduction="sum")
    assert torch.equal(a, b)


def test_non_contiguous_inputs():
    g = torch.Generator().manual_seed(5)
    xt = torch.randn(6, 20, generator=g, dtype=F64)
    lab = (torch.arange(40) % 5)[::2]
    ref_t = torch.randn(6, 30, generator=g, dtype=F64)
    ref_lab = (torch.arange(60) % 5)[::2]
    for metric in METRICS:
        a = fastmine.batch_all_triplet_loss(xt.T, lab, metric=metric, reduction="sum")
        b = R.batch_all_triplet_loss(xt.T.contiguous(), lab.contiguous(), metric=metric, reduction="sum")
        assert_close_rel(a, b, 1e-12, what="non-contiguous")
        a = fastmine.batch_all_triplet_loss(
            xt.T, lab, metric=metric, ref_embeddings=ref_t.T, ref_labels=ref_lab, reduction="sum"
        )
        b = R.batch_all_triplet_loss(
            xt.T, lab, metric=metric, ref_embeddings=ref_t.T, ref_labels=ref_lab, reduction="sum"
        )
        assert_close_rel(a, b, 1e-12, what="non-contiguous ref")
    check_batch_all(Case(xt.T, lab, ref_t.T, ref_lab))


def test_self_offset_ref_equals_batch():
    """ref = [others, x, others] with self_offset excludes exactly the anchors themselves;
    ref = x with self_offset = 0 is the no-reference case, bit for bit in the counts."""
    g = torch.Generator().manual_seed(6)
    x = torch.randn(20, 6, generator=g, dtype=F64)
    lab = torch.arange(20) % 4
    a, ia = fastmine.batch_all_triplet_loss(x, lab, return_info=True)
    b, ib = fastmine.batch_all_triplet_loss(x, lab, ref_embeddings=x, ref_labels=lab, self_offset=0, return_info=True)
    assert_close_rel(b, a, 1e-13, what="self_offset=0 vs no reference set")
    for u, v in zip(ia, ib):
        assert torch.equal(u, v)
    pre = torch.randn(7, 6, generator=g, dtype=F64) + 100
    post = torch.randn(3, 6, generator=g, dtype=F64) + 100
    ref = torch.cat([pre, x, post])
    ref_lab = torch.cat([torch.full((7,), 50), lab, torch.full((3,), 51)])
    for off in (0, 3, 7, 10):
        check_batch_all(Case(x, lab, ref, ref_lab, off), reduction="sum")
    # without self_offset each anchor's own copy is one more positive (at distance 0)
    _, ic = fastmine.batch_all_triplet_loss(x, lab, ref_embeddings=ref, ref_labels=ref_lab, return_info=True)
    assert ic.valid_per_anchor.tolist() == [5 * 25] * 20


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_on_cpu(dtype):
    """CPU may upcast half inputs; the loss comes back as float32, gradients in the input dtype."""
    g = torch.Generator().manual_seed(8)
    lab = torch.arange(32) % 4
    x = make_embeddings("clustered", 32, 8, lab, g)
    for soft in (False, True):
        check_batch_all(Case(x, lab), dtype=dtype, soft=soft)


# ---- several CPU row panels (a panel holds at most 256 anchors) ---------------------------------


@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=str)
def test_several_panels_against_oracle(soft, dtype):
    """600 anchors (3 panels) against a 40-row reference set (a small oracle cube)."""
    g = torch.Generator().manual_seed(300)
    lab = shape_labels(torch.arange(600) % 3, shuffle=True, shift=0, gen=g)
    x = make_embeddings("gaussian", 600, 6, lab, g)
    rl = torch.arange(40) % 4
    case = Case(x, lab, make_embeddings("gaussian", 40, 6, rl, g), rl)
    check_batch_all(case, dtype=dtype, soft=soft, margin=0.5)


@pytest.mark.parametrize("metric", METRICS)
def test_anchors_are_independent(metric):
    """Per-anchor sums do not depend on which other anchors share the call (panels, threads):
    the batch in one call == the batch in slices against the whole batch as reference set."""
    g = torch.Generator().manual_seed(301)
    lab = make_labels("random", 600, g)
    x = make_embeddings("clustered", 600, 5, lab, g)
    kw = dict(metric=metric, margin=1.0, reduction="sum")
    xa = x.clone().requires_grad_(True)
    whole, info = fastmine.batch_all_triplet_loss(xa, lab, return_info=True, **kw)
    (g_whole,) = torch.autograd.grad(whole, xa)
    xb = x.clone().requires_grad_(True)
    parts, active = [], []
    for k in range(0, 600, 137):
        loss, inf = fastmine.batch_all_triplet_loss(
            xb[k : k + 137], lab[k : k + 137], ref_embeddings=xb, ref_labels=lab, self_offset=k, return_info=True, **kw
        )
        parts.append(loss)
        active.append(inf.active_per_anchor)
    total = torch.stack(parts).sum()
    (g_parts,) = torch.autograd.grad(total, xb)
    assert torch.equal(torch.cat(active), info.active_per_anchor)
    assert_close_rel(total, whole, 1e-12, what="sliced vs whole loss")
    assert_close_rel(g_parts, g_whole, 1e-10, what="sliced vs whole gradient")
