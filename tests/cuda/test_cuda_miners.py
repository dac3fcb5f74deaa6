"""The miners on CUDA: against the float64 oracle with rounding-aware rules, at sizes past
a tile, on exact grids and against reference sets, and against the CPU op. Skipped without a
GPU (every test here carries the ``cuda`` marker). What every op owes on every device
(determinism, NaN, bad input, compile) is properties/test_contract.py's."""

from __future__ import annotations

import pytest
import torch

import fastmine
from fastmine import reference as R
from miners_check import TRIPLET_TYPES, check_batch_hard, check_triplets
from strategies import Case, make_embeddings, make_labels, shape_labels

pytestmark = pytest.mark.cuda

METRICS = R.METRICS


def _case(b, d, seed, *, lkind="pk", ekind="clustered", ref_m=None, self_offset=None):
    g = torch.Generator().manual_seed(seed)
    lab = shape_labels(make_labels(lkind, b, g), shuffle=True, shift=10**12, gen=g)
    x = make_embeddings(ekind, b, d, lab, g)
    if ref_m is None:
        return Case(x, lab, exact=ekind == "grid")
    rl = torch.cat([lab, lab.max() + 1 + torch.arange(2)])[torch.randint(0, b + 2, (ref_m,), generator=g)]
    rx = make_embeddings(ekind, ref_m, d, rl, g)
    if self_offset is not None:
        rx = torch.cat([rx[:self_offset], x, rx[self_offset:]])
        rl = torch.cat([rl[:self_offset], lab, rl[self_offset:]])
    return Case(x, lab, rx, rl, self_offset, exact=ekind == "grid")


def _on_cuda(case, **kw):
    c = case.to(device="cuda")
    return fastmine.mine_triplets(c.x, c.labels, **c.kwargs(), **kw)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("type", TRIPLET_TYPES)
def test_mine_triplets_against_oracle(dtype, metric, type):
    case = _case(130, 24, seed=1).to(dtype=dtype)
    mined = _on_cuda(case, margin=0.3, type=type, metric=metric)
    assert mined[0].device.type == "cuda"
    if dtype in (torch.float16, torch.bfloat16):
        case = case.to(dtype=torch.float32)  # upcast, as mine_triplets does
    check_triplets(case, tuple(t.cpu() for t in mined), margin=0.3, type=type, metric=metric)


@pytest.mark.parametrize("self_offset", [None, 0, 37])
@pytest.mark.parametrize("type", TRIPLET_TYPES)
def test_mine_triplets_ref_set(self_offset, type):
    case = _case(65, 16, seed=2, ref_m=300, self_offset=self_offset)
    mined = _on_cuda(case, margin=0.5, type=type)
    check_triplets(case, tuple(t.cpu() for t in mined), margin=0.5, type=type, metric="euclidean")


@pytest.mark.parametrize("type", TRIPLET_TYPES)
@pytest.mark.parametrize("margin", [0.0, 1.0, 2.0])
def test_mine_triplets_exact_grid(type, margin):
    case = _case(200, 3, seed=3, ekind="grid")
    mined = _on_cuda(case, margin=margin, type=type, metric="sqeuclidean")
    check_triplets(case, tuple(t.cpu() for t in mined), margin=margin, type=type, metric="sqeuclidean")


def test_mine_triplets_matches_cpu():
    case = _case(1000, 64, seed=4)
    for type in TRIPLET_TYPES:
        gpu = _on_cuda(case, margin=0.2, type=type)
        cpu = fastmine.mine_triplets(case.x, case.labels, margin=0.2, type=type)
        for g, c in zip(gpu, cpu):
            assert torch.equal(g.cpu(), c)  # float64: no triplet within rounding of a threshold


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("metric", METRICS)
def test_mine_batch_hard(dtype, metric):
    case = _case(300, 32, seed=6, ref_m=100, self_offset=50).to(dtype=dtype)
    c = case.to(device="cuda")
    mined = fastmine.mine_batch_hard(c.x, c.labels, metric=metric, **c.kwargs())
    check_batch_hard(case, tuple(t.cpu() for t in mined), metric=metric)
