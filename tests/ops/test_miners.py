"""The miners (mine_batch_hard, mine_triplets) against the float64 oracle: random inputs with
hypothesis (reference sets, self_offset, ties, duplicates), empty results, NaN,
determinism, opcheck and torch.compile. Bad input: properties/test_contract.py."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fastmine
from fastmine import reference as R
from miners_check import TRIPLET_TYPES, check_batch_hard, check_triplets
from strategies import Case, batch_hard_cases, examples, make_embeddings

METRICS = R.METRICS
MARGINS = (0.0, 0.2, 1.0, 2.0, -0.5)
ops = torch.ops.fastmine


def _mine(case, dtype=None, **kw):
    c = case if dtype is None else case.to(dtype=dtype)
    return fastmine.mine_triplets(c.x, c.labels, **c.kwargs(), **kw)


def _pk(p=6, k=4, d=8, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    lab = torch.arange(p).repeat_interleave(k)
    lab = lab[torch.randperm(lab.numel(), generator=g)]
    return make_embeddings("clustered", p * k, d, lab, g, dtype), lab


# ---- oracle parity ---------------------------------------------------------------------------


@settings(max_examples=examples(60))
@given(
    case=batch_hard_cases(max_b=40, max_d=8),
    metric=st.sampled_from(METRICS),
    type=st.sampled_from(TRIPLET_TYPES),
    margin=st.sampled_from(MARGINS),
)
def test_mine_triplets_matches_oracle(case, metric, type, margin):
    mined = _mine(case, margin=margin, type=type, metric=metric)
    check_triplets(case, mined, margin=margin, type=type, metric=metric)


@settings(max_examples=examples(30))
@given(
    case=batch_hard_cases(max_b=40, max_d=8, embedding_kinds=("gaussian", "clustered")),
    metric=st.sampled_from(METRICS),
    type=st.sampled_from(TRIPLET_TYPES),
)
def test_mine_triplets_float32_matches_oracle(case, metric, type):
    case32 = case.to(dtype=torch.float32)
    mined = _mine(case32, margin=0.2, type=type, metric=metric)
    check_triplets(case32, mined, margin=0.2, type=type, metric=metric)


@settings(max_examples=examples(60))
@given(case=batch_hard_cases(max_b=48, max_d=8), metric=st.sampled_from(METRICS))
def test_mine_batch_hard_matches_oracle(case, metric):
    mined = fastmine.mine_batch_hard(case.x, case.labels, metric=metric, **case.kwargs())
    check_batch_hard(case, mined, metric=metric)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_mine_batch_hard_low_precision(dtype):
    x, y = _pk(8, 4, 16, seed=3)
    case = Case(x.to(dtype), y)
    check_batch_hard(case, fastmine.mine_batch_hard(case.x, y), metric="euclidean")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_mine_triplets_half_is_upcast(dtype):
    x, y = _pk(6, 4, 8, seed=4)
    xh = x.to(dtype)
    got = fastmine.mine_triplets(xh, y, type="semihard")
    want = fastmine.mine_triplets(xh.float(), y, type="semihard")
    for g, w in zip(got, want):
        assert torch.equal(g, w)


def test_large_intervals_take_the_scan_path():
    """Many negatives per positive ("all", "easy": long intervals, found by a scan in index
    order) and few ("semihard": sorted short intervals) on one bigger batch, across panels."""
    x, y = _pk(40, 8, 6, seed=5)  # 320 rows: more than one 256-row panel
    case = Case(x, y)
    for type in TRIPLET_TYPES:
        for margin in (0.2, 5.0):
            check_triplets(case, _mine(case, margin=margin, type=type), margin=margin, type=type, metric="euclidean")


def test_types_partition_all_triplets():
    """hard + semihard = all, and all + easy = every valid triplet (disjoint)."""
    x, y = _pk(6, 5, 8, seed=6)
    m = x.shape[0]
    sets = {}
    for type in TRIPLET_TYPES:
        a, p, n = fastmine.mine_triplets(x, y, margin=0.5, type=type)
        sets[type] = set(((a * m + p) * m + n).tolist())
    assert sets["hard"].isdisjoint(sets["semihard"])
    assert sets["hard"] | sets["semihard"] == sets["all"]
    assert sets["all"].isdisjoint(sets["easy"])
    n_pos = int(sum(((y == c).sum() - 1) * (y == c).sum() for c in y.unique()))
    assert len(sets["all"] | sets["easy"]) == n_pos * (m - 5)  # 5 per class: m - 5 negatives


def test_exact_ties_at_thresholds():
    """Integer grid, sqeuclidean: t is an exact integer, so t == 0 and t == margin occur.
    hard includes t == 0, semihard excludes it; all/semihard include t == margin, easy not."""
    x = torch.tensor([[0.0], [1.0], [-1.0], [2.0], [3.0]], dtype=torch.float64)
    y = torch.tensor([0, 0, 1, 1, 2])

    # anchor 0: positive 1 (d=1); negatives 2 (d=1, t=0), 3 (d=4, t=3), 4 (d=9, t=8)
    def negs(type, margin):
        a, p, n = fastmine.mine_triplets(x, y, margin=margin, type=type, metric="sqeuclidean")
        return n[(a == 0) & (p == 1)].tolist()

    assert negs("hard", 3.0) == [2]
    assert negs("semihard", 3.0) == [3]
    assert negs("all", 3.0) == [2, 3]
    assert negs("easy", 3.0) == [4]
    assert negs("semihard", 0.0) == []
    assert negs("easy", 0.0) == [3, 4]


def test_mine_triplets_ref_and_self_offset():
    x, y = _pk(4, 3, 5, seed=7)
    g = torch.Generator().manual_seed(8)
    extra = torch.randn(5, 5, generator=g, dtype=torch.float64)
    ref = torch.cat([extra[:2], x, extra[2:]])
    ref_y = torch.cat([torch.tensor([0, 9]), y, torch.tensor([1, 2, 9])])
    for off in (None, 2):
        case = Case(x, y, ref, ref_y, off)
        for type in TRIPLET_TYPES:
            check_triplets(case, _mine(case, margin=0.3, type=type), margin=0.3, type=type, metric="euclidean")
    # With self_offset the anchor itself is never its own positive.
    a, p, n = fastmine.mine_triplets(
        x, y, type="all", margin=100.0, ref_embeddings=ref, ref_labels=ref_y, self_offset=2
    )
    assert not (p == a + 2).any()
    a, p, n = fastmine.mine_triplets(x, y, type="all", margin=100.0, ref_embeddings=ref, ref_labels=ref_y)
    assert (p == a + 2).any()


# ---- empty results ----------------------------------------------------------------------------


@pytest.mark.parametrize("labels", [[0, 0, 0, 0], [0, 1, 2, 3], [5]], ids=["one_class", "distinct", "single"])
def test_empty_results(labels):
    y = torch.tensor(labels)
    x = torch.randn(len(labels), 3, dtype=torch.float64)
    for out in (fastmine.mine_batch_hard(x, y), fastmine.mine_triplets(x, y, type="all", margin=10.0)):
        assert len(out) == 3
        for t in out:
            assert t.shape == (0,) and t.dtype == torch.int64


def test_empty_selection():
    x, y = _pk(4, 3, 5, seed=9)
    out = fastmine.mine_triplets(x, y, type="semihard", margin=-1.0)  # 0 < t <= -1: nothing
    for t in out:
        assert t.shape == (0,) and t.dtype == torch.int64


# ---- NaN and infinity -------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
@pytest.mark.parametrize("type", TRIPLET_TYPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_mine_triplets_refuses_nonfinite(bad, type, dtype):
    x, y = _pk(4, 3, 5, seed=10, dtype=dtype)
    x[5, 1] = bad
    with pytest.raises(ValueError, match="non-finite"):
        fastmine.mine_triplets(x, y, type=type)
    with pytest.raises(ValueError, match="non-finite"):
        R.mine_triplets(x.double(), y, type=type)  # the oracle's rule


def test_mine_triplets_nonfinite_row_without_triplets_is_ignored():
    """A NaN row that is no anchor's candidate (its anchor has no triplet, and it is nobody's
    positive or negative... impossible with a shared batch) only matters in a reference set:
    a NaN reference row whose label no anchor has is still every anchor's negative."""
    x, y = _pk(3, 3, 4, seed=11)
    ref = torch.cat([x, torch.full((1, 4), float("nan"), dtype=x.dtype)])
    ref_y = torch.cat([y, torch.tensor([99])])
    with pytest.raises(ValueError, match="non-finite"):
        fastmine.mine_triplets(x, y, ref_embeddings=ref, ref_labels=ref_y)
    # An anchor with no positive mines nothing, so its NaN distances do not matter.
    x2 = torch.randn(3, 4, dtype=torch.float64)
    x2[0, 0] = float("nan")
    out = fastmine.mine_triplets(x2, torch.tensor([0, 1, 2]))
    assert out[0].numel() == 0


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("which", ["anchor", "candidate"])
def test_mine_batch_hard_selects_nan(metric, which):
    """A NaN distance is never skipped: a NaN candidate is the one mined (a loss on it is NaN),
    a NaN anchor keeps its triplet; the oracle (and PML's torch.max) agree."""
    x, y = _pk(4, 3, 5, seed=12)
    row = 0 if which == "anchor" else 4
    x[row, 2] = float("nan")
    a, p, n = fastmine.mine_batch_hard(x, y, metric=metric)
    ea, ep, en = R.mine_batch_hard(x, y, metric=metric)
    assert torch.equal(a, ea) and torch.equal(p, ep) and torch.equal(n, en)
    if which == "candidate":
        uses_nan = (p == row) | (n == row)
        anchors_with_row = torch.nonzero(torch.arange(12) != row).squeeze(1)
        assert uses_nan[anchors_with_row].all()  # every other anchor picked the NaN row
    d = R.pairwise_distance(x, metric=metric)
    loss = torch.relu(d[a, p] - d[a, n] + 0.3)
    assert torch.isnan(loss).any()


