"""``python -m fastmine.info``: what to paste into a bug report.

Versions (fastmine, torch, CUDA, Python), whether a GPU is visible, which compiled modules
were found and loaded, which kernels are registered for which device, how the modules were
built (``-march``, compiled CUDA architectures, the stable-ABI target) and the TF32 setting
that decides fastmine's float32 distance tiles on CUDA. ``--json`` prints the same as JSON.

    $ python -m fastmine.info
    >>> from fastmine.info import collect
    >>> collect()["torch"]["version"]  # doctest: +SKIP
    '2.13.0+cpu'
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import sys
from typing import Any, Dict, List, Optional

import torch

import fastmine
from fastmine import _ops

BUILD_INFO = os.path.join(os.path.dirname(os.path.abspath(_ops.__file__)), "_build_info.json")
DEVICES = ("CPU", "CUDA")
PEERS = ("numpy", "pytorch-metric-learning", "sentence-transformers", "transformers")


def _version(dist: str) -> Optional[str]:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def kernels() -> Dict[str, List[str]]:
    """Each ``fastmine::`` op and the device types it has a kernel for in this process."""
    names = sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("fastmine::"))
    return {
        n.split("::", 1)[1]: [d.lower() for d in DEVICES if torch._C._dispatch_has_kernel_for_dispatch_key(n, d)]
        for n in names
    }


def _build() -> Optional[Dict[str, Any]]:
    try:
        with open(BUILD_INFO) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _gpus() -> List[Dict[str, Any]]:
    out = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        out.append(
            {"name": p.name, "capability": f"{p.major}.{p.minor}", "memory_gib": round(p.total_memory / 2**30, 1)}
        )
    return out


def collect() -> Dict[str, Any]:
    """Everything the report prints, as a dict."""
    gpu = torch.cuda.is_available()
    cuda_lib = _ops._library_path("_C_cuda")
    return {
        "fastmine": {
            "version": fastmine.__version__,
            "location": os.path.dirname(os.path.abspath(fastmine.__file__)),
            "cpu_module": _ops._library_path("_C"),
            "cuda_module": cuda_lib,
            "cuda_module_loaded": bool(fastmine.CUDA_AVAILABLE),
            "build": _build(),
        },
        "torch": {
            "version": torch.__version__,
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "threads": torch.get_num_threads(),
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "cuda_matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
        },
        "gpu_visible": gpu,
        "gpus": _gpus() if gpu else [],
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "kernels": kernels(),
        "peers": {name: _version(name) for name in PEERS},
    }


def _cpu_model() -> Optional[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _cuda_module_line(fm: Dict[str, Any], gpu: bool) -> str:
    if fm["cuda_module"] is None:
        return "not built (no nvcc at build time, or FASTMINE_NO_CUDA=1)"
    if fm["cuda_module_loaded"]:
        return f"{fm['cuda_module']} (loaded)"
    why = "no GPU visible" if not gpu else "failed to load"
    return f"{fm['cuda_module']} (not loaded: {why})"


def _build_lines(build: Optional[Dict[str, Any]]) -> List[str]:
    if build is None:
        return ["build:            not recorded (built before fastmine wrote _build_info.json: rebuild)"]
    march = build.get("march")
    lines = [
        f"built against:    torch {build.get('torch')}, Python {build.get('python')}, {build.get('cxx')}",
        f"C++ flags:        {' '.join(build.get('cxx_flags', []))}",
        "-march:           "
        + (
            f"{march} (the build CPU's instruction set: {build.get('build_cpu')}; "
            "FASTMINE_PORTABLE=1 builds without it)"
            if march
            else "none (portable build)"
        ),
        f"modules built:    {', '.join(build.get('modules', []))}",
    ]
    cuda = build.get("cuda")
    if cuda:
        lines += [
            f"CUDA toolkit:     {cuda.get('nvcc')} ({cuda.get('cuda_home')})",
            f"CUDA archs:       {cuda.get('arch_list')}",
            f"stable-ABI target: {cuda.get('stable_abi_target')} (TORCH_TARGET_VERSION)",
        ]
    else:
        lines.append("CUDA build:       not part of the last build (no nvcc, or FASTMINE_NO_CUDA=1)")
    return lines


def render(info: Dict[str, Any]) -> str:
    fm, t = info["fastmine"], info["torch"]
    gpu = info["gpu_visible"]
    gpus = "; ".join(f"{g['name']} (sm {g['capability']}, {g['memory_gib']} GiB)" for g in info["gpus"])
    tf32 = t["cuda_matmul_allow_tf32"]
    lines = [
        f"fastmine:         {fm['version']} ({fm['location']})",
        f"CPU module:       {fm['cpu_module']}",
        f"CUDA module:      {_cuda_module_line(fm, gpu)}",
        *_build_lines(fm["build"]),
        f"torch:            {t['version']} (CUDA {t['cuda'] or 'none'}, cuDNN {t['cudnn'] or 'none'}, "
        f"{t['threads']} threads)",
        f"GPU visible:      {'yes: ' + gpus if gpu else 'no'}",
        f"TF32:             torch.backends.cuda.matmul.allow_tf32={tf32}, float32 matmul precision "
        f"{t['float32_matmul_precision']!r}: fastmine's float32 tiles on CUDA use "
        + ("TF32 tensor cores" if tf32 else "full fp32"),
        f"Python:           {info['python']} on {info['platform']}",
        f"CPU:              {info['cpu']}",
        "peers:            " + ", ".join(f"{k} {v or 'not installed'}" for k, v in info["peers"].items()),
        "",
        "kernels (op: devices with a kernel in this process):",
    ]
    width = max((len(op) for op in info["kernels"]), default=0)
    lines += [f"  {op.ljust(width)}  {', '.join(devs) or 'none'}" for op, devs in info["kernels"].items()]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastmine.info", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    args = parser.parse_args(argv)
    info = collect()
    print(json.dumps(info, indent=1) if args.json else render(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
