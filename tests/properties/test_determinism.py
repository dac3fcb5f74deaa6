"""Same inputs, same device: bitwise-identical losses and gradients, run after run."""

from __future__ import annotations

import pytest
import torch

import fastmine
from fastmine import reference as R
from helpers import assert_bitwise, hub_batch, run_twice_inputs as run

METRICS = R.METRICS


def test_hub_is_everyones_hardest_negative():
    x, lab = hub_batch()
    _, info = fastmine.batch_hard_triplet_loss(x, lab, return_info=True)
    assert bool((info.neg_idx[:-1] == x.shape[0] - 1).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_repeat_bitwise(dtype, metric, reduction):
    x, lab = hub_batch(dtype=dtype)
    first = run(x, lab, metric=metric, reduction=reduction, margin=30.0)
    for _ in range(3):
        assert_bitwise(first, run(x, lab, metric=metric, reduction=reduction, margin=30.0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_repeat_bitwise_ref_set(dtype):
    x, lab = hub_batch(dtype=dtype)
    g = torch.Generator().manual_seed(3)
    ref = torch.cat([x, (torch.randn(700, x.shape[1], generator=g) * 10).to(dtype)])
    ref_lab = torch.cat([lab, torch.randint(0, 17, (700,), generator=g)])
    kw = dict(ref_embeddings=ref, ref_labels=ref_lab, self_offset=0, margin=30.0, soft=True)
    first = run(x, lab, **kw)
    for _ in range(3):
        assert_bitwise(first, run(x, lab, **kw))


@pytest.mark.parametrize("metric", METRICS)
def test_repeat_bitwise_pairwise(metric):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(333, 40, generator=g)
    y = torch.randn(277, 40, generator=g)
    w = torch.randn(333, 277, generator=g)

    def once():
        a, b = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
        d = fastmine.pairwise_distance(a, b, metric=metric)
        return (d.detach(), *torch.autograd.grad((d * w).sum(), [a, b]))

    first = once()
    for _ in range(2):
        assert_bitwise(first, once())


def test_thread_count_does_not_change_the_gradient():
    """The reference-side scatter sums in a fixed order: intra-op thread count must not matter
    for the gradients (each row's contributions are added in ascending anchor order)."""
    x, lab = hub_batch(dtype=torch.float32)
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run(x, lab, margin=30.0)
    finally:
        torch.set_num_threads(n)
    many = run(x, lab, margin=30.0)
    # loss and mined indices may legitimately depend on BLAS blocking only through near-ties;
    # this data has none, so everything must agree bitwise.
    assert_bitwise(one, many)


# ---- batch-all and contrastive ---------------------------------------------------------------


def run_all_pairs_once(name, x, lab, **kw):
    """(loss, grads..., info...) of one fresh call: compare two of these bitwise."""
    xr = x.clone().requires_grad_(True)
    ref = kw.pop("ref_embeddings", None)
    extra, inputs = {}, [xr]
    if ref is not None:
        ref = ref.clone().requires_grad_(True)
        extra["ref_embeddings"] = ref
        inputs.append(ref)
    if name == "batch_all":
        loss, info = fastmine.batch_all_triplet_loss(xr, lab, return_info=True, **kw, **extra)
    else:
        loss, info = fastmine.contrastive_loss(xr, lab, **kw, **extra), ()
    return (loss.detach(), *torch.autograd.grad(loss, inputs), *info)


ALL_PAIRS_KW = {
    "batch_all": [dict(margin=30.0), dict(margin=1.0, soft=True, reduction="sum")],
    "contrastive": [
        dict(neg_margin=20.0),
        dict(neg_margin=20.0, power=1, reduction="mean_nonzero"),
        dict(neg_margin=20.0, pos_margin=0.5, power=1.5, reduction="sum"),
    ],
}


@pytest.mark.parametrize("name", list(ALL_PAIRS_KW))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("metric", METRICS)
def test_all_pairs_repeat_bitwise(name, dtype, metric):
    """The hub (a point near everyone) receives ~B gradient contributions: their summation
    order must be fixed."""
    x, lab = hub_batch(b=300, dtype=dtype)
    for kw in ALL_PAIRS_KW[name]:
        first = run_all_pairs_once(name, x, lab, metric=metric, **kw)
        assert_bitwise(first, run_all_pairs_once(name, x, lab, metric=metric, **kw))


@pytest.mark.parametrize("name", list(ALL_PAIRS_KW))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_all_pairs_repeat_bitwise_ref_set(name, dtype):
    x, lab = hub_batch(b=200, dtype=dtype)
    g = torch.Generator().manual_seed(3)
    ref = torch.cat([x, (torch.randn(500, x.shape[1], generator=g) * 10).to(dtype)])
    ref_lab = torch.cat([lab, torch.randint(0, 17, (500,), generator=g)])
    kw = dict(ref_embeddings=ref, ref_labels=ref_lab, self_offset=0)
    kw.update(ALL_PAIRS_KW[name][-1])
    first = run_all_pairs_once(name, x, lab, **kw)
    assert_bitwise(first, run_all_pairs_once(name, x, lab, **kw))


@pytest.mark.parametrize("name", list(ALL_PAIRS_KW))
def test_all_pairs_thread_count_does_not_change_the_result(name):
    """Panels are split across threads by rows; the reference-side gradient is accumulated
    panel by panel in a fixed order: one thread and many agree bitwise."""
    x, lab = hub_batch(b=700, dtype=torch.float32)
    kw = ALL_PAIRS_KW[name][0]
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run_all_pairs_once(name, x, lab, **kw)
    finally:
        torch.set_num_threads(n)
    many = run_all_pairs_once(name, x, lab, **kw)
    assert_bitwise(one, many)
