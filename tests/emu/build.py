"""Builds fastmine's CUDA module for the host emulator: every csrc/cuda/*.cu (the op files;
the engine in csrc/cuda/engine/ is headers they include), host code and kernels alike,
compiled by g++ into a library whose ops run the kernels under emu.h.

The sources are compiled as they are, except for one mechanical rewrite: the launch syntax
``kernel<<<grid, block, smem, stream>>>(args)``, which no host compiler parses, becomes
``::fm_emu::launch([&](auto&&... a) { kernel(a...); }, grid, block, smem, stream)(args)``
(shim/cuda_runtime.h), on the same lines: each emulated thread calls the kernel with the
same arguments, converted to its parameters (and its template arguments deduced) as nvcc does. Everything else (allocation, copies, the CUB calls, the dtype dispatch, the error
checks) is the code that runs on a GPU, against the thin runtime and CUB shims in shim/ and
the adaptations of shim/emu_prelude.h. The ops register as ``torch.ops.fastmine_emu.<op>``
on the CPU dispatch key; :func:`load` defines that namespace with fastmine's schemas first.

The library is cached under build/emu/<hash of the sources and flags>/.
"""

from __future__ import annotations

import concurrent.futures
import glob
import hashlib
import os
import re
import shutil
import subprocess

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EMU = os.path.join(ROOT, "tests", "emu")
SHIM = os.path.join(EMU, "shim")
CSRC = os.path.join(ROOT, "csrc")
# The CUDA module's stable-ABI floor (setup.py's TORCH_TARGET_VERSION).
TORCH_TARGET_VERSION = "0x020a000000000000"

_LAUNCH_CFG = re.compile(r"<<<(.*?)>>>", re.S)


def cuda_include():
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root and os.path.isfile(os.path.join(root, "include", "cuda_runtime_api.h")):
            return os.path.join(root, "include")
    return None


def _kernel_start(src: str, end: int) -> int:
    """Start of the kernel expression that ends just before src[end] (``name``,
    ``ns::name`` or ``name<T, acc_t>``, possibly followed by white space)."""
    i = end
    while i > 0 and src[i - 1].isspace():
        i -= 1
    if src[i - 1] == ">":  # template arguments: match the brackets backwards
        depth = 0
        while True:
            i -= 1
            c = src[i]
            if c == ">":
                depth += 1
            elif c == "<":
                depth -= 1
                if depth == 0:
                    break
    while i > 0 and (src[i - 1].isalnum() or src[i - 1] in "_:"):
        i -= 1
    return i


def rewrite_launches(src: str) -> str:
    """``K<<<cfg>>>(`` -> ``::fm_emu::launch(<lambda calling K>, cfg)(``, same lines."""
    out, pos = [], 0
    for m in _LAUNCH_CFG.finditer(src):
        k = _kernel_start(src, m.start())
        kernel = src[k : m.start()]
        if not re.match(r"[A-Za-z_]", kernel):
            raise ValueError(f"cannot find the kernel of the launch at offset {m.start()}")
        out.append(src[pos:k])
        out.append(f"::fm_emu::launch([&](auto&&... fm_a) {{ {kernel.rstrip()}(fm_a...); }}, {m.group(1)})")
        out.append("\n" * kernel[len(kernel.rstrip()) :].count("\n"))
        pos = m.end()
    out.append(src[pos:])
    return "".join(out)


def _flags(cuda_inc):
    torch_inc = os.path.join(os.path.dirname(torch.__file__), "include")
    return [
        "-std=c++20",
        "-O1",
        "-fPIC",
        "-pthread",
        "-w",
        "-DFASTMINE_CUDA_EMULATOR",
        "-DFASTMINE_EMULATED_MMA",
        f"-DTORCH_TARGET_VERSION={TORCH_TARGET_VERSION}",
        f"-I{SHIM}",
        f"-I{EMU}",
        f"-I{torch_inc}",
        f"-I{cuda_inc}",
        "-include",
        os.path.join(SHIM, "emu_prelude.h"),
    ]


