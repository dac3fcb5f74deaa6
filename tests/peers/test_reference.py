"""The oracle itself: hand-computed cases and an independent brute-force loop implementation.

If the oracle is wrong, every parity test is meaningless; these tests can fail on their own.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fastmine import reference as R
from fastmine._types import BatchHardInfo
from strategies import batch_hard_cases

F64 = torch.float64


def line(*vals):
    return torch.tensor([[float(v)] for v in vals], dtype=F64)


# ---- pairwise_distance ----------------------------------------------------------------------


def test_pairwise_line_all_metrics():
    x = line(0, 1, 3, 6)
    expected = torch.tensor([[0, 1, 3, 6], [1, 0, 2, 5], [3, 2, 0, 3], [6, 5, 3, 0]], dtype=F64)
    assert torch.equal(R.pairwise_distance(x), expected)
    assert torch.equal(R.pairwise_distance(x, metric="sqeuclidean"), expected**2)
    assert torch.equal(R.pairwise_distance(x, x, metric="euclidean"), expected)


def test_pairwise_cosine_hand():
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0], [0.0, 0.0]], dtype=F64)
    expected = torch.tensor([[0, 1, 2, 1], [1, 0, 1, 1], [2, 1, 0, 1], [1, 1, 1, 1]], dtype=F64)
    assert torch.equal(R.pairwise_distance(x, metric="cosine"), expected)
    # Parallel vectors of different lengths: distance 0.
    y = torch.tensor([[2.0, 0.0]], dtype=F64)
    assert R.pairwise_distance(x[:1], y, metric="cosine").item() == 0.0


def test_pairwise_cosine_eps_clamp():
    # Norms below 1e-8 are clamped: u = (1e-9, 0), v = (1, 0): 1 - 1e-9 / (1e-8 * 1) = 0.9.
    u = torch.tensor([[1e-9, 0.0]], dtype=F64)
    v = torch.tensor([[1.0, 0.0]], dtype=F64)
    assert R.pairwise_distance(u, v, metric="cosine").item() == pytest.approx(0.9, rel=1e-12)


def test_pairwise_rectangular_and_3_4_5():
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0]], dtype=F64)
    y = torch.tensor([[3.0, 0.0], [0.0, 4.0], [3.0, 4.0]], dtype=F64)
    d = R.pairwise_distance(x, y)
    assert d.shape == (2, 3)
    assert torch.equal(d, torch.tensor([[3.0, 4.0, 5.0], [4.0, 3.0, 0.0]], dtype=F64))


def test_pairwise_euclidean_gradient_zero_at_duplicates():
    x = torch.tensor([[1.0, 2.0], [1.0, 2.0], [4.0, 6.0]], dtype=F64, requires_grad=True)
    R.pairwise_distance(x).sum().backward()
    assert torch.isfinite(x.grad).all()
    # d/dx_i sum_{j,k} d_jk = 2 * sum_{j: d_ij > 0} (x_i - x_j) / d_ij
    xd = x.detach()
    expected = torch.zeros_like(xd)
    for i in range(3):
        for j in range(3):
            dij = (xd[i] - xd[j]).norm()
            if dij > 0:
                expected[i] += 2 * (xd[i] - xd[j]) / dij
    torch.testing.assert_close(x.grad, expected, rtol=1e-12, atol=1e-12)


def test_pairwise_cosine_gradient_finite_at_zero_vector():
    x = torch.tensor([[0.0, 0.0], [1.0, 1.0]], dtype=F64, requires_grad=True)
    R.pairwise_distance(x, metric="cosine").sum().backward()
    assert torch.isfinite(x.grad).all()


def test_pairwise_nan_stays_nan():
    x = torch.tensor([[float("nan"), 0.0], [1.0, 1.0]], dtype=F64)
    for metric in R.METRICS:
        d = R.pairwise_distance(x, metric=metric)
        assert torch.isnan(d[0]).all() and torch.isnan(d[:, 0]).all(), metric
        assert not torch.isnan(d[1, 1])


def test_pairwise_rejects_bad_metric():
    with pytest.raises(ValueError, match="metric"):
        R.pairwise_distance(line(0, 1), metric="manhattan")


# ---- batch-hard: hand-computed ------------------------------------------------------------


def test_batch_hard_line_euclidean():
    #  points 0, 1 (class 0) and 3, 6 (class 1); only anchor 2 (at 3) violates the margin:
    #  d+ = |3 - 6| = 3, d- = |3 - 1| = 2, z = 1.3.
    x = line(0, 1, 3, 6).requires_grad_(True)
    y = torch.tensor([0, 0, 1, 1])
    loss, info = R.batch_hard_triplet_loss(x, y, margin=0.3, return_info=True)
    assert loss.item() == pytest.approx(1.3 / 4, rel=1e-14)
    assert info.pos_idx.tolist() == [1, 0, 3, 2]
    assert info.neg_idx.tolist() == [2, 2, 1, 1]
    assert info.pos_dist.tolist() == [1, 1, 3, 3]
    assert info.neg_dist.tolist() == [3, 2, 2, 5]
    assert info.valid.tolist() == [True] * 4
    assert int(info.num_valid) == 4 and int(info.num_active) == 1
    assert float(info.active_fraction) == pytest.approx(0.25)
    loss.backward()
    # l_2 = (x3 - x2) - (x2 - x1) + 0.3  ->  d/dx = [0, 1, -2, 1] / 4
    assert x.grad.flatten().tolist() == pytest.approx([0.0, 0.25, -0.5, 0.25], abs=1e-15)


@pytest.mark.parametrize(
    "reduction, expected",
    [("mean", 1.3 / 4), ("sum", 1.3), ("mean_nonzero", 1.3), ("none", [0, 0, 1.3, 0])],
)
def test_batch_hard_line_reductions(reduction, expected):
    loss = R.batch_hard_triplet_loss(line(0, 1, 3, 6), torch.tensor([0, 0, 1, 1]), reduction=reduction)
    if reduction == "none":
        assert loss.shape == (4,)
        assert loss.tolist() == pytest.approx(expected, abs=1e-14)
    else:
        assert loss.shape == ()
        assert loss.item() == pytest.approx(expected, rel=1e-14)


def test_batch_hard_line_sqeuclidean():
    x = line(0, 1, 3, 6).requires_grad_(True)
    loss = R.batch_hard_triplet_loss(x, torch.tensor([0, 0, 1, 1]), metric="sqeuclidean")
    assert loss.item() == pytest.approx((9 - 4 + 0.3) / 4, rel=1e-14)
    loss.backward()
    # l_2 = (x3 - x2)^2 - (x2 - x1)^2 + 0.3 -> dx1 = 2*2, dx2 = -2*3 - 2*2, dx3 = 2*3
    assert x.grad.flatten().tolist() == pytest.approx([0, 4 / 4, -10 / 4, 6 / 4], abs=1e-14)


def test_batch_hard_soft():
    loss = R.batch_hard_triplet_loss(
        line(0, 1, 3, 6), torch.tensor([0, 0, 1, 1]), soft=True, margin=0.0, reduction="none"
    )
    sp = lambda z: math.log1p(math.exp(z))  # noqa: E731
    assert loss.tolist() == pytest.approx([sp(1 - 3), sp(1 - 2), sp(3 - 2), sp(3 - 5)], rel=1e-14)


def test_batch_hard_cosine_hand_with_ties():
    # Distances (see test_pairwise_cosine_hand) are all 1 or 2, exactly.
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0], [0.0, 0.0]], dtype=F64)
    loss, info = R.batch_hard_triplet_loss(
        x, torch.tensor([0, 0, 1, 1]), metric="cosine", return_info=True, reduction="none"
    )
    assert info.pos_idx.tolist() == [1, 0, 3, 2]
    # anchor 1: negatives 2 and 3 both at 1 -> 2; anchor 3: negatives 0 and 1 at 1 -> 0
    assert info.neg_idx.tolist() == [3, 2, 1, 0]
    assert loss.tolist() == pytest.approx([0.3] * 4, rel=1e-14)


def test_batch_hard_ties_lowest_index():
    # anchor 0 at 0: positives at -2 (index 3) and +2 (index 1); negatives at +1 (2), -1 (4).
    x = line(0, 2, 1, -2, -1)
    y = torch.tensor([7, 7, 9, 7, 9])
    _, info = R.batch_hard_triplet_loss(x, y, return_info=True)
    assert info.pos_idx[0].item() == 1
    assert info.neg_idx[0].item() == 2


def test_batch_hard_duplicates_lowest_index():
    x = line(5, 0, 0, 5, 0)
    y = torch.tensor([0, 1, 1, 0, 1])
    _, info = R.batch_hard_triplet_loss(x, y, return_info=True)
    assert info.neg_idx[0].item() == 1  # indices 1, 2, 4 all at distance 5
    assert info.pos_idx[1].item() == 2  # positives 2 and 4 at distance 0
    assert info.neg_idx[1].item() == 0  # negatives 0 and 3 at distance 5
    assert info.pos_dist[1].item() == 0.0


@pytest.mark.parametrize("labels", [[3], [1, 1, 1], [1, 2, 3]])
@pytest.mark.parametrize("reduction", R.REDUCTIONS_BATCH_HARD)
def test_batch_hard_no_valid_anchor_is_attached_zero(labels, reduction):
    x = torch.randn(len(labels), 3, dtype=F64, requires_grad=True)
    loss, info = R.batch_hard_triplet_loss(x, torch.tensor(labels), reduction=reduction, return_info=True)
    assert loss.requires_grad
    assert torch.equal(loss.detach(), torch.zeros_like(loss.detach()))
    loss.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))
    assert info.pos_idx.tolist() == [-1] * len(labels) and info.neg_idx.tolist() == [-1] * len(labels)
    assert int(info.num_valid) == 0 and float(info.active_fraction) == 0.0


def test_batch_hard_singletons_invalid():
    # class 5 is a singleton: anchor 2 has no positive, contributes 0, is not counted in the mean.
    x = line(0, 1, 10)
    loss, info = R.batch_hard_triplet_loss(x, torch.tensor([4, 4, 5]), margin=20.0, return_info=True)
    assert info.valid.tolist() == [True, True, False]
    # anchor 0: 1 - 10 + 20 = 11; anchor 1: 1 - 9 + 20 = 12
    assert loss.item() == pytest.approx((11 + 12) / 2)


def test_batch_hard_ref_set_and_self_offset():
    x = line(0, 4)
    y = torch.tensor([0, 1])
    ref = line(100, 0, 4, 1, 3)
    ref_y = torch.tensor([0, 0, 1, 0, 1])
    # Without self_offset, the copy of anchor 0 (ref row 1) is a positive at distance 0, the
    # farthest positive of anchor 0 is row 0 (100).
    _, info = R.batch_hard_triplet_loss(x, y, ref_embeddings=ref, ref_labels=ref_y, return_info=True)
    assert info.pos_idx.tolist() == [0, 4] and info.neg_idx.tolist() == [4, 3]
    # ref[1:4] = [0 (class 0), 4 (class 1), 1 (class 0)]: the batch sits at rows 0, 1.
    # Without self_offset anchor 1's only positive is its own copy (row 1, d = 0).
    _, info = R.batch_hard_triplet_loss(x, y, ref_embeddings=ref[1:4], ref_labels=ref_y[1:4], return_info=True)
    assert info.pos_idx.tolist() == [2, 1]
    assert info.pos_dist.tolist() == [1.0, 0.0]
    assert info.valid.tolist() == [True, True]
    _, info = R.batch_hard_triplet_loss(
        x, y, ref_embeddings=ref[1:4], ref_labels=ref_y[1:4], self_offset=0, return_info=True
    )
    assert info.valid.tolist() == [True, False]  # anchor 0 has row 2 (at 1); anchor 1 none
    assert info.pos_idx.tolist() == [2, -1]


def test_batch_hard_self_offset_equals_no_ref():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(12, 4, generator=g, dtype=F64)
    y = torch.randint(0, 3, (12,), generator=g)
    a, ia = R.batch_hard_triplet_loss(x, y, return_info=True)
    b, ib = R.batch_hard_triplet_loss(x, y, ref_embeddings=x, ref_labels=y, self_offset=0, return_info=True)
    assert torch.equal(a, b) and torch.equal(ia.pos_idx, ib.pos_idx)
    pre = torch.randn(3, 4, generator=g, dtype=F64)
    ref = torch.cat([pre, x])
    ref_y = torch.cat([torch.tensor([100, 101, 102]), y])  # labels no anchor has
    c, ic = R.batch_hard_triplet_loss(x, y, ref_embeddings=ref, ref_labels=ref_y, self_offset=3, return_info=True)
    assert torch.equal(ic.pos_idx, ia.pos_idx + 3)


@pytest.mark.parametrize("metric", R.METRICS)
@pytest.mark.parametrize("reduction", R.REDUCTIONS_BATCH_HARD)
def test_batch_hard_nan_candidate_poisons(metric, reduction):
    x = torch.randn(6, 3, dtype=F64)
    x[4, 1] = float("nan")
    loss, info = R.batch_hard_triplet_loss(
        x, torch.tensor([0, 0, 0, 1, 1, 1]), metric=metric, reduction=reduction, return_info=True
    )
    assert torch.isnan(loss).any()
    if reduction == "none":
        assert torch.isnan(loss).all()  # every anchor has row 4 as a candidate


def test_batch_hard_info_type():
    _, info = R.batch_hard_triplet_loss(line(0, 1, 2, 3), torch.tensor([0, 0, 1, 1]), return_info=True)
    assert isinstance(info, BatchHardInfo)
    assert info.pos_idx.dtype == torch.int64 and info.valid.dtype == torch.bool


# ---- the oracle against a brute-force loop implementation ----------------------------------


def _loop_distance(u, v, metric):
    if metric == "sqeuclidean":
        return sum((a - b) ** 2 for a, b in zip(u, v))
    if metric == "euclidean":
        return math.sqrt(sum((a - b) ** 2 for a, b in zip(u, v)))
    nu = max(math.sqrt(sum(a * a for a in u)), 1e-8)
    nv = max(math.sqrt(sum(b * b for b in v)), 1e-8)
    return 1 - sum(a * b for a, b in zip(u, v)) / (nu * nv)


def _loop_batch_hard(x, y, rx, ry, self_offset, has_ref, margin, metric, soft, reduction):
    per, valid = [], []
    for i, (u, li) in enumerate(zip(x, y)):
        pos, neg = [], []
        for j, (v, lj) in enumerate(zip(rx, ry)):
            excluded = (j == i) if not has_ref else (self_offset is not None and j == self_offset + i)
            d = _loop_distance(u, v, metric)
            if lj == li and not excluded:
                pos.append(d)
            elif lj != li:
                neg.append(d)
        if pos and neg:
            z = max(pos) - min(neg) + margin
            per.append(math.log1p(math.exp(z)) if soft else max(z, 0.0))
            valid.append(True)
        else:
            per.append(0.0)
            valid.append(False)
    if reduction == "none":
        return per
    if reduction == "sum":
        return sum(per)
    if reduction == "mean":
        return sum(per) / max(1, sum(valid))
    return sum(per) / max(1, sum(p > 0 for p in per))


@given(
    case=batch_hard_cases(max_b=10, max_d=4),
    metric=st.sampled_from(R.METRICS),
    soft=st.booleans(),
    reduction=st.sampled_from(R.REDUCTIONS_BATCH_HARD),
    margin=st.sampled_from([0.0, 0.3, 1.0]),
)
@settings(max_examples=40)
def test_oracle_matches_loops(case, metric, soft, reduction, margin):
    has_ref = case.ref is not None
    rx = case.ref if has_ref else case.x
    ry = case.ref_labels if has_ref else case.labels
    expected = _loop_batch_hard(
        case.x.tolist(),
        case.labels.tolist(),
        rx.tolist(),
        ry.tolist(),
        case.self_offset,
        has_ref,
        margin,
        metric,
        soft,
        reduction,
    )
    got = R.batch_hard_triplet_loss(
        case.x, case.labels, margin=margin, metric=metric, soft=soft, reduction=reduction, **case.kwargs()
    )
    if reduction == "none":
        assert got.tolist() == pytest.approx(expected, rel=1e-9, abs=1e-9)
    else:
        assert got.item() == pytest.approx(expected, rel=1e-9, abs=1e-9)
