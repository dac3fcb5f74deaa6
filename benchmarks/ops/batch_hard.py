"""Batch-hard triplet loss: fastmine against the usual ways to compute it."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..baselines import compiled, import_pml, matmul_allocating, matmul_floor
from ..registry import Inputs, Method, OpBench, Target, Unavailable, fwd_bwd

MARGIN = 0.3  # the re-ID convention, and fastmine's default


def _fastmine(inp: Inputs):
    import fastmine

    return fwd_bwd(lambda x, y: fastmine.batch_hard_triplet_loss(x, y, margin=MARGIN), inp)


def eager_batch_hard(x: torch.Tensor, labels: torch.Tensor, margin: float = MARGIN):
    """Vectorized batch-hard as re-ID codebases write it (Hermans et al.; reid-strong-
    baseline's hard_example_mining without its equal-K reshape): the full B x B distance
    matrix, B x B label masks, hardest positive = max over the masked row, hardest negative
    = min, hinge, mean.

    Distances by torch.cdist rather than reid-strong-baseline's addmm + clamp + sqrt: same
    numbers, but 25% faster fwd+bwd here (B=4096, D=128, CPU), and the baseline should be
    the best plain PyTorch. The anchor itself stays among the positives: d(i, i) = 0 never
    wins the max, so this is fastmine's loss (all anchors are valid for P x K labels with
    K >= 2, so the two means agree too); the harness checks that."""
    dist = torch.cdist(x, x)
    same = labels[:, None] == labels[None, :]
    d_ap = dist.masked_fill(~same, float("-inf")).max(dim=1).values
    d_an = dist.masked_fill(same, float("inf")).min(dim=1).values
    return F.relu(d_ap - d_an + margin).mean()


def _pml(inp: Inputs):
    distances, losses, miners, reducers = import_pml()
    # normalize_embeddings=False everywhere (PML's default normalizes): plain euclidean.
    miner = miners.BatchHardMiner(distance=distances.LpDistance(normalize_embeddings=False))
    loss_fn = losses.TripletMarginLoss(
        margin=MARGIN,
        distance=distances.LpDistance(normalize_embeddings=False),
        reducer=reducers.MeanReducer(),
    )
    return fwd_bwd(lambda x, y: loss_fn(x, y, miner(x, y)), inp)


def _sentence_transformers(inp: Inputs):
    """sentence-transformers' BatchHardTripletLoss (Moindrot's masks over the dot-product
    distance matrix), called on the embeddings directly: the loss module wraps a model
    only to produce them, so a stand-in identity takes the model's place."""
    try:
        try:  # where the losses live since sentence-transformers 6
            from sentence_transformers.sentence_transformer.losses import BatchHardTripletLoss
        except ImportError:
            from sentence_transformers.losses import BatchHardTripletLoss
    except Exception as e:  # not installed, or one of its many dependencies missing
        raise Unavailable(f"sentence-transformers not importable ({type(e).__name__}: {e})") from None
    loss_fn = BatchHardTripletLoss(torch.nn.Identity(), margin=MARGIN)
    return fwd_bwd(lambda x, y: loss_fn.batch_hard_triplet_loss(y, x), inp)


OP = OpBench(
    name="batch_hard",
    order=0,
    description="batch-hard triplet loss, euclidean, margin 0.3, mean; forward + backward",
    methods=[
        Method("fastmine", _fastmine),
        Method("eager", lambda inp: fwd_bwd(eager_batch_hard, inp)),
        compiled("compile", eager_batch_hard),
        Method("pml", _pml),
        Method("sentence-transformers", _sentence_transformers),
        matmul_floor(),
        matmul_allocating(),
    ],
    quick_size={"cpu": "4096x128", "cuda": "4096x128"},
    # The CPU targets; the GPU verification run's (B = 16384 against cuBLAS, torch.compile,
    # the B = 262144 memory bound) after them.
    targets=[
        Target("cpu", 4096, 128, "eager", 10.0),
        Target("cpu", 4096, 128, "compile", 5.0),
        Target("cpu", 4096, 128, "floor", 1.0),
        Target("cuda", 4096, 128, "eager", 10.0),
        Target("cuda", 4096, 512, "eager", 5.0),
        Target("cuda", 4096, 128, "floor", 1.3),
        Target("cuda", 4096, 512, "floor", 1.3),
        Target("cuda", 4096, 128, "compile", 3.0),
        *[Target("cuda", 16384, d, "floor", 1.3, dtype=dt) for d in (128, 512) for dt in ("float32", "bfloat16")],
        Target("cuda", 4096, 128, "eager", 10.0, dtype="bfloat16"),
        Target("cuda", 4096, 128, "compile", 3.0, dtype="bfloat16"),
        *[Target("cuda", 262144, 256, "memory", 1024.0, dtype=dt) for dt in ("float32", "bfloat16")],
    ],
)
