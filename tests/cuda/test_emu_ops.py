"""Every CUDA op, forward and backward, run under the host emulator and compared with the CPU
op: the CUDA module's own host code (launch plans, allocations, copies, CUB calls, checks)
with its kernels emulated (tests/emu/, emu_ops.py). Small odd shapes (partial tiles, one
row, one column), every dtype, exact ties (integer grids), NaN/inf rows, degenerate label
sets. Skips where g++ or the CUDA headers are missing.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from emu_ops import DTYPES, HALF, assert_same, compare, embeddings, emu, labels_of, run_cpu, run_emu  # noqa: F401

SHAPES = [(1, 3), (7, 1), (65, 33)]
METRICS = (0, 1, 2)


def _grid_cases():
    """(b, d, dtype, metric, ekind, lkind): every dtype and metric at every shape, ties on
    the integer grid (euclidean metrics: exact there, so the tie rule is compared)."""
    cases = []
    for (b, d), dt, m in itertools.product(SHAPES, DTYPES, METRICS):
        cases.append((b, d, dt, m, "random", "pk"))
    for b, d in SHAPES:
        for m in (0, 1):
            cases.append((b, d, torch.float32, m, "grid", "pk"))
            cases.append((b, d, torch.float64, m, "grid", "pk"))
    return cases


CASES = _grid_cases()
IDS = [f"{b}x{d}-{str(dt)[6:]}-m{m}-{e}" for b, d, dt, m, e, _ in CASES]


def _inputs(b, d, dtype, ekind, lkind, seed):
    g = torch.Generator().manual_seed(seed)
    return embeddings(ekind, b, d, dtype, g), labels_of(lkind, b, g)


# ---- semi-hard ------------------------------------------------------------------------------


def _semi_hard(emu, x, lab, metric, ref=None, ref_lab=None, offset=0, half=None):
    ref = x if ref is None else ref
    ref_lab = lab if ref_lab is None else ref_lab
    f = compare(emu, "semi_hard_triplet", x, lab, ref, ref_lab, 0.3, metric, True, offset, half=half)
    loss, ai, pi, ni, pd, nd, _ = f
    if ai.numel() == 0:
        return f
    g = torch.Generator().manual_seed(ai.numel())
    gl, gp, gn = (torch.randn(ai.numel(), generator=g).to(loss.dtype) for _ in range(3))
    # The backward at the emulated op's triplets (the CPU op's are the same ones where the
    # indices were compared exactly).
    compare(emu, "semi_hard_triplet_backward", gl, gp, gn, x, ref, ai, pi, ni, pd, nd, 0.3, metric, half=half)
    return f


@pytest.mark.parametrize("b, d, dtype, metric, ekind, lkind", CASES, ids=IDS)
def test_semi_hard(emu, b, d, dtype, metric, ekind, lkind):
    x, lab = _inputs(b, d, dtype, ekind, lkind, seed=b * 100 + d)
    _semi_hard(emu, x, lab, metric)


@pytest.mark.parametrize("lkind", ["one_class", "distinct"])
def test_semi_hard_degenerate_labels(emu, lkind):
    x, lab = _inputs(9, 4, torch.float32, "random", lkind, seed=5)
    _semi_hard(emu, x, lab, 0)


def test_semi_hard_ref_set(emu):
    g = torch.Generator().manual_seed(3)
    x, lab = embeddings("random", 20, 5, torch.float64, g), labels_of("pk", 20, g)
    ref = torch.cat([torch.randn(7, 5, generator=g, dtype=torch.float64), x])
    ref_lab = torch.cat([torch.randint(0, 9, (7,), generator=g), lab])
    _semi_hard(emu, x, lab, 0, ref, ref_lab, offset=7)


def test_semi_hard_nan(emu):
    x, lab = _inputs(7, 3, torch.float32, "random", "pk", seed=1)
    x[2, 1] = float("nan")
    x[4, 0] = float("inf")
    _semi_hard(emu, x, lab, 0)


# ---- contrastive ----------------------------------------------------------------------------

# (pos_margin, neg_margin, power, triangle)
CONTRASTIVE = [(0.0, 1.0, 1.0, True), (0.1, 2.0, 2.0, False), (0.0, 1.5, 1.5, True)]


def _contrastive(emu, x, lab, metric, params, ref=None, ref_lab=None, has_exclude=True, offset=0, tf32=False):
    pm, nm, pw, tri = params
    ref = x if ref is None else ref
    ref_lab = lab if ref_lab is None else ref_lab
    # triangle already leaves the diagonal out (pairs j > i): the contract refuses has_exclude
    args = (x, lab, ref, ref_lab, pm, nm, pw, metric, tri, has_exclude and not tri, offset)
    half = x.dtype in HALF or tf32
    f = compare(emu, "contrastive", *args, tf32, half=half, exact_index=not half)
    g = torch.Generator().manual_seed(x.shape[0])
    gp, gn = (torch.randn(x.shape[0], generator=g).to(f[0].dtype) for _ in range(2))
    compare(emu, "contrastive_backward", gp, gn, *args, tf32, half=half)
    return f


@pytest.mark.parametrize("b, d, dtype, metric, ekind, lkind", CASES, ids=IDS)
def test_contrastive(emu, b, d, dtype, metric, ekind, lkind):
    x, lab = _inputs(b, d, dtype, ekind, lkind, seed=b * 100 + d + 1)
    _contrastive(emu, x, lab, metric, CONTRASTIVE[(b + d + metric) % len(CONTRASTIVE)])


@pytest.mark.parametrize("params", CONTRASTIVE)
def test_contrastive_ref_set_tf32(emu, params):
    g = torch.Generator().manual_seed(4)
    x, lab = embeddings("random", 33, 20, torch.float32, g), labels_of("pk", 33, g)
    ref = torch.randn(70, 20, generator=g)
    ref_lab = torch.randint(0, 11, (70,), generator=g)
    params = params[:3] + (False,)  # triangle needs the batch itself as the reference set
    _contrastive(emu, x, lab, 0, params, ref, ref_lab, has_exclude=False)
    _contrastive(emu, x, lab, 2, params, ref, ref_lab, has_exclude=False, tf32=True)


@pytest.mark.parametrize(
    "rows, labels",
    [
        ([[float("nan")]], [0]),
        ([[-1.0], [float("inf")]], [0, 1]),
        ([[1.0, 2.0], [float("nan"), 0.0], [0.5, 0.5]], [0, 0, 1]),
    ],
)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_contrastive_nonfinite(emu, rows, labels, dtype):
    """A non-finite anchor row gives NaN sums, pairs or not (B = 1 included)."""
    x, lab = torch.tensor(rows, dtype=dtype), torch.tensor(labels)
    _contrastive(emu, x, lab, 0, CONTRASTIVE[0])
