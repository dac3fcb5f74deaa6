"""Running fastmine's CUDA ops under the host emulator (tests/emu/build.py) and comparing them
with the CPU ops, output by output.

``torch.ops.fastmine_emu.<op>`` is the CUDA module's code, host launchers included, with
its kernels run by tests/emu/emu.h on CPU tensors; ``torch.ops.fastmine.<op>`` the CPU
kernel. Half inputs go to the CPU op upcast to float32 (as the Python layer does on the
CPU), so the comparison there is at half precision.
"""

from __future__ import annotations

import os
import shutil
import sys

import pytest
import torch

import fastmine  # noqa: F401  (the CPU ops and their schemas)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "emu"))
import build as emu_build  # noqa: E402

HALF = (torch.float16, torch.bfloat16)
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


@pytest.fixture(scope="session")
def emu():
    """The emulator's control library (ctypes); the emulated ops are torch.ops.fastmine_emu."""
    if shutil.which("g++") is None or emu_build.cuda_include() is None:
        pytest.skip("the host emulator needs g++ and the CUDA headers")
    return emu_build.load()[1]


def run_emu(emu, name, *args):
    """The emulated op's outputs (a tuple); fails on any misuse the emulator reported."""
    emu.fm_emu_reset_errors()
    out = getattr(torch.ops.fastmine_emu, name)(*args)
    assert emu.fm_emu_error_count() == 0, f"the emulator reported misuse in {name} (see stderr)"
    return out if isinstance(out, tuple) else (out,)


def run_cpu(name, *args):
    args = [a.float() if isinstance(a, torch.Tensor) and a.dtype in HALF else a for a in args]
    out = getattr(torch.ops.fastmine, name)(*args)
    return out if isinstance(out, tuple) else (out,)


def _scale(t):
    f = t.double()
    f = f[torch.isfinite(f)]
    return float(f.abs().max()) if f.numel() else 1.0


def assert_same(got, want, *, what, half=False, exact_index=True, rtol=None):
    """One output: integers equal (indices where exact_index); floats close, NaN where NaN, inf
    where inf."""
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    if not got.dtype.is_floating_point:
        if exact_index:
            assert torch.equal(got, want), f"{what}: {got.tolist()} != {want.tolist()}"
        return
    if rtol is None:
        rtol = 2e-2 if half else (1e-4 if want.dtype != torch.float64 else 1e-9)
    g, w = got.double(), want.double()
    assert torch.equal(torch.isnan(g), torch.isnan(w)), f"{what}: NaN pattern differs\n{g}\n{w}"
    atol = rtol * max(_scale(w), 1.0)  # cancellations (cosine at D = 1: gradients ~0) are absolute
    torch.testing.assert_close(g, w, rtol=rtol, atol=atol, equal_nan=True, msg=lambda m: f"{what}: {m}")


def compare(emu, name, *args, half=None, exact_index=None, rtol=None, skip=()):
    """Runs op `name` emulated and on the CPU, compares every output (those in `skip` aside);
    returns the emulated outputs. A call the CPU op refuses must be refused alike: the same
    message (the CUDA one prefixed with where it was raised), and the emulated op returns None."""
    if half is None:
        half = any(isinstance(a, torch.Tensor) and a.dtype in HALF for a in args)
    if exact_index is None:
        exact_index = not half
    try:
        want = run_cpu(name, *args)
    except (RuntimeError, ValueError) as refusal:
        expected = str(refusal).splitlines()[0]
        with pytest.raises(RuntimeError) as emulated:
            run_emu(emu, name, *args)
        assert expected in str(emulated.value), f"{name}: CPU refused with {expected!r}, emulated: {emulated.value}"
        return None
    got = run_emu(emu, name, *args)
    assert len(got) == len(want)
    for k, (g, w) in enumerate(zip(got, want)):
        if k not in skip:
            assert_same(g, w, what=f"{name} output {k}", half=half, exact_index=exact_index, rtol=rtol)
    return got


def labels_of(kind, b, gen):
    if kind == "pk":
        return torch.randint(0, max(1, b // 3), (b,), generator=gen)
    if kind == "one_class":
        return torch.zeros(b, dtype=torch.int64)
    if kind == "distinct":
        return torch.arange(b) * 7 + 10**12
    raise ValueError(kind)


def embeddings(kind, b, d, dtype, gen):
    """random: Gaussian; grid: small integers (exact distances, so ties are real ties)."""
    if kind == "random":
        x = torch.randn(b, d, generator=gen, dtype=torch.float64)
    elif kind == "grid":
        x = torch.randint(-2, 3, (b, d), generator=gen).double()
    else:
        raise ValueError(kind)
    return x.to(dtype)
