"""Large batches: B = 50000 (B*B > 2^31, so any 32-bit pair index would wrap), checked against
the float64 oracle on a random sample of anchor rows, each row computed against the whole
batch (reference.batch_hard_rows / contrastive_rows: O(rows x B) memory, never B x B).

CPU tests run in the normal suite (a few seconds each at D = 4); the CUDA ones skip without a
GPU and add the issue's memory target: B = 65536, D = 256 forward + backward of batch-hard,
batch-all and contrastive with under 1 GiB of extra GPU memory.
"""

from __future__ import annotations

import pytest
import torch

import fastmine
from fastmine import reference as R

B_LARGE = 50_000
D_SMALL = 4
SAMPLE = 48


def _data(b, d, device, dtype=torch.float32, n_class=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    n_class = n_class or b // 8
    labels = torch.randint(0, n_class, (b,), generator=g)
    x = torch.randn(b, d, generator=g, dtype=torch.float64)
    rows = torch.randperm(b, generator=g)[:SAMPLE]
    rows = torch.cat([rows, torch.tensor([0, b - 1])])  # first and last rows: the edges
    return x.to(device=device, dtype=dtype), labels.to(device), rows.to(device)


def _tol(dtype):
    return {
        torch.float32: dict(rtol=1e-4, atol=1e-4),
        torch.float64: dict(rtol=1e-9, atol=1e-9),
        torch.float16: dict(rtol=2e-2, atol=2e-2),
        torch.bfloat16: dict(rtol=2e-2, atol=4e-2),
    }[dtype]


def check_batch_hard_rows(device, dtype=torch.float32, b=B_LARGE, d=D_SMALL):
    x, labels, rows = _data(b, d, device, dtype)
    loss, info = fastmine.batch_hard_triplet_loss(x, labels, margin=0.3, reduction="none", return_info=True)
    assert loss.shape == (b,)
    w_loss, w_dp, w_dn, w_valid = R.batch_hard_rows(x, labels, rows, margin=0.3)
    assert torch.equal(info.valid[rows], w_valid)
    tol = _tol(dtype)
    # Mined distances (not indices: near-ties may resolve to another index in low precision).
    torch.testing.assert_close(info.pos_dist[rows].double(), w_dp, **tol)
    torch.testing.assert_close(info.neg_dist[rows].double(), w_dn, **tol)
    torch.testing.assert_close(loss[rows].double(), w_loss, **tol)
    # The chosen indices are real candidates: same label / other label, never the anchor.
    pi, ni = info.pos_idx[rows], info.neg_idx[rows]
    ok = w_valid
    assert (labels[pi[ok]] == labels[rows[ok]]).all() and (pi[ok] != rows[ok]).all()
    assert (labels[ni[ok]] != labels[rows[ok]]).all()


def check_contrastive_rows(device, dtype=torch.float32, b=B_LARGE, d=D_SMALL):
    x, labels, rows = _data(b, d, device, dtype, seed=1)
    # The raw op: per-anchor sums and pair counts over the unordered pairs i < j.
    ps, pnz, pn, ns, nnz, nn = torch.ops.fastmine.contrastive(x, labels, x, labels, 0.0, 1.0, 2.0, 0, True, False, 0)
    w_ps, w_pn, w_ns, w_nn = R.contrastive_rows(x, labels, rows, pos_margin=0.0, neg_margin=1.0, power=2)
    assert torch.equal(pn[rows].long(), w_pn) and torch.equal(nn[rows].long(), w_nn)
    tol = _tol(dtype)
    torch.testing.assert_close(ps[rows].double(), w_ps, rtol=tol["rtol"], atol=tol["atol"] * 10)
    torch.testing.assert_close(ns[rows].double(), w_ns, rtol=tol["rtol"], atol=tol["atol"] * 10)
    # The whole loss (every pair) is finite and the pair count is B(B-1)/2, beyond int32.
    assert int(pn.sum() + nn.sum()) == b * (b - 1) // 2


def test_batch_hard_large_batch_cpu():
    check_batch_hard_rows("cpu")


def test_contrastive_large_batch_cpu():
    check_contrastive_rows("cpu")


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_batch_hard_large_batch_cuda(dtype):
    check_batch_hard_rows("cuda", dtype)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_contrastive_large_batch_cuda(dtype):
    check_contrastive_rows("cuda", dtype)


def _peak_extra_bytes(fn):
    """Peak GPU memory allocated by fn() beyond what was allocated before it."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


@pytest.mark.cuda
@pytest.mark.slow
@pytest.mark.parametrize("loss_name", ["batch_hard", "batch_all", "contrastive"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_b65536_d256_under_1gib_cuda(loss_name, dtype):
    b, d = 65536, 256
    x, labels, _ = _data(b, d, "cuda", dtype, n_class=b // 4, seed=2)
    x.requires_grad_(True)
    fn = {
        "batch_hard": fastmine.batch_hard_triplet_loss,
        "batch_all": fastmine.batch_all_triplet_loss,
        "contrastive": fastmine.contrastive_loss,
    }[loss_name]

    def step():
        loss = fn(x, labels)
        loss.backward()
        assert torch.isfinite(loss)

    extra = _peak_extra_bytes(step)
    assert extra < 2**30, f"{loss_name} used {extra / 2**20:.0f} MiB beyond its inputs"
    assert torch.isfinite(x.grad).all()
