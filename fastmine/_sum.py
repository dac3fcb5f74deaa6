"""A float sum whose bits do not depend on ``torch.set_num_threads``."""

from __future__ import annotations

import torch

# ATen sums more than 32768 elements on the CPU in per-thread partials, so the rounding
# changes with the thread count. A chunk this size is summed by one thread.
_CHUNK = 1 << 14


def fixed_sum(t: torch.Tensor) -> torch.Tensor:
    """``t.sum()``, on the CPU in fixed chunks of 16384 elements (each summed by one thread)
    and then the chunk sums: the same bits on one thread and on all. A traced call (whose
    sizes may be symbolic) sums as the compiler's own code does."""
    if torch.compiler.is_compiling() or t.device.type != "cpu":
        return t.sum()
    n = t.numel()
    if n <= _CHUNK:
        return t.sum()
    flat = t.reshape(-1)
    pad = (-n) % _CHUNK
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    return flat.view(-1, _CHUNK).sum(1).sum()
