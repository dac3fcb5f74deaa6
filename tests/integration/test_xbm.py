"""fastmine.CrossBatchMemory against the float64 oracle on the explicit concatenation
(batch ∪ the FIFO's previous contents), through the ring's wrap-around; FIFO contents; no
autograd graph kept in the memory; bad input."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import fastmine
import fastmine.nn
from fastmine import reference as R
from helpers import assert_close_rel

LOSSES = [
    (
        fastmine.nn.BatchHardTripletLoss,
        R.batch_hard_triplet_loss,
        [
            dict(),
            dict(reduction="mean_nonzero", metric="sqeuclidean"),
            dict(reduction="none", soft=True),
            dict(reduction="sum", metric="cosine"),
        ],
    ),
    (
        fastmine.nn.BatchAllTripletLoss,
        R.batch_all_triplet_loss,
        [dict(), dict(reduction="mean", margin=0.5), dict(reduction="sum", metric="cosine")],
    ),
    (
        fastmine.nn.ContrastiveLoss,
        R.contrastive_loss,
        [dict(), dict(reduction="mean_nonzero", power=1, pos_margin=0.2), dict(reduction="sum")],
    ),
    (
        fastmine.nn.SemiHardTripletLoss,
        R.semi_hard_triplet_loss,
        [dict(), dict(reduction="sum", metric="sqeuclidean")],
    ),  # "none": see below
]
CASES = [(cls, oracle, opts) for cls, oracle, all_opts in LOSSES for opts in all_opts]
IDS = [f"{c[0].__name__}-{'-'.join(f'{k}={v}' for k, v in c[2].items()) or 'default'}" for c in CASES]


def run_steps(cls, oracle, opts, size, batch_sizes, *, d=6, classes=4, seed=0):
    """Feeds the batches through an XBM and checks each step's loss and gradient against the
    oracle on cat([batch, the last size - B embeddings before it]) (detached) with
    self_offset=0, and the memory's contents against a plain FIFO."""
    g = torch.Generator().manual_seed(seed)
    xbm = fastmine.CrossBatchMemory(cls(**opts), size, d, dtype=torch.float64)
    hist_x, hist_y = torch.zeros(0, d, dtype=torch.float64), torch.zeros(0, dtype=torch.int64)
    for step, b in enumerate(batch_sizes):
        x = torch.randn(b, d, generator=g, dtype=torch.float64)
        y = torch.randint(0, classes, (b,), generator=g)
        start = max(0, hist_x.shape[0] - (size - b))  # the FIFO keeps size - b older rows
        prev_x, prev_y = hist_x[start:], hist_y[start:]
        ref = torch.cat([x, prev_x])
        ref_y = torch.cat([y, prev_y])

        xk = x.clone().requires_grad_(True)
        loss = xbm(xk, y)
        xo = x.clone().requires_grad_(True)
        want = oracle(xo, y, ref_embeddings=ref, ref_labels=ref_y, self_offset=0, **opts)
        what = f"step {step} (B={b}, ptr before={(sum(batch_sizes[:step])) % size})"
        assert loss.shape == want.shape, what
        assert_close_rel(loss.detach(), want.detach(), 1e-9, what=f"loss, {what}")
        w = torch.linspace(0.5, 1.5, loss.numel(), dtype=loss.dtype).reshape(loss.shape)
        (loss * w).sum().backward()
        (want * w).sum().backward()
        assert_close_rel(xk.grad, xo.grad, 1e-8, what=f"gradient, {what}")

        hist_x, hist_y = torch.cat([hist_x, x]), torch.cat([hist_y, y])
        mem_x, mem_y = xbm.memory()
        n = min(size, hist_x.shape[0])
        assert torch.equal(mem_x, hist_x[hist_x.shape[0] - n :]), f"memory contents, {what}"
        assert torch.equal(mem_y, hist_y[hist_y.shape[0] - n :]), f"memory labels, {what}"
        assert xbm.filled == n
    return xbm


@pytest.mark.parametrize("cls, oracle, opts", CASES, ids=IDS)
def test_against_oracle_through_wrap_around(cls, oracle, opts):
    # size 20, batches of 7: ptr 0, 7, 14, then 14 + 7 wraps (6 rows at the end, 1 at the
    # start), ...; a batch of exactly the size; a batch that ends exactly at the end.
    run_steps(cls, oracle, opts, 20, [7, 7, 7, 7, 3, 20, 5, 15, 9, 9, 9])


@given(size=st.integers(1, 24), seed=st.integers(0, 2**31 - 1), data=st.data())
def test_random_batch_sequences(size, seed, data):
    sizes = data.draw(st.lists(st.integers(1, size), min_size=1, max_size=6))
    cls, oracle, all_opts = LOSSES[seed % len(LOSSES)]
    run_steps(cls, oracle, all_opts[seed % len(all_opts)], size, sizes, seed=seed)


