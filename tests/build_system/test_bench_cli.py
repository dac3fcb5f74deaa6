"""The benchmark command's runs: the default is the quick one (one size per op, no
torch.compile, output in an ignored folder), the committed results change only on purpose."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from benchmarks import __main__ as bench
from benchmarks import report
from benchmarks.registry import load_ops

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _args(*argv):
    args = bench.parse_args(list(argv))
    bench.run_defaults(args, "cpu")
    return args


def test_default_is_the_quick_run_one_size_per_op():
    args = _args()
    assert args.quick and args.no_compile
    assert (args.repeats, args.warmup, args.max_seconds) == (3, 1, 2.0)
    for op in load_ops().values():
        sizes = bench.parse_sizes(bench.op_sizes(op, args, _cpu()))
        assert len(sizes) == 1, op.name
        assert op.quick_size.get("cpu"), f"{op.name} has no quick CPU size"


def test_sweep_and_sizes_keep_the_thorough_settings():
    for argv in (["--sweep"], ["--sizes", "64x8"]):
        args = _args(*argv)
        assert not args.quick and not args.no_compile
        assert (args.repeats, args.warmup, args.max_seconds) == (30, 2, 20.0)
    ops = load_ops()
    assert bench.op_sizes(ops["batch_all"], _args("--sweep"), _cpu()) == ops["batch_all"].sweep_sizes["cpu"]
    assert bench.op_sizes(ops["batch_all"], _args("--sizes", "64x8"), _cpu()) == "64x8"
    assert _args("--compile").no_compile is False
    assert _args("--sweep", "--no-compile").no_compile is True


def test_default_output_is_ignored_by_git_and_results_are_not_the_default():
    out = bench.parse_args([]).out
    assert os.path.realpath(out) == os.path.join(os.path.realpath(ROOT), "bench_out")
    if not os.path.isdir(os.path.join(ROOT, ".git")) and not os.path.isfile(os.path.join(ROOT, ".git")):
        pytest.skip("not a git checkout")
    probe = os.path.join("bench_out", "batch_hard_cpu_float32.json")
    ignored = subprocess.run(["git", "check-ignore", "-q", probe], cwd=ROOT)
    assert ignored.returncode == 0, "bench_out/ must be ignored by git"
    kept = subprocess.run(["git", "check-ignore", "-q", "benchmarks/results/batch_hard_cpu_float32.json"], cwd=ROOT)
    assert kept.returncode == 1, "the committed results must stay tracked"


def test_a_run_writes_json_and_the_summary_where_told(tmp_path, capsys):
    rc = bench.main(
        [
            "--device",
            "cpu",
            "--op",
            "focal",
            "--sizes",
            "32x8",
            "--repeats",
            "1",
            "--warmup",
            "1",
            "--no-compile",
            "--no-plot",
            "--out",
            str(tmp_path),
        ]
    )
    assert rc == 0
    record = json.loads((tmp_path / "focal_cpu_float32.json").read_text())
    assert record["config"]["run"] == "sweep" and record["config"]["compile"] is False
    assert record["results"][0]["methods"]["fastmine"]["status"] == "ok"
    assert "| 32 × 8 | fastmine |" in capsys.readouterr().out


def test_summary_table_states_each_method_against_fastmine():
    op = load_ops()["batch_hard"]
    size = {
        "B": 4096,
        "D": 128,
        "speedup": {"eager": 9.3},
        "x_floor": 0.85,
        "methods": {
            "fastmine": {"status": "ok", "min_ms": 38.8, "median_ms": 41.0},
            "eager": {"status": "ok", "min_ms": 360.0, "median_ms": 390.0},
            "pml": {"status": "oom"},
            "matmul floor": {"status": "ok", "min_ms": 45.9, "median_ms": 47.0},
            "matmul, allocating": {"status": "ok", "min_ms": 60.2, "median_ms": 70.0},
        },
    }
    line = report.summary_table([(op, size)]).splitlines()[-1]
    assert line == (
        "| batch_hard | 4096 × 128 | 38.8 | eager 360 (9.3× slower); pml out of memory; "
        "matmul floor 45.9 (fastmine 0.85×); matmul, allocating 60.2 |"
    )


def _measured(**times):
    """A size result as run_size leaves it: per method its calls' times (ms)."""
    methods = {
        name: {"status": "ok", "times_ms": ts, "min_ms": min(ts), "median_ms": sorted(ts)[len(ts) // 2]}
        for name, ts in times.items()
    }
    return {"B": 4096, "D": 128, "methods": methods}


def test_ratios_come_from_the_minima_and_skip_the_allocating_product():
    op = load_ops()["batch_hard"]
    s = _measured(
        fastmine=[40.0, 80.0, 90.0],
        eager=[400.0, 410.0, 900.0],
        **{"matmul floor": [50.0, 52.0, 120.0], "matmul, allocating": [70.0, 71.0, 72.0]},
    )
    bench.ratios(op, s)
    assert s["x_floor"] == pytest.approx(40.0 / 50.0)
    assert s["speedup"] == {"eager": pytest.approx(10.0)}
    assert s["x_floor_median"] == pytest.approx(80.0 / 52.0)
    assert s["speedup_median"] == {"eager": pytest.approx(410.0 / 80.0)}


def test_speed_verdicts_are_withheld_on_a_busy_machine():
    op = load_ops()["batch_hard"]
    s = _measured(fastmine=[40.0], eager=[400.0], compile=[150.0], **{"matmul floor": [50.0]})
    s["methods"]["fastmine"]["peak_extra_mib"] = 10.0
    bench.ratios(op, s)
    cpu_targets = [t for t in op.targets if t.device == "cpu" and (t.B, t.D) == (4096, 128)]
    assert cpu_targets, "batch_hard has CPU targets at 4096 x 128"
    quiet = report.evaluate_targets(op, "cpu", "float32", [s], busy_pct=3.0)
    busy = report.evaluate_targets(op, "cpu", "float32", [s], busy_pct=35.0)
    judged = [v for v in quiet if v["device"] == "cpu" and (v["B"], v["D"]) == (4096, 128)]
    assert judged and all(v["status"] in ("met", "missed") for v in judged)
    for v in busy:
        if v["device"] == "cpu" and (v["B"], v["D"]) == (4096, 128):
            if v["baseline"] == "memory":
                assert v["status"] in ("met", "missed")
            else:
                assert v["status"] == "not judged" and "machine busy (other processes used 35%" in v["text"]


def _cpu():
    import torch

    return torch.device("cpu")
