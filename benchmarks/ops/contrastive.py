"""Contrastive loss: fastmine against the all-pairs vectorized formulation."""

from __future__ import annotations

import torch

from ..baselines import compiled, import_pml, matmul_allocating, matmul_floor
from ..registry import Inputs, Method, OpBench, Target, fwd_bwd

POS_MARGIN, NEG_MARGIN = 0.0, 1.0


def eager_contrastive(x: torch.Tensor, labels: torch.Tensor):
    """Hadsell et al.'s loss over every unordered pair, vectorized: the B x B distance
    matrix, B x B label and upper-triangle masks, squared hinges, mean over the pairs."""
    dist = torch.cdist(x, x)
    same = labels[:, None] == labels[None, :]
    upper = torch.ones_like(same).triu(1)
    pos = (dist - POS_MARGIN).relu().pow(2)
    neg = (NEG_MARGIN - dist).relu().pow(2)
    terms = torch.where(same, pos, neg) * upper
    return terms.sum() / upper.sum()


def _fastmine(inp: Inputs):
    import fastmine

    return fwd_bwd(
        lambda x, y: fastmine.contrastive_loss(x, y, pos_margin=POS_MARGIN, neg_margin=NEG_MARGIN),
        inp,
    )


def _pml(inp: Inputs):
    """PML's ContrastiveLoss is power 1 with its AvgNonZeroReducer, i.e. fastmine's
    contrastive_loss(power=1, reduction="mean_nonzero"); it is timed here on that
    configuration, so its loss is not compared with the row's (power 2, mean)."""
    distances, losses, _, _ = import_pml()
    loss_fn = losses.ContrastiveLoss(
        pos_margin=POS_MARGIN,
        neg_margin=NEG_MARGIN,
        distance=distances.LpDistance(normalize_embeddings=False),
    )
    return fwd_bwd(loss_fn, inp)


OP = OpBench(
    name="contrastive",
    order=2,
    description="contrastive loss (power 2, margins 0 / 1, mean over pairs), euclidean; forward + backward",
    methods=[
        Method("fastmine", _fastmine),
        Method("eager", lambda inp: fwd_bwd(eager_contrastive, inp)),
        compiled("compile", eager_contrastive),
        Method("pml", _pml, compare_loss=False),
        matmul_floor(),
        matmul_allocating(),
    ],
    sweep_sizes={"cpu": "4096x128", "cuda": "4096x128,8192x128"},
    quick_size={"cpu": "2048x128", "cuda": "4096x128"},
    targets=[
        Target("cpu", 4096, 128, "eager", 10.0),
        Target("cpu", 4096, 128, "compile", 5.0),
        Target("cpu", 4096, 128, "floor", 1.5),
        Target("cuda", 4096, 128, "floor", 2.5),
        *[Target("cuda", 16384, d, "floor", 1.5, dtype=dt) for d in (128, 512) for dt in ("float32", "bfloat16")],
        *[Target("cuda", 262144, 256, "memory", 1024.0, dtype=dt) for dt in ("float32", "bfloat16")],
    ],
)
