"""semi_hard_triplet as a custom op (opcheck, fake kernel with a data-dependent size,
torch.compile(fullgraph=True)). Their bad-input contract is the shared one of
properties/test_contract.py."""

from __future__ import annotations

import pytest
import torch

import fastmine
from fastmine import reference as R

ops = torch.ops.fastmine
METRIC_IDS = {"euclidean": 0, "sqeuclidean": 1, "cosine": 2}
F64 = torch.float64


def _x(b, d, dtype=F64, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, d, generator=g, dtype=torch.float64).to(dtype).requires_grad_(requires_grad)


def _args(metric, ref, dtype=F64, requires_grad=True):
    x = _x(10, 4, dtype, 0, requires_grad)
    lab = torch.arange(10) % 3
    if ref == "none":
        return (x, lab, x, lab, 0.3, METRIC_IDS[metric], True, 0)
    r = _x(13, 4, dtype, 1, requires_grad)
    rl = torch.arange(13) % 4
    if ref == "self_offset":
        return (x, lab, r, rl, 0.3, METRIC_IDS[metric], True, 2)
    return (x, lab, r, rl, 0.3, METRIC_IDS[metric], False, 0)


# ---- opcheck ---------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", list(METRIC_IDS))
@pytest.mark.parametrize("ref", ["none", "ref", "self_offset"])
@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=str)
def test_opcheck_semi_hard_triplet(metric, ref, dtype):
    torch.library.opcheck(ops.semi_hard_triplet.default, _args(metric, ref, dtype))


def test_opcheck_semi_hard_triplet_no_pair():
    x = _x(4, 3, requires_grad=True)
    lab = torch.arange(4)
    torch.library.opcheck(ops.semi_hard_triplet.default, (x, lab, x, lab, 0.3, 0, True, 0))


@pytest.mark.parametrize("metric", list(METRIC_IDS))
def test_opcheck_semi_hard_triplet_backward(metric):
    args = _args(metric, "ref", requires_grad=False)
    x, r = args[0], args[2]
    loss, a, p, n, pd, nd, _ = ops.semi_hard_triplet(*args)
    g = _x(loss.numel(), 1, seed=5)[:, 0].contiguous()
    torch.library.opcheck(
        ops.semi_hard_triplet_backward.default,
        (g, torch.zeros_like(pd), 0.5 * g, x, r, a, p, n, pd, nd, 0.3, METRIC_IDS[metric]),
    )


def test_low_level_op_outputs():
    x = torch.tensor([[0.0], [1.0], [3.0], [6.0], [9.0]], dtype=F64)
    lab = torch.tensor([0, 0, 1, 1, 2])
    loss, a, p, n, pd, nd, nonfinite = ops.semi_hard_triplet(x, lab, x, lab, 0.3, 0, True, 0)
    assert a.tolist() == [0, 1, 2, 3] and p.tolist() == [1, 0, 3, 2]
    # (0,1) d=1: negatives 3, 6, 9 -> 3 (row 2); (1,0) d=1: 2, 5, 8 -> 2 (row 2)
    # (2,3) d=3: 3, 2, 6 -> 6 (row 4); (3,2) d=3: 6, 5, 3 -> 5 (row 1)
    assert n.tolist() == [2, 2, 4, 1]
    assert pd.tolist() == [1, 1, 3, 3] and nd.tolist() == [3, 2, 6, 5]
    assert loss.tolist() == pytest.approx([0, 0, 0, 0]) and float(nonfinite) == 0.0


def test_backward_rejects_out_of_range_indices():
    x = _x(4, 2)
    idx = torch.tensor([0, 9])
    one = torch.ones(2, dtype=F64)
    with pytest.raises(ValueError, match="anchor_idx must hold rows of x in"):
        ops.semi_hard_triplet_backward(one, one, one, x, x, idx, idx, idx, one, one, 0.3, 0)


# ---- torch.compile ---------------------------------------------------------------------------


def _f(x, lab, ref, ref_lab):
    loss = fastmine.semi_hard_triplet_loss(x, lab, margin=0.5)
    loss2, info = fastmine.semi_hard_triplet_loss(
        x,
        lab,
        metric="cosine",
        reduction="sum",
        ref_embeddings=ref,
        ref_labels=ref_lab,
        self_offset=3,
        return_info=True,
    )
    per = fastmine.semi_hard_triplet_loss(x, lab, metric="sqeuclidean", reduction="none")
    return loss + 0.01 * loss2 + 1e-3 * info.active_fraction + 0.1 * per.mean()


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(24, 8, generator=g)
    lab = torch.arange(24) % 5
    ref = torch.cat([torch.randn(3, 8, generator=g), x, torch.randn(5, 8, generator=g)])
    ref_lab = torch.cat([torch.tensor([7, 8, 9]), lab, torch.arange(5)])
    return x, lab, ref, ref_lab


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compile_fullgraph_matches_eager(backend):
    torch._dynamo.reset()
    x, lab, ref, ref_lab = _data()
    xe, xc = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    eager = _f(xe, lab, ref, ref_lab)
    compiled = torch.compile(_f, fullgraph=True, backend=backend)(xc, lab, ref, ref_lab)
    torch.testing.assert_close(eager.detach(), compiled.detach())
    (ge,) = torch.autograd.grad(eager, xe)
    (gc,) = torch.autograd.grad(compiled, xc)
    torch.testing.assert_close(ge, gc)
    xd, rd = x.double(), ref.double()
    loss2, info = R.semi_hard_triplet_loss(
        xd,
        lab,
        metric="cosine",
        reduction="sum",
        ref_embeddings=rd,
        ref_labels=ref_lab,
        self_offset=3,
        return_info=True,
    )
    expected = (
        R.semi_hard_triplet_loss(xd, lab, margin=0.5)
        + 0.01 * loss2
        + 1e-3 * info.active_fraction
        + 0.1 * R.semi_hard_triplet_loss(xd, lab, metric="sqeuclidean", reduction="none").mean()
    )
    torch.testing.assert_close(compiled.detach().double(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_compile_fullgraph_miner():
    torch._dynamo.reset()
    x, lab, _, _ = _data()
    compiled = torch.compile(lambda x, y: fastmine.mine_semi_hard(x, y), fullgraph=True, backend="aot_eager")
    for u, v in zip(compiled(x, lab), fastmine.mine_semi_hard(x, lab)):
        assert torch.equal(u, v)
