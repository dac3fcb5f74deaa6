"""fastmine.distributed with 2 CPU processes (gloo): every rank's loss equals the
single-process loss of the concatenated batch, and the gradients (of the embeddings, and of a
DDP model's parameters) equal single-process training on it. Uneven batch sizes."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import fastmine
import fastmine.distributed
import fastmine.nn
from helpers import assert_close_rel

SIZES = (5, 9)  # rows per rank: uneven on purpose
D_IN, D = 7, 6
CASES = [
    (fastmine.nn.BatchHardTripletLoss, dict()),
    (fastmine.nn.BatchHardTripletLoss, dict(reduction="mean_nonzero", metric="sqeuclidean")),
    (fastmine.nn.BatchHardTripletLoss, dict(reduction="sum", soft=True)),
    (fastmine.nn.BatchHardTripletLoss, dict(reduction="none")),
    (fastmine.nn.BatchAllTripletLoss, dict()),
    (fastmine.nn.BatchAllTripletLoss, dict(reduction="mean", metric="cosine")),
    (fastmine.nn.BatchAllTripletLoss, dict(reduction="sum", margin=0.8)),
    (fastmine.nn.ContrastiveLoss, dict()),
    (fastmine.nn.ContrastiveLoss, dict(reduction="mean_nonzero", power=1, neg_margin=1.5)),
    (fastmine.nn.ContrastiveLoss, dict(reduction="sum", pos_margin=0.1)),
    # (semi-hard's "none" is one value per pair, not per anchor: the per-rank slicing below
    # does not apply to it; XBM's test covers its concatenation)
    (fastmine.nn.SemiHardTripletLoss, dict()),
    (fastmine.nn.SemiHardTripletLoss, dict(reduction="sum", metric="cosine", margin=0.5)),
]


def _data():
    g = torch.Generator().manual_seed(0)
    n = sum(SIZES)
    x = torch.randn(n, D, generator=g, dtype=torch.float64)
    inputs = torch.randn(n, D_IN, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 4, (n,), generator=g)
    return x, inputs, labels


def _model():
    torch.manual_seed(1)
    return torch.nn.Linear(D_IN, D).double()


def _weights(n, offset=0, total=None):
    """Distinct upstream weights for reduction='none' (a slice of the global ones)."""
    total = total or n
    return torch.linspace(0.5, 1.5, total, dtype=torch.float64)[offset : offset + n]


def _worker(rank, world, port, out_dir):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        x, inputs, labels = _data()
        lo = sum(SIZES[:rank])
        rows = slice(lo, lo + SIZES[rank])
        results = []
        for cls, opts in CASES:
            xk = x[rows].clone().requires_grad_(True)
            loss = fastmine.distributed.DistributedLoss(cls(**opts))(xk, labels[rows])
            if loss.dim():
                (loss * _weights(SIZES[rank], lo, sum(SIZES))).sum().backward()
            else:
                loss.backward()
            results.append((loss.detach(), xk.grad))
        # DDP: a model trained with DistributedLoss gets the single-process gradient.
        ddp = torch.nn.parallel.DistributedDataParallel(_model())
        criterion = fastmine.distributed.DistributedLoss(fastmine.nn.BatchHardTripletLoss())
        criterion(ddp(inputs[rows]), labels[rows]).backward()
        grads = [p.grad for p in ddp.module.parameters()]
        # gather_batch itself: the global batch and the offset
        g_emb, g_lab, off = fastmine.distributed.gather_batch(x[rows], labels[rows])
        torch.save(
            dict(results=results, ddp=grads, gathered=(g_emb, g_lab, off)), os.path.join(out_dir, f"rank{rank}.pt")
        )
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    mp.spawn(_worker, args=(len(SIZES), _free_port(), str(out)), nprocs=len(SIZES), join=True)
    return [torch.load(out / f"rank{r}.pt") for r in range(len(SIZES))]


@pytest.mark.parametrize(
    "case", range(len(CASES)), ids=[f"{c.__name__}-{o.get('reduction', 'default')}" for c, o in CASES]
)
def test_loss_and_gradients_equal_single_process(ranks, case):
    cls, opts = CASES[case]
    x, _, labels = _data()
    world = len(SIZES)
    xs = x.clone().requires_grad_(True)
    want = cls(**opts)(xs, labels)
    if want.dim():
        (want * _weights(x.shape[0])).sum().backward()
    else:
        want.backward()
    for rank, res in enumerate(ranks):
        loss, grad = res["results"][case]
        lo = sum(SIZES[:rank])
        rows = slice(lo, lo + SIZES[rank])
        if want.dim():  # "none": this rank's slice, gradient unscaled
            assert_close_rel(loss, want.detach()[rows], 1e-10, what=f"rank {rank} per-anchor loss")
            assert_close_rel(grad, xs.grad[rows], 1e-10, what=f"rank {rank} gradient")
        else:  # the global value; world_size x this rank's share of the gradient
            assert_close_rel(loss, want.detach(), 1e-10, what=f"rank {rank} loss")
            assert_close_rel(grad / world, xs.grad[rows], 1e-10, what=f"rank {rank} gradient")


def test_ddp_parameter_gradients_equal_single_process(ranks):
    x, inputs, labels = _data()
    model = _model()
    fastmine.batch_hard_triplet_loss(model(inputs), labels).backward()
    # euclidean distances ignore a translation: the bias gradient is 0 up to rounding, so the
    # tolerance floor is the size of the weight gradient
    floor = max(float(p.grad.abs().max()) for p in model.parameters())
    for rank, res in enumerate(ranks):
        for got, p in zip(res["ddp"], model.parameters()):
            assert_close_rel(got, p.grad, 1e-10, floor=floor, what=f"rank {rank} DDP parameter gradient")


def test_gather_batch(ranks):
    x, _, labels = _data()
    for rank, res in enumerate(ranks):
        g_emb, g_lab, off = res["gathered"]
        assert torch.equal(g_emb, x) and torch.equal(g_lab, labels)
        assert off == sum(SIZES[:rank])


def test_single_process_is_the_plain_loss():
    x, _, labels = _data()
    criterion = fastmine.distributed.DistributedLoss(fastmine.nn.ContrastiveLoss())
    assert torch.equal(criterion(x, labels), fastmine.contrastive_loss(x, labels))
    emb, lab, off = fastmine.distributed.gather_batch(x, labels)
    assert emb is x and lab is labels and off == 0


def test_bad_arguments():
    with pytest.raises(TypeError, match="loss"):
        fastmine.distributed.DistributedLoss(torch.nn.MSELoss())
    with pytest.raises(TypeError, match="ddp_average"):
        fastmine.distributed.DistributedLoss(fastmine.nn.BatchHardTripletLoss(), ddp_average=1)
