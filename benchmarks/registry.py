"""What a benchmarked op is, and where ops are found.

Each module in ``benchmarks/ops/`` defines ``OP = OpBench(...)``; adding an op's rows means
adding one such module, nothing else.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import torch


class Unavailable(Exception):
    """A method cannot run here (package missing, compile failed, dtype unsupported...).

    The harness records it as "n/a" with this message instead of crashing.
    """


@dataclass
class Inputs:
    """The one set of inputs that every method of a size sees."""

    x: torch.Tensor  # (B, D) leaf, requires grad
    labels: torch.Tensor  # (B,) int64, P classes x K samples, shuffled
    num_classes: int
    samples_per_class: float

    @property
    def shape(self):
        return tuple(self.x.shape)


# A method's setup gets the inputs and returns step(): one measured call (forward, and
# backward unless the method is forward-only) returning the detached loss or None.
Step = Callable[[], Optional[torch.Tensor]]


@dataclass
class Method:
    name: str
    setup: Callable[[Inputs], Step]
    forward_only: bool = False
    compare_loss: bool = True  # its loss must equal fastmine's (the floor computes no loss)
    is_floor: bool = False
    shown_only: bool = False  # timed and shown, but no ratio or target is taken against it


@dataclass
class Target:
    """A performance goal, checked on a given device and size."""

    device: str  # "cpu" or "cuda"
    B: int
    D: int
    baseline: str  # a method name, "floor", or an absolute bound: "seconds" / "memory"
    bound: float  # speed-up >= bound for a baseline; fastmine/floor <= bound for "floor";
    #               fastmine's time (s) or peak extra memory (MiB) <= bound for the others
    dtype: str = "float32"

    def describe(self) -> str:
        if self.baseline == "floor":
            return f"≤ {self.bound:g}× matmul floor"
        if self.baseline == "seconds":
            return f"fastmine ≤ {self.bound:g} s"
        if self.baseline == "memory":
            return f"fastmine peak extra memory ≤ {self.bound:g} MiB"
        if self.bound < 1:  # a bounded slowdown: "within 3x of batch-hard"
            return f"≤ {1 / self.bound:.3g}× {self.baseline}'s time"
        return f"≥ {self.bound:g}× faster than {self.baseline}"


@dataclass
class OpBench:
    name: str
    description: str
    methods: List[Method]
    targets: List[Target] = field(default_factory=list)
    reference: str = "fastmine"  # the method every ratio is taken against
    # "BxD,..." per device type ("cpu", "cuda") of the --sweep run, the sizes of the
    # committed reference results; the harness's own otherwise.
    sweep_sizes: Dict[str, str] = field(default_factory=dict)
    # The one "BxD" per device type of the default, quick run: large enough that fastmine's
    # lead shows, small enough that the slowest baseline's few calls take seconds.
    quick_size: Dict[str, str] = field(default_factory=dict)
    order: int = 100  # position in `--op all` runs
    # Builds the inputs of one "BxD" size (same signature as pk_inputs); None: pk_inputs.
    # Ops on other inputs than embeddings + labels (e.g. focal losses on logits + targets)
    # put their tensors in Inputs.x (the leaf that gets the gradient) and Inputs.labels.
    make_inputs: Optional[Callable[..., Inputs]] = None

    def method(self, name: str) -> Method:
        return next(m for m in self.methods if m.name == name)


def pk_inputs(
    B: int,
    D: int,
    dtype: torch.dtype,
    device: torch.device,
    *,
    classes: Optional[int],
    samples_per_class: int,
    seed: int = 0,
) -> Inputs:
    """Random embeddings and P x K labels, shuffled so that no method gains from sorted
    labels (real samplers emit blocks; kernels must not depend on it)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, D, generator=g, dtype=torch.float32).to(device=device, dtype=dtype)
    if classes:  # P given: K = B / P, round-robin
        lab = torch.arange(B) % classes
    else:  # K given: P = ceil(B / K), the last class may be short
        lab = torch.arange(B) // samples_per_class
    lab = lab[torch.randperm(B, generator=g)].to(device)
    p = int(lab.max()) + 1
    return Inputs(x.requires_grad_(), lab, p, B / p)


def fwd_bwd(loss_fn: Callable, inp: Inputs) -> Step:
    """step() for a loss: fresh gradient each call, so that no method pays (or skips) the
    accumulation into an existing .grad."""

    def step():
        inp.x.grad = None
        loss = loss_fn(inp.x, inp.labels)
        loss.backward()
        return loss.detach()

    return step


def load_ops() -> Dict[str, OpBench]:
    from . import ops

    found = {}
    for mod in pkgutil.iter_modules(ops.__path__):
        op = getattr(importlib.import_module(f"{ops.__name__}.{mod.name}"), "OP", None)
        if isinstance(op, OpBench):
            found[op.name] = op
    return found
