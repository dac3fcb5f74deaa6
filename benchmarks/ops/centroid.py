"""Centroid triplet bound: fastmine's direct-difference kernel against the
vectorized eager formula (torch.cdist to the centroids, one-hot masks) and torch.compile.
Centroids: one fixed random row per class of the batch's labels (C = B / K). Forward +
backward with respect to the embeddings."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..registry import Inputs, Method, OpBench

_CENTROIDS = {}


def centroids_for(inp: Inputs) -> torch.Tensor:
    """The same (C, D) centroids for every method of a size."""
    key = (inp.shape, inp.num_classes, inp.x.dtype, inp.x.device)
    if key not in _CENTROIDS:
        g = torch.Generator().manual_seed(1)
        c = torch.randn(inp.num_classes, inp.shape[1], generator=g)
        _CENTROIDS.clear()
        _CENTROIDS[key] = c.to(device=inp.x.device, dtype=inp.x.dtype)
    return _CENTROIDS[key]


def eager_centroid(x: torch.Tensor, labels: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """As a PyTorch user writes it: the (B, C) distance matrix and a one-hot mask."""
    d = torch.cdist(x, c)
    own = F.one_hot(labels, c.shape[0]).to(d.dtype)
    per = (d * own).sum(1) - (d * (1 - own)).sum(1) / (3 * (c.shape[0] - 1))
    return per.mean()


def _step(loss_fn):
    def setup(inp: Inputs):
        c = centroids_for(inp)

        def step():
            inp.x.grad = None
            loss = loss_fn(inp.x, inp.labels, c)
            loss.backward()
            return loss.detach()

        return step

    return setup


def _fastmine(x, labels, c):
    import fastmine

    return fastmine.centroid_triplet_loss(x, labels, c)


_compiled_eager = None


def _compile_setup(inp: Inputs):
    global _compiled_eager
    if _compiled_eager is None:
        _compiled_eager = torch.compile(eager_centroid, dynamic=False)
    return _step(_compiled_eager)(inp)


OP = OpBench(
    name="centroid",
    order=11,
    description="centroid triplet bound (C = B / 4 random centroids, mean), euclidean; "
    "forward + backward to the embeddings",
    methods=[
        Method("fastmine", _step(_fastmine)),
        Method("eager", _step(eager_centroid)),
        Method("compile", _compile_setup),
    ],
    sweep_sizes={"cpu": "1024x128", "cuda": "4096x128"},
    quick_size={"cpu": "1024x128", "cuda": "4096x128"},
)