def _sources():
    cu = sorted(glob.glob(os.path.join(CSRC, "cuda", "*.cu")))
    deps = sorted(glob.glob(os.path.join(CSRC, "**", "*.*"), recursive=True))
    deps += sorted(glob.glob(os.path.join(EMU, "**", "*.*"), recursive=True))
    return cu, [d for d in deps if os.path.isfile(d) and not d.endswith(".pyc")]


def build(jobs: int = 2) -> str:
    """Path of the emulated library (built if its sources changed). Raises on a compile
    error, with the compiler's message."""
    cxx = shutil.which("g++")
    cuda_inc = cuda_include()
    if cxx is None or cuda_inc is None:
        raise FileNotFoundError("the host emulator needs g++ and the CUDA headers")
    flags = _flags(cuda_inc)
    cu, deps = _sources()
    h = hashlib.sha256(" ".join(flags + [torch.__version__]).encode())
    for d in deps:
        h.update(d.encode())
        with open(d, "rb") as f:
            h.update(f.read())
    out_dir = os.path.join(ROOT, "build", "emu", h.hexdigest()[:16])
    lib = os.path.join(out_dir, "libfastmine_emu.so")
    if os.path.exists(lib):
        return lib
    os.makedirs(out_dir, exist_ok=True)

    # The rewritten tree (csrc/ with its subfolders: the CUDA engine's headers launch kernels
    # too, e.g. engine/launchers.cuh); #line keeps the compiler's messages on the original files.
    tree = os.path.join(out_dir, "csrc")
    for path in glob.glob(os.path.join(CSRC, "**", "*.*"), recursive=True):
        rel = os.path.relpath(path, CSRC)
        os.makedirs(os.path.dirname(os.path.join(tree, rel)), exist_ok=True)
        with open(path) as f:
            text = f.read()
        with open(os.path.join(tree, rel), "w") as f:
            f.write(f'#line 1 "{path}"\n' + rewrite_launches(text))

    def compile_one(path):
        name = os.path.splitext(os.path.basename(path))[0]
        src = os.path.join(tree, os.path.relpath(path, CSRC)) if path.startswith(CSRC) else path
        obj = os.path.join(out_dir, name + ".o")
        r = subprocess.run(
            [cxx, *flags, f"-I{tree}", "-x", "c++", "-c", src, "-o", obj], capture_output=True, text=True
        )
        if r.returncode != 0:
            raise RuntimeError(f"emulator build of {path} failed:\n{r.stderr[-6000:]}")
        return obj

    sources = cu + [os.path.join(SHIM, "emu_runtime.cpp")]
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as ex:
        objs = list(ex.map(compile_one, sources))
    torch_lib = os.path.join(os.path.dirname(torch.__file__), "lib")
    tmp = lib + ".tmp"
    r = subprocess.run(
        [
            cxx,
            "-shared",
            "-pthread",
            *objs,
            f"-L{torch_lib}",
            "-ltorch_cpu",
            "-lc10",
            f"-Wl,-rpath,{torch_lib}",
            "-o",
            tmp,
        ],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        raise RuntimeError(f"emulator link failed:\n{r.stderr[-6000:]}")
    os.replace(tmp, lib)
    return lib


_LOADED = None


def load():
    """Builds and loads the emulated ops; returns the library (ctypes) for the emulator's
    controls: fm_emu_error_count, fm_emu_reset_errors, fm_emu_set_sm_count."""
    global _LOADED
    if _LOADED is not None:
        return _LOADED
    import ctypes

    import fastmine  # noqa: F401  (fastmine's schemas)

    lib = torch.library.Library("fastmine_emu", "DEF")
    for name in torch._C._dispatch_get_all_op_names():
        if name.startswith("fastmine::"):
            schema = str(torch._C._get_schema(name, ""))
            lib.define(schema[len("fastmine::") :])
    path = build()
    torch.ops.load_library(path)
    so = ctypes.CDLL(path)
    so.fm_emu_error_count.restype = ctypes.c_long
    _LOADED = (lib, so)
    return _LOADED
