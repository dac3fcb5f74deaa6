"""Non-finite embeddings make the loss non-finite: a NaN is never skipped by a comparison."""

from __future__ import annotations

import pytest
import torch

import fastmine
from fastmine import reference as R

METRICS = R.METRICS
REDUCTIONS = R.REDUCTIONS_BATCH_HARD
BAD = [float("nan"), float("inf"), float("-inf")]


def _batch(dtype, b=12, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, d, generator=g, dtype=torch.float64).to(dtype), torch.arange(b) % 3


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("bad", BAD, ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("row", [0, 5, 11])
def test_bad_value_in_embeddings(dtype, metric, reduction, bad, row):
    x, y = _batch(dtype)
    x[row, 2] = bad
    loss = fastmine.batch_hard_triplet_loss(x, y, metric=metric, reduction=reduction)
    assert not torch.isfinite(loss).all(), f"finite loss {loss} with {bad} in row {row}"
    expected = R.batch_hard_triplet_loss(x.double(), y, metric=metric, reduction=reduction)
    assert not torch.isfinite(expected).all()  # the oracle agrees
    if reduction == "none":
        # The poisoned anchor's own term is non-finite.
        assert not torch.isfinite(loss[row])


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("which", ["positive", "negative"])
def test_nan_candidate_is_not_skipped(metric, reduction, which):
    """Row 3 is NaN. Anchor 0 has it as a positive (its only other candidates being ordinary
    numbers) or as a negative: either way anchor 0's term must be NaN, whatever the reduction."""
    x, _ = _batch(torch.float64, b=8)
    x[3, 0] = float("nan")
    y = torch.tensor([0, 0, 1, 0, 1, 1, 0, 1]) if which == "positive" else torch.tensor([0, 0, 1, 1, 0, 1, 0, 1])
    per = fastmine.batch_hard_triplet_loss(x, y, metric=metric, reduction="none")
    assert torch.isnan(per[0]), per
    per_o = R.batch_hard_triplet_loss(x, y, metric=metric, reduction="none")
    assert torch.equal(torch.isnan(per), torch.isnan(per_o)), (per, per_o)
    loss = fastmine.batch_hard_triplet_loss(x, y, metric=metric, reduction=reduction)
    assert torch.isnan(loss).any()


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_nan_in_ref_row(metric, reduction, dtype):
    x, y = _batch(dtype, b=6)
    g = torch.Generator().manual_seed(1)
    ref = torch.randn(300, 5, generator=g, dtype=torch.float64).to(dtype)
    ref_y = torch.arange(300) % 3
    ref[257, 1] = float("nan")  # beyond the first SIMD chunk / panel boundary
    loss = fastmine.batch_hard_triplet_loss(
        x, y, metric=metric, reduction=reduction, ref_embeddings=ref, ref_labels=ref_y
    )
    assert not torch.isfinite(loss).all()
    if reduction == "none":
        # every anchor has row 257 as a candidate (positive for class 2, negative otherwise)
        assert torch.isnan(loss).all(), loss
    _, info = fastmine.batch_hard_triplet_loss(
        x, y, metric=metric, ref_embeddings=ref, ref_labels=ref_y, return_info=True
    )
    assert torch.isnan(info.pos_dist[y == 2]).all() and torch.isnan(info.neg_dist[y != 2]).all()


@pytest.mark.parametrize("metric", METRICS)
def test_nan_in_ref_row_with_self_offset(metric):
    x, y = _batch(torch.float64, b=6)
    ref = torch.cat([x, torch.randn(4, 5, dtype=torch.float64)])
    ref[8, 0] = float("nan")
    per = fastmine.batch_hard_triplet_loss(
        x, y, metric=metric, reduction="none", ref_embeddings=ref, ref_labels=torch.arange(10) % 3, self_offset=0
    )
    assert torch.isnan(per).all()


@pytest.mark.parametrize("metric", METRICS)
def test_nan_anchor_without_positive(metric):
    """An invalid anchor (singleton class) contributes 0, but not when it is NaN itself."""
    x = torch.randn(5, 3, dtype=torch.float64)
    x[4, 0] = float("nan")
    y = torch.tensor([0, 0, 1, 1, 9])
    for reduction in REDUCTIONS:
        loss = fastmine.batch_hard_triplet_loss(x, y, metric=metric, reduction=reduction)
        assert not torch.isfinite(loss).all(), reduction


@pytest.mark.parametrize("metric", METRICS)
def test_nan_everywhere(metric):
    x = torch.full((4, 3), float("nan"), dtype=torch.float64)
    loss = fastmine.batch_hard_triplet_loss(x, torch.tensor([0, 0, 1, 1]), metric=metric)
    assert torch.isnan(loss)


@pytest.mark.parametrize("metric", METRICS)
def test_nan_in_batch_of_one_class(metric):
    # no valid anchor at all, but the embeddings are not finite: the loss must not be 0.0
    x = torch.randn(4, 3, dtype=torch.float64)
    x[2, 1] = float("nan")
    loss = fastmine.batch_hard_triplet_loss(x, torch.zeros(4, dtype=torch.int64), metric=metric)
    assert not torch.isfinite(loss)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("bad", BAD, ids=["nan", "inf", "-inf"])
def test_pairwise_propagates(metric, bad):
    x = torch.randn(4, 3, dtype=torch.float64)
    x[1, 2] = bad
    y = torch.randn(300, 3, dtype=torch.float64)
    d = fastmine.pairwise_distance(x, y, metric=metric)
    assert not torch.isfinite(d[1]).any(), d[1]
    assert torch.isfinite(d[[0, 2, 3]]).all()
    d = fastmine.pairwise_distance(x, metric=metric)
    assert not torch.isfinite(d[1]).any() and not torch.isfinite(d[:, 1]).any()


# ---- batch-all and contrastive ---------------------------------------------------------------

ALL_PAIRS = {
    "batch_all": (fastmine.batch_all_triplet_loss, R.batch_all_triplet_loss, R.REDUCTIONS_BATCH_ALL),
    "contrastive": (fastmine.contrastive_loss, R.contrastive_loss, R.REDUCTIONS_CONTRASTIVE),
}
# contrastive runs with a few powers (power 1 and 2 take their own code paths)
VARIANTS = {
    "batch_all": [dict(), dict(soft=True)],
    "contrastive": [dict(), dict(power=1, neg_margin=3.0), dict(power=1.5, pos_margin=0.2)],
}


def _assert_all_non_finite(name, x, y, metric, **kw):
    fn, oracle, reductions = ALL_PAIRS[name]
    for variant in VARIANTS[name]:
        for reduction in reductions:
            loss = fn(x, y, metric=metric, reduction=reduction, **variant, **kw)
            assert not torch.isfinite(loss), f"finite loss {loss} ({reduction}, {variant})"
            kw64 = {
                k: (v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v) for k, v in kw.items()
            }
            expected = oracle(x.double(), y, metric=metric, reduction=reduction, **variant, **kw64)
            assert not torch.isfinite(expected), "the oracle disagrees"


@pytest.mark.parametrize("name", list(ALL_PAIRS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("bad", BAD, ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("row", [0, 5, 11])
def test_all_pairs_bad_value_in_embeddings(name, dtype, metric, bad, row):
    x, y = _batch(dtype)
    x[row, 2] = bad
    _assert_all_non_finite(name, x, y, metric)


@pytest.mark.parametrize("name", list(ALL_PAIRS))
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_all_pairs_nan_in_ref_row(name, metric, dtype):
    x, y = _batch(dtype, b=6)
    g = torch.Generator().manual_seed(1)
    ref = torch.randn(300, 5, generator=g, dtype=torch.float64).to(dtype)
    ref[257, 1] = float("nan")  # beyond the first SIMD chunk / panel boundary
    _assert_all_non_finite(name, x, y, metric, ref_embeddings=ref, ref_labels=torch.arange(300) % 3)


@pytest.mark.parametrize("name", list(ALL_PAIRS))
@pytest.mark.parametrize("metric", METRICS)
def test_all_pairs_nan_in_ref_row_with_self_offset(name, metric):
    x, y = _batch(torch.float64, b=6)
    ref = torch.cat([x, torch.randn(4, 5, dtype=torch.float64)])
    ref[8, 0] = float("nan")
    _assert_all_non_finite(name, x, y, metric, ref_embeddings=ref, ref_labels=torch.arange(10) % 3, self_offset=0)


@pytest.mark.parametrize("metric", METRICS)
def test_batch_all_nan_anchor_without_triplet(metric):
    """A singleton anchor has no triplet of its own: still, its NaN must not vanish."""
    x = torch.randn(5, 3, dtype=torch.float64)
    x[4, 0] = float("nan")
    _assert_all_non_finite("batch_all", x, torch.tensor([0, 0, 1, 1, 9]), metric)


@pytest.mark.parametrize("name", list(ALL_PAIRS))
@pytest.mark.parametrize("metric", METRICS)
def test_all_pairs_nan_in_batch_of_one_class(name, metric):
    # batch-all: no triplet at all, but the embeddings are not finite: the loss must not be 0.0
    x = torch.randn(4, 3, dtype=torch.float64)
    x[2, 1] = float("nan")
    _assert_all_non_finite(name, x, torch.zeros(4, dtype=torch.int64), metric)


@pytest.mark.parametrize("name", list(ALL_PAIRS))
@pytest.mark.parametrize("metric", METRICS)
def test_all_pairs_nan_everywhere(name, metric):
    x = torch.full((4, 3), float("nan"), dtype=torch.float64)
    _assert_all_non_finite(name, x, torch.tensor([0, 0, 1, 1]), metric)


@pytest.mark.parametrize("name", list(ALL_PAIRS))
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("bad", BAD, ids=["nan", "inf", "-inf"])
def test_all_pairs_single_non_finite_row(name, metric, bad):
    """B = 1: no pair and no triplet at all, but a non-finite embedding (docs/semantics.md, "Everywhere":
    non-finite embeddings make the loss non-finite), with and without a reference set."""
    x = torch.tensor([[bad, 1.0]], dtype=torch.float64)
    _assert_all_non_finite(name, x, torch.tensor([0]), metric)
    _assert_all_non_finite(
        name,
        x,
        torch.tensor([0]),
        metric,
        ref_embeddings=torch.tensor([[0.0, 1.0]], dtype=torch.float64),
        ref_labels=torch.tensor([0]),
        self_offset=0,
    )


@pytest.mark.parametrize("name", list(ALL_PAIRS))
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_all_pairs_inf_row_with_only_far_partners(name, metric, sign):
    """An infinite embedding is at distance +inf from the others (|u|^2 + |v|^2 - 2uv = inf
    when u.v = -inf): a different-label pair's hinge max(margin - inf, 0) is 0, so only the
    rule "a non-finite anchor's contribution is non-finite" can keep the loss non-finite."""
    x = torch.tensor([[-sign * 1.0], [sign * float("inf")]], dtype=torch.float64)
    _assert_all_non_finite(name, x, torch.tensor([0, 1]), metric)
    ref = torch.tensor([[-sign * 1.0], [-sign * 2.0]], dtype=torch.float64)
    _assert_all_non_finite(name, x, torch.tensor([0, 1]), metric, ref_embeddings=ref, ref_labels=torch.tensor([2, 3]))
