"""Mining over the global batch of a torch.distributed job (NCCL on GPUs, gloo on CPUs).

Every rank all-gathers the embeddings (with gradient) and labels of all ranks, then mines
*its own* anchors against the global batch, which holds them at rows
``[offset, offset + B_rank)`` (``self_offset``). Batch sizes may differ between ranks: the
sizes are gathered first and the rows padded to the largest for the collective.

The contract (what :class:`DistributedLoss` returns on each rank):

* its **value** is the single-process loss of the concatenated global batch (ranks in
  order), the same on every rank: numerators and denominators of the reduction are summed
  over ranks (``all_reduce``) before dividing, so e.g. ``"mean"`` divides by the global
  number of valid anchors, not the rank's;
* its **gradient** is ``world_size`` times this rank's share of the single-process gradient,
  with the gradient of other ranks' rows sent back to them by the all-gather's backward.
  DistributedDataParallel *averages* gradients over ranks, so the averaged parameter
  gradient equals single-process training on the concatenated batch. Without DDP (summing
  gradients yourself) pass ``ddp_average=False``: then the gradient is the plain share.
* ``reduction="none"`` returns this rank's anchors' per-anchor losses (rows
  ``[offset, offset + B_rank)`` of the single-process vector), with unscaled gradients.

Outside an initialised process group (or with one process) it is the plain loss.
"""

from __future__ import annotations

from typing import Tuple

import torch
import torch.distributed as dist

from . import _parts
from . import _validate as check
from .nn import MinedLoss

__all__ = ["all_gather_with_grad", "gather_batch", "DistributedLoss"]


def _world(group) -> Tuple[int, int]:
    if not (dist.is_available() and dist.is_initialized()):
        return 1, 0
    return dist.get_world_size(group), dist.get_rank(group)


def _gather_sizes(n: int, device: torch.device, group) -> list:
    world, _ = _world(group)
    mine = torch.tensor([n], dtype=torch.int64, device=device)
    sizes = [torch.zeros_like(mine) for _ in range(world)]
    dist.all_gather(sizes, mine, group=group)
    return [int(s) for s in sizes]


def _all_gather_padded(t: torch.Tensor, sizes: list, group) -> torch.Tensor:
    """Concatenation over ranks of each rank's first sizes[r] rows of t (no gradient)."""
    longest = max(sizes)
    padded = t.new_zeros((longest,) + tuple(t.shape[1:]))
    padded[: t.shape[0]] = t
    out = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(out, padded.contiguous(), group=group)
    return torch.cat([o[:n] for o, n in zip(out, sizes)])


class _AllGatherWithGrad(torch.autograd.Function):
    """Forward: all ranks' rows, concatenated. Backward: every rank's gradient of the global
    tensor is summed (all_reduce, which gloo supports, unlike reduce_scatter) and each rank
    keeps the rows of its own input."""

    @staticmethod
    def forward(ctx, t, sizes, rank, group):
        ctx.sizes, ctx.rank, ctx.group = sizes, rank, group
        return _all_gather_padded(t, sizes, group)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]], None, None, None


def all_gather_with_grad(t: torch.Tensor, group=None) -> Tuple[torch.Tensor, int]:
    """All ranks' ``t`` (N_r, ...) concatenated in rank order, differentiable: the gradient
    reaching a rank's rows from every rank's loss flows back to that rank's ``t``. Row
    counts may differ between ranks. Returns ``(global, offset)``, ``offset`` being where
    this rank's rows start.

    Example:
        >>> global_emb, offset = fastmine.distributed.all_gather_with_grad(emb)
    """
    world, rank = _world(group)
    if world == 1:
        return t, 0
    sizes = _gather_sizes(t.shape[0], t.device, group)
    return _AllGatherWithGrad.apply(t, sizes, rank, group), sum(sizes[:rank])


def gather_batch(embeddings: torch.Tensor, labels: torch.Tensor, group=None) -> Tuple[torch.Tensor, torch.Tensor, int]:
    """``(global_embeddings, global_labels, offset)``: the batch of all ranks (embeddings
    with gradient) and where this rank's rows start.

    Example:
        >>> g_emb, g_lab, off = fastmine.distributed.gather_batch(emb, labels)
        >>> loss = fastmine.batch_hard_triplet_loss(emb, labels, ref_embeddings=g_emb,
        ...                                         ref_labels=g_lab, self_offset=off)
    """
    world, rank = _world(group)
    if world == 1:
        return embeddings, labels, 0
    sizes = _gather_sizes(embeddings.shape[0], embeddings.device, group)
    g_emb = _AllGatherWithGrad.apply(embeddings, sizes, rank, group)
    g_lab = _all_gather_padded(labels, sizes, group)
    return g_emb, g_lab, sum(sizes[:rank])


class DistributedLoss(torch.nn.Module):
    """A fastmine loss module computed over the global batch of all ranks (see the module
    docstring for the exact value/gradient contract).

    Args:
        loss: a fastmine loss module that takes a reference set: :class:`fastmine.nn.BatchHardTripletLoss`,
            ``BatchAllTripletLoss``, ``SemiHardTripletLoss`` or ``ContrastiveLoss``.
        group: the process group (default: the world).
        ddp_average: scale the gradient by the world size because DistributedDataParallel
            averages gradients (default True).

    Example:
        >>> criterion = fastmine.distributed.DistributedLoss(fastmine.nn.BatchHardTripletLoss())
        >>> loss = criterion(ddp_model(images), labels)   # mined against every rank's batch
        >>> loss.backward()
    """

    def __init__(self, loss: MinedLoss, group=None, *, ddp_average: bool = True) -> None:
        super().__init__()
        check.mined_loss_module(loss)
        check.boolean(ddp_average, "ddp_average")
        self.loss = loss
        self.group = group
        self.ddp_average = ddp_average

    def extra_repr(self) -> str:
        return f"ddp_average={self.ddp_average}"

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """This rank's loss over the global batch (value: the global loss)."""
        world, _ = _world(self.group)
        if world == 1:
            return self.loss(embeddings, labels)
        check.embeddings(embeddings, "embeddings")
        labels = check.labels(labels, embeddings.shape[0], "labels", "embeddings")
        g_emb, g_lab, offset = gather_batch(embeddings, labels, self.group)
        parts = _parts.loss_parts(
            type(self.loss).functional, embeddings, labels, g_emb, g_lab, offset, self.loss.options(), symmetric=True
        )
        if parts.per_anchor is not None:
            return parts.per_anchor
        # Sum numerators (values only) and denominators over ranks, then divide.
        nums = torch.stack([t.numerator.detach() for t in parts.terms])
        dens = [t.denominator for t in parts.terms]
        counts = torch.stack(
            [torch.zeros((), dtype=torch.int64, device=nums.device) if d is None else d.to(torch.int64) for d in dens]
        )
        dist.all_reduce(nums, group=self.group)
        dist.all_reduce(counts, group=self.group)
        dtype = nums.dtype
        scale = float(world) if self.ddp_average else 1.0
        value = torch.zeros((), dtype=dtype, device=nums.device)
        grad_path = torch.zeros((), dtype=dtype, device=nums.device)
        for k, term in enumerate(parts.terms):
            den = 1 if dens[k] is None else counts[k].clamp(min=1).to(dtype)
            value = value + nums[k] / den
            grad_path = grad_path + term.numerator * (scale / den)
        # The global value, with this rank's (scaled) gradient: grad_path - its detached
        # self is exactly 0 in value but carries grad_path's gradient.
        return value + (grad_path - grad_path.detach())
