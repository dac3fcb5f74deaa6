"""The oracle's batch-all and contrastive losses: hand-computed cases and independent
brute-force loop implementations (plain Python floats, one triplet / pair at a time).

If the oracle is wrong, every parity test is meaningless; these tests can fail on their own.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fastmine import reference as R
from fastmine._types import BatchAllInfo
from strategies import batch_hard_cases, examples

F64 = torch.float64


def line(*vals):
    return torch.tensor([[float(v)] for v in vals], dtype=F64)


def _loop_distance(u, v, metric):
    if metric == "sqeuclidean":
        return sum((a - b) ** 2 for a, b in zip(u, v))
    if metric == "euclidean":
        return math.sqrt(sum((a - b) ** 2 for a, b in zip(u, v)))
    nu = max(math.sqrt(sum(a * a for a in u)), 1e-8)
    nv = max(math.sqrt(sum(b * b for b in v)), 1e-8)
    return 1 - sum(a * b for a, b in zip(u, v)) / (nu * nv)


def _softplus(z):
    return max(z, 0.0) + math.log1p(math.exp(-abs(z)))


def _excluded(i, j, has_ref, self_offset):
    return (j == i) if not has_ref else (self_offset is not None and j == self_offset + i)


def _loop_batch_all(x, y, rx, ry, self_offset, has_ref, margin, metric, soft, reduction):
    total, n_valid, n_active = 0.0, 0, 0
    valid_per, active_per = [], []
    for i, (u, li) in enumerate(zip(x, y)):
        v_i = a_i = 0
        for p, (vp, lp) in enumerate(zip(rx, ry)):
            if lp != li or _excluded(i, p, has_ref, self_offset):
                continue
            for vn, ln in zip(rx, ry):
                if ln == li:
                    continue
                z = _loop_distance(u, vp, metric) - _loop_distance(u, vn, metric) + margin
                t = _softplus(z) if soft else max(z, 0.0)
                total += t
                v_i += 1
                a_i += t > 0
        valid_per.append(v_i)
        active_per.append(a_i)
        n_valid += v_i
        n_active += a_i
    if reduction == "sum":
        loss = total
    elif reduction == "mean":
        loss = total / max(n_valid, 1)
    else:
        loss = total / max(n_active, 1)
    return loss, valid_per, active_per


def _loop_contrastive(x, y, rx, ry, self_offset, has_ref, pos_margin, neg_margin, power, metric, reduction):
    pos, neg = [], []
    for i, (u, li) in enumerate(zip(x, y)):
        for j, (v, lj) in enumerate(zip(rx, ry)):
            if not has_ref and j <= i:  # unordered pairs i < j of the batch
                continue
            if has_ref and _excluded(i, j, has_ref, self_offset):
                continue
            d = _loop_distance(u, v, metric)
            if lj == li:
                pos.append(max(d - pos_margin, 0.0) ** power)
            else:
                neg.append(max(neg_margin - d, 0.0) ** power)
    if reduction == "sum":
        return sum(pos) + sum(neg)
    if reduction == "mean":
        return (sum(pos) + sum(neg)) / max(len(pos) + len(neg), 1)
    return (sum(pos) / max(sum(t > 0 for t in pos), 1)) + (sum(neg) / max(sum(t > 0 for t in neg), 1))


def _unpack(case):
    has_ref = case.ref is not None
    rx = case.ref if has_ref else case.x
    ry = case.ref_labels if has_ref else case.labels
    return case.x.tolist(), case.labels.tolist(), rx.tolist(), ry.tolist(), case.self_offset, has_ref


@given(
    case=batch_hard_cases(max_b=9, max_d=4),
    metric=st.sampled_from(R.METRICS),
    soft=st.booleans(),
    reduction=st.sampled_from(R.REDUCTIONS_BATCH_ALL),
    margin=st.sampled_from([0.0, 0.3, 1.0]),
)
@settings(max_examples=examples(40))
def test_batch_all_oracle_matches_loops(case, metric, soft, reduction, margin):
    expected, valid_per, active_per = _loop_batch_all(*_unpack(case), margin, metric, soft, reduction)
    got, info = R.batch_all_triplet_loss(
        case.x,
        case.labels,
        margin=margin,
        metric=metric,
        soft=soft,
        reduction=reduction,
        return_info=True,
        **case.kwargs(),
    )
    assert got.item() == pytest.approx(expected, rel=1e-9, abs=1e-9)
    assert info.valid_per_anchor.tolist() == valid_per
    assert info.active_per_anchor.tolist() == active_per


@given(
    case=batch_hard_cases(max_b=10, max_d=4),
    metric=st.sampled_from(R.METRICS),
    power=st.sampled_from([1, 2, 1.5, 3.0]),
    reduction=st.sampled_from(R.REDUCTIONS_CONTRASTIVE),
    pos_margin=st.sampled_from([0.0, 0.5]),
    neg_margin=st.sampled_from([0.5, 1.0, 3.0]),
)
@settings(max_examples=examples(40))
def test_contrastive_oracle_matches_loops(case, metric, power, reduction, pos_margin, neg_margin):
    expected = _loop_contrastive(*_unpack(case), pos_margin, neg_margin, power, metric, reduction)
    got = R.contrastive_loss(
        case.x,
        case.labels,
        pos_margin=pos_margin,
        neg_margin=neg_margin,
        power=power,
        metric=metric,
        reduction=reduction,
        **case.kwargs(),
    )
    assert got.item() == pytest.approx(expected, rel=1e-9, abs=1e-9)


# ---- hand-computed ----------------------------------------------------------------------------


def test_batch_all_line_hand():
    x = line(0, 1, 3, 6).requires_grad_(True)
    y = torch.tensor([0, 0, 1, 1])
    loss, info = R.batch_all_triplet_loss(x, y, return_info=True)
    assert isinstance(info, BatchAllInfo)
    assert loss.item() == pytest.approx(1.6 / 2, rel=1e-14)
    assert info.valid_per_anchor.tolist() == [2, 2, 2, 2] and info.active_per_anchor.tolist() == [0, 0, 2, 0]
    assert int(info.num_valid) == 8 and int(info.num_active) == 2
    assert float(info.active_fraction) == pytest.approx(0.25)
    loss.backward()
    assert x.grad.flatten().tolist() == pytest.approx([0.5, 0.5, -2.0, 1.0], abs=1e-15)


def test_batch_all_ref_set_and_self_offset_hand():
    x = line(0, 4)
    y = torch.tensor([0, 1])
    ref = line(0, 4, 1)
    ref_y = torch.tensor([0, 1, 0])
    # without self_offset: anchor 0 has positives rows 0 (d 0) and 2 (d 1), negative row 1 (d 4);
    # anchor 1 has positive row 1 (itself, d 0), negatives rows 0 (d 4) and 2 (d 3)
    _, info = R.batch_all_triplet_loss(x, y, ref_embeddings=ref, ref_labels=ref_y, return_info=True)
    assert info.valid_per_anchor.tolist() == [2, 2]
    _, info = R.batch_all_triplet_loss(x, y, ref_embeddings=ref, ref_labels=ref_y, self_offset=0, return_info=True)
    assert info.valid_per_anchor.tolist() == [1, 0]
    loss = R.batch_all_triplet_loss(
        x, y, ref_embeddings=ref, ref_labels=ref_y, self_offset=0, margin=5.0, reduction="sum"
    )
    assert loss.item() == pytest.approx(1 - 4 + 5.0)


@pytest.mark.parametrize("labels", [[3], [1, 1, 1], [1, 2, 3]])
@pytest.mark.parametrize("reduction", R.REDUCTIONS_BATCH_ALL)
def test_batch_all_no_triplet_is_attached_zero(labels, reduction):
    x = torch.randn(len(labels), 3, dtype=F64, requires_grad=True)
    loss, info = R.batch_all_triplet_loss(x, torch.tensor(labels), reduction=reduction, return_info=True)
    assert loss.requires_grad and loss.item() == 0.0
    loss.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))
    assert int(info.num_valid) == 0 and float(info.active_fraction) == 0.0


def test_batch_all_chunks_do_not_matter(monkeypatch):
    """The cube is built in anchor chunks; one anchor per chunk gives the same numbers."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20, 3, generator=g, dtype=F64)
    y = torch.randint(0, 4, (20,), generator=g)
    a, ia = R.batch_all_triplet_loss(x, y, margin=1.0, return_info=True)
    monkeypatch.setattr(R, "_CUBE_ELEMS", 1)
    b, ib = R.batch_all_triplet_loss(x, y, margin=1.0, return_info=True)
    assert torch.equal(a, b)
    for u, v in zip(ia, ib):
        assert torch.equal(u, v)