# ---- no gradient, determinism -----------------------------------------------------------------


def test_no_gradient_tracking():
    x, y = _pk(4, 3, 5, seed=13)
    x.requires_grad_(True)
    for out in (fastmine.mine_batch_hard(x, y), fastmine.mine_triplets(x, y, margin=1.0)):
        for t in out:
            assert not t.requires_grad and t.grad_fn is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_deterministic(dtype):
    x, y = _pk(40, 8, 16, seed=14, dtype=dtype)
    for fn in (
        lambda: fastmine.mine_batch_hard(x, y),
        lambda: fastmine.mine_triplets(x, y, type="all", margin=1.0),
        lambda: fastmine.mine_triplets(x, y, type="semihard"),
    ):
        first = fn()
        for _ in range(3):
            for u, v in zip(first, fn()):
                assert torch.equal(u, v)


# ---- custom op: opcheck, torch.compile --------------------------------------------------------


@pytest.mark.parametrize("type", range(4))
@pytest.mark.parametrize("ref", ["none", "ref", "self_offset"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_opcheck_mine_triplets(type, ref, dtype):
    x, y = _pk(4, 3, 5, seed=15, dtype=dtype)
    if ref == "none":
        args = (x, y, x, y, 0.5, type, 0, True, 0)
    else:
        r = torch.cat([torch.randn(2, 5, dtype=dtype), x])
        ry = torch.cat([torch.tensor([0, 7]), y])
        has_exclude = ref == "self_offset"
        args = (x, y, r, ry, 0.5, type, 0, has_exclude, 2 if has_exclude else 0)
    torch.library.opcheck(ops.mine_triplets.default, args)


def test_compile_fullgraph():
    import torch._dynamo

    x, y = _pk(5, 4, 6, seed=16)
    want_t = fastmine.mine_triplets(x, y, type="semihard", margin=0.5)
    want_b = fastmine.mine_batch_hard(x, y)
    torch._dynamo.reset()
    # Data-dependent output lengths (nonzero, the miner's count): dynamo must be allowed to
    # capture them instead of breaking the graph.
    with torch._dynamo.config.patch(capture_dynamic_output_shape_ops=True):
        ft = torch.compile(lambda e, l: fastmine.mine_triplets(e, l, type="semihard", margin=0.5), fullgraph=True)
        fb = torch.compile(lambda e, l: fastmine.mine_batch_hard(e, l), fullgraph=True)
        for got, want in ((ft(x, y), want_t), (fb(x, y), want_b)):
            for g, w in zip(got, want):
                assert torch.equal(g, w)
