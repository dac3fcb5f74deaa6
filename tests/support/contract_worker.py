"""Runs raw-op contract cases for the contract tests, one JSON case per input line, one
JSON result per output line, in a process of its own: a case that crashes the process
(a segmentation fault, an abort) ends this worker and is reported by the parent as that
case's failure instead of taking the test run down.

A result: ``{"id", "ok": bool, "error": exception type or None, "message": str}``; with
``"compare_noncontiguous": true`` in the case, ``"same"`` says whether strided copies of
every tensor argument gave the same outputs, bit for bit.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

import fastmine  # noqa: E402,F401  (loads the compiled ops)
import op_table  # noqa: E402


def _flat(out):
    return list(out) if isinstance(out, (tuple, list)) else [out]


def _same(a, b) -> bool:
    a, b = _flat(a), _flat(b)
    return len(a) == len(b) and all(
        x.shape == y.shape and x.dtype == y.dtype and torch.equal(x.cpu(), y.cpu()) for x, y in zip(a, b)
    )


def run(case):
    if case.get("op") == "__crash__":  # the parent's check of its own crash reporting
        import ctypes

        ctypes.string_at(0)
    op, args, _ = op_table.build(case)
    result = {"id": case.get("id"), "ok": True, "error": None, "message": ""}
    try:
        out = op(*args)
        if case["device"] == "cuda":
            torch.cuda.synchronize()
        if case.get("compare_noncontiguous"):
            strided = [op_table.noncontiguous(a) if isinstance(a, torch.Tensor) else a for a in args]
            result["same"] = _same(out, op(*strided))
    except Exception as e:  # the outcome is the report
        result.update(ok=False, error=type(e).__name__, message=str(e)[:2000])
    return result


def main():
    for line in sys.stdin:
        if not line.strip():
            continue
        case = json.loads(line)
        print(json.dumps(run(case)), flush=True)


if __name__ == "__main__":
    main()
