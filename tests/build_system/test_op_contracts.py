"""The C++ argument contracts of every raw op (``torch.ops.fastmine.*``): malformed calls are
refused with an error naming the op and the argument, valid and degenerate calls (B, M or D
= 0, strided tensors) run, and nothing crashes.

Every call runs in a worker process (``contract_worker.py``): a segmentation fault or an
abort there is reported as the failure of the case that caused it, and the worker is
restarted for the next case. The cases come from ``op_table.py``: every malformed variant
of every argument of every op at fixed sizes, plus hypothesis-drawn sizes, dtypes and
variants. Under ``make sanitize`` the same cases run against the sanitizer build, where an
out-of-bounds access is a report (and a failure) even when it does not crash.
"""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
import tempfile
from typing import Any, Dict, List

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fastmine
import op_table

SUPPORT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "support")
# Where this process imported fastmine from (the source tree, or the sanitizer build's copy
# under make sanitize): the worker imports the same one.
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(fastmine.__file__)))
DEVICES = ["cpu"] + (["cuda"] if fastmine.CUDA_AVAILABLE else [])
DEVICE_PARAMS = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
TIMEOUT_S = 300

# Sizes at which every variant is tried: B < M (a reference set with room for the anchors),
# B > M, and B = M (the batch against itself, where triangle applies).
SIZES = [dict(b=4, m=6, d=3, p=5, c=3), dict(b=5, m=3, d=2, p=4, c=4), dict(b=4, m=4, d=3, p=3, c=2)]
# Degenerate but valid: no anchor, no reference row, no feature.
DEGENERATE = [
    dict(b=0, m=4, d=3, p=0, c=3),
    dict(b=3, m=0, d=2, p=0, c=2),
    dict(b=3, m=4, d=0, p=2, c=3),
    dict(b=0, m=0, d=0, p=0, c=1),
    dict(b=1, m=1, d=1, p=1, c=1),
]


class Worker:
    """A long-lived ``contract_worker.py`` process; restarted after a crash."""

    def __init__(self) -> None:
        self.proc = None
        self.stderr = None
        self._start()

    def _start(self) -> None:
        self.stderr = tempfile.TemporaryFile(mode="w+")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([PACKAGE_ROOT, os.environ.get("PYTHONPATH", "")]))
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(SUPPORT, "contract_worker.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            cwd=PACKAGE_ROOT,
            env=env,
        )

    def run(self, case: Dict[str, Any]) -> Dict[str, Any]:
        self.proc.stdin.write(json.dumps(case) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], TIMEOUT_S)
        line = self.proc.stdout.readline() if ready else ""
        if line:
            return json.loads(line)
        # The worker died (or hung) on this case: report it, then start a fresh one.
        self.proc.kill()
        code = self.proc.wait()
        self.stderr.seek(0)
        tail = self.stderr.read()[-3000:]
        self._start()
        return {"id": case.get("id"), "crashed": True, "returncode": code, "stderr": tail}

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def worker():
    w = Worker()
    yield w
    w.close()


def _ops(device: str) -> List[str]:
    return [op for op in op_table.OPS if not (device == "cuda" and op in op_table.CPU_ONLY)]


def _names_argument(message: str, op: str, name: str) -> bool:
    return f"fastmine.{op}:" in message and re.search(rf"(?<![\w.]){re.escape(name)}(?!\w)", message) is not None


def refusal_problem(result: Dict[str, Any], case: Dict[str, Any]) -> str:
    """'' when the result is the clear refusal a malformed case must get, else what is wrong."""
    if result.get("crashed"):
        return f"CRASHED (exit {result['returncode']}): {result['stderr'][-400:]}"
    if result["ok"]:
        return "accepted (no error)"
    if result["error"] not in ("RuntimeError", "ValueError"):
        return f"{result['error']} instead of RuntimeError/ValueError: {result['message'][:200]}"
    name = case["mutation"][1]
    if not _names_argument(result["message"], case["op"], name):
        return f"message does not name fastmine.{case['op']} and {name!r}: {result['message'][:300]}"
    return ""


