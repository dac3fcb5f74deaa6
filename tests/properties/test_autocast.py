"""fastmine under torch.autocast (the part visible without a GPU).

fastmine's ops are on no autocast cast list: they take embeddings in the dtype they arrive
in. Under autocast a model's last Linear emits float16/bfloat16 embeddings; fastmine then
computes in fp32 (tensor cores with fp32 accumulation on a GPU, an fp32 upcast on the CPU)
and returns a float32 loss whose gradient flows back through the autocast graph. Embeddings
that are float32 inside an autocast region stay float32 (no silent downcast of a loss).
The GPU half of this (the tensor-core path) is tests/cuda/test_cuda_tensor_cores.py.
"""

from __future__ import annotations

import pytest
import torch

import fastmine
from fastmine import reference as R

LOSSES = {
    "batch_hard": (fastmine.batch_hard_triplet_loss, R.batch_hard_triplet_loss),
    "batch_all": (fastmine.batch_all_triplet_loss, R.batch_all_triplet_loss),
    "contrastive": (fastmine.contrastive_loss, R.contrastive_loss),
}


def _model_and_data(seed=0):
    torch.manual_seed(seed)
    net = torch.nn.Linear(24, 40)
    inp = torch.randn(96, 24)
    labels = torch.randint(0, 12, (96,))
    return net, inp, labels


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_autocast_bf16_embeddings(name):
    fn, oracle = LOSSES[name]
    net, inp, labels = _model_and_data()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        emb = net(inp)
        assert emb.dtype == torch.bfloat16  # what autocast hands to a loss
        loss = fn(emb, labels)
    assert loss.dtype == torch.float32
    loss.backward()
    assert net.weight.grad is not None and torch.isfinite(net.weight.grad).all()
    assert net.weight.grad.abs().sum() > 0
    want = oracle(emb.detach().double(), labels)
    torch.testing.assert_close(loss.detach().double(), want, rtol=2e-2, atol=1e-3)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_float32_embeddings_are_not_downcast_under_autocast(name):
    fn, _ = LOSSES[name]
    net, inp, labels = _model_and_data(1)
    emb = net(inp).detach()
    outside = fn(emb, labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = fn(emb, labels)
    assert inside.dtype == torch.float32
    assert torch.equal(inside, outside)


def _distance_sum(x, labels):
    return fastmine.pairwise_distance(x).sum()


@pytest.mark.cuda
@pytest.mark.parametrize("name", sorted(LOSSES) + ["pairwise"])
@pytest.mark.parametrize("amp_dtype", [torch.bfloat16, torch.float16], ids=str)
def test_cuda_backward_inside_autocast(name, amp_dtype):
    """backward() called inside the autocast region: the engine runs the op's backward with
    autocast on, so its GEMMs come back in half precision (they must be cast, not refused)."""
    fn = _distance_sum if name == "pairwise" else LOSSES[name][0]
    net, inp, labels = _model_and_data(2)
    emb = net(inp).detach()
    x = emb.cuda().requires_grad_(True)
    with torch.autocast("cuda", dtype=amp_dtype):
        fn(x, labels.cuda()).backward()
    xc = emb.clone().requires_grad_(True)
    fn(xc, labels).backward()
    assert x.grad.dtype == torch.float32
    torch.testing.assert_close(x.grad.cpu(), xc.grad, rtol=2e-2, atol=2e-2 * float(xc.grad.abs().max()))
