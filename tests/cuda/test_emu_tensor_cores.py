"""The tensor-core mainloop's fragment layouts, checked on the CPU without a GPU.

tests/emu/ holds a host emulator of CUDA (emu.h: one std::thread per CUDA thread) and an
emulated ``mma.sync`` (emu_mma.h) written independently from the PTX ISA's fragment tables.
The real kernel headers are compiled against it with g++ (the kernels' inline PTX sits in
csrc/cuda/engine/mma.cuh, replaced under FASTMINE_EMULATED_MMA) into a small library driven by
ctypes. Any wrong register, lane or half of a fragment gives O(1) errors, far above these
tolerances; the half-precision kernels are also held to docs/semantics.md's 2e-2 against the float64 CPU
op on the upcast inputs. Skips where g++ or the CUDA headers are missing.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess

import pytest
import torch

import fastmine  # noqa: F401  (loads the CPU ops)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EMU = os.path.join(ROOT, "tests", "emu")
HALF = (torch.float16, torch.bfloat16)
NAMES = {torch.float32: "f32", torch.float64: "f64", torch.float16: "f16", torch.bfloat16: "bf16"}
ENTRIES = list(NAMES.values()) + ["tf32"]  # tf32: float32 data on the TF32 path (tf32_t)


def _cuda_include():
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root and os.path.isfile(os.path.join(root, "include", "cuda_fp16.h")):
            return os.path.join(root, "include")
    return None


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    cxx = shutil.which("g++")
    inc = _cuda_include()
    if cxx is None or inc is None:
        pytest.skip("needs g++ and the CUDA headers (cuda_fp16.h) for the host emulator")
    out = tmp_path_factory.mktemp("emu") / "libfm_emu.so"
    cmd = [
        cxx,
        "-std=c++20",
        "-O1",
        "-shared",
        "-fPIC",
        "-pthread",
        "-w",
        "-DFASTMINE_EMULATED_MMA",
        f"-I{os.path.join(ROOT, 'csrc')}",
        f"-I{EMU}",
        f"-I{inc}",
        os.path.join(EMU, "harness.cpp"),
        "-o",
        str(out),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-4000:]
    so = ctypes.CDLL(str(out))
    P, I, D, B = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double, ctypes.c_bool
    for n in ENTRIES:
        getattr(so, "tile_" + n).argtypes = [P, I, P, I, I, P]
        getattr(so, "pw_fwd_" + n).argtypes = [P, P, I, I, I, I, P]
        getattr(so, "bh_fwd_" + n).argtypes = [P, P, P, P, I, I, I, D, I, B, B, I, I, P, P, P, P, P]
    so.emu_error_count.restype = ctypes.c_long
    return so


def _no_emu_errors(lib):
    assert lib.emu_error_count() == 0, "the emulator flagged a warp-collective misuse"


def _p(t):
    return t.data_ptr()


def _entry(dtype, tf32):
    return "tf32" if tf32 else NAMES[dtype]


def emu_dot(lib, x, y, tf32=False):
    out = torch.full(
        (x.shape[0], y.shape[0]), float("nan"), dtype=torch.float32 if x.dtype != torch.float64 else x.dtype
    )
    getattr(lib, "tile_" + _entry(x.dtype, tf32))(_p(x), x.shape[0], _p(y), y.shape[0], x.shape[1], _p(out))
    _no_emu_errors(lib)
    return out


# Shapes: partial tiles in both directions, D not a multiple of 16 (nor of 8, nor of 4: the
# scalar load path), D < 16, several k steps, and exact multiples.
SHAPES = [(70, 130, 40), (64, 64, 16), (1, 5, 3), (33, 200, 17), (16, 24, 130)]


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("nx, ny, d", SHAPES)
def test_half_mainloop_layout(lib, dtype, nx, ny, d):
    g = torch.Generator().manual_seed(nx * 1000 + ny * 10 + d)
    x = torch.randn(nx, d, generator=g).to(dtype)
    y = torch.randn(ny, d, generator=g).to(dtype)
    got = emu_dot(lib, x, y).double()
    want = x.double() @ y.double().T  # the half values are exact in double: only fp32 sums differ
    scale = x.double().norm(dim=1)[:, None] * y.double().norm(dim=1)[None, :]
    assert torch.isfinite(got).all(), "an output entry was not written"
    assert ((got - want).abs() <= 1e-5 * scale + 1e-30).all()


@pytest.mark.parametrize("nx, ny, d", SHAPES)
def test_tf32_mainloop_layout(lib, nx, ny, d):
    g = torch.Generator().manual_seed(nx * 1000 + ny * 10 + d + 1)
    x = torch.randn(nx, d, generator=g)
    y = torch.randn(ny, d, generator=g)
    got = emu_dot(lib, x, y, tf32=True).double()
    want = x.double() @ y.double().T
    scale = x.double().norm(dim=1)[:, None] * y.double().norm(dim=1)[None, :]
    err = (got - want).abs() / scale
    assert torch.isfinite(got).all()
    assert (err <= 2e-3).all()  # 10-bit mantissas: ~1e-3 relative to |x||y| at worst
    if d >= 16:  # really TF32 (not fp32 FMA): some entry is visibly rounded
        assert err.max() > 1e-6
    fp32 = emu_dot(lib, x, y, tf32=False).double()
    assert (((fp32 - want).abs() / scale) <= 1e-6).all()  # the default stays fp32-accurate


# The tensor-core kinds: (entry, torch dtype of the data). "tf32": float32 data, TF32 tiles.
KINDS = {"f16": torch.float16, "bf16": torch.bfloat16, "tf32": torch.float32}


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("b, m, d, metric", [(70, 130, 40, 0), (65, 65, 17, 1), (3, 9, 5, 2)])
def test_pairwise_tensor_cores_against_cpu_float64(lib, kind, b, m, d, metric):
    dtype = KINDS[kind]
    g = torch.Generator().manual_seed(b + m + d + metric)
    x = torch.randn(b, d, generator=g).to(dtype)
    y = torch.randn(m, d, generator=g).to(dtype)
    y[: min(3, m)] = x[: min(3, m)]  # exact duplicates: zero distances (the exact fix-up)
    out = torch.full((b, m), float("nan"), dtype=dtype)
    getattr(lib, "pw_fwd_" + kind)(_p(x), _p(y), b, m, d, metric, _p(out))
    _no_emu_errors(lib)
    want = torch.ops.fastmine.pairwise_distance(x.double(), y.double(), metric)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), want, rtol=2e-2, atol=2e-2 * float(want.abs().max()))


def _bh(lib, kind, x, lab, splits, metric=0, margin=0.2, soft=False):
    b, d = x.shape
    acc = torch.float32 if x.dtype != torch.float64 else x.dtype
    loss, pd, nd = (torch.full((b,), -777.0, dtype=acc) for _ in range(3))
    pi, ni = (torch.full((b,), -777, dtype=torch.int64) for _ in range(2))
    getattr(lib, "bh_fwd_" + kind)(
        _p(x),
        _p(lab),
        _p(x),
        _p(lab),
        b,
        b,
        d,
        margin,
        metric,
        soft,
        True,
        0,
        splits,
        _p(loss),
        _p(pi),
        _p(ni),
        _p(pd),
        _p(nd),
    )
    _no_emu_errors(lib)
    return loss, pi, ni, pd, nd


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("b, d, metric", [(150, 40, 0), (129, 17, 1), (70, 64, 2)])
def test_batch_hard_tensor_cores_against_cpu_float64(lib, kind, b, d, metric):
    dtype = KINDS[kind]
    g = torch.Generator().manual_seed(b * 3 + d)
    lab = torch.randint(0, 6, (b,), generator=g)
    x = torch.randn(b, d, generator=g).to(dtype)
    loss, pi, ni, pd, nd = _bh(lib, kind, x, lab, splits=2, metric=metric)
    w_loss, w_pi, w_ni, w_pd, w_nd = torch.ops.fastmine.batch_hard_triplet(
        x.double(), lab, x.double(), lab, 0.2, metric, False, True, 0
    )
    # Near-ties may pick another index under half rounding; the mined distances may not move.
    tol = dict(rtol=2e-2, atol=2e-2 * float(w_pd.abs().max()))
    torch.testing.assert_close(pd.double(), w_pd, **tol)
    torch.testing.assert_close(nd.double(), w_nd, **tol)
    torch.testing.assert_close(loss.double(), w_loss, **tol)
    assert (pi == w_pi).float().mean() > 0.9 and (ni == w_ni).float().mean() > 0.9
    # The split plan (which the launcher takes from the SM count) never changes a bit.
    again = _bh(lib, kind, x, lab, splits=1, metric=metric)
    for u, v in zip((loss, pi, ni, pd, nd), again):
        assert torch.equal(u, v)
