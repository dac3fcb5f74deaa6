"""The build: CPU module always; the CUDA module wherever nvcc exists, and it must register a
CUDA kernel for every op. This is how a GPU-less CI proves that every CUDA file compiles and
links: with nvcc on PATH a missing or empty CUDA module FAILS (never skips)."""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

import fastmine

PKG = os.path.dirname(os.path.abspath(fastmine.__file__))
ROOT = os.path.dirname(PKG)
OPS_CPP = os.path.join(ROOT, "csrc", "ops.cpp")


def schema_ops():
    """Op names defined in csrc/ops.cpp's TORCH_LIBRARY block."""
    with open(OPS_CPP) as f:
        src = f.read()
    names = re.findall(r'm\.def\(\s*"([A-Za-z0-9_]+)\(', src)
    assert names, "no m.def(...) found in csrc/ops.cpp"
    return names


# Ops whose CUDA kernels must exist: the foundation (distances and batch-hard), plus every op
# for which a CUDA source registers a kernel (an `m.impl("op", ...)` in a CUDA
# STABLE_TORCH_LIBRARY_IMPL block of csrc/cuda/*.cu). Ops of csrc/ops.cpp whose CUDA kernels
# have not landed yet (no such source) are not required; once a source registers one, the
# built module must carry it.
FOUNDATION_CUDA_OPS = (
    "pairwise_distance",
    "pairwise_distance_backward",
    "batch_hard_triplet",
    "batch_hard_triplet_backward",
)
ALL_PAIRS_OPS = ("batch_all_triplet", "batch_all_triplet_backward", "contrastive", "contrastive_backward")


def cuda_source_ops():
    """Op names given a CUDA kernel by some csrc/cuda/*.cu."""
    names = set()
    for path in glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")):
        with open(path) as f:
            src = f.read()
        for block in re.findall(
            r"STABLE_TORCH_LIBRARY_IMPL\(\s*fastmine\s*,\s*CUDA\s*,\s*\w+\s*\)\s*\{(.*?)\n\}", src, flags=re.S
        ):
            names.update(re.findall(r'\.impl\(\s*"([A-Za-z0-9_]+)"', block))
    return names


CUDA_OPS = tuple(FOUNDATION_CUDA_OPS) + tuple(op for op in ALL_PAIRS_OPS if op in cuda_source_ops())
# The miners' op (csrc/cuda/miners.cu): required.
MINER_CUDA_OPS = ("mine_triplets",)
CUDA_OPS += MINER_CUDA_OPS


# Semi-hard triplet loss: csrc/cuda/semi_hard.cu registers both, so both are required.
SEMI_HARD_CUDA_OPS = ("semi_hard_triplet", "semi_hard_triplet_backward")
CUDA_OPS = CUDA_OPS + SEMI_HARD_CUDA_OPS


def test_ops_cpp_defines_the_cuda_ops():
    assert set(schema_ops()) >= set(CUDA_OPS)
    assert set(schema_ops()) >= set(ALL_PAIRS_OPS)


def test_cuda_sources_register_only_defined_ops():
    """A CUDA m.impl for a name that csrc/ops.cpp does not define fails only at load time."""
    assert cuda_source_ops() <= set(schema_ops()), cuda_source_ops() - set(schema_ops())


def test_cuda_sources_register_the_foundation_ops():
    assert set(FOUNDATION_CUDA_OPS) <= cuda_source_ops()


def test_all_pairs_ops_come_in_forward_backward_pairs():
    """A CUDA forward without its CUDA backward fails at the first backward on a GPU: the
    sources register both or neither."""
    have = cuda_source_ops()
    for op in ("batch_all_triplet", "contrastive"):
        assert (op in have) == (op + "_backward" in have), (op, sorted(have))


def test_cpu_module_exists_and_registers_cpu_kernels():
    assert glob.glob(os.path.join(PKG, "_C.*.so")) or glob.glob(os.path.join(PKG, "_C.*.pyd")), (
        "fastmine/_C*.so is missing"
    )
    for op in schema_ops():
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"fastmine::{op}", "CPU"), op


