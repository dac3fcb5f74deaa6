"""Batch-hard mining: fastmine.mine_batch_hard against pytorch-metric-learning's
BatchHardMiner and the matmul floor. Forward only; the compared "loss" is the number of
mined triplets (valid anchors)."""

from __future__ import annotations

from ..baselines import import_pml, matmul_allocating, matmul_floor
from ..registry import Inputs, Method, OpBench
from .miners import count_step


def _fastmine(inp: Inputs):
    import fastmine

    return count_step(fastmine.mine_batch_hard, inp)


def _pml(inp: Inputs):
    distances, _, miners, _ = import_pml()
    miner = miners.BatchHardMiner(distance=distances.LpDistance(normalize_embeddings=False))
    return count_step(miner, inp)


OP = OpBench(
    name="mine_batch_hard",
    order=11,
    description="mine_batch_hard, euclidean (PML BatchHardMiner); forward only, 'loss' = number of triplets",
    methods=[
        Method("fastmine", _fastmine, forward_only=True),
        Method("pml", _pml, forward_only=True),
        matmul_floor(),
        matmul_allocating(),
    ],
    sweep_sizes={"cpu": "1024x128,2048x128", "cuda": "1024x128,2048x128"},
    quick_size={"cpu": "2048x128", "cuda": "2048x128"},
)
