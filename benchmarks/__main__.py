"""python -m benchmarks: time fastmine against its baselines, print a table, write JSON + PNG.

Three runs:
  (default)  quick: every op once, at one telling size, 3 timed calls, no torch.compile
             (its first call compiles for 10-30 s per op); about two minutes on 2 cores.
  --sweep    each op at the sizes of the committed reference results (benchmarks/results/),
             30 timed calls (CPU; 50 on CUDA), with torch.compile.
  --full     the report grid (B up to 64K, D up to 2048, float32 and bfloat16).
Output goes to bench_out/ (ignored by git); refresh the committed results on purpose with
``--sweep --out benchmarks/results``.

Each size builds one set of inputs that every method sees. Per method: setup, warm-up
calls (the first one compiles under torch.compile and is excluded), one call measured for
peak memory. Then the timed calls, methods taking turns; the median is reported.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
import traceback

import torch

from . import memory, plot, report, sysinfo, timing
from .registry import Method, Inputs, Unavailable, load_ops, pk_inputs

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}
# CPU: the target size, plus a smaller batch; both fit the ~5 min budget on 2 cores.
# CUDA: the two GPU target sizes.
DEFAULT_SIZES = {"cpu": "4096x128,1024x128", "cuda": "4096x128,4096x512"}
# Where results go unless --out says otherwise: an ignored folder at the repository root, so
# that a newcomer's run never rewrites the committed reference results.
DEFAULT_OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench_out")
# Per-run defaults: (timed calls, warm-up calls, --max-seconds, torch.compile baseline).
QUICK = {"cpu": (3, 1, 2.0, False), "cuda": (10, 2, 2.0, False)}
# 30 CPU calls: with 10, two quiet runs' minima of the same call were 12 % apart on 2 cores;
# with 30 they agree within 5 % (docs/performance.md says when this was checked).
THOROUGH = {"cpu": (30, 2, 20.0, True), "cuda": (50, 5, 20.0, True)}
# --full (the report grid): B in {1K, 4K, 16K, 64K} x D in {128, 512, 2048} x {fp32, bf16}
# on CUDA. On the CPU the grid stops at B = 4K, D = 512 (B = 16K takes minutes per method on
# a few cores, 64K needs 16 GiB for one B x B float32 matrix of the eager baseline).
FULL_SIZES = {
    "cuda": ",".join(f"{b}x{d}" for b in (1024, 4096, 16384, 65536) for d in (128, 512, 2048)),
    "cpu": ",".join(f"{b}x{d}" for b in (1024, 4096) for d in (128, 512)),
}
FULL_DTYPES = "float32,bfloat16"


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto = cuda when available (default)"
    )
    p.add_argument("--op", default="all", help="which op (benchmarks/ops/*.py), or all (default) for every op")
    p.add_argument(
        "--sizes",
        help="comma-separated BxD, e.g. 4096x128,1024x128, for every op "
        "(with --sweep's repeats and torch.compile; default: each op's own sizes)",
    )
    p.add_argument(
        "--sweep",
        action="store_true",
        help="each op at the sizes of the committed reference results, 30 timed "
        "calls, with torch.compile (the default is the quick run: one size per op)",
    )
    p.add_argument(
        "--classes-per-batch", type=int, metavar="P", help="P classes per batch (overrides --samples-per-class)"
    )
    p.add_argument(
        "--samples-per-class", type=int, default=4, metavar="K", help="K samples per class, P = B / K (default 4)"
    )
    p.add_argument(
        "--dtype", default="float32", help=f"one of {', '.join(DTYPES)}, or a comma-separated list (default float32)"
    )
    p.add_argument(
        "--full",
        action="store_true",
        help="the report grid: every op at B in 1K..64K x D in 128..2048 x "
        f"{{float32, bfloat16}} on CUDA (CPU: {FULL_SIZES['cpu']}); --sizes and "
        "--dtype still override",
    )
    p.add_argument(
        "--repeats",
        type=int,
        help="timed calls per method (default: quick run cpu 3, cuda 10; otherwise cpu 10, cuda 50)",
    )
    p.add_argument(
        "--warmup", type=int, help="untimed calls first (default: quick run cpu 1, cuda 2; otherwise cpu 2, cuda 5)"
    )
    p.add_argument(
        "--max-seconds",
        type=float,
        help="stop a method's repeats after this long, at least 3 kept (default: quick run 2, otherwise 20)",
    )
    p.add_argument(
        "--out",
        default=DEFAULT_OUT,
        help="directory for <op>_<device>_<dtype>.json/.png (default bench_out/, "
        "ignored by git; --out benchmarks/results refreshes the committed results)",
    )
    compile_flags = p.add_mutually_exclusive_group()
    compile_flags.add_argument("--compile", action="store_true", help="add the torch.compile baseline to the quick run")
    compile_flags.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def progress(msg: str, end: str = "\n") -> None:
    print(msg, end=end, file=sys.stderr, flush=True)


def parse_sizes(text: str):
    try:
        sizes = [tuple(int(v) for v in item.lower().strip().split("x")) for item in text.split(",")]
        if all(len(s) == 2 and min(s) > 0 for s in sizes):
            return sizes
    except ValueError:
        pass
    sys.exit(f"--sizes {text!r}: expected comma-separated BxD, e.g. 4096x128,1024x128")


def is_oom(e: Exception) -> bool:
    """Out of memory (CUDA's OutOfMemoryError, or a CPU allocation failure): a result of the
    size, recorded as such, not a crash of the run."""
    if isinstance(e, getattr(torch, "OutOfMemoryError", ())) or isinstance(e, MemoryError):
        return True
    msg = str(e).lower()
    return isinstance(e, RuntimeError) and (
        "out of memory" in msg or "can't allocate memory" in msg or "not enough memory" in msg
    )


def _failure(r: dict, e: Exception) -> dict:
    if is_oom(e):
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # what the failed call cached must not crowd the next
        return {**r, "status": "oom", "reason": "out of memory"}
    if not isinstance(e, Unavailable):  # unexpected: show where, but keep the run going
        traceback.print_exc(limit=3, file=sys.stderr)
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    reason = msg if isinstance(e, Unavailable) else f"{type(e).__name__}: {msg}"
    return {**r, "status": "n/a", "reason": reason[:300]}


def prepare(m: Method, inp: Inputs, device, args):
    """Set up, warm up (the first call compiles, for torch.compile) and measure peak
    memory. Returns (result dict, step or None when the method is n/a)."""
    r = {"status": "ok", "forward_only": m.forward_only, "reason": None}
    try:
        step = m.setup(inp)
        r["first_call_s"], loss = timing.timed_call(step, device)
        for _ in range(args.warmup - 1):
            loss = step()
        inp.x.grad = None  # freed now, not inside the measured call
        r["peak_extra_mib"], r["memory_method"] = memory.peak_extra_mib(step, device)
    except Exception as e:  # a baseline failing must not take the whole run down
        step = loss = None  # drop what the failed call holds before the next method
        return _failure(r, e), None
    finally:
        inp.x.grad = None
    r["loss"] = None if loss is None else float(loss.float())
    return r, step


def run_size(methods, inp: Inputs, device, args, counter) -> dict:
    B, D = inp.shape
    s = {"B": B, "D": D, "classes": inp.num_classes, "samples_per_class": inp.samples_per_class, "methods": {}}
    steps = {}
    for m in methods:
        counter[0] += 1
        progress(f"[{counter[0]}/{counter[1]}] {device.type} {args.dtype} B={B} D={D} {m.name} ...", end="")
        r, step = prepare(m, inp, device, args)
        s["methods"][m.name] = r
        if step is None:
            progress(f" n/a ({r['reason']})")
        else:
            steps[m.name] = step
            progress(f" warm ({r['first_call_s']:.2f} s first call), {r['peak_extra_mib'] or 0:.1f} MiB")
    progress(f"      timing {', '.join(steps)}: up to {args.repeats} interleaved rounds ...", end="")
    try:
        times = timing.time_interleaved(steps, device, args.repeats, args.max_seconds)
    except Exception as e:
        for name in steps:
            s["methods"][name] = _failure(s["methods"][name], e)
        times = {}
    finally:
        inp.x.grad = None
    for name, ts in times.items():
        r = s["methods"][name]
        r["times_ms"] = [t * 1e3 for t in ts]
        r["median_ms"] = timing.median(r["times_ms"])
        r["min_ms"] = min(r["times_ms"])  # the floor of the noise, beside the median
    progress(" " + ", ".join(f"{n} {s['methods'][n]['min_ms']:.3g} ms (min)" for n in times))
    return s


def check_losses(op, size_result: dict, dtype) -> list:
    """Every baseline must compute fastmine's loss; a mismatch means the timings compare
    different work, so it is reported loudly and fails the run."""
    rtol = 2e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-4
    methods = size_result["methods"]
    ref = methods.get(op.reference, {})
    bad = []
    for m in op.methods:
        r = methods.get(m.name)
        if not m.compare_loss or m.name == op.reference or not r or r["status"] != "ok":
            continue
        if ref.get("status") != "ok":
            r["loss_check"] = "not checked (fastmine n/a)"
            continue
        a, b = torch.tensor(r["loss"], dtype=torch.float64), torch.tensor(ref["loss"], dtype=torch.float64)
        if torch.allclose(a, b, rtol=rtol, atol=1e-6):
            r["loss_check"] = "ok"
        else:
            r["loss_check"] = f"MISMATCH: loss {r['loss']:.8g} vs fastmine {ref['loss']:.8g} (rtol {rtol:g})"
            bad.append(f"B={size_result['B']} D={size_result['D']} {m.name}: {r['loss_check']}")
    return bad


def ratios(op, size_result: dict) -> None:
    """Ratios to fastmine from the minima of the interleaved calls (a shared machine's load
    only ever adds time, so the minimum is the closest to the code's own cost); the same
    ratios from the medians go beside them."""
    methods = size_result["methods"]
    ref = methods.get(op.reference, {})
    size_result["speedup"], size_result["x_floor"] = {}, None
    size_result["speedup_median"], size_result["x_floor_median"] = {}, None
    if ref.get("status") != "ok":
        return
    for m in op.methods:
        r = methods.get(m.name)
        if m.name == op.reference or m.shown_only or not r or r["status"] != "ok":
            continue
        if m.is_floor:
            size_result["x_floor"] = ref["min_ms"] / r["min_ms"]
            size_result["x_floor_median"] = ref["median_ms"] / r["median_ms"]
        else:
            size_result["speedup"][m.name] = r["min_ms"] / ref["min_ms"]
            size_result["speedup_median"][m.name] = r["median_ms"] / ref["median_ms"]


def run_defaults(args, device_type: str) -> None:
    """Fills in what the command line left open: the quick run unless --sweep, --full or
    --sizes asks for more."""
    args.quick = not (args.sweep or args.full or args.sizes)
    repeats, warmup, max_seconds, with_compile = (QUICK if args.quick else THOROUGH)[device_type]
    args.repeats = args.repeats or repeats
    args.warmup = max(1, args.warmup or warmup)
    args.max_seconds = max_seconds if args.max_seconds is None else args.max_seconds
    args.no_compile = args.no_compile or not (with_compile or args.compile)
    if args.full:
        args.sizes = args.sizes or FULL_SIZES[device_type]
        args.dtype = FULL_DTYPES if args.dtype == "float32" else args.dtype


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: torch.cuda.is_available() is False")
    device = torch.device(args.device)
    run_defaults(args, device.type)
    dtype_names = [d.strip() for d in args.dtype.split(",") if d.strip()]
    unknown = [d for d in dtype_names if d not in DTYPES]
    if unknown or not dtype_names:
        sys.exit(f"--dtype {args.dtype}: expected some of {', '.join(DTYPES)}")

    ops = load_ops()
    if args.op != "all" and args.op not in ops:
        sys.exit(f"--op {args.op}: unknown; known: all, {', '.join(sorted(ops))}")
    chosen = sorted(ops.values(), key=lambda o: o.order) if args.op == "all" else [ops[args.op]]
    failed, summary = [], []
    started = time.perf_counter()
    for name in dtype_names:
        args.dtype = name
        for op in chosen:
            failed += run_op(op, args, device, DTYPES[name], summary)
    if len(summary) > 1:
        print(f"\n## Summary ({device.type}, {', '.join(dtype_names)}, {time.perf_counter() - started:.0f} s)\n")
        print(report.summary_table(summary))
        if args.no_compile:
            print(
                "\nNo torch.compile baseline in this run: add --compile (its first call "
                "compiles for 10-30 s per op), or run --sweep."
            )
        progress(f"results in {_shown(args.out)}")
    if failed:
        bar = "!" * 78
        progress(
            f"\n{bar}\nBENCHMARK INVALID: baselines do not compute fastmine's loss, or "
            f"fastmine failed:\n  " + "\n  ".join(failed) + f"\n{bar}"
        )
        return 1
    return 0


def op_sizes(op, args, device) -> str:
    """The "BxD,..." an op runs at: --sizes, else its quick size (the default run), else
    its sweep sizes, else the harness's."""
    if args.sizes:
        return args.sizes
    sweep = op.sweep_sizes.get(device.type) or DEFAULT_SIZES[device.type]
    if args.quick:
        return op.quick_size.get(device.type) or sweep.split(",")[0]
    return sweep


def _shown(path: str) -> str:
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def run_op(op, args, device, dtype, summary: list) -> list:
    """Benchmarks one op at its sizes; prints its table, writes its JSON and plot, appends
    (op, size result) rows to ``summary``. Returns the reasons the run is invalid (empty
    when it is fine)."""
    sizes = parse_sizes(op_sizes(op, args, device))
    methods = [m for m in op.methods if not (args.no_compile and m.name == "compile")]

    busy = sysinfo.cpu_busy_percent()
    if busy is not None and busy > 25:
        progress(f"warning: other processes keep {busy:.0f}% of the CPUs busy; timings will be disturbed")
    started = datetime.datetime.now(datetime.timezone.utc)
    load = sysinfo.OtherLoad()
    results, mismatches = [], []
    counter = [0, len(sizes) * len(methods)]
    for B, D in sizes:
        inp = (op.make_inputs or pk_inputs)(
            B,
            D,
            dtype,
            device,
            classes=args.classes_per_batch,
            samples_per_class=args.samples_per_class,
            seed=args.seed,
        )
        s = run_size(methods, inp, device, args, counter)
        mismatches += check_losses(op, s, dtype)
        ratios(op, s)
        results.append(s)
        del inp
    elapsed = (datetime.datetime.now(datetime.timezone.utc) - started).total_seconds()
    busy_during = load.percent()

    verdicts = report.evaluate_targets(op, device.type, args.dtype, results, busy_during)
    info = sysinfo.device_info(device)
    print(f"\n## fastmine benchmark: {op.description}\n")
    print(
        f"{info['device_name']} ({device.type}, {info['torch_threads']} torch threads), "
        f"{args.dtype}, torch {torch.__version__}; minimum and median of up to {args.repeats} "
        f"interleaved calls after {args.warmup} warm-up; labels {results[0]['classes']} classes × "
        f"{results[0]['samples_per_class']:g} at B={results[0]['B']}.\n"
    )
    if busy_during is not None and busy_during > 10:
        print(
            f"**Other processes used {busy_during:.0f}% of the CPUs during this run: "
            "the timings are disturbed and the speed targets are not judged; rerun on a quiet "
            "machine.**\n"
        )
    print(report.markdown_table(op, results))
    print()
    print(report.target_lines(op, verdicts))

    stem = os.path.join(args.out, f"{op.name}_{device.type}_{args.dtype}")
    record = {
        "op": op.name,
        "description": op.description,
        "timestamp": started.isoformat(),
        "elapsed_s": round(elapsed, 1),
        "cpu_busy_before_pct": busy,
        "cpu_busy_others_during_pct": busy_during,
        **info,
        "versions": sysinfo.versions(),
        "dtype": args.dtype,
        "sizes": [[B, D] for B, D in sizes],
        "config": {
            "run": "quick" if args.quick else "full" if args.full else "sweep",
            "repeats": args.repeats,
            "warmup": args.warmup,
            "max_seconds": args.max_seconds,
            "seed": args.seed,
            "classes_per_batch": args.classes_per_batch,
            "samples_per_class": args.samples_per_class,
            "compile": not args.no_compile,
        },
        "results": results,
        "targets": verdicts,
        "loss_mismatches": mismatches,
    }
    report.write_json(stem + ".json", record)
    written = [stem + ".json"]
    if not args.no_plot:
        why_not = plot.plot(stem + ".png", f"{op.name} fwd+bwd, {info['device_name']}, {args.dtype}", results)
        if why_not:
            progress(f"plot skipped: {why_not}")
        else:
            written.append(stem + ".png")
        if len({B for B, _ in sizes}) > 1:  # the speed-up against B
            why_not = plot.speedup(
                stem + "_speedup.png",
                f"{op.name} fwd+bwd speed-up of fastmine, {info['device_name']}, {args.dtype}",
                results,
                op.reference,
            )
            if why_not:
                progress(f"speed-up plot skipped: {why_not}")
            else:
                written.append(stem + "_speedup.png")
    progress(f"wrote {', '.join(_shown(w) for w in written)} ({elapsed:.0f} s)")
    summary += [(op, s) for s in results]

    failed = [f"{op.name}: {m}" for m in mismatches]
    if any(s["methods"].get(op.reference, {}).get("status") != "ok" for s in results):
        failed.append(f"{op.name}: fastmine itself did not run (n/a above)")
    return failed


if __name__ == "__main__":
    sys.exit(main())
