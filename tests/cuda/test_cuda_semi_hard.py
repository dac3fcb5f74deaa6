"""CUDA semi-hard kernels against the float64 oracle and the CPU op; large classes and a
tall batch. Skipped without a GPU (every test here carries the ``cuda`` marker). What every
op owes on every device (determinism, NaN, empty and degenerate batches, compile) is
properties/test_contract.py's."""

from __future__ import annotations

import pytest
import torch

import fastmine
from fastmine import reference as R
from helpers import assert_close_rel
from semi_hard_checks import check_semi_hard
from strategies import Case, make_embeddings, make_labels, shape_labels

pytestmark = pytest.mark.cuda

METRICS = R.METRICS
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def _case(b, d, seed, *, lkind="pk", ekind="clustered", ref_m=None, self_offset=None):
    g = torch.Generator().manual_seed(seed)
    lab = shape_labels(make_labels(lkind, b, g), shuffle=True, shift=10**12, gen=g)
    x = make_embeddings(ekind, b, d, lab, g)
    case = Case(x, lab, exact=ekind == "grid")
    if ref_m is not None:
        rl = torch.cat([lab, lab.max() + 1 + torch.arange(2)])[torch.randint(0, b + 2, (ref_m,), generator=g)]
        rx = make_embeddings(ekind, ref_m, d, rl, g)
        if self_offset is not None:
            rx = torch.cat([rx[:self_offset], x, rx[self_offset:]])
            rl = torch.cat([rl[:self_offset], lab, rl[self_offset:]])
        case = Case(x, lab, rx, rl, self_offset, exact=ekind == "grid")
    return case


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("b, d", [(1, 3), (7, 1), (65, 33), (257, 129), (600, 16)])
def test_against_oracle(b, d, dtype, metric):
    case = _case(b, d, seed=b * 31 + d)
    for reduction in ("mean", "none"):
        check_semi_hard(case, dtype=dtype, device="cuda", metric=metric, reduction=reduction)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("self_offset", [None, 0, 37])
def test_ref_set_and_self_offset(dtype, metric, self_offset):
    case = _case(129, 65, seed=2, ref_m=300, self_offset=self_offset)
    check_semi_hard(case, dtype=dtype, device="cuda", metric=metric, reduction="sum")


@pytest.mark.parametrize("lkind", ["one_class", "distinct", "singletons", "random"])
@pytest.mark.parametrize("ekind", ["grid", "duplicates"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_label_and_tie_patterns(lkind, ekind, dtype):
    for metric in METRICS:
        check_semi_hard(
            _case(150, 9, seed=3, lkind=lkind, ekind=ekind), dtype=dtype, device="cuda", metric=metric, reduction="none"
        )


@pytest.mark.parametrize("metric", METRICS)
def test_matches_cpu_op(metric):
    case = _case(500, 64, seed=4)
    x, lab = case.x.float(), case.labels
    a, ia = fastmine.semi_hard_triplet_loss(x, lab, metric=metric, return_info=True, reduction="none")
    b, ib = fastmine.semi_hard_triplet_loss(x.cuda(), lab.cuda(), metric=metric, return_info=True, reduction="none")
    assert torch.equal(ia.anchor_idx, ib.anchor_idx.cpu()) and torch.equal(ia.pos_idx, ib.pos_idx.cpu())
    same = ia.neg_idx == ib.neg_idx.cpu()
    assert same.float().mean() > 0.99
    assert_close_rel(b.cpu()[same], a[same], 1e-5)


def test_tall_batch_against_tiny_reference_set():
    """65535 * 64 + 1 anchors against 2 reference rows: the scratch budget alone would allow
    one panel of every row, more row tiles than grid.y takes; the panel is clamped."""
    b = 65535 * 64 + 1
    g = torch.Generator().manual_seed(12)
    x = torch.randn(b, 1, generator=g).cuda()
    lab = torch.randint(0, 2, (b,), generator=g).cuda()
    ref, ref_lab = torch.tensor([[0.0], [1.0]]).cuda(), torch.tensor([0, 1]).cuda()
    loss, ai, pi, ni, pd, nd, _ = torch.ops.fastmine.semi_hard_triplet(x, lab, ref, ref_lab, 0.3, 0, False, 0)
    assert torch.equal(ai, torch.arange(b, device="cuda"))
    assert torch.equal(pi, lab) and torch.equal(ni, 1 - lab)
    torch.testing.assert_close(pd, (x[:, 0] - lab.float()).abs())
    torch.testing.assert_close(nd, (x[:, 0] - (1 - lab).float()).abs())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_two_huge_classes_4096(dtype):
    """2 classes in a batch of 4096: 2047 positives per anchor, 8.4M pairs."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(4096, 64, generator=g).to(dtype).cuda().requires_grad_(True)
    lab = (torch.arange(4096) % 2).cuda()
    loss, info = fastmine.semi_hard_triplet_loss(x, lab, return_info=True)
    assert int(info.num_pairs) == 4096 * 2047
    loss.backward()
    assert torch.isfinite(x.grad).all()
    # spot-check 64 anchors against the oracle's rule on their rows
    rows = torch.arange(0, 4096, 64, device="cuda")
    dist = R.pairwise_distance(x.detach().double()[rows], x.detach().double())
    pos_mask, neg_mask = R.batch_hard_masks(lab[rows], lab)
    pos_mask[torch.arange(64), rows] = False
    a, p, n = R.semi_hard_select(dist, pos_mask, neg_mask)
    sel = torch.isin(info.anchor_idx, rows)
    assert torch.equal(info.pos_idx[sel], p)
    agree = (info.neg_idx[sel] == n).float().mean().item()
    assert agree > 0.999, agree


def test_miner_on_cuda():
    x = torch.randn(64, 8, device="cuda")
    lab = (torch.arange(64) % 8).cuda()
    a, p, n = fastmine.mine_semi_hard(x, lab)
    a2, p2, n2 = fastmine.mine_semi_hard(x.cpu(), lab.cpu())
    assert torch.equal(a.cpu(), a2) and torch.equal(p.cpu(), p2)
    assert (n.cpu() == n2).float().mean() > 0.95
