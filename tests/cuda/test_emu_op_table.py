"""Every CUDA op of the raw-op table (op_table.py), forward and backward, run under the host
emulator on valid calls and compared with the CPU op output by output: the ops that
test_emu_ops.py does not exercise in depth (pairwise, batch-hard, batch-all, the miner,
focal, centroid and the backward scatters) get the same treatment there, at small odd
shapes (partial tiles, one row, a reference set taller and shorter than the batch, the
anchors excluded inside it) in every dtype each op's CUDA kernel takes, on random inputs
and on degenerate ones: exact ties, a batch of one class (no negatives), all-distinct labels
(no positives) and a NaN row. A call the CPU op refuses (the miner's non-finite candidates)
must be refused alike.
"""

from __future__ import annotations

import itertools

import pytest
import torch

import op_table
from emu_ops import DTYPES, compare, emu, run_cpu  # noqa: F401

SIZES = [
    dict(b=1, m=1, d=1, p=1, c=1),
    dict(b=7, m=7, d=5, p=4, c=3),
    dict(b=5, m=9, d=33, p=6, c=4),
    dict(b=9, m=4, d=3, p=2, c=5),
]
OPS = sorted(set(op_table.OPS) - op_table.CPU_ONLY)


def _cases():
    for op, s, dtype in itertools.product(OPS, SIZES, DTYPES):
        if op in op_table.FLOAT_ONLY and dtype not in (torch.float32, torch.float64):
            continue
        yield op, s, dtype


CASES = list(_cases())
IDS = [f"{op}-b{s['b']}m{s['m']}d{s['d']}-{str(dt)[6:]}" for op, s, dt in CASES]


def _variant(built, kind, seed):
    """The valid call's arguments, made degenerate: ``ties`` (embeddings on a small integer
    grid, so that distances tie exactly), ``one_class`` / ``distinct`` (label sets with no
    negative / no positive), ``nan_row`` (the primary tensor's first row NaN)."""
    g = torch.Generator().manual_seed(seed + 1000)
    args = []
    for arg, v in built:
        if kind == "ties" and arg.kind == "emb":
            v = torch.randint(-2, 3, tuple(v.shape), generator=g).to(v.dtype)
        elif kind in ("one_class", "distinct") and arg.kind == "long":
            v = torch.zeros_like(v) if kind == "one_class" else torch.arange(v.numel()) * 7 + 10**12
        elif kind == "nan_row" and arg.primary and v.numel() > 0:
            v = v.clone()
            v[0] = float("nan")
        args.append(v)
    return args


VARIANTS = ["random", "ties", "one_class", "distinct", "nan_row"]


@pytest.mark.parametrize("op, sizes, dtype", CASES, ids=IDS)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("seed", [0, 1])
def test_op_matches_cpu(emu, op, sizes, dtype, variant, seed):
    built = op_table.OPS[op](torch.Generator().manual_seed(seed), sizes, dtype, "cpu")
    args = _variant(built, variant, seed) if variant != "random" else [v for _, v in built]
    if op == "centroid_triplet_backward":
        # The CPU backward recomputes some distances from x and the centroids, the CUDA one
        # reads the saved ones: they agree on the forward's distances, not on arbitrary ones.
        x, labels, centroids = args[1:4]
        args[4] = run_cpu("centroid_triplet", x, labels, centroids)[1]
    compare(emu, op, *args)
