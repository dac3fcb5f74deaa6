"""Bar chart of fwd+bwd time per method per size (log scale), next to the JSON."""

from __future__ import annotations

from typing import Dict, List, Optional


def _save(fig, ax, path: str, title: str) -> None:
    """Title, legend, layout; writes the PNG and frees the figure."""
    import matplotlib.pyplot as plt

    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot(path: str, title: str, sizes: List[Dict]) -> Optional[str]:
    """Writes the PNG; returns None, or why no plot was written."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # headless: no display on CI machines or GPU boxes
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib not installed (pip install matplotlib): no plot"

    methods = list(dict.fromkeys(m for s in sizes for m in s["methods"]))
    width = 0.8 / max(len(methods), 1)
    fig, ax = plt.subplots(figsize=(1.2 + 1.6 * len(sizes) * max(len(methods), 1) / 4, 4.2))
    for k, name in enumerate(methods):
        xs, ys = [], []
        for i, s in enumerate(sizes):
            r = s["methods"].get(name)
            if r and r["status"] == "ok":
                xs.append(i + (k - (len(methods) - 1) / 2) * width)
                ys.append(r["min_ms"])
        label = name + (" (fwd only)" if any(s["methods"].get(name, {}).get("forward_only") for s in sizes) else "")
        bars = ax.bar(xs, ys, width, label=label)
        ax.bar_label(bars, labels=[f"{y:.3g}" for y in ys], fontsize=7, padding=1)
    ax.set_yscale("log")
    ax.set_ylabel("minimum time (ms), log scale")
    ax.set_xticks(range(len(sizes)), [f"B={s['B']} D={s['D']}" for s in sizes])
    return _save(fig, ax, path, title)


def speedup(path: str, title: str, sizes: List[Dict], reference: str) -> Optional[str]:
    """Line chart of each method's time / ``reference``'s time against B (one line per
    method and D; only D values measured at two or more B). Above 1: fastmine is faster.
    Returns None, or why no plot was written."""
    by_d: Dict[int, List[Dict]] = {}
    for s in sizes:
        by_d.setdefault(s["D"], []).append(s)
    by_d = {d: sorted(ss, key=lambda s: s["B"]) for d, ss in by_d.items() if len(ss) >= 2}
    if not by_d:
        return "fewer than two batch sizes at any D: no speed-up plot"
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib not installed (pip install matplotlib): no plot"

    methods = [m for m in dict.fromkeys(m for s in sizes for m in s["methods"]) if m != reference]
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for d, ss in sorted(by_d.items()):
        for name in methods:
            xs, ys = [], []
            for s in ss:
                r, f = s["methods"].get(name), s["methods"].get(reference)
                if r and f and r["status"] == "ok" and f["status"] == "ok":
                    xs.append(s["B"])
                    ys.append(r["min_ms"] / f["min_ms"])
            if not xs:
                continue
            fwd = " (fwd only)" if any(s["methods"].get(name, {}).get("forward_only") for s in ss) else ""
            label = f"{name}{fwd}" + (f", D={d}" if len(by_d) > 1 else "")
            (line,) = ax.plot(xs, ys, marker="o", label=label)
            ax.annotate(
                f"{ys[-1]:.3g}×",
                (xs[-1], ys[-1]),
                textcoords="offset points",
                xytext=(4, 0),
                fontsize=7,
                color=line.get_color(),
                va="center",
            )
            # where a method stopped running (out of memory, too slow), say so at its next B
            stopped = [s for s in ss if s["B"] > xs[-1] and s["methods"].get(name, {}).get("status") == "oom"]
            if stopped:
                ax.annotate(
                    "out of memory",
                    (xs[-1], ys[-1]),
                    textcoords="offset points",
                    xytext=(4, -10),
                    fontsize=7,
                    color=line.get_color(),
                )
    ax.axhline(1.0, color="gray", linewidth=0.8, linestyle="--")
    ax.set_xscale("log", base=2)
    bs = sorted({s["B"] for ss in by_d.values() for s in ss})
    ax.set_xticks(bs, [str(b) for b in bs])
    ax.minorticks_off()
    ax.margins(x=0.15)  # room for the last point's label
    ax.set_yscale("log")
    ax.set_xlabel("batch size B")
    ax.set_ylabel(f"method time / {reference} time (log)")
    return _save(fig, ax, path, title)
