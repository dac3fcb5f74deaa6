"""A small workload that calls every fastmine op, forward and backward, for the memory and
race checkers (compute-sanitizer memcheck / racecheck / initcheck) to watch.

    python scripts/gpu_sanitize.py                     # CUDA, float32/64, float16, bfloat16
    compute-sanitizer --tool memcheck --error-exitcode 9 python scripts/gpu_sanitize.py
    python scripts/gpu_sanitize.py --device cpu        # the same calls on the CPU kernels

Every call goes through the public API (fastmine.*), so each op is reached the way users
reach it, backward included. Sizes are odd on purpose: B, M and D are multiples of no tile
(64-row tiles, 8/16-wide k-slices, 4-wide vector loads), so every ragged edge is read.
The device is synchronised after each call, so a fault is reported at the call that made
it. One line per call; the last lines say which torch.ops.fastmine ops the calls reached
(recorded under a dispatch mode in a second pass over one dtype, so that the checked pass
runs the ordinary dispatch path; --no-coverage skips it, as a checker needs only the first)
and exit 1 if a call failed or an op was never reached.

--large adds one case per all-pairs op at a batch large enough for the multi-panel and
multi-chunk launch plans (B * M > 2^25 entries; batch-all with few classes, so its
positive lists need several chunks): slower under a checker, so a separate stage.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
import zlib

import torch
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import fastmine  # noqa: E402

DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}
B, M, D = 203, 131, 141  # batch, second distance operand, features: multiples of no tile
C = 7  # focal-loss classes
METRICS = ("euclidean", "sqeuclidean", "cosine")


def schema_ops():
    """Every op of the fastmine library, read off csrc/ops.cpp's schemas."""
    with open(os.path.join(ROOT, "csrc", "ops.cpp")) as f:
        return sorted(set(re.findall(r'm\.def\(\s*"([A-Za-z0-9_]+)\(', f.read())))


