"""Where and with what a run happened, for the JSON record."""

from __future__ import annotations

import os
import platform
import sys
from typing import Dict

import torch

from fastmine.info import _cpu_model as cpu_model


def _cpu_model() -> str:
    return cpu_model() or platform.machine()


def device_info(device: torch.device) -> Dict:
    info = {
        "device": device.type,
        "cpu_model": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info.update(
            device_name=torch.cuda.get_device_name(device),
            capability=f"{p.major}.{p.minor}",
            sm_count=p.multi_processor_count,
            memory_gib=round(p.total_memory / 2**30, 1),
            cuda=torch.version.cuda,
            tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
        )
    else:
        info["device_name"] = info["cpu_model"]
    return info


def _version(module: str) -> str:
    try:
        mod = __import__(module)
        return getattr(mod, "__version__", "unknown")
    except Exception as e:
        return f"not importable ({type(e).__name__})"


def versions() -> Dict:
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "fastmine": _version("fastmine"),
        "pytorch_metric_learning": _version("pytorch_metric_learning"),
        "numpy": _version("numpy"),
    }


def _cpu_jiffies():
    """(busy, total) clock ticks of all CPUs since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        vals = [int(v) for v in f.readline().split()[1:9]]
    return vals[0] + vals[1] + vals[2] + sum(vals[5:8]), sum(vals)


class OtherLoad:
    """Share of all CPUs that *other* processes used between start() and percent(): total
    busy ticks minus this process's own CPU time. On a 2-core machine a parallel compile
    next door turns medians into noise (OpenMP threads that find their core taken wait far
    longer than their work), so the harness reports this figure rather than hide it."""

    def __init__(self):
        try:
            self._t0 = (_cpu_jiffies(), self._own())
        except (OSError, ValueError):
            self._t0 = None

    @staticmethod
    def _own() -> float:
        t = os.times()
        return (t.user + t.system) * os.sysconf("SC_CLK_TCK")

    def percent(self):
        if self._t0 is None:
            return None
        (busy0, total0), own0 = self._t0
        busy1, total1 = _cpu_jiffies()
        others = (busy1 - busy0) - (self._own() - own0)
        return round(max(0.0, 100.0 * others / max(total1 - total0, 1)), 1)


def cpu_busy_percent(seconds: float = 0.5):
    """Share of all CPUs busy with other processes during ``seconds`` while we sleep."""
    import time

    load = OtherLoad()
    time.sleep(seconds)
    return load.percent()