def test_semi_hard_none_is_per_pair_in_memory_order():
    """Semi-hard's reduction="none" has one value per (anchor, positive) pair, positives in
    the order of their rows in the ring: the same values as the oracle on the concatenation
    (whose row order differs), and the same gradient of their sum."""
    g = torch.Generator().manual_seed(3)
    xbm = fastmine.CrossBatchMemory(
        fastmine.nn.SemiHardTripletLoss(reduction="none", margin=0.5), 12, 5, dtype=torch.float64
    )
    hist_x = torch.zeros(0, 5, dtype=torch.float64)
    hist_y = torch.zeros(0, dtype=torch.int64)
    for step, b in enumerate([5, 5, 5, 4]):  # the third batch wraps around the ring's end
        x = torch.randn(b, 5, generator=g, dtype=torch.float64)
        y = torch.randint(0, 3, (b,), generator=g)
        keep = max(0, hist_x.shape[0] - (12 - b))
        ref, ref_y = torch.cat([x, hist_x[keep:]]), torch.cat([y, hist_y[keep:]])
        xk, xo = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        got = xbm(xk, y)
        want = R.semi_hard_triplet_loss(
            xo, y, ref_embeddings=ref, ref_labels=ref_y, self_offset=0, reduction="none", margin=0.5
        )
        assert got.shape == want.shape, f"step {step}"
        assert_close_rel(
            got.detach().sort().values, want.detach().sort().values, 1e-9, what=f"pair losses, step {step}"
        )
        got.sum().backward()
        want.sum().backward()
        assert_close_rel(xk.grad, xo.grad, 1e-8, what=f"gradient, step {step}")
        hist_x, hist_y = torch.cat([hist_x, x]), torch.cat([hist_y, y])


def test_memory_holds_no_graph():
    xbm = fastmine.CrossBatchMemory(fastmine.nn.BatchHardTripletLoss(), 16, 4)
    lin = torch.nn.Linear(3, 4)
    for _ in range(3):
        emb = lin(torch.randn(6, 3))
        loss = xbm(emb, torch.arange(6) % 3)
        assert xbm.embedding_memory.grad_fn is None and not xbm.embedding_memory.requires_grad
        loss.backward()
    assert xbm.embedding_memory.grad is None
    assert lin.weight.grad is not None and bool(lin.weight.grad.abs().sum() > 0)
    # the memory is a buffer (moves with .to()), but is not checkpointed
    assert "embedding_memory" in dict(xbm.named_buffers())
    assert not any("memory" in k for k in xbm.state_dict())


def test_gradient_only_through_the_anchors():
    """The batch's copy in the memory is a constant: the gradient is the oracle's with the
    reference set detached, which differs from the one through both sides."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 5, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    xbm = fastmine.CrossBatchMemory(fastmine.nn.BatchHardTripletLoss(), 8, 5, dtype=torch.float64)
    xk = x.clone().requires_grad_(True)
    xbm(xk, y).backward()
    xo = x.clone().requires_grad_(True)
    R.batch_hard_triplet_loss(xo, y).backward()  # gradient through anchors and positives
    assert not torch.allclose(xk.grad, xo.grad)


def test_reset_and_repr():
    xbm = fastmine.CrossBatchMemory(fastmine.nn.ContrastiveLoss(), 10, 3)
    xbm(torch.randn(4, 3), torch.arange(4))
    assert "filled=4" in repr(xbm) and "ContrastiveLoss" in repr(xbm)
    xbm.reset()
    assert xbm.filled == 0 and xbm.memory()[0].shape == (0, 3)


@pytest.mark.parametrize(
    "kw, exc, match",
    [
        (dict(size=0), ValueError, "size"),
        (dict(size=4.0), ValueError, "size"),
        (dict(dim=-1), ValueError, "dim"),
        (dict(dtype=torch.int64), TypeError, "dtype"),
        (dict(loss=torch.nn.MSELoss()), TypeError, "loss"),
    ],
)
def test_bad_construction(kw, exc, match):
    args = dict(loss=fastmine.nn.BatchHardTripletLoss(), size=8, dim=3)
    args.update(kw)
    with pytest.raises(exc, match=match):
        fastmine.CrossBatchMemory(**args)


def test_bad_batches():
    xbm = fastmine.CrossBatchMemory(fastmine.nn.BatchHardTripletLoss(), 8, 3)
    with pytest.raises(ValueError, match="D = 4"):
        xbm(torch.randn(4, 4), torch.arange(4))
    with pytest.raises(ValueError, match="size"):
        xbm(torch.randn(9, 3), torch.arange(9))
    with pytest.raises(TypeError, match="dtype"):
        xbm(torch.randn(4, 3, dtype=torch.float64), torch.arange(4))
    with pytest.raises(ValueError, match="labels"):
        xbm(torch.randn(4, 3), torch.arange(5))
    with pytest.raises(TypeError, match="labels"):
        xbm(torch.randn(4, 3), torch.ones(4))
    assert xbm.filled == 0  # nothing was written by the failed calls


def test_nan_embedding_gives_nan_loss():
    xbm = fastmine.CrossBatchMemory(fastmine.nn.BatchHardTripletLoss(), 32, 3)
    xbm(torch.randn(8, 3), torch.arange(8) % 2)
    x = torch.randn(8, 3)
    x[2, 1] = float("nan")
    assert torch.isnan(xbm(x, torch.arange(8) % 2))
