"""torch.autograd.gradcheck in float64 for both ops, every metric, hinge and soft, with and
without a reference set. Data are chosen well separated (helpers.well_separated) so that
gradcheck's finite-difference perturbations cannot flip an argmax/argmin or cross the kink."""

from __future__ import annotations

import pytest
import torch

import fastmine
from fastmine import reference as R
from helpers import well_separated

METRICS = R.METRICS
F64 = torch.float64


def separated_batch(metric, margin, *, b=8, d=4, classes=3, ref_m=None, self_offset=None, seed=0):
    """First seed (from `seed`) whose data are well separated for this metric and margin."""
    for s in range(seed, seed + 500):
        g = torch.Generator().manual_seed(s)
        x = torch.randn(b, d, generator=g, dtype=F64)
        lab = torch.arange(b) % classes
        ref = ref_lab = None
        if ref_m is not None:
            extra = torch.randn(ref_m, d, generator=g, dtype=F64)
            extra_lab = torch.randint(0, classes + 1, (ref_m,), generator=g)
            if self_offset is not None:
                ref = torch.cat([extra[:self_offset], x, extra[self_offset:]])
                ref_lab = torch.cat([extra_lab[:self_offset], lab, extra_lab[self_offset:]])
            else:
                ref, ref_lab = extra, extra_lab
        if well_separated(
            x, lab, metric=metric, margin=margin, ref=ref, ref_labels=ref_lab, self_offset=self_offset, gap=1e-3
        ):
            # at least one anchor must be active, or the hinge gradient is trivially 0
            loss = R.batch_hard_triplet_loss(
                x,
                lab,
                margin=margin,
                metric=metric,
                reduction="none",
                ref_embeddings=ref,
                ref_labels=ref_lab,
                self_offset=self_offset,
            )
            if (loss > 0).any():
                return x, lab, ref, ref_lab
    raise RuntimeError("no well-separated seed found")


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "none", "mean_nonzero"])
def test_gradcheck_batch_hard(metric, soft, reduction):
    margin = 0.5
    x, lab, _, _ = separated_batch(metric, margin)
    x.requires_grad_(True)

    def f(x):
        return fastmine.batch_hard_triplet_loss(x, lab, margin=margin, metric=metric, soft=soft, reduction=reduction)

    assert torch.autograd.gradcheck(f, (x,), eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("self_offset", [None, 2])
def test_gradcheck_batch_hard_ref_set(metric, soft, self_offset):
    margin = 0.5
    x, lab, ref, ref_lab = separated_batch(metric, margin, b=6, ref_m=7, self_offset=self_offset)
    # With self_offset the batch is inside ref: perturb x and ref independently (they are
    # separate inputs of the op; tying them is the caller's business).
    x = x.clone().requires_grad_(True)
    ref = ref.clone().requires_grad_(True)

    def f(x, ref):
        return fastmine.batch_hard_triplet_loss(
            x,
            lab,
            margin=margin,
            metric=metric,
            soft=soft,
            reduction="none",
            ref_embeddings=ref,
            ref_labels=ref_lab,
            self_offset=self_offset,
        )

    assert torch.autograd.gradcheck(f, (x, ref), eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("metric", METRICS)
def test_gradcheck_pairwise(metric):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 3, generator=g, dtype=F64, requires_grad=True)
    y = torch.randn(4, 3, generator=g, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, b: fastmine.pairwise_distance(a, b, metric=metric), (x, y), eps=1e-6, atol=1e-7, rtol=1e-5
    )
    # y=None: off-diagonal entries only are smooth for euclidean; gradcheck the whole thing on
    # sqeuclidean/cosine, and euclidean via a mask of the diagonal.
    if metric == "euclidean":
        mask = 1 - torch.eye(5, dtype=F64)
        fn = lambda a: fastmine.pairwise_distance(a, metric=metric) * mask  # noqa: E731
    else:
        fn = lambda a: fastmine.pairwise_distance(a, metric=metric)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_gradcheck_pairwise_cosine_tiny_norm():
    # A row with norm below the 1e-8 clamp: gradient of the clamped formula (~1e8 here).
    x = torch.tensor([[3e-9, -4e-9]], dtype=F64, requires_grad=True)
    y = torch.tensor([[0.5, 0.5], [2.0, -1.0], [1.0, 2.0]], dtype=F64)

    def fn(a):
        return fastmine.pairwise_distance(a, y, metric="cosine")

    assert torch.autograd.gradcheck(fn, (x,), eps=1e-13, atol=1e-2, rtol=1e-4)


@pytest.mark.parametrize("metric", METRICS)
def test_gradgradcheck_refused(metric):
    """Double backward is unsupported and says so (tests/properties/test_errors.py checks the message)."""
    x, lab, _, _ = separated_batch(metric, 0.5)
    x.requires_grad_(True)
    loss = fastmine.batch_hard_triplet_loss(x, lab, margin=0.5, metric=metric)
    (g,) = torch.autograd.grad(loss, x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(g.sum(), x)


# ---- batch-all and contrastive ---------------------------------------------------------------


def _ref_batch(g, x, lab, classes, ref_m, self_offset):
    d = x.shape[1]
    extra = torch.randn(ref_m, d, generator=g, dtype=F64)
    extra_lab = torch.randint(0, classes + 1, (ref_m,), generator=g)
    if self_offset is not None:
        return (
            torch.cat([extra[:self_offset], x, extra[self_offset:]]),
            torch.cat([extra_lab[:self_offset], lab, extra_lab[self_offset:]]),
        )
    return extra, extra_lab


def all_pairs_separated(score, *, b=8, d=4, classes=3, ref_m=None, self_offset=None, seed=0):
    """First seed whose data make score(x, lab, ref, ref_lab) True: every hinge argument is
    more than a gap away from its kink (and no distance is 0), so that gradcheck's
    perturbations never cross a kink or change a non-zero count."""
    for s in range(seed, seed + 1000):
        g = torch.Generator().manual_seed(s)
        x = torch.randn(b, d, generator=g, dtype=F64)
        lab = torch.arange(b) % classes
        ref = ref_lab = None
        if ref_m is not None:
            ref, ref_lab = _ref_batch(g, x, lab, classes, ref_m, self_offset)
        if score(x, lab, ref, ref_lab):
            return x, lab, ref, ref_lab
    raise RuntimeError("no well-separated seed found")


def batch_all_separated(metric, margin, gap=1e-3, **kw):
    def score(x, lab, ref, ref_lab):
        r = x if ref is None else ref
        dist = R.pairwise_distance(x, r, metric=metric)
        pos, neg = R.batch_hard_masks(lab, ref_lab, kw.get("self_offset"))
        z = dist[:, :, None] - dist[:, None, :] + margin
        valid = pos[:, :, None] & neg[:, None, :]
        active = valid & (z > gap)
        return bool(valid.any()) and bool(active.any()) and not bool((valid & (z.abs() <= gap)).any())

    return all_pairs_separated(score, **kw)


def contrastive_separated(metric, pos_margin, neg_margin, gap=1e-3, **kw):
    def score(x, lab, ref, ref_lab):
        r = x if ref is None else ref
        rl = lab if ref_lab is None else ref_lab
        dist = R.pairwise_distance(x, r, metric=metric)
        allowed = R.contrastive_pair_mask(lab, ref_lab, kw.get("self_offset"))
        same = lab[:, None] == rl[None, :]
        v = torch.where(same, dist - pos_margin, neg_margin - dist)
        return (
            bool((allowed & same & (v > gap)).any())
            and bool((allowed & ~same & (v > gap)).any())
            and not bool((allowed & (v.abs() <= gap)).any())
            and bool((dist[allowed] > gap).all())
        )

    return all_pairs_separated(score, **kw)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("reduction", R.REDUCTIONS_BATCH_ALL)
def test_gradcheck_batch_all(metric, soft, reduction):
    margin = 0.5
    x, lab, _, _ = batch_all_separated(metric, margin)
    x.requires_grad_(True)

    def f(x):
        return fastmine.batch_all_triplet_loss(x, lab, margin=margin, metric=metric, soft=soft, reduction=reduction)

    assert torch.autograd.gradcheck(f, (x,), eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("self_offset", [None, 2])
def test_gradcheck_batch_all_ref_set(metric, soft, self_offset):
    margin = 0.5
    x, lab, ref, ref_lab = batch_all_separated(metric, margin, b=6, ref_m=7, self_offset=self_offset)
    x, ref = x.clone().requires_grad_(True), ref.clone().requires_grad_(True)

    def f(x, ref):
        return fastmine.batch_all_triplet_loss(
            x,
            lab,
            margin=margin,
            metric=metric,
            soft=soft,
            ref_embeddings=ref,
            ref_labels=ref_lab,
            self_offset=self_offset,
        )

    assert torch.autograd.gradcheck(f, (x, ref), eps=1e-6, atol=1e-7, rtol=1e-5)


def _neg_margin(metric):
    return {"euclidean": 2.0, "sqeuclidean": 6.0, "cosine": 1.0}[metric]


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("power", [1, 2, 1.5])
@pytest.mark.parametrize("reduction", R.REDUCTIONS_CONTRASTIVE)
def test_gradcheck_contrastive(metric, power, reduction):
    pm, nm = 0.3, _neg_margin(metric)
    x, lab, _, _ = contrastive_separated(metric, pm, nm)
    x.requires_grad_(True)

    def f(x):
        return fastmine.contrastive_loss(
            x, lab, pos_margin=pm, neg_margin=nm, power=power, metric=metric, reduction=reduction
        )

    assert torch.autograd.gradcheck(f, (x,), eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("power", [1, 2, 1.5])
@pytest.mark.parametrize("self_offset", [None, 2])
def test_gradcheck_contrastive_ref_set(metric, power, self_offset):
    pm, nm = 0.3, _neg_margin(metric)
    x, lab, ref, ref_lab = contrastive_separated(metric, pm, nm, b=6, ref_m=7, self_offset=self_offset)
    x, ref = x.clone().requires_grad_(True), ref.clone().requires_grad_(True)

    def f(x, ref):
        return fastmine.contrastive_loss(
            x,
            lab,
            pos_margin=pm,
            neg_margin=nm,
            power=power,
            metric=metric,
            reduction="mean_nonzero",
            ref_embeddings=ref,
            ref_labels=ref_lab,
            self_offset=self_offset,
        )

    assert torch.autograd.gradcheck(f, (x, ref), eps=1e-6, atol=1e-7, rtol=1e-5)
