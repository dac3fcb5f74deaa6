"""Cross-batch memory (XBM; Wang et al., "Cross-Batch Memory for Embedding Learning", 2020).

A FIFO of the last ``size`` embeddings (detached) and their labels. Each step mines the
current batch's anchors against batch ∪ memory, then the batch stays in the memory.

Where the batch sits: it is written into the ring *before* the loss, so the reference set is
the ring buffer itself (no (size + B) x D concatenation per step) and the batch's own rows
are the contiguous block ``[ptr, ptr + B)`` that ``self_offset`` excludes. When the batch
straddles the end of the ring it is written in two pieces, ``[ptr, size)`` and ``[0, rest)``,
and the loss is computed for the two groups of anchors separately (each with its own
``self_offset``) and reduced together (fastmine._parts), so the FIFO stays exact.

As in the paper's reference code, the memory is a constant: gradients flow through the
anchors only, not through the reference rows (which include the batch's detached copy).
"""

from __future__ import annotations

from typing import Optional, cast

import torch

from . import _parts
from . import _validate as check
from .nn import MinedLoss

__all__ = ["CrossBatchMemory"]


class CrossBatchMemory(torch.nn.Module):
    """Wraps a fastmine loss module so that each batch is mined against the last ``size``
    embeddings seen (the current batch included).

    Args:
        loss: a fastmine loss module that takes a reference set:
            :class:`fastmine.nn.BatchHardTripletLoss`, ``BatchAllTripletLoss``,
            ``SemiHardTripletLoss`` or ``ContrastiveLoss``. Its options, reduction included,
            apply to the whole batch (semi-hard's ``"none"``: one value per pair, each
            anchor's positives in the order of their rows in the memory).
        size: the memory's capacity in embeddings (rows), at least the batch size.
        dim: the embedding dimension D.
        dtype, device: of the memory (default float32 on the CPU; ``.to()`` moves it).
            Embeddings must come in this dtype.

    ``forward(embeddings, labels)`` returns ``loss(embeddings, labels,
    ref_embeddings=memory, ref_labels=memory_labels, self_offset=...)`` where memory holds
    the batch (detached) and the up-to ``size - B`` embeddings before it. The memory is not
    in ``state_dict`` (it refills within ``size / B`` steps); :meth:`reset` empties it.

    Example:
        >>> xbm = fastmine.CrossBatchMemory(fastmine.nn.BatchHardTripletLoss(margin=0.1),
        ...                                 size=8192, dim=128)
        >>> loss = xbm(model(images), labels)     # mined against batch and memory
        >>> loss.backward()
    """

    embedding_memory: torch.Tensor  # buffers, registered in __init__
    label_memory: torch.Tensor

    def __init__(
        self,
        loss: MinedLoss,
        size: int,
        dim: int,
        *,
        dtype: torch.dtype = torch.float32,
        device: Optional[torch.device] = None,
    ) -> None:
        super().__init__()
        check.mined_loss_module(loss)
        check.positive_int(size, "size")
        check.positive_int(dim, "dim")
        check.float_dtype(dtype)
        self.loss = loss
        self.size = size
        self.dim = dim
        # Plain buffers: they follow .to(device) but never require grad, and stay out of
        # state_dict (persistent=False): 65536 x 512 floats would be 128 MiB per checkpoint.
        self.register_buffer("embedding_memory", torch.zeros(size, dim, dtype=dtype, device=device), persistent=False)
        self.register_buffer("label_memory", torch.zeros(size, dtype=torch.int64, device=device), persistent=False)
        self.ptr = 0  # next row to write
        self.filled = 0  # rows holding an embedding (the ring fills from row 0)

    def reset(self) -> None:
        """Empties the memory."""
        self.ptr = 0
        self.filled = 0

    def extra_repr(self) -> str:
        return f"size={self.size}, dim={self.dim}, filled={self.filled}"

    def memory(self):
        """``(embeddings, labels)`` of the memory, oldest first (copies; for inspection)."""
        if self.filled < self.size:
            return self.embedding_memory[: self.filled].clone(), self.label_memory[: self.filled].clone()
        order = torch.cat([torch.arange(self.ptr, self.size), torch.arange(0, self.ptr)])
        order = order.to(self.embedding_memory.device)
        return self.embedding_memory[order], self.label_memory[order]

    def _check(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        check.embeddings(embeddings, "embeddings")
        b = embeddings.shape[0]
        labels = check.labels(labels, b, "labels", "embeddings")
        if embeddings.shape[1] != self.dim:
            raise ValueError(f"embeddings has D = {embeddings.shape[1]} features but the memory holds D = {self.dim}")
        if b > self.size:
            raise ValueError(
                f"embeddings has B = {b} rows, more than the memory's size "
                f"{self.size}: the batch must fit in the memory"
            )
        mem = self.embedding_memory
        if embeddings.dtype != mem.dtype:
            raise TypeError(f"embeddings has dtype {embeddings.dtype} but the memory holds {mem.dtype}")
        check.same_device([("embeddings", embeddings), ("labels", labels), ("memory", mem)])
        return labels

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor):
        """The loss of the batch against batch ∪ memory; then the batch stays in the memory."""
        labels = self._check(embeddings, labels)
        b = embeddings.shape[0]
        # (anchor rows, ring row of the first) of each contiguous piece of the batch
        first = min(b, self.size - self.ptr)
        pieces = [(0, first, self.ptr)]
        if first < b:
            pieces.append((first, b, 0))
        with torch.no_grad():
            for lo, hi, at in pieces:
                self.embedding_memory[at : at + hi - lo].copy_(embeddings[lo:hi].detach())
                self.label_memory[at : at + hi - lo].copy_(labels[lo:hi])
        self.filled = min(self.size, self.filled + b) if first == b else self.size
        self.ptr = (self.ptr + b) % self.size
        ref = self.embedding_memory[: self.filled]
        ref_labels = self.label_memory[: self.filled]
        functional, options = type(self.loss).functional, self.loss.options()
        if len(pieces) == 1:
            return functional(
                embeddings, labels, ref_embeddings=ref, ref_labels=ref_labels, self_offset=pieces[0][2], **options
            )
        parts = [
            _parts.loss_parts(functional, embeddings[lo:hi], labels[lo:hi], ref, ref_labels, at, options)
            for lo, hi, at in pieces
        ]
        if parts[0].per_anchor is not None:  # reduction="none"
            return torch.cat([cast(torch.Tensor, p.per_anchor) for p in parts])
        return _parts.combine([p.terms for p in parts], parts[0].terms[0].numerator.dtype)
