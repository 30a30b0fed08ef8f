"""Figures drawn from records (STYLE habit 6: plots take records and compute nothing).

matplotlib is imported with the non-interactive Agg backend, so plotting
works on machines without a display.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from budgetsft.regret import cumulative

__all__ = ["plot_runs", "plot_sweep"]


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# Runs often coincide (first and full until first's budget is spent; llf and first early on): each line gets its
# own dash pattern and markers at staggered rounds, drawn in order, so an earlier line shows through the gaps of
# the dashes above it.
_LINESTYLES = ("-", (0, (5, 2)), (0, (3, 1, 1, 1)), (0, (1, 1.2)), (0, (8, 2, 1, 2)), (0, (2, 2)))
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def _style(i: int, n: int, n_points: int) -> dict:
    """Line style of the i-th of n runs: colour, dashes, markers at staggered rounds, and a zorder (later on top)."""
    every = max(1, n_points // 8)
    return {"color": f"C{i % 10}", "linestyle": _LINESTYLES[i % len(_LINESTYLES)], "lw": 1.8,
            "marker": _MARKERS[i % len(_MARKERS)], "markersize": 4.5, "markevery": (int(i * every / max(n, 1)), every),
            "zorder": 2 + i}


def _fit_title(fig, text, title: str) -> None:
    """Wrap the title artist ``text`` until it lies inside ``fig`` (measured by the renderer, after layout).

    Starts from an estimate (a character is about 0.55 em wide) and narrows the wrap while the drawn title
    runs off either side; the layout is redone each time, since a title of more lines moves the axes.
    """
    width_in = fig.get_figwidth()
    chars = max(20, int(width_in * 72 / (0.55 * text.get_fontsize())))
    renderer = fig.canvas.get_renderer()
    while True:
        text.set_text("\n".join(textwrap.wrap(title, width=chars)))
        fig.tight_layout()
        box = text.get_window_extent(renderer=renderer)
        if chars <= 20 or (box.x0 >= 2 and box.x1 <= fig.bbox.width - 2):
            return
        chars -= 4


def plot_runs(runs: Mapping[str, pd.DataFrame], out: str | Path, title: str | None = None,
              metric: str = "regret") -> Path:
    """Cumulative regret (or mistakes) and labels bought vs round, one line per named records frame.

    Parameters
    ----------
    runs : mapping of str to DataFrame
        Name -> records frame (``budgetsft.regret.to_frame``).
    out : path
        PNG file to write (parent folders are created).
    metric : {"regret", "mistakes", "hinge_loss"}, default="regret"
        Left panel: pseudo-regret when the records know it (else hinge loss),
        online mistakes, or hinge loss.
    """
    plt = pyplot()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig, (ax_r, ax_l) = plt.subplots(1, 2, figsize=(11, 4.2))
    kind = {"mistakes": "mistakes", "hinge_loss": "hinge loss"}.get(metric, "regret")
    budgeted = []  # final label counts of the runs that bought a share of the rounds, not all of them
    for i, (name, frame) in enumerate(runs.items()):
        cum = cumulative(frame)
        if metric == "regret" and len(cum):
            kind = cum["regret_kind"].iloc[0]
        style = _style(i, len(runs), len(cum))
        ax_r.plot(cum["round"], cum[metric], label=name, **style)
        ax_l.plot(cum["round"], cum["labels"], label=name, **style)
        if len(cum) and cum["labels"].iloc[-1] < 0.5 * len(cum):
            budgeted.append(float(cum["labels"].iloc[-1]))
    zoom = bool(budgeted) and len(budgeted) < len(runs)
    if zoom:  # full feedback's diagonal would squash the budgeted curves: zoom on them, and say so
        ax_l.set_ylim(0, 1.3 * max(budgeted) + 1)
    ax_r.set_xlabel("round t")
    ax_r.set_ylabel(f"cumulative {kind}")
    ax_r.set_title(f"Cumulative {kind}")
    ax_l.set_xlabel("round t")
    ax_l.set_ylabel("labels bought")
    ax_l.set_title("Labels bought")
    for ax in (ax_r, ax_l):
        ax.grid(alpha=0.3)
    ax_r.legend(fontsize=8)
    ax_l.legend(fontsize=8, title="full feedback runs off the top" if zoom else None, title_fontsize=8)
    fig.tight_layout()
    if title:
        _fit_title(fig, fig.suptitle(title, fontsize=12), title)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def plot_sweep(rows: Sequence[dict], metric: str, out: str | Path, title: str | None = None) -> Path:
    """Bar chart of ``metric`` (mean ± sd over seeds) for each (gate, β) cell of a sweep table."""
    plt = pyplot()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    labels = [f"{r['gate']}\nβ={r['beta']:g}" for r in rows]
    means = [r[metric] for r in rows]
    sds = [r.get(f"{metric}_sd", 0.0) for r in rows]
    width = max(6.0, 1.2 * len(rows))
    fig, ax = plt.subplots(figsize=(width, 4.2))
    ax.bar(range(len(rows)), means, yerr=sds, capsize=4, color="#4477aa")
    ax.set_xticks(range(len(rows)), labels, fontsize=8)
    ax.set_ylabel(metric.replace("_", " "))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    if title:  # wrapped to the figure's width: a long setting must not run off the edges
        _fit_title(fig, ax.set_title(title, fontsize=10.5), title)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
