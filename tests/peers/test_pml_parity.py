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
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu

import fastmine
from helpers import assert_close_rel
from strategies import examples, make_labels, shape_labels

F64 = torch.float64


def pml_batch_hard(x, labels, margin, *, reducer=None, smooth=False, ref=None, ref_labels=None):
    dist = distances.LpDistance(normalize_embeddings=False, p=2, power=1)
    miner = miners.BatchHardMiner(distance=dist)
    loss_fn = losses.TripletMarginLoss(
        margin=margin, distance=dist, smooth_loss=smooth, reducer=reducer or reducers.MeanReducer()
    )
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


@given(
    seed=st.integers(0, 2**31 - 1),
    b=st.integers(1, 48),
    d=st.integers(2, 16),
    kind=st.sampled_from(["pk", "random", "singletons", "one_class", "distinct"]),
    margin=st.sampled_from([0.0, 0.1, 0.3, 1.0, 3.0]),
)
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
        ours, (g1,) = _grad(
            lambda t, m=margin: fastmine.batch_hard_triplet_loss(t, lab, margin=m, reduction="mean_nonzero"), x
        )
        theirs, (g2,) = _grad(lambda t, m=margin: pml_batch_hard(t, lab, m, reducer=reducers.AvgNonZeroReducer())[0], x)
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
    ours, (gx1, gr1) = _grad(
        lambda t, r: fastmine.batch_hard_triplet_loss(t, lab, ref_embeddings=r, ref_labels=ref_lab), x, ref
    )
    theirs, (gx2, gr2) = _grad(lambda t, r: pml_batch_hard(t, lab, 0.3, ref=r, ref_labels=ref_lab)[0], x, ref)
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


# ---- batch-all: TripletMarginLoss with no miner ------------------------------------------------
#
# With no miner, PML's TripletMarginLoss takes every triplet (lmu.get_all_triplets_indices: a
# B x M x M mask, the diagonal (i, i) removed only when there is no reference set) and its
# default reducer, AvgNonZeroReducer, averages over the triplets with a loss > 0: fastmine's
# batch-all with reduction="mean_positive", no translation. smooth_loss=True is soft=True.
# With ref_emb PML excludes nothing: fastmine with a reference set and no self_offset.


def pml_batch_all(x, labels, margin, *, smooth=False, ref=None, ref_labels=None):
    dist = distances.LpDistance(normalize_embeddings=False, p=2, power=1)
    loss_fn = losses.TripletMarginLoss(margin=margin, distance=dist, smooth_loss=smooth)
    if ref is None:
        return loss_fn(x, labels)
    return loss_fn(x, labels, ref_emb=ref, ref_labels=ref_labels)


@given(
    seed=st.integers(0, 2**31 - 1),
    b=st.integers(1, 40),
    d=st.integers(2, 16),
    kind=st.sampled_from(["pk", "random", "singletons", "one_class", "distinct"]),
    margin=st.sampled_from([0.0, 0.1, 0.3, 1.0, 3.0]),
    smooth=st.booleans(),
)
@settings(max_examples=examples(20))
def test_batch_all_mean_positive_matches_pml(seed, b, d, kind, margin, smooth):
    x, lab = _data(seed, b, d, kind)
    ours, (g_ours,) = _grad(
        lambda t: fastmine.batch_all_triplet_loss(t, lab, margin=margin, soft=smooth, reduction="mean_positive"), x
    )
    theirs, (g_theirs,) = _grad(lambda t: pml_batch_all(t, lab, margin, smooth=smooth), x)
    assert_close_rel(ours, theirs, 1e-9, floor=1.0, what="batch-all loss vs PML")
    assert_close_rel(g_ours, g_theirs, 1e-9, what="batch-all grad vs PML")


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("smooth", [False, True])
def test_batch_all_ref_set_matches_pml(seed, smooth):
    x, lab = _data(seed, 20, 6, "pk")
    g = torch.Generator().manual_seed(100 + seed)
    ref = torch.randn(33, 6, generator=g, dtype=F64)
    ref_lab = torch.randint(0, 12, (33,), generator=g)
    ours, (gx1, gr1) = _grad(
        lambda t, r: fastmine.batch_all_triplet_loss(
            t, lab, ref_embeddings=r, ref_labels=ref_lab, soft=smooth, margin=0.5
        ),
        x,
        ref,
    )
    theirs, (gx2, gr2) = _grad(
        lambda t, r: pml_batch_all(t, lab, 0.5, smooth=smooth, ref=r, ref_labels=ref_lab), x, ref
    )
    assert_close_rel(ours, theirs, 1e-9, floor=1.0, what="batch-all ref loss vs PML")
    assert_close_rel(gx1, gx2, 1e-9, what="batch-all ref grad x vs PML")
    assert_close_rel(gr1, gr2, 1e-9, what="batch-all ref grad ref vs PML")


def test_batch_all_float32_two_classes_matches_pml():
    """Large classes (K = 63 positives per anchor) in float32 against PML in float64."""
    x, _ = _data(8, 128, 32, "pk")
    lab = torch.arange(128) % 2
    x = x.float()
    ours, (g1,) = _grad(lambda t: fastmine.batch_all_triplet_loss(t, lab, margin=1.0), x)
    theirs, (g2,) = _grad(lambda t: pml_batch_all(t.double(), lab, 1.0), x)
    assert_close_rel(ours, theirs, 1e-5, floor=1.0, what="float32 batch-all vs PML float64")
    assert_close_rel(g1, g2, 1e-5, what="float32 batch-all grad vs PML float64")