def test_batch_all_nan_rule():
    x = torch.randn(5, 3, dtype=F64)
    x[4, 0] = float("nan")
    per, valid, _ = R.batch_all_triplet_terms(x, torch.tensor([0, 0, 1, 1, 9]))
    assert valid[4] == 0 and torch.isnan(per[4])  # no triplet, but NaN itself
    assert torch.isnan(per[:4]).all()  # row 4 is everyone's negative


def test_contrastive_line_hand():
    x = line(0, 1, 3, 6).requires_grad_(True)
    y = torch.tensor([0, 0, 1, 1])
    loss = R.contrastive_loss(x, y, neg_margin=2.5, reduction="sum")
    assert loss.item() == pytest.approx(10.25, rel=1e-14)
    loss.backward()
    assert x.grad.flatten().tolist() == pytest.approx([-2, 3, -7, 6], abs=1e-14)
    assert R.contrastive_loss(x, y, neg_margin=2.5, reduction="mean_nonzero").item() == pytest.approx(5.25)
    assert R.contrastive_loss(x, y, neg_margin=2.5, power=1, reduction="mean").item() == pytest.approx(4.5 / 6)


def test_contrastive_pair_masks():
    y = torch.tensor([0, 1, 2])
    assert R.contrastive_pair_mask(y).tolist() == [[False, True, True], [False, False, True], [False, False, False]]
    rl = torch.tensor([0, 1, 2, 3])
    assert R.contrastive_pair_mask(y, rl).all()
    assert R.contrastive_pair_mask(y, rl, 1).tolist() == [
        [True, False, True, True],
        [True, True, False, True],
        [True, True, True, False],
    ]


