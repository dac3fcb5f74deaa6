"""The tensor-core paths on a GPU: float16/bfloat16 tiles through mma.sync (csrc/cuda/
mma_tile.cuh) against the float64 oracle at docs/semantics.md's half tolerance, for every op built on the
tile mainloop, at shapes that are not multiples of the 64 x 64 tile and D not a multiple of
16; embeddings produced under torch.autocast; TF32. Skipped without a GPU (the layouts
themselves are checked on the CPU by tests/cuda/test_emu_tensor_cores.py; half-precision
determinism and oracle parity of every op at the table's sizes by
properties/test_contract.py)."""

from __future__ import annotations

import pytest
import torch

import fastmine
from fastmine import reference as R
from helpers import check_batch_all, check_batch_hard, check_contrastive
from strategies import Case, make_embeddings, make_labels, shape_labels

pytestmark = pytest.mark.cuda

HALF = [torch.float16, torch.bfloat16]
# (B, D): partial tiles, D < 16, D = 16k + r, D a multiple of 16 (the 8-byte vector loads).
SHAPES = [(1, 3), (65, 17), (130, 40), (200, 129), (257, 256)]


def _case(b, d, seed):
    g = torch.Generator().manual_seed(seed)
    lab = shape_labels(make_labels("pk", b, g), shuffle=True, shift=0, gen=g)
    return Case(make_embeddings("clustered", b, d, lab, g), lab)


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("b, d", SHAPES)
@pytest.mark.parametrize("metric", R.METRICS)
def test_half_tensor_cores_against_oracle(dtype, b, d, metric):
    case = _case(b, d, seed=b * 31 + d)
    check_batch_hard(case, dtype=dtype, device="cuda", metric=metric)
    check_batch_all(case, dtype=dtype, device="cuda", metric=metric)
    check_contrastive(case, dtype=dtype, device="cuda", metric=metric)


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("b, d", [(70, 40), (129, 200)])
def test_half_pairwise_against_oracle(dtype, b, d):
    g = torch.Generator().manual_seed(b + d)
    x = torch.randn(b, d, generator=g).to(dtype)
    y = torch.randn(b + 5, d, generator=g).to(dtype)
    for metric in R.METRICS:
        got = fastmine.pairwise_distance(x.cuda(), y.cuda(), metric=metric).cpu().double()
        want = R.pairwise_distance(x.double(), y.double(), metric=metric)
        torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2 * float(want.abs().max()))


@pytest.mark.parametrize("amp_dtype", HALF, ids=str)
def test_autocast_embeddings_take_the_tensor_core_path(amp_dtype):
    """Under autocast a model's last Linear emits half embeddings: the loss takes them as they
    are (no autocast cast list for fastmine's ops), computes in fp32 and returns float32."""
    torch.manual_seed(0)
    net = torch.nn.Linear(32, 48).cuda()
    inp = torch.randn(256, 32, device="cuda")
    lab = torch.randint(0, 32, (256,), device="cuda")
    with torch.autocast("cuda", dtype=amp_dtype):
        emb = net(inp)
        assert emb.dtype == amp_dtype
        loss = fastmine.batch_hard_triplet_loss(emb, lab)
    assert loss.dtype == torch.float32
    loss.backward()
    assert net.weight.grad is not None and torch.isfinite(net.weight.grad).all()
    want = R.batch_hard_triplet_loss(emb.detach().double().cpu(), lab.cpu())
    torch.testing.assert_close(loss.detach().double().cpu(), want, rtol=2e-2, atol=2e-3)


def test_tf32_opt_in_follows_torch_flag():
    """float32 keeps full fp32 accuracy by default; with torch.backends.cuda.matmul.allow_tf32
    the tiles run on TF32 tensor cores (10-bit mantissas): visibly different, still within
    the half-precision tolerance of the float64 oracle."""
    case = _case(257, 160, seed=9)
    x = case.x.float().cuda()
    want = R.pairwise_distance(case.x.float().double(), metric="sqeuclidean")
    old = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        fp32 = fastmine.pairwise_distance(x, metric="sqeuclidean").cpu().double()
        torch.backends.cuda.matmul.allow_tf32 = True
        tf32 = fastmine.pairwise_distance(x, metric="sqeuclidean").cpu().double()
        # Index checks assume fp32 resolution of near-ties: TF32 is held to the half tolerance.
        check_batch_hard(case, dtype=torch.float32, device="cuda", rtol=2e-2, check_indices=False)
        lab = case.labels.cuda()
        for fn, oracle in (
            (fastmine.contrastive_loss, R.contrastive_loss),
            (fastmine.batch_all_triplet_loss, R.batch_all_triplet_loss),
        ):
            got = fn(x, lab).double().cpu()
            want_loss = oracle(case.x.float().double(), case.labels)
            torch.testing.assert_close(got, want_loss, rtol=2e-2, atol=1e-4)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
    scale = float(want.abs().max())
    assert float((fp32 - want).abs().max()) <= 1e-5 * scale
    assert float((tf32 - want).abs().max()) <= 2e-2 * scale
    assert not torch.equal(fp32, tf32)


def test_tf32_flag_under_torch_compile():
    x = torch.randn(300, 64, device="cuda", requires_grad=True)
    lab = torch.randint(0, 30, (300,), device="cuda")
    fn = torch.compile(fastmine.batch_hard_triplet_loss, fullgraph=True)
    old = torch.backends.cuda.matmul.allow_tf32
    try:
        for flag in (False, True):
            torch.backends.cuda.matmul.allow_tf32 = flag
            loss = fn(x, lab)
            loss.backward()
            eager = fastmine.batch_hard_triplet_loss(x, lab)
            torch.testing.assert_close(loss, eager, rtol=0, atol=0)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
