"""fastmine.semi_hard_triplet_loss and fastmine.mine_semi_hard against the float64 oracle
(fastmine/reference.py) and against TF-Addons' algorithm written out in PyTorch.

See tests/support/semi_hard_checks.py::check_semi_hard for what one comparison checks.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fastmine
from fastmine import reference as R
from helpers import assert_bitwise, assert_close_rel
from semi_hard_checks import check_semi_hard, tfa_semihard_loss
from strategies import Case, batch_hard_cases, make_embeddings, make_labels, shape_labels

METRICS = R.METRICS
REDUCTIONS = R.REDUCTIONS_SEMI_HARD
F64 = torch.float64
margins = st.sampled_from([0.0, 0.3, 1.0, 0.05, 2.5])


# ---- float64 parity over hypothesis cases --------------------------------------------------


@pytest.mark.parametrize("metric", METRICS)
@given(case=batch_hard_cases(ref=False), reduction=st.sampled_from(REDUCTIONS), margin=margins)
def test_float64_parity(metric, case, reduction, margin):
    check_semi_hard(case, metric=metric, reduction=reduction, margin=margin)


@pytest.mark.parametrize("metric", METRICS)
@given(case=batch_hard_cases(ref=True), reduction=st.sampled_from(REDUCTIONS), margin=margins)
def test_float64_parity_ref_set(metric, case, reduction, margin):
    check_semi_hard(case, metric=metric, reduction=reduction, margin=margin)


@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean"])
@given(
    case=batch_hard_cases(embedding_kinds=("grid",)),
    reduction=st.sampled_from(REDUCTIONS),
    dtype=st.sampled_from([torch.float64, torch.float32]),
    margin=margins,
)
def test_exact_ties(metric, case, reduction, dtype, margin):
    """Small-integer embeddings: all arithmetic is exact, so ties (between negatives, and
    between a negative and the positive's threshold) are exact: the oracle's picks exactly."""
    assert case.exact
    check_semi_hard(case, dtype=dtype, metric=metric, reduction=reduction, margin=margin)


@pytest.mark.parametrize("metric", METRICS)
@given(
    case=batch_hard_cases(max_b=48, embedding_kinds=("gaussian", "clustered", "duplicates")),
    reduction=st.sampled_from(REDUCTIONS),
)
@settings(max_examples=15)
def test_float32_vs_float64_oracle(metric, case, reduction):
    check_semi_hard(case, dtype=torch.float32, metric=metric, reduction=reduction)


# ---- a second oracle: TF-Addons' triplet_semihard_loss -------------------------------------


@pytest.mark.parametrize("metric", METRICS)
@given(
    seed=st.integers(0, 2**31 - 1),
    b=st.integers(2, 40),
    d=st.integers(1, 12),
    lkind=st.sampled_from(["pk", "random", "singletons"]),
    ekind=st.sampled_from(["gaussian", "clustered", "grid", "duplicates"]),
    margin=margins,
)
def test_matches_tf_addons_algorithm(metric, seed, b, d, lkind, ekind, margin):
    g = torch.Generator().manual_seed(seed)
    lab = shape_labels(make_labels(lkind, b, g), shuffle=True, shift=0, gen=g)
    if int(lab.unique().numel()) < 2:
        lab[0] = lab.max() + 1  # every anchor has a negative: where TF-Addons and docs/semantics.md agree
    x = make_embeddings(ekind, b, d, lab, g)
    ours = fastmine.semi_hard_triplet_loss(x, lab, margin=margin, metric=metric)
    tf = tfa_semihard_loss(lab, R.pairwise_distance(x, metric=metric), margin)
    if (lab[:, None] == lab[None, :]).sum() == b:  # no positive pair: TF divides 0 by 0
        assert torch.isnan(tf) and ours.item() == 0.0
        return
    assert_close_rel(ours, tf, 1e-9, what="fastmine vs TF-Addons' algorithm")


def test_tf_addons_hand_example():
    """1-D points: anchor 0 (label 0) at 0 with positive at 1; negatives at 0.5, 3, 7.
    Semi-hard for (0, 1): nearest negative farther than 1 -> 3: max(1 - 3 + m, 0)."""
    x = torch.tensor([[0.0], [1.0], [0.5], [3.0], [7.0]], dtype=F64)
    lab = torch.tensor([0, 0, 1, 1, 2])
    loss, info = fastmine.semi_hard_triplet_loss(x, lab, margin=2.5, reduction="none", return_info=True)
    assert info.anchor_idx.tolist() == [0, 1, 2, 3]
    assert info.pos_idx.tolist() == [1, 0, 3, 2]
    # (0,1): d=1, farther negatives 3 (idx 3), 7 -> 3 ; (1,0): d=1, negatives 0.5, 2, 6 -> 2 (idx 3)
    # (2,3): d=2.5, negatives 0.5 (0), 0.5 (1), 6.5 (4) -> 4 ; (3,2): d=2.5, negatives 3, 2, 4 -> 0 (3 > 2.5)
    assert info.neg_idx.tolist() == [3, 3, 4, 0]
    expected = [max(1 - 3 + 2.5, 0), max(1 - 2 + 2.5, 0), max(2.5 - 6.5 + 2.5, 0), max(2.5 - 3 + 2.5, 0)]
    assert loss.tolist() == pytest.approx(expected, abs=1e-14)
    assert float(tfa_semihard_loss(lab[:4], R.pairwise_distance(x[:4]), 2.5)) > 0


def test_fallback_to_easiest_negative():
    """No negative farther than the positive: the farthest negative (TF's fallback)."""
    x = torch.tensor([[0.0], [10.0], [1.0], [2.0]], dtype=F64)
    lab = torch.tensor([0, 0, 1, 2])
    _, info = fastmine.semi_hard_triplet_loss(x, lab, reduction="none", return_info=True)
    assert info.anchor_idx.tolist() == [0, 1] and info.neg_idx.tolist()[0] == 3
    assert info.neg_idx.tolist()[1] == 2  # from 10: negatives at 9, 8 -> none farther -> 9


def test_threshold_is_strict_and_ties_go_lowest():
    """A negative exactly as far as the positive is not semi-hard; equal candidates: lowest."""
    x = torch.tensor([[0.0], [2.0], [-2.0], [3.0], [-3.0], [3.0]], dtype=F64)
    lab = torch.tensor([0, 0, 1, 1, 1, 1])
    _, info = fastmine.semi_hard_triplet_loss(x, lab, reduction="none", return_info=True)
    # anchor 0, positive 1 (d=2): negatives at 2 (idx 2: not farther), 3, 3, 3 -> lowest = 3
    assert (info.anchor_idx[0].item(), info.pos_idx[0].item(), info.neg_idx[0].item()) == (0, 1, 3)
    for dtype in (torch.float32, F64):
        check_semi_hard(Case(x, lab, exact=True), dtype=dtype, reduction="none")


# ---- fixed edge cases ------------------------------------------------------------------------


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("labels", [[0], [2, 2, 2, 2], [0, 1, 2, 3]], ids=["B=1", "one-class", "distinct"])
def test_no_pair(metric, reduction, labels):
    g = torch.Generator().manual_seed(len(labels))
    x = torch.randn(len(labels), 5, generator=g, dtype=F64, requires_grad=True)
    loss, info = fastmine.semi_hard_triplet_loss(
        x, torch.tensor(labels), metric=metric, reduction=reduction, return_info=True
    )
    assert loss.requires_grad, "a zero loss must stay attached to the graph"
    if reduction == "none":
        assert loss.shape == (0,)
    else:
        assert loss.item() == 0.0
    (gx,) = torch.autograd.grad(loss.sum(), x)
    assert torch.equal(gx, torch.zeros_like(x))
    assert int(info.num_pairs) == 0 and int(info.num_active) == 0
    assert float(info.active_fraction) == 0.0
    assert all(t.numel() == 0 for t in info[:5])
    assert fastmine.mine_semi_hard(x, torch.tensor(labels), metric=metric)[0].numel() == 0


def test_anchor_without_negative_forms_no_pair():
    """With a reference set, an anchor whose class fills the whole set has no negative."""
    x = torch.tensor([[0.0], [5.0]], dtype=F64)
    ref = torch.tensor([[1.0], [2.0]], dtype=F64)
    loss, info = fastmine.semi_hard_triplet_loss(
        x, torch.tensor([3, 4]), ref_embeddings=ref, ref_labels=torch.tensor([3, 3]), return_info=True, reduction="none"
    )
    # anchor 0: both reference rows are positives, no negative -> no pair; anchor 1: no positive
    assert info.anchor_idx.numel() == 0 and loss.numel() == 0


@pytest.mark.parametrize("metric", METRICS)
def test_duplicate_embeddings(metric):
    g = torch.Generator().manual_seed(3)
    base = torch.randn(4, 6, generator=g, dtype=F64)
    x = base[torch.tensor([0, 0, 1, 1, 2, 2, 3, 0, 1, 2])]
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 3, 3])
    for dtype in (F64, torch.float32):
        for reduction in REDUCTIONS:
            loss, _ = check_semi_hard(Case(x, labels), dtype=dtype, metric=metric, reduction=reduction)
            assert torch.isfinite(loss).all()


