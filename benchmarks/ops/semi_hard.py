"""Semi-hard triplet loss (FaceNet / TF-Addons' triplet_semihard_loss): fastmine
against vectorized PyTorch versions of it."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..baselines import compiled, matmul_allocating, matmul_floor
from ..registry import Inputs, Method, OpBench, Target, Unavailable, fwd_bwd

MARGIN = 0.3  # fastmine's default

# Anchors per chunk of the TF-style (anchors, positives, negatives) mask: bounds the
# temporaries at ~64M elements (TF materialises all B^3 of them at once: 34 GB at B = 2048).
_CUBE_ELEMS = 1 << 26
# Above this batch the cube's B^3 elements take minutes per call even chunked (about 26 s at
# B = 2048 on 2 cores, eight times that at 4096): the TF-style rows are skipped there, the
# sorted one still runs.
_CUBE_MAX_B = 2048


def _fastmine(inp: Inputs):
    import fastmine

    return fwd_bwd(lambda x, y: fastmine.semi_hard_triplet_loss(x, y, margin=MARGIN), inp)


def _cube_fits(inp: Inputs) -> None:
    if inp.x.shape[0] > _CUBE_MAX_B:
        raise Unavailable(f"B^3 = {inp.x.shape[0] ** 3:.2g} mask elements: too slow above B = {_CUBE_MAX_B}")


def _eager(inp: Inputs):
    _cube_fits(inp)
    return fwd_bwd(eager_semi_hard, inp)


def _compiled():
    method = compiled("compile", eager_semi_hard)
    setup = method.setup

    def guarded(inp: Inputs):
        _cube_fits(inp)
        return setup(inp)

    method.setup = guarded
    return method


def _pair_masks(labels: torch.Tensor):
    b = labels.shape[0]
    same = labels[:, None] == labels[None, :]
    neg = ~same
    eye = torch.eye(b, dtype=torch.bool, device=labels.device)
    pos = same & ~eye & neg.any(1, keepdim=True)  # pairs whose anchor has a negative
    return pos, neg


def _mining_precision(x: torch.Tensor) -> torch.Tensor:
    """Half inputs upcast to float32 (a differentiable copy): which negative is semi-hard
    turns on distance differences below bfloat16's resolution, so mining in half precision
    picks other triplets (12% off fastmine's loss, seen at B = 256), and fastmine, too,
    computes the distances of half inputs in float32."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def eager_semi_hard(x: torch.Tensor, labels: torch.Tensor, margin: float = MARGIN):
    """TF-Addons' triplet_semihard_loss written in PyTorch eager: for each (anchor, positive)
    the mask of negatives farther than the positive, its masked minimum (else the masked
    maximum over the negatives: TF's fallback), hinge, mean over positive pairs. TF tiles a
    (B*B, B) mask; here it is the same mask chunked over anchors so that it fits in memory,
    and the choice is made without autograd (the graph would keep every chunk of the cube:
    ~40 GB at B = 2048), the chosen distances then gathered with gradient."""
    x = _mining_precision(x)
    dist = torch.cdist(x, x)
    pos, neg = _pair_masks(labels)
    with torch.no_grad():
        d_all = dist.detach()
        inf = torch.tensor(float("inf"), dtype=dist.dtype, device=dist.device)
        inside = torch.where(neg, d_all, -inf).argmax(1, keepdim=True)  # the easiest negative
        step = max(1, _CUBE_ELEMS // (dist.shape[0] * dist.shape[1]))
        rows = []
        for a0 in range(0, dist.shape[0], step):
            d = d_all[a0 : a0 + step]  # (c, B)
            m = neg[a0 : a0 + step, None, :] & (d[:, None, :] > d[:, :, None])  # [a, p, n]
            outside = torch.where(m, d[:, None, :], inf).argmin(2)
            rows.append(torch.where(m.any(2), outside, inside[a0 : a0 + step]))
        chosen = torch.cat(rows)  # (B, B): the negative of each (anchor, positive)
    semi = dist.gather(1, chosen)
    loss = F.relu(dist - semi + margin)
    return (loss * pos).sum() / pos.sum().clamp(min=1)


def eager_semi_hard_sorted(x: torch.Tensor, labels: torch.Tensor, margin: float = MARGIN):
    """A smarter vectorized version (O(B^2 log B), not B^3): each row's negative distances
    sorted once, every positive's distance binary-searched among them (searchsorted)."""
    x = _mining_precision(x)
    dist = torch.cdist(x, x)
    pos, neg = _pair_masks(labels)
    inf = torch.tensor(float("inf"), dtype=dist.dtype, device=dist.device)
    sorted_neg = torch.where(neg, dist, inf).sort(1).values  # differentiable values
    at = torch.searchsorted(sorted_neg.detach().contiguous(), dist.detach().contiguous(), right=True)
    has = at < neg.sum(1, keepdim=True)
    outside = sorted_neg.gather(1, at.clamp(max=dist.shape[1] - 1))
    inside = torch.where(neg, dist, -inf).amax(1, keepdim=True)
    semi = torch.where(has, outside, inside)
    loss = F.relu(dist - semi + margin)
    return (loss * pos).sum() / pos.sum().clamp(min=1)


OP = OpBench(
    name="semi_hard",
    order=3,
    description="semi-hard triplet loss, euclidean, margin 0.3, mean over positive pairs; forward + backward",
    methods=[
        Method("fastmine", _fastmine),
        Method("eager", _eager),
        _compiled(),
        Method("eager-sort", lambda inp: fwd_bwd(eager_semi_hard_sorted, inp)),
        matmul_floor(),
        matmul_allocating(),
    ],
    sweep_sizes={"cpu": "2048x128,4096x128", "cuda": "2048x128,8192x128"},
    # Quick: where eager's B x B x B mask takes well under a second a call on 2 cores.
    quick_size={"cpu": "512x128", "cuda": "2048x128"},
    targets=[
        Target("cpu", 2048, 128, "eager", 10.0),
        Target("cpu", 2048, 128, "compile", 5.0),
        Target("cpu", 4096, 128, "floor", 1.5),
        *[Target("cuda", 16384, d, "floor", 2.0, dtype=dt) for d in (128, 512) for dt in ("float32", "bfloat16")],
    ],
)
