"""Batch-all triplet loss: fastmine against the B x B x B-mask formulations."""

from __future__ import annotations

import torch

from ..baselines import compiled, import_pml, matmul_allocating, matmul_floor
from ..registry import Inputs, Method, OpBench, Target, Unavailable, fwd_bwd

MARGIN = 0.3
# The cubic baselines hold several B^3 tensors (the float loss cube, its mask, the autograd
# copies): about 16 bytes per triplet. Above this they are skipped rather than run out of
# memory, which is exactly the point fastmine makes.
CUBE_BUDGET_BYTES = 8 << 30


def _fits_cube(inp: Inputs) -> None:
    b = inp.x.shape[0]
    need = 16 * b**3
    if need > CUBE_BUDGET_BYTES:
        raise Unavailable(f"needs a B^3 tensor set of ~{need / 2**30:.0f} GiB at B={b}")


def eager_batch_all(x: torch.Tensor, labels: torch.Tensor, margin: float = MARGIN):
    """Moindrot's batch_all_triplet_loss in PyTorch, as vectorized code writes it: the
    (B, B, B) cube of d(a,p) - d(a,n) + margin, masked to valid triplets, averaged over the
    positive ones."""
    dist = torch.cdist(x, x)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(x.shape[0], dtype=torch.bool, device=x.device)
    valid = (same & ~eye)[:, :, None] & (~same)[:, None, :]
    loss = (dist[:, :, None] - dist[:, None, :] + margin).relu() * valid
    return loss.sum() / (loss > 0).sum().clamp(min=1)


def _fastmine(inp: Inputs):
    import fastmine

    return fwd_bwd(lambda x, y: fastmine.batch_all_triplet_loss(x, y, margin=MARGIN), inp)


def _eager(inp: Inputs):
    _fits_cube(inp)
    return fwd_bwd(eager_batch_all, inp)


def _compiled():
    method = compiled("compile", eager_batch_all)
    setup = method.setup

    def guarded(inp: Inputs):
        _fits_cube(inp)
        return setup(inp)

    method.setup = guarded
    return method


def _pml(inp: Inputs):
    """TripletMarginLoss with no miner: every triplet, AvgNonZeroReducer (its default) =
    batch-all "mean_positive". It enumerates the triplets as index lists (B^3 masks)."""
    _fits_cube(inp)
    distances, losses, _, _ = import_pml()
    loss_fn = losses.TripletMarginLoss(margin=MARGIN, distance=distances.LpDistance(normalize_embeddings=False))
    return fwd_bwd(loss_fn, inp)


def _fastmine_batch_hard(inp: Inputs):
    """fastmine's batch-hard on the same inputs: batch-all's goal is a bounded cost over it
    (one triplet per anchor against all of them), so its time is a row of this table."""
    import fastmine

    return fwd_bwd(lambda x, y: fastmine.batch_hard_triplet_loss(x, y, margin=MARGIN), inp)


OP = OpBench(
    name="batch_all",
    order=1,
    description="batch-all triplet loss, euclidean, margin 0.3, mean over positive triplets; forward + backward",
    methods=[
        Method("fastmine", _fastmine),
        Method("eager", _eager),
        _compiled(),
        Method("pml", _pml),
        Method("batch-hard", _fastmine_batch_hard, compare_loss=False),
        matmul_floor(),
        matmul_allocating(),
    ],
    sweep_sizes={"cpu": "512x128,4096x128,16384x128", "cuda": "512x128,8192x128"},
    # Quick: where eager's B x B x B cube takes well under a second a call on 2 cores.
    quick_size={"cpu": "256x128", "cuda": "512x128"},
    targets=[
        Target("cpu", 512, 128, "eager", 20.0),
        Target("cpu", 512, 128, "compile", 5.0),
        Target("cpu", 4096, 128, "floor", 3.0),
        Target("cpu", 16384, 128, "seconds", 10.0),
        Target("cpu", 16384, 128, "memory", 1024.0),
        # GPU: within 3x of batch-hard (its time / ours >= 1/3), and O(B) memory at a B whose
        # B x B float32 matrix alone (256 GiB) would not fit the card.
        *[
            Target("cuda", 16384, d, "batch-hard", 1 / 3, dtype=dt)
            for d in (128, 512)
            for dt in ("float32", "bfloat16")
        ],
        *[Target("cuda", 262144, 256, "memory", 1024.0, dtype=dt) for dt in ("float32", "bfloat16")],
    ],
)
