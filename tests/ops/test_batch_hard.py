"""fastmine.batch_hard_triplet_loss against the float64 oracle (fastmine/reference.py).

See tests/support/helpers.py::check_batch_hard for what one comparison checks (loss, info, mined
indices with the tie rules, gradients).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fastmine
from fastmine import reference as R
from helpers import assert_close_rel, check_batch_hard, run_fastmine
from strategies import Case, batch_hard_cases, make_embeddings, make_labels, shape_labels

METRICS = R.METRICS
REDUCTIONS = R.REDUCTIONS_BATCH_HARD
F64 = torch.float64
margins = st.sampled_from([0.0, 0.3, 1.0, 0.05, 2.5])


# ---- float64 parity over hypothesis cases --------------------------------------------------


@pytest.mark.parametrize("metric", METRICS)
@given(case=batch_hard_cases(ref=False), soft=st.booleans(), reduction=st.sampled_from(REDUCTIONS), margin=margins)
def test_float64_parity(metric, case, soft, reduction, margin):
    check_batch_hard(case, metric=metric, soft=soft, reduction=reduction, margin=margin)


@pytest.mark.parametrize("metric", METRICS)
@given(case=batch_hard_cases(ref=True), soft=st.booleans(), reduction=st.sampled_from(REDUCTIONS), margin=margins)
def test_float64_parity_ref_set(metric, case, soft, reduction, margin):
    check_batch_hard(case, metric=metric, soft=soft, reduction=reduction, margin=margin)


@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean"])
@given(
    case=batch_hard_cases(embedding_kinds=("grid",)),
    soft=st.booleans(),
    reduction=st.sampled_from(REDUCTIONS),
    dtype=st.sampled_from([torch.float64, torch.float32]),
)
def test_exact_ties_lowest_index(metric, case, soft, reduction, dtype):
    """Small-integer embeddings: every dot product, norm and squared distance is exact in both
    float32 and float64, so ties are exact and the lowest index must win everywhere."""
    assert case.exact
    check_batch_hard(case, dtype=dtype, metric=metric, soft=soft, reduction=reduction)


@pytest.mark.parametrize("metric", METRICS)
@given(
    case=batch_hard_cases(max_b=48, embedding_kinds=("gaussian", "clustered", "duplicates")),
    soft=st.booleans(),
    reduction=st.sampled_from(REDUCTIONS),
)
@settings(max_examples=15)
def test_float32_vs_float64_oracle(metric, case, soft, reduction):
    check_batch_hard(case, dtype=torch.float32, metric=metric, soft=soft, reduction=reduction)


# ---- fixed edge cases ------------------------------------------------------------------------


def _case(x, labels, **kw):
    return Case(torch.as_tensor(x, dtype=F64), torch.as_tensor(labels, dtype=torch.int64), **kw)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize(
    "labels", [[0], [2, 2, 2, 2], [0, 1, 2, 3], [5, 6, 7]], ids=["B=1", "one-class", "distinct", "distinct3"]
)
def test_no_valid_anchor(metric, reduction, labels):
    g = torch.Generator().manual_seed(len(labels))
    x = torch.randn(len(labels), 5, generator=g, dtype=F64, requires_grad=True)
    loss, info = fastmine.batch_hard_triplet_loss(
        x, torch.tensor(labels), metric=metric, reduction=reduction, return_info=True
    )
    assert loss.requires_grad, "a zero loss must stay attached to the graph"
    assert not torch.isnan(loss).any()
    assert torch.equal(loss.detach(), torch.zeros_like(loss.detach()))
    (gx,) = torch.autograd.grad(loss.sum(), x)
    assert torch.equal(gx, torch.zeros_like(x))
    assert info.pos_idx.tolist() == [-1] * len(labels)
    assert info.neg_idx.tolist() == [-1] * len(labels)
    assert int(info.num_valid) == 0 and int(info.num_active) == 0
    assert float(info.active_fraction) == 0.0


@pytest.mark.parametrize("metric", METRICS)
def test_d_equals_1(metric):
    x = [[0.0], [1.0], [3.0], [6.0], [-2.0], [2.5]]
    check_batch_hard(_case(x, [0, 0, 1, 1, 0, 1]), metric=metric, reduction="none")


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("soft", [False, True])
def test_line_hand_values(metric, soft):
    x = torch.tensor([[0.0], [1.0], [3.0], [6.0]], dtype=F64)
    y = torch.tensor([0, 0, 1, 1])
    a = fastmine.batch_hard_triplet_loss(x, y, metric=metric, soft=soft, reduction="none")
    b = R.batch_hard_triplet_loss(x, y, metric=metric, soft=soft, reduction="none")
    assert_close_rel(a, b, 1e-12, what="per-anchor loss")
    if metric == "euclidean" and not soft:
        assert a.tolist() == pytest.approx([0, 0, 1.3, 0], abs=1e-14)


def test_singletons_do_not_count_in_mean():
    x = torch.tensor([[0.0], [1.0], [10.0]], dtype=F64)
    loss = fastmine.batch_hard_triplet_loss(x, torch.tensor([4, 4, 5]), margin=20.0)
    assert loss.item() == pytest.approx((11 + 12) / 2)


@pytest.mark.parametrize("metric", METRICS)
def test_duplicate_embeddings_zero_distance_gradients(metric):
    """Exact duplicates: zero distances (euclidean gradient 0, never NaN), lowest index wins."""
    g = torch.Generator().manual_seed(3)
    base = torch.randn(4, 6, generator=g, dtype=F64)
    x = base[torch.tensor([0, 0, 1, 1, 2, 2, 3, 0, 1, 2])]  # many exact copies
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 3, 3])
    for reduction in REDUCTIONS:
        for soft in (False, True):
            loss, info = check_batch_hard(_case(x, labels), metric=metric, reduction=reduction, soft=soft)
            assert torch.isfinite(loss).all()
    _, _, gx, _ = run_fastmine(_case(x, labels), metric=metric)
    assert torch.isfinite(gx).all()


def test_all_points_identical_euclidean_gradient_is_zero():
    x = torch.ones(6, 3, dtype=F64, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    loss, info = fastmine.batch_hard_triplet_loss(x, labels, return_info=True)
    assert loss.item() == pytest.approx(0.3)  # 0 - 0 + margin for every anchor
    (gx,) = torch.autograd.grad(loss, x)
    assert torch.equal(gx, torch.zeros_like(gx)), "euclidean gradient at d = 0 must be 0"
    # lowest-index rule: every candidate ties at 0
    assert info.pos_idx.tolist() == [1, 0, 3, 2, 5, 4]
    assert info.neg_idx.tolist() == [2, 2, 0, 0, 0, 0]


def test_duplicate_ties_across_columns():
    """The same reference row copied far apart (first column, last column, across any SIMD
    chunk / BLAS block boundary): the lowest index must win the exact tie."""
    g = torch.Generator().manual_seed(0)
    for m in (7, 33, 257, 300, 513):
        ref = torch.randn(m, 8, generator=g, dtype=F64) * 10
        x = torch.randn(5, 8, generator=g, dtype=F64) * 0.1
        ref_labels = torch.arange(m) % 3 + 10
        x_labels = torch.tensor([10, 11, 11, 99, 10])
        near = torch.zeros(8, dtype=F64)  # nearest negative for every anchor, copied 3 times
        far = torch.full((8,), 1e3, dtype=F64)  # farthest positive, copied 3 times
        for j in (m - 1, m // 2, 1):
            ref[j] = near
            ref_labels[j] = 55
        for j, lab in ((m - 2, 10), (m // 3, 10), (2, 10)):
            ref[j] = far
            ref_labels[j] = lab
        case = Case(x, x_labels, ref, ref_labels)
        for dtype in (torch.float64, torch.float32):
            for metric in ("euclidean", "sqeuclidean"):
                _, info = check_batch_hard(case, dtype=dtype, metric=metric)
                assert info.neg_idx.tolist()[:3] == [1, 1, 1], (m, dtype, metric, info.neg_idx)
                assert info.pos_idx[0].item() == 2 and info.pos_idx[4].item() == 2, (m, dtype, metric)


@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=str)
@pytest.mark.parametrize("metric", METRICS)
def test_identical_rows_tie_lowest_index_sweep(metric, dtype):
    """Anchor 0 has two exact copies (rows b//2 and b-1) among its negatives: both at the very
    same distance, so the lowest index (b//2) must win, for every B and D. A kernel that
    selects on BLAS dot products breaks this when the two columns land in different GEMM
    blocks (the same dot product rounded differently)."""
    bad = []
    for b in range(5, 40):
        # (cosine in D = 1: every row of the anchor's sign is at distance 0, not only copies)
        for d in (1, 3, 5, 8, 13) if metric != "cosine" else (3, 5, 8, 13):
            g = torch.Generator().manual_seed(b * 100 + d)
            x = torch.randn(b, d, generator=g, dtype=F64).to(dtype)
            x[b - 1] = x[0]
            x[b // 2] = x[0]
            lab = torch.arange(b) + 1
            lab[0] = lab[1] = 0
            _, info = fastmine.batch_hard_triplet_loss(x, lab, metric=metric, return_info=True)
            if info.neg_idx[0].item() != b // 2:
                bad.append((b, d, info.neg_idx[0].item(), b // 2))
    assert not bad, f"{len(bad)} (B, D) cases break the lowest-index rule, (B, D, chosen, expected): {bad[:8]}"


@pytest.mark.parametrize("metric", METRICS)
def test_huge_and_negative_labels(metric):
    g = torch.Generator().manual_seed(1)
    lab0 = make_labels("pk", 24, g)
    x = make_embeddings("gaussian", 24, 5, lab0, g)
    base = check_batch_hard(Case(x, lab0), metric=metric, reduction="none")[0]
    for shift in (10**12, -(10**12), -7, 2**62):
        lab = shape_labels(lab0, shuffle=False, shift=shift, gen=g)
        loss = check_batch_hard(Case(x, lab), metric=metric, reduction="none")[0]
        assert torch.equal(loss, base), f"labels shifted by {shift} changed the loss"
    # int64 labels that differ only in high bits must not collide
    lab = torch.tensor([0, 2**40, 0, 2**40] * 6, dtype=torch.int64)
    check_batch_hard(Case(x, lab), metric=metric)


def test_unsorted_labels_equal_permuted_sorted():
    g = torch.Generator().manual_seed(2)
    lab = make_labels("random", 40, g)
    x = make_embeddings("clustered", 40, 7, lab, g)
    perm = torch.randperm(40, generator=g)
    a = fastmine.batch_hard_triplet_loss(x, lab, reduction="none")
    b = fastmine.batch_hard_triplet_loss(x[perm], lab[perm], reduction="none")
    assert_close_rel(b, a[perm], 1e-12, what="permuted per-anchor loss")


@pytest.mark.parametrize("label_dtype", [torch.int32, torch.int16, torch.uint8, torch.int8])
def test_other_integer_label_dtypes(label_dtype):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(16, 4, generator=g, dtype=F64)
    lab = torch.arange(16) % 4
    a = fastmine.batch_hard_triplet_loss(x, lab, reduction="none")
    b = fastmine.batch_hard_triplet_loss(x, lab.to(label_dtype), reduction="none")
    assert torch.equal(a, b)


def test_non_contiguous_inputs():
    g = torch.Generator().manual_seed(5)
    xt = torch.randn(6, 20, generator=g, dtype=F64)  # x = xt.T is a (20, 6) non-contiguous view
    lab = (torch.arange(40) % 5)[::2]  # non-contiguous labels
    ref_t = torch.randn(6, 30, generator=g, dtype=F64)
    ref_lab = torch.arange(30) % 5
    for metric in METRICS:
        a, ia = fastmine.batch_hard_triplet_loss(xt.T, lab, metric=metric, return_info=True, reduction="none")
        b, ib = R.batch_hard_triplet_loss(xt.T, lab, metric=metric, return_info=True, reduction="none")
        assert_close_rel(a, b, 1e-12, what="non-contiguous")
        a = fastmine.batch_hard_triplet_loss(
            xt.T, lab, metric=metric, ref_embeddings=ref_t.T, ref_labels=ref_lab, reduction="none"
        )
        b = R.batch_hard_triplet_loss(
            xt.T, lab, metric=metric, ref_embeddings=ref_t.T, ref_labels=ref_lab, reduction="none"
        )
        assert_close_rel(a, b, 1e-12, what="non-contiguous ref")


def test_self_offset_ref_equals_batch():
    """ref = [others, x, others] with self_offset = len(others) excludes exactly the anchors
    themselves; ref = x with self_offset = 0 is the no-reference case."""
    g = torch.Generator().manual_seed(6)
    x = torch.randn(20, 6, generator=g, dtype=F64)
    lab = torch.arange(20) % 4
    a, ia = fastmine.batch_hard_triplet_loss(x, lab, return_info=True)
    b, ib = fastmine.batch_hard_triplet_loss(x, lab, ref_embeddings=x, ref_labels=lab, self_offset=0, return_info=True)
    assert torch.equal(a, b) and torch.equal(ia.pos_idx, ib.pos_idx) and torch.equal(ia.neg_idx, ib.neg_idx)
    pre = torch.randn(7, 6, generator=g, dtype=F64) + 100
    post = torch.randn(3, 6, generator=g, dtype=F64) + 100
    ref = torch.cat([pre, x, post])
    ref_lab = torch.cat([torch.full((7,), 50), lab, torch.full((3,), 51)])
    c, ic = fastmine.batch_hard_triplet_loss(
        x, lab, ref_embeddings=ref, ref_labels=ref_lab, self_offset=7, return_info=True
    )
    assert torch.equal(ic.pos_idx, ia.pos_idx + 7)
    assert_close_rel(c, a, 1e-12, what="self_offset loss")
    for off in (0, 3, 10):
        check_batch_hard(Case(x, lab, ref, ref_lab, off), reduction="none")


def test_without_self_offset_own_copy_is_a_positive():
    x = torch.tensor([[0.0], [4.0]], dtype=F64)
    y = torch.tensor([0, 1])
    ref = torch.tensor([[0.0], [4.0], [1.0]], dtype=F64)
    ref_y = torch.tensor([0, 1, 0])
    _, info = fastmine.batch_hard_triplet_loss(x, y, ref_embeddings=ref, ref_labels=ref_y, return_info=True)
    assert info.valid.tolist() == [True, True]
    assert info.pos_idx.tolist() == [2, 1] and info.pos_dist.tolist() == [1.0, 0.0]
    _, info = fastmine.batch_hard_triplet_loss(
        x, y, ref_embeddings=ref, ref_labels=ref_y, self_offset=0, return_info=True
    )
    assert info.valid.tolist() == [True, False]
    assert info.pos_idx.tolist() == [2, -1] and info.neg_idx.tolist() == [1, -1]


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("soft", [False, True])
def test_return_info_fields(metric, soft):
    g = torch.Generator().manual_seed(7)
    lab = torch.tensor([0, 0, 1, 1, 2, 3, 3, 3])  # anchor 4 is a singleton: invalid
    x = torch.randn(8, 3, generator=g, dtype=F64, requires_grad=True)
    loss, info = fastmine.batch_hard_triplet_loss(x, lab, metric=metric, soft=soft, return_info=True)
    assert isinstance(info, fastmine.BatchHardInfo)
    assert info.valid.dtype == torch.bool and info.valid.tolist() == [True] * 4 + [False] + [True] * 3
    assert info.num_valid.dim() == 0 and int(info.num_valid) == 7
    assert info.num_active.dim() == 0 and info.active_fraction.dim() == 0
    assert info.active_fraction.is_floating_point()
    for t in info:
        assert not t.requires_grad
    assert info.pos_dist.dtype == F64
    per = fastmine.batch_hard_triplet_loss(x, lab, metric=metric, soft=soft, reduction="none")
    assert int(info.num_active) == int(((per > 0) & info.valid).sum())
    assert float(info.active_fraction) == pytest.approx(int(info.num_active) / 7)
    # the info does not depend on the reduction
    for reduction in REDUCTIONS:
        _, info2 = fastmine.batch_hard_triplet_loss(
            x, lab, metric=metric, soft=soft, reduction=reduction, return_info=True
        )
        for a, b in zip(info, info2):
            assert torch.equal(a, b)
    check_batch_hard(Case(x.detach(), lab), metric=metric, soft=soft)


def test_default_margin_is_0_3():
    x = torch.ones(4, 2, dtype=F64)
    loss = fastmine.batch_hard_triplet_loss(x, torch.tensor([0, 0, 1, 1]))
    assert loss.item() == pytest.approx(0.3)


def test_gradient_through_info_distances_is_not_needed():
    # The loss alone drives backward; info distances are detached and carry no graph.
    x = torch.randn(6, 3, dtype=F64, requires_grad=True)
    loss, info = fastmine.batch_hard_triplet_loss(x, torch.tensor([0, 0, 1, 1, 2, 2]), return_info=True)
    assert info.pos_dist.grad_fn is None and info.neg_dist.grad_fn is None
    loss.backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("mode", ["none-reduction-weights", "sum"])
def test_grad_only_flows_through_selected_rows(mode):
    """Rows that are nobody's hardest positive/negative (and invalid anchors) get 0 gradient."""
    x = torch.tensor([[0.0], [1.0], [3.0], [6.0], [100.0]], dtype=F64, requires_grad=True)
    lab = torch.tensor([0, 0, 1, 1, 7])  # row 4: singleton class, far away: never selected
    loss = fastmine.batch_hard_triplet_loss(x, lab, margin=10.0, reduction="none" if mode != "sum" else "sum")
    loss.sum().backward()
    assert x.grad[4].item() == 0.0


# ---- larger fixed cases, float32 vs the float64 oracle ----------------------------------------


@pytest.mark.parametrize("b, d, ref_m", [(512, 32, None), (1024, 16, None), (300, 24, 700)])
@pytest.mark.parametrize("metric", METRICS)
def test_large_float32(b, d, ref_m, metric):
    g = torch.Generator().manual_seed(b + d)
    lab = make_labels("pk", b, g)
    lab = shape_labels(lab, shuffle=True, shift=10**12, gen=g)
    x = make_embeddings("clustered", b, d, lab, g)
    case = Case(x, lab)
    if ref_m is not None:
        rl = lab[torch.randint(0, b, (ref_m,), generator=g)]
        case = Case(x, lab, make_embeddings("clustered", ref_m, d, rl, g), rl)
    for reduction, soft in (("mean", False), ("none", True)):
        check_batch_hard(case, dtype=torch.float32, metric=metric, reduction=reduction, soft=soft)


@pytest.mark.parametrize("metric", METRICS)
def test_large_float64_self_offset(metric):
    g = torch.Generator().manual_seed(11)
    b, m_pre = 400, 300
    lab = make_labels("random", b, g)
    x = make_embeddings("gaussian", b, 12, lab, g)
    pre = make_embeddings("gaussian", m_pre, 12, lab, g)
    pre_lab = lab[torch.randint(0, b, (m_pre,), generator=g)]
    case = Case(x, lab, torch.cat([pre, x]), torch.cat([pre_lab, lab]), m_pre)
    check_batch_hard(case, metric=metric, reduction="mean_nonzero")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_on_cpu(dtype):
    """CPU may upcast half inputs; the loss comes back as float32, gradients in the input dtype."""
    g = torch.Generator().manual_seed(8)
    lab = torch.arange(32) % 4
    x = make_embeddings("clustered", 32, 8, lab, g)
    check_batch_hard(Case(x, lab), dtype=dtype)
