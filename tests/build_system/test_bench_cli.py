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
        assert (args.repeats, args.warmup, args.max_seconds) == (10, 2, 20.0)
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
            "fastmine": {"status": "ok", "median_ms": 38.8},
            "eager": {"status": "ok", "median_ms": 360.0},
            "pml": {"status": "oom"},
            "matmul floor": {"status": "ok", "median_ms": 45.9},
        },
    }
    line = report.summary_table([(op, size)]).splitlines()[-1]
    assert line == (
        "| batch_hard | 4096 × 128 | 38.8 | eager 360 (9.3× slower); pml out of memory; "
        "matmul floor 45.9 (fastmine 0.85×) |"
    )


def _cpu():
    import torch

    return torch.device("cpu")
