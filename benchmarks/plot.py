"""Bar chart of fwd+bwd time per method per size (log scale), next to the JSON."""
from __future__ import annotations

from typing import Dict, List, Optional


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
                ys.append(r["median_ms"])
        label = name + (" (fwd only)" if any(s["methods"].get(name, {}).get("forward_only")
                                              for s in sizes) else "")
        bars = ax.bar(xs, ys, width, label=label)
        ax.bar_label(bars, labels=[f"{y:.3g}" for y in ys], fontsize=7, padding=1)
    ax.set_yscale("log")
    ax.set_ylabel("median time (ms), log scale")
    ax.set_xticks(range(len(sizes)), [f"B={s['B']} D={s['D']}" for s in sizes])
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None