class Reached(TorchDispatchMode):
    """Records the fastmine ops that reach the dispatcher (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.ops = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        ns, _, name = func.name().partition("::")
        if ns == "fastmine":
            self.ops.add(name.split(".")[0])
        return func(*args, **(kwargs or {}))


def _emb(b, d, dtype, dev, g, grad=True):
    x = torch.randn(b, d, generator=g, dtype=torch.float32).to(device=dev, dtype=dtype)
    return x.requires_grad_(grad)


def _labels(b, classes, dev, g):
    lab = torch.arange(b) % classes  # every class has a positive pair and a negative
    return lab[torch.randperm(b, generator=g)].to(dev)


def _backward(out):
    """Backward of a loss (0-d) or of a per-element loss (its sum with random weights)."""
    if out.dim() > 0:
        out = (out * torch.rand_like(out)).sum()
    out.backward()


def cases(large: bool):
    """(name, call(dtype, device, generator)) pairs; each call runs forward and backward."""
    out = []

    def add(name):
        def deco(fn):
            out.append((name, fn))
            return fn

        return deco

    for metric in METRICS:

        @add(f"pairwise_distance {metric}")
        def _(dt, dev, g, metric=metric):
            x, y = _emb(B, D, dt, dev, g), _emb(M, D, dt, dev, g)
            _backward(fastmine.pairwise_distance(x, y, metric=metric))

        @add(f"batch_hard {metric}")
        def _(dt, dev, g, metric=metric):
            x = _emb(B, D, dt, dev, g)
            _backward(fastmine.batch_hard_triplet_loss(x, _labels(B, 29, dev, g), metric=metric))

        @add(f"batch_all {metric}")
        def _(dt, dev, g, metric=metric):
            x = _emb(B, D, dt, dev, g)
            _backward(fastmine.batch_all_triplet_loss(x, _labels(B, 29, dev, g), metric=metric))

        @add(f"contrastive {metric}")
        def _(dt, dev, g, metric=metric):
            x = _emb(B, D, dt, dev, g)
            _backward(fastmine.contrastive_loss(x, _labels(B, 29, dev, g), metric=metric))

        @add(f"semi_hard {metric}")
        def _(dt, dev, g, metric=metric):
            x = _emb(B, D, dt, dev, g)
            _backward(fastmine.semi_hard_triplet_loss(x, _labels(B, 29, dev, g), metric=metric))

    @add("batch_hard soft, reduction none")
    def _(dt, dev, g):
        x = _emb(B, D, dt, dev, g)
        _backward(fastmine.batch_hard_triplet_loss(x, _labels(B, 29, dev, g), soft=True, reduction="none"))

    @add("batch_all soft")
    def _(dt, dev, g):
        x = _emb(B, D, dt, dev, g)
        _backward(fastmine.batch_all_triplet_loss(x, _labels(B, 29, dev, g), soft=True))

    @add("contrastive mean_nonzero (separate backward)")
    def _(dt, dev, g):
        x = _emb(B, D, dt, dev, g)
        _backward(fastmine.contrastive_loss(x, _labels(B, 29, dev, g), reduction="mean_nonzero"))

    # A reference set (a memory bank of B + 40 rows; the batch is rows [17, 17 + B) of it), with
    # gradients flowing into both sides.
    def ref_set(dt, dev, g):
        r = _emb(B + 40, D, dt, dev, g)
        rl = _labels(B + 40, 31, dev, g)
        x = r.detach()[17 : 17 + B].clone().requires_grad_(True)
        return x, rl[17 : 17 + B].clone(), r, rl, 17

    for loss in ("batch_hard_triplet_loss", "batch_all_triplet_loss", "contrastive_loss", "semi_hard_triplet_loss"):

        @add(f"{loss.replace('_triplet_loss', '').replace('_loss', '')} reference set")
        def _(dt, dev, g, loss=loss):
            x, lab, r, rl, off = ref_set(dt, dev, g)
            _backward(getattr(fastmine, loss)(x, lab, ref_embeddings=r, ref_labels=rl, self_offset=off))

    @add("mine_batch_hard + mine_semi_hard + mine_triplets (reference set)")
    def _(dt, dev, g):
        x, lab, r, rl, off = ref_set(dt, dev, g)
        kw = dict(ref_embeddings=r, ref_labels=rl, self_offset=off)
        fastmine.mine_batch_hard(x, lab, **kw)
        fastmine.mine_semi_hard(x, lab, **kw)
        for kind in ("all", "hard", "semihard", "easy"):
            fastmine.mine_triplets(x, lab, type=kind, **kw)
        fastmine.mine_triplets(x, lab, metric="cosine")

    @add("sigmoid_focal (none, mean) + focal_star")
    def _(dt, dev, g):
        z = _emb(B, C, dt, dev, g)
        t = (torch.rand(B, C, generator=g) < 0.3).to(device=dev, dtype=dt)
        _backward(fastmine.sigmoid_focal_loss(z, t))
        _backward(fastmine.sigmoid_focal_loss(z, t, reduction="mean"))
        _backward(fastmine.focal_star_loss(z, t))
        _backward(fastmine.focal_star_loss(z, t, reduction="none"))

    @add("softmax_focal")
    def _(dt, dev, g):
        z = _emb(B, C, dt, dev, g)
        y = torch.randint(0, C, (B,), generator=g).to(dev)
        _backward(fastmine.softmax_focal_loss(z, y, alpha=0.25))
        _backward(fastmine.softmax_focal_loss(z, y, reduction="none"))

    @add("centroid_triplet (centroids with gradient)")
    def _(dt, dev, g):
        x = _emb(B, D, dt, dev, g)
        cent = _emb(11, D, dt, dev, g)
        _backward(fastmine.centroid_triplet_loss(x, _labels(B, 11, dev, g), cent))

    if large:
        bl, dl = 5803, 37  # 5803^2 > 2^25: two backward panels; 3 classes: batch-all chunks
        for loss in ("batch_hard_triplet_loss", "batch_all_triplet_loss", "contrastive_loss", "semi_hard_triplet_loss"):

            @add(f"large B={bl} D={dl} {loss}")
            def _(dt, dev, g, loss=loss):
                x = _emb(bl, dl, dt, dev, g)
                _backward(getattr(fastmine, loss)(x, _labels(bl, 3, dev, g)))

    return out


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def run(todo, dtypes, dev, quiet=False):
    """Runs every case in every dtype; returns the failures."""
    failures = []
    for dname in dtypes:
        for name, call in todo:
            g = torch.Generator().manual_seed(zlib.crc32(f"{name} {dname}".encode()))
            t0 = time.perf_counter()
            try:
                call(DTYPES[dname], dev, g)
                sync(dev)
                status = "ok"
            except Exception as e:  # keep going: one report lists every failing call
                status = f"FAIL {type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}"
                failures.append(f"{name} {dname}: {status}")
            if not quiet:
                print(
                    f"{status[:4]:4s} {dname:8s} {name}  ({(time.perf_counter() - t0) * 1e3:.0f} ms)"
                    + ("" if status == "ok" else "\n     " + status),
                    flush=True,
                )
    return failures


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--dtypes", default=",".join(DTYPES), help="comma-separated (default all four)")
    p.add_argument("--large", action="store_true", help="add the multi-panel / multi-chunk cases")
    p.add_argument(
        "--no-coverage", action="store_true", help="skip the first pass that records which ops the calls reach"
    )
    args = p.parse_args(argv)
    if args.device == "cuda" and not fastmine.CUDA_AVAILABLE:
        sys.exit(
            "--device cuda: no GPU, or fastmine's CUDA module is not loaded "
            f"(torch.cuda.is_available() = {torch.cuda.is_available()})"
        )
    dev = torch.device(args.device)
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    if not dtypes or any(d not in DTYPES for d in dtypes):
        sys.exit(f"--dtypes {args.dtypes}: expected some of {', '.join(DTYPES)}")
    todo = cases(args.large)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    print(
        f"fastmine {fastmine.__version__}, torch {torch.__version__}, {name}; "
        f"B={B} M={M} D={D}; {len(todo)} cases x {len(dtypes)} dtypes",
        flush=True,
    )

    t0 = time.perf_counter()
    failures = run(todo, dtypes, dev)
    print(f"checked pass: {time.perf_counter() - t0:.1f} s", flush=True)
    if not args.no_coverage:
        mode = Reached()
        with mode:
            run(todo, dtypes[:1], dev, quiet=True)
        sync(dev)
        missing = [op for op in schema_ops() if op not in mode.ops]
        print(f"ops reached: {len(mode.ops)} of {len(schema_ops())}: {', '.join(sorted(mode.ops))}")
        if missing:
            failures.append(f"ops never reached: {', '.join(missing)}")
    for f in failures:
        print(f"FAILED: {f}")
    print(f"gpu_sanitize: {len(failures)} failure(s)" if failures else "gpu_sanitize: all ok")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