def test_every_op_has_fake_and_autograd():
    for op in schema_ops():
        name = f"fastmine::{op}"
        assert (
            torch._C._dispatch_has_kernel_for_dispatch_key(name, "Meta")
            or torch._C._dispatch_has_kernel_for_dispatch_key(name, "CompositeImplicitAutograd")
            or _has_fake(name)
        ), f"{name} has no fake kernel"
        assert torch._C._dispatch_has_kernel_for_dispatch_key(
            name, "Autograd"
        ) or torch._C._dispatch_has_kernel_for_dispatch_key(name, "AutogradCPU"), f"{name} has no autograd"


def _has_fake(name):
    from torch._library.simple_registry import singleton

    entry = singleton.find(name)
    return entry.fake_impl.kernel is not None


_CHECK = r"""
import sys, torch
import fastmine  # loads the schemas (CPU module)
torch.ops.load_library(sys.argv[1])
missing = [op for op in sys.argv[2:]
           if not torch._C._dispatch_has_kernel_for_dispatch_key("fastmine::" + op, "CUDA")]
print("MISSING:" + ",".join(missing))
"""


@pytest.mark.cuda(gpu_optional=True)
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no nvcc on PATH: the CUDA module is not built")
def test_cuda_module_built_and_registers_cuda_kernels():
    cpu = glob.glob(os.path.join(PKG, "_C.*.so"))
    cuda = glob.glob(os.path.join(PKG, "_C_cuda*.so"))
    assert cpu, "fastmine/_C*.so is missing"
    assert cuda, (
        f"nvcc is on PATH ({shutil.which('nvcc')}) but fastmine/_C_cuda*.so was not built next "
        f"to {os.path.basename(cpu[0])}: the CUDA sources did not compile or link"
    )
    # A fresh interpreter: loading the module must work on a GPU-less machine (static cudart)
    # and register a CUDA kernel for every op of CUDA_OPS.
    ops = list(CUDA_OPS)
    proc = subprocess.run(
        [sys.executable, "-c", _CHECK, cuda[0], *ops], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert proc.returncode == 0, f"loading {cuda[0]} failed:\n{proc.stdout}\n{proc.stderr}"
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("MISSING:")]
    assert line, proc.stdout + proc.stderr
    missing = [m for m in line[-1][len("MISSING:") :].split(",") if m]
    assert not missing, f"{os.path.basename(cuda[0])} registers no CUDA kernel for: {missing}"


# The focal-loss family and the centroid bound: their CUDA sources must register
# every one of these ops (forward and backward together), and the built module carry them.
FOCAL_CENTROID_CUDA_OPS = (
    "sigmoid_focal",
    "sigmoid_focal_backward",
    "focal_star",
    "focal_star_backward",
    "softmax_focal",
    "centroid_triplet",
    "centroid_triplet_backward",
)


def test_focal_centroid_cuda_sources_register_their_ops():
    assert set(FOCAL_CENTROID_CUDA_OPS) <= cuda_source_ops()
    assert set(FOCAL_CENTROID_CUDA_OPS) <= set(schema_ops())


@pytest.mark.cuda(gpu_optional=True)
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no nvcc on PATH: the CUDA module is not built")
def test_cuda_module_registers_focal_centroid_kernels():
    cuda = glob.glob(os.path.join(PKG, "_C_cuda*.so"))
    assert cuda, "fastmine/_C_cuda*.so was not built"
    proc = subprocess.run(
        [sys.executable, "-c", _CHECK, cuda[0], *FOCAL_CENTROID_CUDA_OPS],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("MISSING:")]
    assert line and line[-1] == "MISSING:", proc.stdout + proc.stderr


def test_cuda_sources_register_the_semi_hard_ops():
    assert set(SEMI_HARD_CUDA_OPS) <= cuda_source_ops()
