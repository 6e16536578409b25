"""The chaos soak's outputs: the JSON report and the timeline picture of a ``ChaosResult``.

Owns ``write_report`` (summary, verdicts, faults and failovers as JSON) and ``plot`` (primaries
per epoch, faults, power losses and client errors over time, with matplotlib imported only
then). It must never judge anything (it writes what the result holds), and never need
matplotlib for the JSON report.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from hacluster.testing.chaos.results import ChaosResult


def write_report(result: ChaosResult, path: Path, png: Path | None = None) -> None:
    doc = {"summary": result.summary(), "verdicts": result.verdicts,
           "faults": [asdict(f) for f in result.faults], "failovers": result.failovers}
    path.write_text(json.dumps(doc, indent=1, default=str))
    if png is not None:
        plot(result, png)


def plot(result: ChaosResult, png: Path) -> None:
    """Timeline: primaries per epoch, faults, power losses, client errors over time."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Rectangle

    t0 = result.started
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(14, 6.5), sharex=True,
                                   gridspec_kw={"height_ratios": [2, 1]})
    kind_colors = plt.get_cmap("tab20")      # 13 kinds: tab10 would repeat colours
    epoch_colors = plt.get_cmap("tab10")
    kinds = sorted({f.kind for f in result.faults})
    for f in result.faults:
        ax1.axvspan(f.start - t0, max(f.healed, f.start + 0.2) - t0, alpha=0.3,
                    color=kind_colors(kinds.index(f.kind) % 20))
    marks = result.epochs_over_time
    for i, (t, epoch, node) in enumerate(marks):
        until = marks[i + 1][0] if i + 1 < len(marks) else result.ended
        y = int(node.lstrip("n")) if node.lstrip("n").isdigit() else 0
        ax1.plot([t - t0, until - t0], [y, y], lw=6, solid_capstyle="butt",
                 color=epoch_colors(epoch % 10))
    cuts = [(c.at - t0, int(c.node.lstrip("n"))) for f in result.faults for c in f.power
            if c.node.lstrip("n").isdigit()]
    if cuts:
        xs, ys = zip(*cuts, strict=True)
        ax1.scatter(xs, ys, marker="X", s=60, color="black", zorder=3)
    ax1.set_ylabel("primary (node)")
    ax1.set_yticks(range(1, result.nodes + 1))
    ax1.set_title(f"chaos: {len(result.faults)} faults, seed {result.seed}, {result.mode} "
                  f"mode, availability {result.availability:.1%}")
    handles: list[Any] = [Rectangle((0, 0), 1, 1, alpha=0.3, color=kind_colors(i % 20))
                          for i in range(len(kinds))]
    labels = list(kinds)
    if cuts:
        handles.append(Line2D([], [], marker="X", color="black", linestyle="none"))
        labels.append("power loss of a node")
    ax1.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.02), fontsize=7,
               ncol=7, frameon=False)
    if result.errors_over_time:
        xs2, ys2 = zip(*result.errors_over_time, strict=True)
        ax2.bar(xs2, ys2, width=1.0, color="firebrick")
    ax2.set_ylabel("client errors / s")
    ax2.set_xlabel("seconds")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
