"""Wall-clock timing of one step: perf_counter around the call, with the device
synchronised on both sides so that asynchronous CUDA work is inside the interval."""

from __future__ import annotations

import statistics
import time
from typing import Callable, Dict, List

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_call(step, device: torch.device):
    """(seconds, step's result) of one call."""
    sync(device)
    t0 = time.perf_counter()
    out = step()
    sync(device)
    return time.perf_counter() - t0, out


def time_interleaved(
    steps: Dict[str, Callable], device: torch.device, repeats: int, max_seconds: float
) -> Dict[str, List[float]]:
    """Seconds of each timed call, per method. Methods take turns, one call each per
    round, so that a load change on a shared machine hits every method alike and the
    ratios stay meaningful. A method leaves the rounds once it has 3 calls and has spent
    ``max_seconds``, so that one slow baseline at a large size cannot eat the run; the
    median of 3 still resists one outlier."""
    times: Dict[str, List[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            ts = times[name]
            if len(ts) >= 3 and sum(ts) > max_seconds:
                continue
            ts.append(timed_call(step, device)[0])
    return times


def median(xs: List[float]) -> float:
    return statistics.median(xs)
