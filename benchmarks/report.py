"""Turning measurements into the Markdown table, the target verdicts and the JSON file."""

from __future__ import annotations

import json
import os
from typing import Dict, List

from .registry import OpBench, Target

DEVICE_TITLE = {"cpu": "CPU", "cuda": "GPU"}
# Above this share of the CPUs used by other processes during a run, its speed targets are
# not judged: on a small machine a busy neighbour stretches some methods far more than others.
BUSY_PCT = 10.0


def _fmt_ms(ms: float) -> str:
    return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"


def markdown_table(op: OpBench, sizes: List[Dict]) -> str:
    ref = op.reference
    lines = [
        "| B × D | method | fwd+bwd min (ms) | median (ms) | speed-up vs fastmine | peak extra memory (MiB) |",
        "|---|---|--:|--:|--:|--:|",
    ]
    notes = []
    for s in sizes:
        size = f"{s['B']} × {s['D']}"
        for name, r in s["methods"].items():
            label = name + (" (fwd only)" if r["forward_only"] else "")
            if r["status"] == "oom":  # a result: this method cannot run this size here
                lines.append(f"| {size} | {label} | out of memory | | | |")
                continue
            if r["status"] != "ok":
                lines.append(f"| {size} | {label} | n/a | | | |")
                notes.append(f"{size} {name}: n/a: {r['reason']}")
                continue
            if r.get("loss_check", "").startswith("MISMATCH"):
                label += " **LOSS MISMATCH**"
                notes.append(f"{size} {name}: {r['loss_check']}")
            if name == ref:
                ratio = "1.00×" + (f" ({s['x_floor']:.2f}× floor)" if s["x_floor"] else "")
            elif name in s["speedup"]:
                ratio = f"{s['speedup'][name]:.2f}×"
            else:
                ratio = ""
            mem = r["peak_extra_mib"]
            lines.append(
                f"| {size} | {label} | {_fmt_ms(r['min_ms'])} | {_fmt_ms(r['median_ms'])} | {ratio} "
                f"| {'n/a' if mem is None else f'{mem:.1f}'} |"
            )
    lines.append("")
    lines.append(
        "Speed-up vs fastmine = method time / fastmine time, from the minima of the "
        "interleaved calls: how much faster fastmine is. × floor = fastmine time / the bare "
        "X·Xᵀ's time (into a preallocated result; the allocating form is shown beside it)."
    )
    lines += [f"- {n}" for n in notes]
    return "\n".join(lines)


def _verdict(t: Target, s: Dict) -> str:
    if t.baseline in ("seconds", "memory"):
        r = s["methods"].get("fastmine", {})
        if r.get("status") != "ok":
            return f"fastmine n/a (goal {t.describe()})"
        v = r["min_ms"] / 1e3 if t.baseline == "seconds" else r["peak_extra_mib"]
        if v is None:
            return f"not measurable here (goal {t.describe()})"
        unit = "s" if t.baseline == "seconds" else "MiB"
        head = f"fastmine {v:.3g} {unit} (goal ≤ {t.bound:g} {unit})"
        return head + (": met" if v <= t.bound else f": MISSED by {v / t.bound:.2f}×")
    if t.baseline == "floor":
        v = s["x_floor"]
        if v is None:
            return f"× floor n/a (goal {t.describe()})"
        head = f"fastmine = {v:.2f}× matmul floor (goal ≤ {t.bound:g}×)"
        return head + (": met" if v <= t.bound else f": MISSED by {v / t.bound:.2f}×")
    v = s["speedup"].get(t.baseline)
    if v is None:
        return f"speed-up vs {t.baseline} n/a (goal ≥ {t.bound:g}×)"
    if t.bound < 1:
        head = f"{1 / v:.2f}× {t.baseline}'s time (goal {t.describe()})"
        return head + (": met" if v >= t.bound else f": MISSED by {t.bound / v:.2f}×")
    head = f"{v:.2f}× faster than {t.baseline} (goal ≥ {t.bound:g}×)"
    return head + (
        ": met" if v >= t.bound else f": MISSED by {t.bound / v:.2f}× (fastmine would need to be that much faster)"
    )


