"""Miners: fastmine.mine_triplets(type="semihard") against
pytorch-metric-learning's TripletMarginMiner and the matmul floor. Forward only (mining has
no gradient). The compared "loss" is the number of mined triplets, which must match PML's.
mine_batch_hard has its own module (miners_batch_hard.py): one OpBench per module."""

from __future__ import annotations

import torch

from ..baselines import import_pml, matmul_allocating, matmul_floor
from ..registry import Inputs, Method, OpBench

MARGIN = 0.2  # PML's default


def count_step(mine, inp: Inputs):
    """step() for a miner: mine once, return the number of triplets (as a float tensor, the
    harness's "loss")."""
    x = inp.x.detach()

    def step():
        a, _, _ = mine(x, inp.labels)
        return torch.tensor(float(a.numel()))

    return step


def _fastmine(inp: Inputs):
    import fastmine

    return count_step(lambda x, y: fastmine.mine_triplets(x, y, margin=MARGIN, type="semihard"), inp)


def _pml(inp: Inputs):
    distances, _, miners, _ = import_pml()
    miner = miners.TripletMarginMiner(
        margin=MARGIN, type_of_triplets="semihard", distance=distances.LpDistance(normalize_embeddings=False)
    )
    return count_step(miner, inp)


OP = OpBench(
    name="mine_triplets",
    order=10,
    description="mine_triplets type=semihard, euclidean, margin 0.2 (PML TripletMarginMiner); "
    "forward only, 'loss' = number of triplets",
    methods=[
        Method("fastmine", _fastmine, forward_only=True),
        Method("pml", _pml, forward_only=True),
        matmul_floor(),
        matmul_allocating(),
    ],
    sweep_sizes={"cpu": "1024x128,2048x128", "cuda": "1024x128,2048x128"},
    quick_size={"cpu": "1024x128", "cuda": "2048x128"},
)
