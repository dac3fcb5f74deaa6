"""The kernels Nsight Compute should look at: fastmine's batch-hard forward + backward and
cuBLAS's X @ X.T at the same size and precision, each called once inside a profiler range.

    ncu --clock-control none --profile-from-start off --section SpeedOfLight \
        -o bh python scripts/ncu_batch_hard.py --sizes 16384x128,16384x512

Warm-up calls run outside the range (module load, cuBLAS handle and workspace, the
allocator's first segments), so the report holds only the steady-state kernels, in the
order: for each size and dtype, batch-hard forward, its backward, then the matmul. An NVTX
range names each group in the report. Runs without ncu too (the range is then a no-op).
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import fastmine  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="16384x128,16384x512")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    args = p.parse_args(argv)
    dev = torch.device(args.device)
    on_gpu = dev.type == "cuda"
    g = torch.Generator().manual_seed(0)
    work = []
    for size in args.sizes.split(","):
        b, d = (int(v) for v in size.lower().split("x"))
        labels = (torch.arange(b) // 4)[torch.randperm(b, generator=g)].to(dev)
        for name in args.dtypes.split(","):
            x = torch.randn(b, d, generator=g).to(device=dev, dtype=DTYPES[name]).requires_grad_()
            work.append((f"{b}x{d} {name}", x, labels))

    def step(x, labels):
        x.grad = None
        fastmine.batch_hard_triplet_loss(x, labels).backward()
        with torch.no_grad():
            x @ x.T

    for _, x, labels in work:  # warm-up, outside the profiled range
        step(x, labels)
    if on_gpu:
        torch.cuda.synchronize()
        torch.cuda.profiler.start()
    for tag, x, labels in work:
        if on_gpu:
            torch.cuda.nvtx.range_push(tag)
        step(x, labels)
        if on_gpu:
            torch.cuda.synchronize()
            torch.cuda.nvtx.range_pop()
    if on_gpu:
        torch.cuda.profiler.stop()
    print("profiled: " + ", ".join(tag for tag, _, _ in work))


if __name__ == "__main__":
    main()