# ---- contrastive: ContrastiveLoss --------------------------------------------------------------
#
# PML's ContrastiveLoss (no miner) takes the *ordered* pairs: lmu.get_all_pairs_indices gives
# both (i, j) and (j, i) for i != j. Each unordered pair is thus counted twice in the positive
# part (sum and number of non-zero terms alike) and twice in the negative part, so each part's
# AvgNonZeroReducer mean equals the mean over fastmine's unordered pairs i < j: no translation
# is needed for reduction="mean_nonzero" (it would be needed for "sum": PML's sum is twice ours).
# PML's terms are relu(d - pos_margin) and relu(neg_margin - d), i.e. power=1. With ref_emb
# PML takes every (i, j): fastmine with a reference set and no self_offset. (One PML quirk:
# when each part has at most one pair it returns 0 without computing anything; the cases
# below always have more pairs than that.)


def pml_contrastive(x, labels, pos_margin, neg_margin, *, ref=None, ref_labels=None):
    dist = distances.LpDistance(normalize_embeddings=False, p=2, power=1)
    loss_fn = losses.ContrastiveLoss(pos_margin=pos_margin, neg_margin=neg_margin, distance=dist)
    if ref is None:
        return loss_fn(x, labels)
    return loss_fn(x, labels, ref_emb=ref, ref_labels=ref_labels)


@given(
    seed=st.integers(0, 2**31 - 1),
    b=st.integers(2, 48),
    d=st.integers(2, 16),
    kind=st.sampled_from(["pk", "random", "singletons", "one_class", "distinct"]),
    pos_margin=st.sampled_from([0.0, 0.5, 1.0, 3.0]),
    neg_margin=st.sampled_from([0.0, 1.0, 3.0, 6.0]),
)
@settings(max_examples=examples(20))
def test_contrastive_mean_nonzero_matches_pml(seed, b, d, kind, pos_margin, neg_margin):
    x, lab = _data(seed, b, d, kind)
    ours, (g_ours,) = _grad(
        lambda t: fastmine.contrastive_loss(
            t, lab, pos_margin=pos_margin, neg_margin=neg_margin, power=1, reduction="mean_nonzero"
        ),
        x,
    )
    theirs, (g_theirs,) = _grad(lambda t: pml_contrastive(t, lab, pos_margin, neg_margin), x)
    assert_close_rel(ours, theirs, 1e-9, floor=1.0, what="contrastive loss vs PML")
    assert_close_rel(g_ours, g_theirs, 1e-9, what="contrastive grad vs PML")


def test_contrastive_pml_ordered_pairs_double_the_sum():
    """The translation above, checked: PML's ordered pairs make each part's sum twice
    fastmine's (unordered) sum, and each part's mean over non-zero terms the same."""
    x, lab = _data(3, 30, 5, "pk")
    d = torch.cdist(x, x)
    a1, p, a2, n = lmu.get_all_pairs_indices(lab)
    pos_terms = torch.relu(d[a1, p] - 0.5)
    neg_terms = torch.relu(3.0 - d[a2, n])
    ours_sum = fastmine.contrastive_loss(x, lab, pos_margin=0.5, neg_margin=3.0, power=1, reduction="sum")
    assert_close_rel(pos_terms.sum() + neg_terms.sum(), 2 * ours_sum, 1e-12, what="ordered sum = 2 x ours")
    mean_nz = pos_terms.sum() / (pos_terms > 0).sum() + neg_terms.sum() / (neg_terms > 0).sum()
    ours = fastmine.contrastive_loss(x, lab, pos_margin=0.5, neg_margin=3.0, power=1, reduction="mean_nonzero")
    assert_close_rel(ours, mean_nz, 1e-12, what="mean_nonzero unchanged by the doubling")


@pytest.mark.parametrize("seed", range(3))
def test_contrastive_ref_set_matches_pml(seed):
    x, lab = _data(seed, 20, 6, "pk")
    g = torch.Generator().manual_seed(100 + seed)
    ref = torch.randn(33, 6, generator=g, dtype=F64)
    ref_lab = torch.randint(0, 12, (33,), generator=g)
    ours, (gx1, gr1) = _grad(
        lambda t, r: fastmine.contrastive_loss(
            t,
            lab,
            ref_embeddings=r,
            ref_labels=ref_lab,
            pos_margin=0.5,
            neg_margin=3.0,
            power=1,
            reduction="mean_nonzero",
        ),
        x,
        ref,
    )
    theirs, (gx2, gr2) = _grad(lambda t, r: pml_contrastive(t, lab, 0.5, 3.0, ref=r, ref_labels=ref_lab), x, ref)
    assert_close_rel(ours, theirs, 1e-9, floor=1.0, what="contrastive ref loss vs PML")
    assert_close_rel(gx1, gx2, 1e-9, what="contrastive ref grad x vs PML")
    assert_close_rel(gr1, gr2, 1e-9, what="contrastive ref grad ref vs PML")


def test_contrastive_float32_matches_pml():
    x, lab = _data(7, 256, 32, "pk")
    x = x.float()
    ours, (g1,) = _grad(
        lambda t: fastmine.contrastive_loss(t, lab, pos_margin=2.0, neg_margin=8.0, power=1, reduction="mean_nonzero"),
        x,
    )
    theirs, (g2,) = _grad(lambda t: pml_contrastive(t.double(), lab, 2.0, 8.0), x)
    assert_close_rel(ours, theirs, 1e-5, floor=1.0, what="float32 contrastive vs PML float64")
    assert_close_rel(g1, g2, 1e-5, what="float32 contrastive grad vs PML float64")
