"""Sigmoid focal loss on logits: fastmine's fused kernel against
torchvision's elementwise formula in eager PyTorch and under torch.compile, and the memory
floor. A size "NxC" is an (N, C) logits tensor (10000x1000: 10^7 logits) with 0/1 targets,
reduction "mean", forward + backward."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..baselines import compiled
from ..registry import Inputs, Method, OpBench, Target, fwd_bwd

ALPHA, GAMMA = 0.25, 2.0


def logits_inputs(n: int, c: int, dtype: torch.dtype, device: torch.device, *, seed: int = 0, **unused) -> Inputs:
    """(N, C) logits ~ N(0, 2^2) (a detector's spread) and targets with 1% positives."""
    g = torch.Generator().manual_seed(seed)
    x = (2 * torch.randn(n, c, generator=g)).to(device=device, dtype=dtype)
    t = (torch.rand(n, c, generator=g) < 0.01).to(device=device, dtype=dtype)
    return Inputs(x.requires_grad_(), t, c, 1.0)


def torchvision_focal(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """torchvision.ops.sigmoid_focal_loss (reduction "mean"), as detection code runs it."""
    p = torch.sigmoid(inputs)
    ce_loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce_loss * ((1 - p_t) ** GAMMA)
    alpha_t = ALPHA * targets + (1 - ALPHA) * (1 - targets)
    return (alpha_t * loss).mean()


def _fastmine(inp: Inputs):
    import fastmine

    return fwd_bwd(lambda x, t: fastmine.sigmoid_focal_loss(x, t, alpha=ALPHA, gamma=GAMMA, reduction="mean"), inp)


def bandwidth_floor() -> Method:
    """out = x + t into a preallocated buffer: reads the logits and the targets and writes
    one tensor, exactly the bytes a fused forward + backward must move (the gradient is the
    tensor written). fastmine's time / this time is how far from memory bandwidth it runs."""

    def setup(inp: Inputs):
        x, t = inp.x.detach(), inp.labels
        out = torch.empty_like(x)

        def step():
            torch.add(x, t, out=out)
            return None

        return step

    return Method("bandwidth floor", setup, forward_only=True, compare_loss=False, is_floor=True)


OP = OpBench(
    name="focal",
    order=10,
    description="sigmoid focal loss (alpha 0.25, gamma 2, mean) on (N, C) logits; forward + backward",
    methods=[
        Method("fastmine", _fastmine),
        Method("eager", lambda inp: fwd_bwd(torchvision_focal, inp)),
        compiled("compile", torchvision_focal),
        bandwidth_floor(),
    ],
    sweep_sizes={"cpu": "10000x1000,1000x1000", "cuda": "10000x1000,100000x1000"},
    quick_size={"cpu": "1000x1000", "cuda": "10000x1000"},
    targets=[Target("cpu", 10000, 1000, "eager", 3.0)],
    make_inputs=logits_inputs,
)
