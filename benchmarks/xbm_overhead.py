"""Per-step cost of fastmine.CrossBatchMemory at a large memory (default 65536 x 512).

    python -m benchmarks.xbm_overhead [--size 65536] [--dim 512] [--batch 256] [--repeats 5]

Times forward + backward of one training step's loss, interleaving the three methods each
repeat and keeping each one's fastest (robust on a shared machine), for:
  xbm      CrossBatchMemory(BatchHardTripletLoss): ring write + loss against the ring
  op       the same loss called directly on a ready reference set of the same size (the
           floor: what mining against that many embeddings costs anyway)
  concat   what a concatenating memory does: torch.cat([batch, memory]) every step, then
           the same loss
so ``xbm - op`` is the memory's own overhead per step.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import fastmine
import fastmine.nn


def _time_interleaved(fns, repeats):
    """{name: (min, median)} seconds, the methods run in turn each repeat."""
    for fn in fns.values():
        fn()  # warm-up
    out = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            out[name].append(time.perf_counter() - t0)
    return {name: (min(t), statistics.median(t)) for name, t in out.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=65536)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    b, d, m = args.batch, args.dim, args.size
    g = torch.Generator().manual_seed(0)
    loss_mod = fastmine.nn.BatchHardTripletLoss()
    xbm = fastmine.CrossBatchMemory(loss_mod, m, d)
    # steady state: a full ring, the pointer in the middle (set directly: filling it through
    # forward would take m / b loss evaluations)
    xbm.embedding_memory.copy_(torch.randn(m, d, generator=g))
    xbm.label_memory.copy_(torch.randint(0, 1000, (m,), generator=g))
    xbm.filled, xbm.ptr = m, (m // 2) // b * b
    mem = torch.randn(m, d, generator=g)
    mem_labels = torch.randint(0, 1000, (m,), generator=g)
    batch = torch.randn(b, d, generator=g)
    labels = torch.randint(0, 1000, (b,), generator=g)

    def step_xbm():
        x = batch.clone().requires_grad_(True)
        xbm(x, labels).backward()

    def step_op():
        x = batch.clone().requires_grad_(True)
        mem[:b] = batch  # the batch inside the reference set, as in the ring
        loss_mod(x, labels, ref_embeddings=mem, ref_labels=mem_labels, self_offset=0).backward()

    def step_concat():
        x = batch.clone().requires_grad_(True)
        ref = torch.cat([x.detach(), mem[: m - b]])
        ref_labels = torch.cat([labels, mem_labels[: m - b]])
        loss_mod(x, labels, ref_embeddings=ref, ref_labels=ref_labels, self_offset=0).backward()

    stats = _time_interleaved({"xbm": step_xbm, "op": step_op, "concat": step_concat}, args.repeats)
    print(
        f"memory {m} x {d}, batch {b}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {args.repeats} repeats"
    )
    for name, (best, med) in stats.items():
        print(f"  {name:7s} min {best * 1e3:8.1f} ms, median {med * 1e3:8.1f} ms / step (forward + backward)")
    times = {name: best for name, (best, _) in stats.items()}
    print(
        f"  XBM overhead over the bare op (min): {(times['xbm'] - times['op']) * 1e3:+.1f} ms; "
        f"a concatenating memory adds {(times['concat'] - times['op']) * 1e3:+.1f} ms"
    )
    return times


if __name__ == "__main__":
    main()
