"""Peak memory that one call adds on top of what existed before it (the inputs).

CUDA: the caching allocator's own counters, max_memory_allocated() - memory_allocated()
      after reset_peak_memory_stats(): exact bytes of live tensors at the peak.
CPU:  there are no allocator statistics, so we measure what the OS sees: the growth of the
      process's peak resident set (VmHWM in /proc/self/status) over its resident set just
      before the call. Two things make that honest in-process, without a child process
      (which would have to repeat torch.compile's warm-up):
      - writing "5" to /proc/self/clear_refs resets VmHWM to the current RSS (Linux >= 4.0),
        so earlier calls' peaks do not mask this one's;
      - malloc_trim(0) first hands freed-but-resident heap pages back to the OS, so buffers
        that the call reuses from earlier calls are counted as growth instead of hidden.
      Large tensors are mmapped by glibc and freed to the OS anyway. The figure can exceed
      the live bytes slightly (pages freed during the call stay resident until trimmed)
      and ignores pages allocated but never touched; it is 4 KiB-granular.
"""

from __future__ import annotations

import ctypes
import gc
import re
from typing import Optional, Tuple

import torch

from .timing import sync

MiB = 2.0**20


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M).group(1))


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim, the figure may undercount
        pass


def peak_extra_mib(step, device: torch.device) -> Tuple[Optional[float], str]:
    """(MiB added at the peak of one step() call, how it was measured), or (None, why not).
    The caller drops gradients from earlier calls first, so they are not freed mid-call."""
    gc.collect()
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step()
        sync(device)
        return (torch.cuda.max_memory_allocated(device) - base) / MiB, "cuda max_memory_allocated"
    try:
        _malloc_trim()
        base = _status_kib("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        step()
        return (_status_kib("VmHWM") - base) / 1024.0, "peak RSS growth (VmHWM after clear_refs)"
    except (OSError, AttributeError) as e:  # no /proc (not Linux) or clear_refs not writable
        return None, f"no CPU peak-memory measurement here ({e})"