def test_copied_negative_far_apart_lowest_index():
    """The same negative copied to far-apart columns (across GEMM blocks and panel rows): the
    copies tie exactly, so the lowest index must win for every anchor."""
    g = torch.Generator().manual_seed(0)
    for m in (33, 257, 513):
        ref = torch.randn(m, 8, generator=g, dtype=F64) * 10
        ref_labels = torch.arange(m) % 3 + 10
        x = torch.randn(6, 8, generator=g, dtype=F64) * 0.01
        x_labels = torch.tensor([10, 11, 12, 10, 11, 12])
        target = torch.full((8,), 0.5, dtype=F64)  # near every anchor, farther than...
        for j in (m - 1, m // 2, 1):
            ref[j] = target
            ref_labels[j] = 99
        ref[0] = 0.0  # ...this positive-for-label-10 row (closest of all)
        ref_labels[0] = 10
        for dtype in (F64, torch.float32):
            loss, info = check_semi_hard(Case(x, x_labels, ref, ref_labels), dtype=dtype, reduction="none")
            chosen = info.neg_idx[info.pos_idx == 0]
            assert (chosen == 1).all(), (m, dtype, chosen)


def test_self_offset_ref_equals_batch():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(20, 6, generator=g, dtype=F64)
    lab = torch.arange(20) % 4
    a, ia = fastmine.semi_hard_triplet_loss(x, lab, return_info=True)
    b, ib = fastmine.semi_hard_triplet_loss(x, lab, ref_embeddings=x, ref_labels=lab, self_offset=0, return_info=True)
    assert torch.equal(a, b)
    for u, v in zip(ia, ib):
        assert torch.equal(u, v)
    pre = torch.randn(7, 6, generator=g, dtype=F64) + 100
    ref = torch.cat([pre, x])
    ref_lab = torch.cat([torch.full((7,), 50), lab])
    c, ic = fastmine.semi_hard_triplet_loss(
        x, lab, ref_embeddings=ref, ref_labels=ref_lab, self_offset=7, return_info=True
    )
    assert torch.equal(ic.pos_idx, ia.pos_idx + 7)
    for off in (0, 3, 7):
        check_semi_hard(Case(x, lab, ref, ref_lab, off), reduction="none")


def test_without_self_offset_own_copy_is_a_positive():
    x = torch.tensor([[0.0], [4.0]], dtype=F64)
    ref = torch.tensor([[0.0], [4.0], [1.0]], dtype=F64)
    _, info = fastmine.semi_hard_triplet_loss(
        x, torch.tensor([0, 1]), ref_embeddings=ref, ref_labels=torch.tensor([0, 1, 0]), return_info=True
    )
    assert info.anchor_idx.tolist() == [0, 0, 1] and info.pos_idx.tolist() == [0, 2, 1]
    _, info = fastmine.semi_hard_triplet_loss(
        x, torch.tensor([0, 1]), ref_embeddings=ref, ref_labels=torch.tensor([0, 1, 0]), self_offset=0, return_info=True
    )
    assert info.anchor_idx.tolist() == [0] and info.pos_idx.tolist() == [2]


@pytest.mark.parametrize("metric", METRICS)
def test_return_info_fields(metric):
    g = torch.Generator().manual_seed(7)
    lab = torch.tensor([0, 0, 1, 1, 2, 3, 3, 3])  # anchor 4: a singleton, no pair
    x = torch.randn(8, 3, generator=g, dtype=F64, requires_grad=True)
    loss, info = fastmine.semi_hard_triplet_loss(x, lab, metric=metric, return_info=True)
    assert isinstance(info, fastmine.SemiHardInfo)
    assert info.anchor_idx.tolist() == [0, 1, 2, 3, 5, 5, 6, 6, 7, 7]
    assert int(info.num_pairs) == 10 and info.num_pairs.dim() == 0
    for t in info:
        assert not t.requires_grad
    per = fastmine.semi_hard_triplet_loss(x, lab, metric=metric, reduction="none")
    assert int(info.num_active) == int((per > 0).sum())
    assert float(info.active_fraction) == pytest.approx(int(info.num_active) / 10)
    assert_close_rel(loss, per.sum() / 10, 1e-12)
    for reduction in REDUCTIONS:
        _, info2 = fastmine.semi_hard_triplet_loss(x, lab, metric=metric, reduction=reduction, return_info=True)
        for u, v in zip(info, info2):
            assert torch.equal(u, v)


def test_default_margin_is_0_3():
    x = torch.ones(4, 2, dtype=F64)
    assert fastmine.semi_hard_triplet_loss(x, torch.tensor([0, 0, 1, 1])).item() == pytest.approx(0.3)


def test_grad_only_flows_through_chosen_rows():
    x = torch.tensor([[0.0], [1.0], [3.0], [6.0], [100.0], [-5000.0]], dtype=F64, requires_grad=True)
    lab = torch.tensor([0, 0, 1, 1, 7, 8])
    # rows 4 and 5 are singletons; 5 is so far that it is nobody's semi-hard pick
    fastmine.semi_hard_triplet_loss(x, lab, margin=10.0, reduction="sum").backward()
    _, _, n = fastmine.mine_semi_hard(x, lab)
    assert 5 not in n.tolist() and x.grad[5].item() == 0.0


def test_non_contiguous_and_other_label_dtypes():
    g = torch.Generator().manual_seed(5)
    xt = torch.randn(6, 20, generator=g, dtype=F64)
    lab = (torch.arange(40) % 5)[::2]
    a = fastmine.semi_hard_triplet_loss(xt.T, lab, reduction="none")
    b = R.semi_hard_triplet_loss(xt.T.contiguous(), lab.contiguous(), reduction="none")
    assert_close_rel(a, b, 1e-12)
    for dt in (torch.int32, torch.uint8):
        assert torch.equal(fastmine.semi_hard_triplet_loss(xt.T, lab.to(dt), reduction="none"), a)


@pytest.mark.parametrize("metric", METRICS)
def test_huge_and_negative_labels(metric):
    g = torch.Generator().manual_seed(1)
    lab0 = make_labels("pk", 24, g)
    x = make_embeddings("gaussian", 24, 5, lab0, g)
    base = fastmine.semi_hard_triplet_loss(x, lab0, metric=metric, reduction="none")
    for shift in (10**12, -(10**12), -7, 2**62):
        lab = shape_labels(lab0, shuffle=False, shift=shift, gen=g)
        assert torch.equal(fastmine.semi_hard_triplet_loss(x, lab, metric=metric, reduction="none"), base)


# ---- gradients ---------------------------------------------------------------------------------


def _separated(b=12, d=4, seed=0):
    """Random points whose distances are far from every tie (gradcheck's finite differences
    must not move a pick)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, d, generator=g, dtype=F64) * 3


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradcheck(metric, reduction):
    x = _separated().requires_grad_(True)
    lab = torch.arange(12) % 3
    ref = _separated(9, 4, 1).requires_grad_(True)
    rl = torch.arange(9) % 4
    torch.autograd.gradcheck(
        lambda x: fastmine.semi_hard_triplet_loss(x, lab, metric=metric, reduction=reduction, margin=1.0), (x,)
    )
    torch.autograd.gradcheck(
        lambda x, r: fastmine.semi_hard_triplet_loss(
            x, lab, metric=metric, reduction=reduction, ref_embeddings=r, ref_labels=rl, margin=1.0
        ),
        (x, ref),
    )


def test_gradcheck_info_distances():
    """pos_dist / neg_dist outputs of the op are differentiable too (the op's contract)."""
    x = _separated().requires_grad_(True)
    lab = torch.arange(12) % 3
    ops = torch.ops.fastmine

    def f(x):
        out = ops.semi_hard_triplet(x, lab, x, lab, 0.5, 0, True, 0)
        return out[0].sum() + (out[4] * 0.7).sum() - (out[5] * 1.3).sum()

    torch.autograd.gradcheck(f, (x,))


# ---- the miner -----------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", METRICS)
@given(case=batch_hard_cases())
@settings(max_examples=20)
def test_miner_matches_loss(metric, case):
    a, p, n = fastmine.mine_semi_hard(case.x, case.labels, metric=metric, **case.kwargs())
    _, info = fastmine.semi_hard_triplet_loss(case.x, case.labels, metric=metric, return_info=True, **case.kwargs())
    assert torch.equal(a, info.anchor_idx) and torch.equal(p, info.pos_idx) and torch.equal(n, info.neg_idx)
    assert a.dtype == p.dtype == n.dtype == torch.int64
    assert not (a.requires_grad or p.requires_grad or n.requires_grad)
    rl = case.labels if case.ref_labels is None else case.ref_labels
    assert bool((case.labels[a] == rl[p]).all()) and bool((case.labels[a] != rl[n]).all())


def test_miner_feeds_pml_triplet_loss():
    """The tuple is a pytorch-metric-learning indices_tuple: PML's TripletMarginLoss on our
    triplets (no reducer) equals our per-pair loss."""
    pml = pytest.importorskip("pytorch_metric_learning")
    from pytorch_metric_learning import losses, reducers

    g = torch.Generator().manual_seed(9)
    x = torch.randn(32, 8, generator=g, dtype=F64)
    lab = torch.arange(32) % 8
    triplets = fastmine.mine_semi_hard(x, lab)
    fn = losses.TripletMarginLoss(margin=0.3, reducer=reducers.DoNothingReducer())
    out = fn(x, lab, indices_tuple=triplets)["loss"]["losses"]
    ours = fastmine.semi_hard_triplet_loss(x, lab, reduction="none")
    # PML normalizes embeddings by default (LpDistance(normalize_embeddings=True)): compare there
    xn = torch.nn.functional.normalize(x, dim=1)
    ours_n = R.semi_hard_from_indices(xn, *triplets, reduction="none")[1]
    assert_close_rel(out, ours_n, 1e-9, what="PML on our triplets")
    assert ours.shape == out.shape
    assert pml is not None


# ---- NaN, determinism, larger cases ------------------------------------------------------------


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("where", ["anchor", "negative", "positive", "singleton", "ref_only", "inf"])
def test_non_finite_input_never_gives_finite_loss(metric, where):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(10, 4, generator=g, dtype=F64)
    lab = torch.tensor([0, 0, 0, 1, 1, 2, 2, 3, 3, 9])
    ref, rl = None, None
    bad = float("inf") if where == "inf" else float("nan")
    if where in ("anchor", "inf"):
        x[0, 1] = bad
    elif where == "negative":
        x[5, 0] = bad
    elif where == "positive":
        x[1, 2] = bad
    elif where == "singleton":
        x[9, 0] = bad  # no pair of its own, but a negative of everyone
    else:
        ref = torch.randn(6, 4, generator=g, dtype=F64)
        rl = torch.tensor([0, 1, 2, 3, 0, 5])
        ref[5, 0] = bad
    kw = {} if ref is None else dict(ref_embeddings=ref, ref_labels=rl)
    for reduction in ("mean", "sum"):
        loss = fastmine.semi_hard_triplet_loss(x, lab, metric=metric, reduction=reduction, **kw)
        assert not torch.isfinite(loss), (where, reduction)
        o = R.semi_hard_triplet_loss(x, lab, metric=metric, reduction=reduction, **kw)
        assert not torch.isfinite(o)
    per = fastmine.semi_hard_triplet_loss(x, lab, metric=metric, reduction="none", **kw)
    per_o = R.semi_hard_triplet_loss(x, lab, metric=metric, reduction="none", **kw)
    assert torch.equal(torch.isnan(per), torch.isnan(per_o))


def test_singleton_anchor_nan_with_ref_set_poisons_loss():
    """A NaN anchor with no pair (and not in the reference set) still makes mean/sum NaN."""
    x = torch.tensor([[0.0], [float("nan")]], dtype=F64)
    ref = torch.tensor([[1.0], [2.0], [3.0]], dtype=F64)
    loss = fastmine.semi_hard_triplet_loss(
        x, torch.tensor([0, 7]), ref_embeddings=ref, ref_labels=torch.tensor([0, 1, 1])
    )
    assert torch.isnan(loss)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=str)
def test_deterministic(metric, dtype):
    g = torch.Generator().manual_seed(12)
    lab = torch.arange(600) % 2  # two huge classes: many pairs share rows
    x = torch.randn(600, 24, generator=g).to(dtype)
    outs = []
    for _ in range(2):
        xx = x.clone().requires_grad_(True)
        loss, info = fastmine.semi_hard_triplet_loss(xx, lab, metric=metric, return_info=True)
        loss.backward()
        outs.append((loss.detach(), xx.grad, *info))
    assert_bitwise(outs[0], outs[1])


@pytest.mark.parametrize("b, d, classes, ref_m", [(512, 32, 128, None), (160, 16, 2, None), (300, 24, 40, 700)])
@pytest.mark.parametrize("metric", METRICS)
def test_large_float32(b, d, classes, ref_m, metric):
    g = torch.Generator().manual_seed(b + d)
    lab = shape_labels(torch.arange(b) % classes, shuffle=True, shift=10**12, gen=g)
    x = make_embeddings("clustered", b, d, lab, g)
    case = Case(x, lab)
    if ref_m is not None:
        rl = lab[torch.randint(0, b, (ref_m,), generator=g)]
        case = Case(x, lab, make_embeddings("clustered", ref_m, d, rl, g), rl)
    for reduction in ("mean", "none"):
        check_semi_hard(case, dtype=torch.float32, metric=metric, reduction=reduction)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_on_cpu(dtype):
    g = torch.Generator().manual_seed(8)
    lab = torch.arange(32) % 4
    x = make_embeddings("clustered", 32, 8, lab, g).to(dtype).requires_grad_(True)
    loss = fastmine.semi_hard_triplet_loss(x, lab)
    assert loss.dtype == torch.float32
    loss.backward()
    assert x.grad.dtype == dtype
    o = R.semi_hard_triplet_loss(x.detach().double(), lab)
    assert_close_rel(loss, o, 1e-5)