def evaluate_targets(op: OpBench, device: str, dtype: str, sizes: List[Dict], busy_pct=None) -> List[Dict]:
    """One verdict per target; targets for another device or a size/dtype this run did not
    measure say so instead of passing or failing, and so do speed targets when other
    processes used more than BUSY_PCT % of the CPUs during the run (``busy_pct``)."""
    out = []
    for t in op.targets:
        s = next((s for s in sizes if (s["B"], s["D"]) == (t.B, t.D)), None)
        if t.device != device:
            text, status = f"not measured (this run is on {device})", "not measured"
        elif s is None or dtype != t.dtype:
            text, status = "not measured (size/dtype not in this run)", "not measured"
        elif t.baseline != "memory" and busy_pct is not None and busy_pct > BUSY_PCT:
            text = f"not judged: machine busy (other processes used {busy_pct:.0f}% of the CPUs; goal {t.describe()})"
            status = "not judged"
        else:
            text = _verdict(t, s)
            status = "met" if text.endswith(": met") else "missed" if "MISSED" in text else "n/a"
        out.append(
            dict(
                device=t.device,
                B=t.B,
                D=t.D,
                dtype=t.dtype,
                baseline=t.baseline,
                bound=t.bound,
                goal=t.describe(),
                status=status,
                text=text,
            )
        )
    return out


def target_lines(op: OpBench, verdicts: List[Dict]) -> str:
    """One line per device."""
    lines = [f"Targets ({op.name} fwd+bwd):"]
    for dev in dict.fromkeys(v["device"] for v in verdicts):
        vs = [v for v in verdicts if v["device"] == dev]
        if all(v["status"] == "not measured" for v in vs):
            goals = "; ".join(
                f"B={v['B']} D={v['D']}{'' if v['dtype'] == 'float32' else ' ' + v['dtype']} {v['goal']}" for v in vs
            )
            lines.append(f"- {DEVICE_TITLE.get(dev, dev)} ({goals}): {vs[0]['text']}")
            continue
        parts = [f"B={v['B']} D={v['D']} {v['dtype']}: {v['text']}" for v in vs]
        lines.append(f"- {DEVICE_TITLE.get(dev, dev)}: " + "; ".join(parts))
    return "\n".join(lines)


def write_json(path: str, record: Dict) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(record, f, indent=1)
        f.write("\n")


def summary_table(rows: List) -> str:
    """One line per (op, size): fastmine's time, then each other method's time and how many
    times slower than fastmine it is (the floor: fastmine's time over it); minima."""
    lines = ["| op | B × D | fastmine (ms) | the others: time (ms), × fastmine's |", "|---|---|--:|---|"]
    for op, s in rows:
        ref = s["methods"].get(op.reference, {})
        own = _fmt_ms(ref["min_ms"]) if ref.get("status") == "ok" else ref.get("status", "n/a")
        others = []
        for name, r in s["methods"].items():
            if name == op.reference:
                continue
            if r["status"] != "ok":
                others.append(f"{name} {'out of memory' if r['status'] == 'oom' else 'n/a'}")
            elif name in s.get("speedup", {}):
                others.append(f"{name} {_fmt_ms(r['min_ms'])} ({s['speedup'][name]:.1f}× slower)")
            elif op.method(name).is_floor and s.get("x_floor"):
                others.append(f"{name} {_fmt_ms(r['min_ms'])} (fastmine {s['x_floor']:.2f}×)")
            else:
                others.append(f"{name} {_fmt_ms(r['min_ms'])}")
        lines.append(f"| {op.name} | {s['B']} × {s['D']} | {own} | {'; '.join(others)} |")
    return "\n".join(lines)
