"""Figures drawn from records (STYLE habit 6: plots take records and compute nothing).

matplotlib is imported with the non-interactive Agg backend, so plotting
works on machines without a display.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from budgetsft.regret import cumulative

__all__ = ["plot_runs", "plot_sweep"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


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
    plt = _plt()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig, (ax_r, ax_l) = plt.subplots(1, 2, figsize=(11, 4.2))
    kind = {"mistakes": "mistakes", "hinge_loss": "hinge loss"}.get(metric, "regret")
    budgeted = []  # final label counts of the runs that bought a share of the rounds, not all of them
    for name, frame in runs.items():
        cum = cumulative(frame)
        if metric == "regret" and len(cum):
            kind = cum["regret_kind"].iloc[0]
        ax_r.plot(cum["round"], cum[metric], label=name, lw=1.6)
        ax_l.plot(cum["round"], cum["labels"], label=name, lw=1.6)
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
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def plot_sweep(rows: Sequence[dict], metric: str, out: str | Path, title: str | None = None) -> Path:
    """Bar chart of ``metric`` (mean ± sd over seeds) for each (gate, β) cell of a sweep table."""
    plt = _plt()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    labels = [f"{r['gate']}\nβ={r['beta']:g}" for r in rows]
    means = [r[metric] for r in rows]
    sds = [r.get(f"{metric}_sd", 0.0) for r in rows]
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(rows)), 4))
    ax.bar(range(len(rows)), means, yerr=sds, capsize=4, color="#4477aa")
    ax.set_xticks(range(len(rows)), labels, fontsize=8)
    ax.set_ylabel(metric.replace("_", " "))
    ax.grid(axis="y", alpha=0.3)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
