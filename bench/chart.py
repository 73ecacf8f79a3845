"""Draw bench/results.json as one PNG (run with .venv-bench's Python, which has matplotlib).

    .venv-bench/bin/python -m bench.chart bench/results.json bench/results.png"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.axes import Axes

CH_COLOR, PEER_COLOR = "#d62728", "#7f7f7f"


def _bars(ax: Axes, sc: Mapping[str, Any], key: str, label: str) -> None:
    rows = {n: r for n, r in sc["rows"].items() if key in r}
    names = list(rows)
    values = [rows[n][key] for n in names]
    colors = [CH_COLOR if n.startswith("chunkhaul") else PEER_COLOR for n in names]
    ax.barh(names, values, color=colors)
    ax.invert_yaxis()
    for i, v in enumerate(values):
        ax.text(v, i, f" {v:.1f}", va="center", fontsize=7)
    ax.set_xlabel(label, fontsize=8)
    ax.tick_params(labelsize=7)


def _throughput(sc: Mapping[str, Any]) -> Mapping[str, Any]:
    rows = {n: {**r, "mib_s": sc["size_mib"] / r["wall"]} for n, r in sc["rows"].items() if r.get("wall")}
    return {**sc, "rows": rows}


def _memory(ax: Axes, sc: Mapping[str, Any]) -> None:
    rows = [(int(n.split()[1]), r) for n, r in sc["rows"].items() if "rss_mib" in r]
    xs = [s for s, _ in rows]
    ax.plot(xs, [r["rss_mib"] for _, r in rows], "o-", color=CH_COLOR, label="median")
    ax.plot(xs, [r["rss_max_mib"] for _, r in rows], "x--", color=CH_COLOR, alpha=0.5, label="max")
    ax.axhline(64, color="black", lw=0.8, ls=":", label="goal 64 MiB")
    ax.set_xscale("log", base=2)
    ax.set_xticks(xs, [f"{x} MiB" for x in xs])
    ax.set_ylim(0, max(80.0, *(r["rss_max_mib"] + 10 for _, r in rows)))
    ax.set_ylabel("peak RSS MiB", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7)


def draw(results: Mapping[str, Any], png: Path) -> None:
    panels: list[tuple[Mapping[str, Any], str]] = []
    for sc in results["scenarios"]:
        if sc.get("skipped") or not sc["rows"]:
            continue
        if sc["name"] in ("s3", "capped", "tus"):
            panels += [(sc, "throughput"), (sc, "cpu"), (sc, "rss_mib")]
        elif sc["name"] == "memory":
            panels.append((sc, "memory"))
    cols = 3
    rows = max(1, -(-len(panels) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(15, 3.2 * rows), squeeze=False)
    for ax, (sc, kind) in zip(axes.flat, panels, strict=False):
        ax.set_title(sc["title"], fontsize=8)
        if kind == "memory":
            _memory(ax, sc)
        elif kind == "throughput":
            _bars(ax, _throughput(sc), "mib_s", "MiB/s (median, higher is better)")
        elif kind == "cpu":
            _bars(ax, sc, "cpu", "client CPU s (user+sys, median)")
        else:
            _bars(ax, sc, "rss_mib", "client peak RSS MiB (median)")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"chunkhaul vs peers — {results['date']}, {results['machine']['nproc']} CPUs, "
                 f"medians of {results['rounds']} alternating rounds", fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=90)


def main(argv: list[str]) -> None:
    src, png = Path(argv[0]), Path(argv[1])
    draw(json.loads(src.read_text()), png)


if __name__ == "__main__":
    main(sys.argv[1:])