def _run_all(worker: Worker, cases: List[Dict[str, Any]]) -> List[str]:
    problems = []
    for i, case in enumerate(cases):
        case["id"] = i
        problem = refusal_problem(worker.run(case), case)
        if problem:
            problems.append(f"{case['op']} {case['device']} {case['sizes']} {case['mutation']}: {problem}")
    return problems


def test_the_table_covers_every_op():
    registered = {n.split("::", 1)[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("fastmine::")}
    assert registered == set(op_table.OPS), registered ^ set(op_table.OPS)


def malformed_cases(device: str, op: str) -> List[Dict[str, Any]]:
    return [
        dict(op=op, device=device, dtype=dtype, sizes=sizes, seed=k, mutation=m)
        for k, sizes in enumerate(SIZES)
        for dtype in ("float32", "float64")
        for m in op_table.mutations(op, device, sizes)
    ]


@pytest.mark.parametrize("device", DEVICE_PARAMS)
def test_every_malformed_argument_is_refused(worker, device):
    """Every variant of every argument of every op, at three sizes and two dtypes."""
    cases = [c for op in _ops(device) for c in malformed_cases(device, op)]
    problems = _run_all(worker, cases)
    assert not problems, f"{len(problems)} of {len(cases)} malformed calls:\n" + "\n".join(problems[:60])
    assert len(cases) > 1000  # the table really generates the variants


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("sizes", SIZES + DEGENERATE, ids=lambda s: "b{b}m{m}d{d}".format(**s))
def test_valid_and_degenerate_calls_run(worker, device, sizes):
    """The unmutated calls run (so each refusal above is the mutation's doing), including
    empty batches, empty reference sets and zero features, and strided copies of every
    tensor argument give the same outputs, bit for bit."""
    problems = []
    for op in _ops(device):
        for dtype in ("float32", "float64"):
            case = dict(
                op=op, device=device, dtype=dtype, sizes=sizes, seed=1, mutation=None, compare_noncontiguous=True
            )
            r = worker.run(case)
            if r.get("crashed"):
                problems.append(f"{op} {dtype}: CRASHED (exit {r['returncode']}): {r['stderr'][-400:]}")
            elif not r["ok"]:
                problems.append(f"{op} {dtype}: {r['error']}: {r['message'][:300]}")
            elif not r["same"]:
                problems.append(f"{op} {dtype}: strided inputs changed the outputs")
    assert not problems, "\n".join(problems)


@st.composite
def generated_case(draw, device: str):
    op = draw(st.sampled_from(_ops(device)))
    sizes = dict(
        b=draw(st.integers(0, 7)),
        m=draw(st.integers(0, 8)),
        d=draw(st.integers(0, 5)),
        p=draw(st.integers(0, 7)),
        c=draw(st.integers(1, 5)),
    )
    variants = op_table.mutations(op, device, sizes)
    return dict(
        op=op,
        device=device,
        dtype=draw(st.sampled_from(["float32", "float64"])),
        sizes=sizes,
        seed=draw(st.integers(0, 2**16)),
        mutation=draw(st.sampled_from(variants)),
    )


@pytest.mark.parametrize("device", DEVICE_PARAMS)
def test_generated_malformed_calls_are_refused(worker, device):
    """Hypothesis draws the sizes (empty included), dtype, values and the variant."""

    @settings(max_examples=300)
    @given(case=generated_case(device))
    def check(case):
        problem = refusal_problem(worker.run(case), case)
        assert not problem, problem

    check()


def test_a_crash_is_reported_not_lost(worker):
    """The isolation itself: a case that kills its process comes back as a crash, and the
    next case runs in a fresh worker."""
    crash = worker.run({"op": "__crash__"})
    assert crash.get("crashed") and crash["returncode"] != 0
    case = dict(op="pairwise_distance", device="cpu", sizes=SIZES[0], seed=0, mutation=["enum", "metric", 7])
    assert refusal_problem(worker.run(case), case) == ""
