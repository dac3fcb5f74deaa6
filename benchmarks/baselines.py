"""Competitor machinery shared by every op: the matmul floor, torch.compile wrapping and
the optional pytorch-metric-learning import. Op-specific competitors (the re-ID eager
formula, the PML miner + loss pair) live next to their op in benchmarks/ops/."""

from __future__ import annotations

import torch

from .registry import Inputs, Method, Step, Unavailable, fwd_bwd


def matmul_floor() -> Method:
    """The bare X @ X.T at the input precision, forward only, into a preallocated (B, B)
    result: every fused distance kernel does at least this work, so fastmine's time / this
    time says how close to the hardware it runs (the mining, the loss and the whole backward
    are the overhead). Preallocated because a fresh B x B result per call adds page faults
    whose cost swings with the machine's state (and fastmine never allocates one)."""

    def setup(inp: Inputs) -> Step:
        x = inp.x.detach()
        out = x.new_empty((x.shape[0], x.shape[0]))

        def step():
            with torch.no_grad():
                torch.mm(x, x.T, out=out)
            return None

        return step

    return Method("matmul floor", setup, forward_only=True, compare_loss=False, is_floor=True)


def matmul_allocating() -> Method:
    """The same product with a fresh result per call (``x @ x.T``), shown beside the floor
    so that the cost of the allocation is visible; no ratio is taken against it."""

    def setup(inp: Inputs) -> Step:
        x = inp.x.detach()

        def step():
            with torch.no_grad():
                x @ x.T
            return None

        return step

    return Method("matmul, allocating", setup, forward_only=True, compare_loss=False, shown_only=True)


def compiled(name: str, loss_fn) -> Method:
    """``loss_fn`` under torch.compile. Compilation happens in the harness's first
    (warm-up) call and is excluded from the timings; a failure there becomes "n/a".
    dynamic=False: each size gets its own static graph, as a training loop with a fixed
    batch size would, rather than a shape-generic one recompiled on the second size."""

    def setup(inp: Inputs) -> Step:
        if not hasattr(torch, "compile"):
            raise Unavailable("this torch has no torch.compile")
        return fwd_bwd(torch.compile(loss_fn, dynamic=False), inp)

    return Method(name, setup)


def import_pml():
    """pytorch_metric_learning's modules, or Unavailable with the reason."""
    try:
        from pytorch_metric_learning import distances, losses, miners, reducers
    except Exception as e:  # ImportError, or a missing dependency of it (scipy)
        raise Unavailable(
            f"pytorch-metric-learning not importable ({type(e).__name__}: {e}); "
            "pip install --no-deps pytorch-metric-learning scipy"
        ) from None
    return distances, losses, miners, reducers
