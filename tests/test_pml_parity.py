"""pytorch-metric-learning as a second, independent oracle.

BatchHardMiner + TripletMarginLoss(distance=LpDistance(normalize_embeddings=False),
reducer=MeanReducer()) is fastmine's batch-hard, euclidean, hinge, reduction="mean":
PML's miner drops anchors without a positive or a negative (our invalid anchors), and
MeanReducer averages over the mined triplets, i.e. over our valid anchors. With no mined
triplet PML returns 0 too. AvgNonZeroReducer is reduction="mean_nonzero"; smooth_loss is
soft=True. PML's LpDistance is torch.cdist: its gradient is NaN/undefined at zero distance,
so these cases use distinct random points; PML breaks exact ties however torch.max does, so
cases avoid ties.
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pytorch_metric_learning import distances, losses, miners, reducers

import fastmine
from helpers import assert_close_rel
from strategies import make_labels, shape_labels

F64 = torch.float64


def pml_batch_hard(x, labels, margin, *, reducer=None, smooth=False, ref=None, ref_labels=None):
    dist = distances.LpDistance(normalize_embeddings=False, p=2, power=1)
    miner = miners.BatchHardMiner(distance=dist)
    loss_fn = losses.TripletMarginLoss(margin=margin, distance=dist, smooth_loss=smooth,
                                       reducer=reducer or reducers.MeanReducer())
    if ref is None:
        idx = miner(x, labels)
        return loss_fn(x, labels, idx), idx
    idx = miner(x, labels, ref, ref_labels)
    return loss_fn(x, labels, idx, ref, ref_labels), idx


def _data(seed, b, d, kind):
    g = torch.Generator().manual_seed(seed)
    lab = shape_labels(make_labels(kind, b, g), shuffle=True, shift=0, gen=g)
    x = torch.randn(b, d, generator=g, dtype=F64)
    return x, lab


def _grad(fn, *tensors):
    ts = [t.clone().requires_grad_(True) for t in tensors]
    out = fn(*ts)
    return out.detach(), torch.autograd.grad(out, ts)


@given(seed=st.integers(0, 2**31 - 1), b=st.integers(1, 48), d=st.integers(2, 16),
       kind=st.sampled_from(["pk", "random", "singletons", "one_class", "distinct"]),
       margin=st.sampled_from([0.0, 0.1, 0.3, 1.0, 3.0]))
@settings(max_examples=30)
def test_batch_hard_mean_matches_pml(seed, b, d, kind, margin):
    x, lab = _data(seed, b, d, kind)
    ours, (g_ours,) = _grad(lambda t: fastmine.batch_hard_triplet_loss(t, lab, margin=margin), x)
    theirs, (g_theirs,) = _grad(lambda t: pml_batch_hard(t, lab, margin)[0], x)
    assert_close_rel(ours, theirs, 1e-9, floor=1.0, what="loss vs PML")
    assert_close_rel(g_ours, g_theirs, 1e-9, what="grad vs PML")


@pytest.mark.parametrize("seed", range(4))
def test_mined_triplets_match_pml(seed):
    x, lab = _data(seed, 40, 8, "pk")
    _, info = fastmine.batch_hard_triplet_loss(x, lab, return_info=True)
    _, (a, p, n) = pml_batch_hard(x, lab, 0.3)
    valid = torch.nonzero(info.valid).flatten()
    assert torch.equal(valid, a), "PML's mined anchors are our valid anchors"
    assert torch.equal(info.pos_idx[valid], p)
    assert torch.equal(info.neg_idx[valid], n)


@pytest.mark.parametrize("seed", range(3))
def test_mean_nonzero_matches_avg_nonzero_reducer(seed):
    x, lab = _data(seed, 32, 6, "pk")
    for margin in (0.1, 1.0, 5.0):
        ours, (g1,) = _grad(lambda t: fastmine.batch_hard_triplet_loss(
            t, lab, margin=margin, reduction="mean_nonzero"), x)
        theirs, (g2,) = _grad(lambda t: pml_batch_hard(
            t, lab, margin, reducer=reducers.AvgNonZeroReducer())[0], x)
        assert_close_rel(ours, theirs, 1e-9, floor=1.0, what="mean_nonzero vs AvgNonZeroReducer")
        assert_close_rel(g1, g2, 1e-9, what="grad mean_nonzero")


@pytest.mark.parametrize("seed", range(3))
def test_soft_matches_pml_smooth_loss(seed):
    x, lab = _data(seed, 24, 5, "pk")
    ours, (g1,) = _grad(lambda t: fastmine.batch_hard_triplet_loss(t, lab, margin=0.2, soft=True), x)
    theirs, (g2,) = _grad(lambda t: pml_batch_hard(t, lab, 0.2, smooth=True)[0], x)
    assert_close_rel(ours, theirs, 1e-9, floor=1.0, what="soft vs smooth_loss")
    assert_close_rel(g1, g2, 1e-9, what="grad soft")


@pytest.mark.parametrize("seed", range(3))
def test_ref_set_matches_pml(seed):
    """PML with ref_emb: every (i, j) pair counts, like ours without self_offset."""
    x, lab = _data(seed, 20, 6, "pk")
    g = torch.Generator().manual_seed(100 + seed)
    ref = torch.randn(33, 6, generator=g, dtype=F64)
    ref_lab = torch.randint(0, 12, (33,), generator=g)
    ours, (gx1, gr1) = _grad(lambda t, r: fastmine.batch_hard_triplet_loss(
        t, lab, ref_embeddings=r, ref_labels=ref_lab), x, ref)
    theirs, (gx2, gr2) = _grad(lambda t, r: pml_batch_hard(t, lab, 0.3, ref=r, ref_labels=ref_lab)[0],
                               x, ref)
    assert_close_rel(ours, theirs, 1e-9, floor=1.0, what="ref loss vs PML")
    assert_close_rel(gx1, gx2, 1e-9, what="ref grad x vs PML")
    assert_close_rel(gr1, gr2, 1e-9, what="ref grad ref vs PML")


def test_float32_matches_pml():
    x, lab = _data(7, 256, 32, "pk")
    x = x.float()
    ours, (g1,) = _grad(lambda t: fastmine.batch_hard_triplet_loss(t, lab), x)
    theirs, (g2,) = _grad(lambda t: pml_batch_hard(t.double(), lab, 0.3)[0], x)
    assert_close_rel(ours, theirs, 1e-5, floor=1.0, what="float32 loss vs PML float64")
    assert_close_rel(g1, g2, 1e-5, what="float32 grad vs PML float64")
