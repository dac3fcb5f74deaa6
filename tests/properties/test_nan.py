"""Non-finite embeddings make the loss non-finite: a NaN is never skipped by a comparison.

properties/test_contract.py checks this for every op, on ordinary and degenerate batches,
entry by entry against the oracle. Here are the inputs its small batches do not build: a NaN
in a reference row past the first panel (and SIMD chunk) of the kernels, and an infinite
row whose partners are all so far that no hinge term can carry the infinity."""

from __future__ import annotations

import pytest
import torch

import fastmine
from fastmine import reference as R

METRICS = R.METRICS
REDUCTIONS = R.REDUCTIONS_BATCH_HARD


def _batch(dtype, b=12, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, d, generator=g, dtype=torch.float64).to(dtype), torch.arange(b) % 3


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
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_all_pairs_inf_row_with_only_far_partners(name, metric, sign):
    """An infinite embedding is at distance +inf from the others (|u|^2 + |v|^2 - 2uv = inf
    when u.v = -inf): a different-label pair's hinge max(margin - inf, 0) is 0, so only the
    rule "a non-finite anchor's contribution is non-finite" can keep the loss non-finite."""
    x = torch.tensor([[-sign * 1.0], [sign * float("inf")]], dtype=torch.float64)
    _assert_all_non_finite(name, x, torch.tensor([0, 1]), metric)
    ref = torch.tensor([[-sign * 1.0], [-sign * 2.0]], dtype=torch.float64)
    _assert_all_non_finite(name, x, torch.tensor([0, 1]), metric, ref_embeddings=ref, ref_labels=torch.tensor([2, 3]))
