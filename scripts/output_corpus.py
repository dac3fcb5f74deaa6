"""Records every raw op's outputs on a fixed corpus of inputs, or compares them with a
recording, bit for bit: the check that a refactoring changed no result.

    python scripts/output_corpus.py record before.pt [--emu]
    ... change the code, rebuild ...
    python scripts/output_corpus.py compare before.pt [--emu]

The corpus is the valid calls of tests/support/op_table.py (every op of ``torch.ops.fastmine``,
forward and backward ops alike) at a few sizes that are multiples of no tile, in float32 and
float64, on random inputs and on exact ties, over three seeds; on every device this process
can run (the CPU, CUDA when a GPU is visible) and, with ``--emu``, the CUDA module's code
under the host emulator (tests/emu/). NaN compares equal to NaN when the bits match.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
from typing import Dict, List

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.join(os.path.dirname(HERE), "tests")
sys.path.insert(0, os.path.join(TESTS, "support"))

import fastmine  # noqa: E402
import op_table  # noqa: E402

SIZES = [
    dict(b=1, m=1, d=1, p=1, c=1),
    dict(b=7, m=7, d=5, p=4, c=3),
    dict(b=37, m=37, d=19, p=24, c=6),
    dict(b=9, m=70, d=33, p=6, c=5),
    dict(b=70, m=9, d=3, p=40, c=4),
]
DTYPES = [torch.float32, torch.float64]
SEEDS = [0, 1, 2]
KINDS = ["random", "ties"]


def _ties(args: List, built, seed: int) -> List:
    g = torch.Generator().manual_seed(seed + 1000)
    return [
        torch.randint(-2, 3, tuple(v.shape), generator=g).to(v.dtype).to(v.device) if a.kind == "emb" else v
        for (a, _), v in zip(built, args)
    ]


def _targets(emu: bool) -> Dict[str, object]:
    """name -> the op namespace, per device the corpus runs on."""
    out: Dict[str, object] = {"cpu": torch.ops.fastmine}
    if fastmine.CUDA_AVAILABLE:
        out["cuda"] = torch.ops.fastmine
    if emu:
        sys.path.insert(0, os.path.join(TESTS, "emu"))
        import build as emu_build  # noqa: E402

        emu_build.load()
        out["emu"] = torch.ops.fastmine_emu
    return out


def run(emu: bool) -> Dict[str, List[torch.Tensor]]:
    results: Dict[str, List[torch.Tensor]] = {}
    for target, ns in _targets(emu).items():
        device = "cuda" if target == "cuda" else "cpu"
        for op, sizes, dtype, seed, kind in itertools.product(sorted(op_table.OPS), SIZES, DTYPES, SEEDS, KINDS):
            if target != "cpu" and op in op_table.CPU_ONLY:
                continue
            built = op_table.OPS[op](torch.Generator().manual_seed(seed), sizes, dtype, device)
            args = [v for _, v in built]
            if kind == "ties":
                args = _ties(args, built, seed)
            key = f"{target}/{op}/b{sizes['b']}m{sizes['m']}d{sizes['d']}/{str(dtype)[6:]}/{seed}/{kind}"
            try:
                out = getattr(ns, op)(*args)
            except (RuntimeError, ValueError) as e:  # a refusal is an outcome too
                results[key] = [torch.tensor(list(str(e).splitlines()[0].encode()))]
                continue
            outs = list(out) if isinstance(out, (tuple, list)) else [out]
            results[key] = [t.detach().cpu().clone() for t in outs]
    return results


def _bits(t: torch.Tensor) -> torch.Tensor:
    if t.dtype == torch.float64:
        return t.contiguous().view(torch.int64)
    if t.dtype == torch.float32:
        return t.contiguous().view(torch.int32)
    return t


def compare(before: Dict[str, List[torch.Tensor]], after: Dict[str, List[torch.Tensor]]) -> List[str]:
    problems = [f"{k}: missing now" for k in before if k not in after]
    problems += [f"{k}: new (not in the recording)" for k in after if k not in before]
    for k in sorted(set(before) & set(after)):
        a, b = before[k], after[k]
        if len(a) != len(b):
            problems.append(f"{k}: {len(a)} outputs before, {len(b)} now")
            continue
        for i, (x, y) in enumerate(zip(a, b)):
            if x.shape != y.shape or x.dtype != y.dtype or not torch.equal(_bits(x), _bits(y)):
                problems.append(f"{k}: output {i} differs")
    return problems


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["record", "compare"])
    p.add_argument("path")
    p.add_argument("--emu", action="store_true", help="also the CUDA code under the host emulator")
    a = p.parse_args()
    results = run(a.emu)
    if a.mode == "record":
        torch.save(results, a.path)
        print(f"recorded {len(results)} calls ({sum(len(v) for v in results.values())} outputs) in {a.path}")
        return 0
    problems = compare(torch.load(a.path), results)
    for line in problems[:50]:
        print(line)
    print(f"{len(results)} calls compared: {'bitwise identical' if not problems else f'{len(problems)} differ'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
