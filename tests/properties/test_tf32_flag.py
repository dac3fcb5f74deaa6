"""The TF32 opt-in as the CPU sees it. Every op whose CUDA kernels run the X.R^T tile
mainloop takes ``allow_tf32`` (schema default False); fastmine.functional passes
``torch.backends.cuda.matmul.allow_tf32`` for float32 CUDA inputs only. On the CPU the
argument is accepted and ignored: results are bitwise the same either way, and the flag is
not even read. The GPU behaviour is tests/cuda/test_cuda_tensor_cores.py; the TF32 fragment
layouts are checked on the CPU emulator (tests/cuda/test_emu_tensor_cores.py)."""

from __future__ import annotations

import pytest
import torch

import fastmine
import fastmine.nn
from fastmine import functional as F

ops = torch.ops.fastmine


@pytest.fixture
def tf32_on():
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    yield
    torch.backends.cuda.matmul.allow_tf32 = old


def _data():
    g = torch.Generator().manual_seed(3)
    return torch.randn(90, 20, generator=g), torch.randint(0, 9, (90,), generator=g)


def test_flag_is_never_set_for_cpu_tensors(tf32_on):
    x, _ = _data()
    assert F._tile_tf32(x) is False
    assert F._tile_tf32(x.double()) is False


@pytest.mark.parametrize(
    "name", ["batch_hard_triplet_loss", "batch_all_triplet_loss", "contrastive_loss", "pairwise_distance"]
)
def test_cpu_results_ignore_the_flag(name, tf32_on):
    x, lab = _data()
    fn = getattr(fastmine, name)
    args = (x,) if name == "pairwise_distance" else (x, lab)
    on = fn(*args)
    torch.backends.cuda.matmul.allow_tf32 = False
    off = fn(*args)
    assert torch.equal(on, off)


def test_ops_take_allow_tf32_and_default_to_false():
    x, lab = _data()
    for flag in (False, True):
        d = ops.pairwise_distance(x, x, 0, flag)
        assert torch.equal(d, ops.pairwise_distance(x, x, 0))
        bh = ops.batch_hard_triplet(x, lab, x, lab, 0.3, 0, False, True, 0, flag)
        for u, v in zip(bh, ops.batch_hard_triplet(x, lab, x, lab, 0.3, 0, False, True, 0)):
            assert torch.equal(u, v)
        ba = ops.batch_all_triplet(x, lab, x, lab, 0.3, 0, False, True, 0, allow_tf32=flag)
        for u, v in zip(ba, ops.batch_all_triplet(x, lab, x, lab, 0.3, 0, False, True, 0)):
            assert torch.equal(u, v)
        ct = ops.contrastive(x, lab, x, lab, 0.0, 1.0, 2.0, 0, True, False, 0, flag)
        for u, v in zip(ct, ops.contrastive(x, lab, x, lab, 0.0, 1.0, 2.0, 0, True, False, 0)):
            assert torch.equal(u, v)
    assert "allow_tf32=False" in str(ops.batch_hard_triplet.default._schema)


@pytest.mark.parametrize("flag", [False, True])
def test_opcheck_with_the_flag(flag):
    x, lab = _data()
    x = x.requires_grad_(True)
    torch.library.opcheck(ops.batch_hard_triplet.default, (x, lab, x, lab, 0.3, 0, False, True, 0, flag))
    torch.library.opcheck(ops.contrastive.default, (x, lab, x, lab, 0.0, 1.0, 2.0, 0, True, False, 0, flag))
    torch.library.opcheck(ops.batch_all_triplet.default, (x, lab, x, lab, 0.3, 0, False, True, 0, flag))
    torch.library.opcheck(ops.pairwise_distance.default, (x, x.detach(), 0, flag))


@pytest.mark.parametrize("reduction", ["mean", "sum", "mean_nonzero"])
def test_cross_batch_and_distributed_contrastive_pass_the_flag(monkeypatch, reduction):
    """Cross-batch memory and torch.distributed compute contrastive in pieces (fastmine._parts);
    each piece must call the op with the flag the functional API would give it. The CPU never
    sets it, so the test makes the flag's source say True and records what the op receives."""
    monkeypatch.setattr(F, "_tile_tf32", lambda x: True)
    seen = []
    real = ops.contrastive

    class Recorder:
        def __getattr__(self, name):
            return getattr(ops, name)

        def contrastive(self, *args):
            seen.append(args[-1])
            return real(*args)

    from fastmine import _parts

    monkeypatch.setattr(_parts, "ops", Recorder())
    x, lab = _data()
    xbm = fastmine.CrossBatchMemory(fastmine.nn.ContrastiveLoss(reduction=reduction), size=64, dim=20)
    xbm(x[:40], lab[:40])
    xbm(x[40:], lab[40:])  # wraps around the ring: two pieces through _parts
    assert seen and all(flag is True for flag in seen), seen