def test_hinge_pow():
    v = torch.tensor([-1.0, 0.0, 0.25, 4.0, float("nan")], dtype=F64, requires_grad=True)
    for p, vals, grads in (
        (1, [0, 0, 0.25, 4], [0, 0, 1, 1]),
        (2, [0, 0, 0.0625, 16], [0, 0, 0.5, 8]),
        (0.5, [0, 0, 0.5, 2], [0, 0, 1.0, 0.25]),
    ):
        out = R.hinge_pow(v, p)
        assert out[:4].tolist() == pytest.approx(vals) and torch.isnan(out[4])
        (g,) = torch.autograd.grad(out[:4].sum(), v)
        assert g[:4].tolist() == pytest.approx(grads), p  # 0 at the kink, never NaN


@pytest.mark.parametrize("reduction", R.REDUCTIONS_CONTRASTIVE)
def test_contrastive_no_pair_is_attached_zero(reduction):
    x = torch.randn(1, 3, dtype=F64, requires_grad=True)
    loss = R.contrastive_loss(x, torch.tensor([4]), reduction=reduction)
    assert loss.requires_grad and loss.item() == 0.0
    loss.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_contrastive_nan_rule():
    x = torch.tensor([[float("nan")]], dtype=F64)
    for reduction in R.REDUCTIONS_CONTRASTIVE:
        assert torch.isnan(R.contrastive_loss(x, torch.tensor([0]), reduction=reduction))


def test_oracle_rejects_bad_arguments():
    x, y = line(0, 1), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="reduction"):
        R.batch_all_triplet_loss(x, y, reduction="none")
    with pytest.raises(ValueError, match="reduction"):
        R.contrastive_loss(x, y, reduction="mean_positive")
    with pytest.raises(ValueError, match="metric"):
        R.contrastive_loss(x, y, metric="l1")
    with pytest.raises(ValueError, match="power"):
        R.contrastive_loss(x, y, power=0)
    with pytest.raises(ValueError, match="self_offset"):
        R.batch_all_triplet_loss(x, y, self_offset=0)
