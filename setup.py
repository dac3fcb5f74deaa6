"""Builds fastmine's two compiled modules.

* ``fastmine._C``      CPU kernels and the op schemas (classic ATen API). Always built.
* ``fastmine._C_cuda`` CUDA kernels, written against torch's *stable* ABI only, so that they
  compile and link against the CPU-only torch wheel too (its ATen/cuda headers are absent).
  Built whenever ``nvcc`` is found; loaded at import only when ``torch.cuda.is_available()``.
  ``FASTMINE_NO_CUDA=1`` skips it; ``FASTMINE_REQUIRE_CUDA=1`` makes its absence an error.

``FASTMINE_SANITIZE=1`` builds the CPU module with AddressSanitizer and UndefinedBehavior-
Sanitizer (``make sanitize`` does so into build-sanitize/, apart from the normal build).
"""

import glob
import json
import os
import platform
import shutil
import subprocess
import sys

import torch
from setuptools import setup
from torch.utils import cpp_extension
from torch.utils.cpp_extension import BuildExtension, CppExtension

ROOT = os.path.dirname(os.path.abspath(__file__))
# Stable-ABI floor: the CUDA module uses nothing newer than torch 2.10's stable API.
TORCH_TARGET_VERSION = "0x020a000000000000"


def _find_cuda_home():
    """The CUDA toolkit root (bin/nvcc, include/, lib64/), or None where there is no nvcc."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:  # /usr/local/bin/nvcc may be a wrapper script: only trust a real toolkit layout
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    for root in candidates:
        if (
            root
            and os.path.isfile(os.path.join(root, "include", "cuda_runtime.h"))
            and (os.path.exists(os.path.join(root, "bin", "nvcc")))
        ):
            return root
    if nvcc:
        raise RuntimeError(f"nvcc found at {nvcc} but no CUDA toolkit root; set CUDA_HOME")
    return None


def _rel(pattern):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


# -march=native: the row-scan epilogue is SIMD; fastmine is built from source on the
# machine that runs it. FASTMINE_PORTABLE=1 drops it for relocatable builds.
# -fno-math-errno -fno-trapping-math: the per-pair loops vectorise only when branch-free, and
# under the defaults gcc keeps branches it could remove: one to the library sqrt (for errno
# on a negative argument), and every `c ? a : b` on floats (a comparison may trap). Nothing
# here reads errno or traps on floating-point exceptions; every result is the same (NaN and
# infinity included: this is not -ffast-math).
common_cxx = ["-O3", "-std=c++20", "-fopenmp", "-fno-math-errno", "-fno-trapping-math"]
if os.environ.get("FASTMINE_PORTABLE") != "1":
    common_cxx.append("-march=native")
cpu_link = ["-fopenmp"]
if os.environ.get("FASTMINE_SANITIZE") == "1":
    # -O1 keeps the reports' stacks readable; every report is fatal (see scripts/sanitize.sh).
    sanitize = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=all"]
    common_cxx = [f for f in common_cxx if f != "-O3"] + ["-O1", "-g"] + sanitize
    cpu_link = cpu_link + sanitize
include_dirs = [os.path.join(ROOT, "csrc")]

ext_modules = [
    CppExtension(
        "fastmine._C",
        sources=_rel("csrc/ops.cpp") + _rel("csrc/cpu/*.cpp"),
        include_dirs=include_dirs,
        extra_compile_args={"cxx": common_cxx},
        extra_link_args=cpu_link,
    )
]

cuda_home = None if os.environ.get("FASTMINE_NO_CUDA") == "1" else _find_cuda_home()
if cuda_home is None and os.environ.get("FASTMINE_REQUIRE_CUDA") == "1":
    raise RuntimeError("FASTMINE_REQUIRE_CUDA=1 but no nvcc was found (set CUDA_HOME)")
if cuda_home is not None:
    # A CPU-only torch leaves cpp_extension.CUDA_HOME unset and CUDAExtension would link
    # torch_cuda; a CppExtension with .cu sources and this path set is compiled by nvcc.
    cpp_extension.CUDA_HOME = cuda_home
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    stable = [f"-DTORCH_TARGET_VERSION={TORCH_TARGET_VERSION}"]
    ext_modules.append(
        CppExtension(
            "fastmine._C_cuda",
            sources=_rel("csrc/cuda/*.cu"),
            include_dirs=include_dirs + [os.path.join(cuda_home, "include")],
            library_dirs=[os.path.join(cuda_home, "lib64")],
            # Static cudart: no runtime dependency on a libcudart.so that may differ from
            # the one torch ships; the module links completely on a machine without a GPU.
            libraries=["cudart_static", "rt", "pthread", "dl"],
            extra_compile_args={
                "cxx": ["-O3", "-std=c++20"] + stable,
                "nvcc": ["-O3", "-std=c++20", "--expt-relaxed-constexpr", "-lineinfo"] + stable,
            },
        )
    )


def _version_line(cmd, marker=""):
    """The first line of ``cmd``'s output that holds ``marker``, or None if it cannot run."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return next((line.strip() for line in out.splitlines() if marker in line), None)


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def build_info():
    """What `python -m fastmine.info` reports about this build: a -march=native module runs
    only on CPUs with the build machine's instruction set, and the CUDA module only on the
    architectures it was compiled for."""
    cxx = os.environ.get("CXX", "c++")
    info = {
        "modules": [ext.name for ext in ext_modules],
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "cxx": _version_line([cxx, "--version"]),
        "cxx_flags": common_cxx,
        "march": next((f.split("=", 1)[1] for f in common_cxx if f.startswith("-march=")), None),
        "build_cpu": _cpu_model(),
        "cuda": None,
    }
    if cuda_home is not None:
        info["cuda"] = {
            "cuda_home": cuda_home,
            "nvcc": _version_line([os.path.join(cuda_home, "bin", "nvcc"), "--version"], "release"),
            "arch_list": os.environ.get("TORCH_CUDA_ARCH_LIST"),
            "stable_abi_target": TORCH_TARGET_VERSION,
            "nvcc_flags": ext_modules[-1].extra_compile_args["nvcc"],
        }
    return info


class BuildExtensionWithInfo(BuildExtension.with_options(use_ninja=True)):
    """Also writes fastmine/_build_info.json next to the compiled modules (in the source
    tree for --inplace, in the wheel otherwise)."""

    def run(self):
        super().run()
        target = os.path.join(os.path.dirname(self.get_ext_fullpath("fastmine._C")), "_build_info.json")
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "w") as f:
            json.dump(build_info(), f, indent=1)
            f.write("\n")


setup(
    ext_modules=ext_modules,
    cmdclass={"build_ext": BuildExtensionWithInfo},
)
