"""`make bench`: run the peer comparison, the regret-scaling study and the throughput table; write RESULTS.md.

Usage::

    python benchmarks/report.py                      # full: benchmarks/RESULTS.md + benchmarks/figures/*.png
    python benchmarks/report.py --quick --out /tmp/r # small settings, into another folder

Each part is its own script (``peers.py``, ``regret_scaling.py``, ``peer_throughput.py``) and
prints the same tables when run alone. Tables minus the wall-time, memory and throughput
columns are deterministic for the same seeds.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path

import peer_throughput as pt  # siblings: this script's folder is on sys.path (tests put it there too)
import peers
import regret_scaling as rs

HERE = Path(__file__).resolve().parent


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(next(ln for ln in Path("/proc/meminfo").read_text().splitlines()
                      if ln.startswith("MemTotal")).split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, StopIteration, ValueError):
        pass
    vers = []
    for pkg in ("budgetsft", "numpy", "scipy", "scikit-learn", "vowpalwabbit", "river", "modAL-python",
                "scikit-activeml", "torch"):
        try:
            vers.append(f"{pkg} {metadata.version(pkg)}")
        except metadata.PackageNotFoundError:
            pass
    return (f"{cpu}, {os.cpu_count()} cores{mem}; {platform.system()} {platform.release()}; "
            f"Python {platform.python_version()}; " + ", ".join(vers))


# --------------------------------------------------------------------------- figures
def figures(out_dir: Path, peers_out: dict, scaling: dict) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    names = []
    results = peers_out["results"]
    n = len(results)
    fig, axes = plt.subplots(1, n, figsize=(4.6 * n, 4.0), squeeze=False)
    for ax, (name, res) in zip(axes[0], results.items(), strict=True):
        rows = peers.summary_rows(res, sorted({r["beta"] for r in res["rows"] if not peers.is_full(r["method"])}))
        for method in dict.fromkeys(r["method"] for r in rows):
            pts = sorted((r["labels"], r["acc"]) for r in rows if r["method"] == method)
            style = "o-" if method in peers.BSFT or method in peers.BSFT_BLOCK else "s--"
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=method, markersize=4)
        ax.set_xscale("log")
        ax.set_title(f"{name} (T = {res['facts']['T']})")
        ax.set_xlabel("labels bought (mean over seeds)")
        ax.set_ylabel("held-out accuracy")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(out_dir / "accuracy_vs_labels.png", dpi=110)
    plt.close(fig)
    names.append("accuracy_vs_labels.png")

    t = scaling["vs_T"]
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.loglog(t["T"], t["regret"], "o-", label=f"full feedback (slope {t['slope']:.2f})")
    ref = [t["regret"][0] * math.sqrt(x / t["T"][0]) for x in t["T"]]
    ax.loglog(t["T"], ref, "k:", label="√T reference")
    ax.set_xlabel("T")
    ax.set_ylabel("pseudo-regret")
    ax.legend()
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(out_dir / "regret_vs_T.png", dpi=110)
    plt.close(fig)
    names.append("regret_vs_T.png")

    b = scaling["vs_B"]
    fig, ax = plt.subplots(figsize=(5, 4))
    B = [r["B"] for r in b["rows"]]
    for key, style in (("regret", "o-"), ("queried", "s--"), ("unqueried", "^:")):
        ax.plot(B, [r[key] for r in b["rows"]], style, label=f"{key} (slope {b['slopes'][key]:.2f})")
    ax.plot(B, [b["rows"][0]["queried"] * math.sqrt(x / B[0]) for x in B], "k:", label="√B reference")
    ax.set_xscale("log")
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_xlabel(f"budget B (T = {b['T']:,})")
    ax.set_ylabel("LLF pseudo-regret")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(out_dir / "regret_vs_B.png", dpi=110)
    plt.close(fig)
    names.append("regret_vs_B.png")
    return names


# --------------------------------------------------------------------------- markdown
def _prose(doc: str, start: int, stop: int | None) -> str:
    """Paragraphs ``start:stop`` of a module docstring, as markdown (bullets kept on their own lines)."""
    paras = doc.split("\n\n")[start:stop]
    out = []
    for p in paras:
        items = [ln.strip() for ln in p.replace("\n  ", " ").splitlines()]
        out.append("\n".join(items).replace("``", "`"))
    return "\n\n".join(out)


def results_md(peers_out: dict, scaling: dict, thr: dict, *, commands: list[str], fig_names: list[str],
               minutes: float, timing: bool = True) -> str:
    betas = peers_out["betas"]
    L = ["# budgetsft against its peers: results", "",
         "Generated by `make bench` (`python benchmarks/report.py`); do not edit by hand.", ""]
    if timing:
        L += [f"* Date: {dt.date.today().isoformat()}; wall time of the whole run: {minutes:.1f} min.",
              f"* Machine: {machine()}."]
    L += [f"* Seeds {', '.join(map(str, peers_out['seeds']))}; budgets β ∈ {{{', '.join(f'{b:g}' for b in betas)}}}"
          " (B = ⌊βT⌋); BLAS on one thread.", "", "Commands (each prints its tables when run alone):", "", "```"]
    L += commands + ["```", ""]

    L += ["## Targets", "", "| target | measured | result |", "|---|---|---|"]
    rows_t = peers.targets(peers_out["results"], betas)
    s = scaling["vs_T"]["slope"]
    rows_t.append({"target": "full-feedback regret slope vs T ≤ 0.6", "measured": f"slope {s:.3f}",
                   "ok": s <= 0.6, "by": f"{0.6 - s:+.3f} margin"})
    for t in rows_t:
        L.append(f"| {t['target']} | {t['measured']} | {'met' if t['ok'] else '**missed**'} ({t['by']}) |")
    L += ["", "## Peers, side by side", "",
          "How each peer sees the stream (see `benchmarks/peers.py` for the code):", "",
          "* **budgetsft**: ridge learner (λ = 1, ρ = 1) on φ(x, a); gates `llf` (stream), `llf-window` "
          f"(window mode, W = {peers.WINDOW}), `random`, `first`, `margin`, `bbq`, and `full` (β = 1). "
          "Every gate holds B as a hard cap.",
          "* **budgetsft on block features** (`llf-block`, `random-block`, `full-block`; bbc-news only): the same "
          "rounds featurised with `block` (SPEC §6): e(x) and a bias in the block of each label, so the ridge "
          "head is one linear model per class over e(x), the hypothesis class of the multiclass peers below "
          f"(d = K·(h + 1) = {5 * 385} on bbc-news). Same learner, radius and budgets as above.",
          "* **vw-active**: Vowpal Wabbit `--active --simulation --mellowness m --random_seed s` on the "
          "candidate-features formulation (one binary example (φ(x, a), ±1) per candidate; prediction = argmax "
          "of VW's scores; a round counts as one bought label when VW queries any of its candidates). "
          "Mellowness tuned per (setting, β) on seed 0 by a 10-step log-scale bisection to buy ≈ B; VW has no "
          "hard cap here, so the labels it bought are reported as they are.",
          "* **vw-cs_active**: `--cs_active K --simulation --adax --max_labels B` (the hard-cap variant) on the "
          "per-example vector, cost 0 for the gold and 1 for the others. VW counts `--max_labels` in cost "
          "queries (one per class) and stops at B·K of them, so it can buy more than B examples; bought examples "
          "are read from VW's per-class query log (`--csa_debug`, `ql=true`). Once VW's cap is reached "
          "cs_active stops predicting; the harness then reloads the saved model test-only to predict the rest.",
          "* **river-entropy**: `river.active.EntropySampler(SoftmaxRegression(SGD(1/E‖x‖²)))` on the "
          "per-example vector, discount tuned like the mellowness; no hard cap. EntropySampler never asks while "
          "its classifier knows fewer than two classes (zero entropy), so the harness buys those first labels.",
          "* **modal-pool**: modAL `ActiveLearner` + `uncertainty_sampling`, 10 batches, scikit-learn "
          "`LogisticRegression`, the train split as the pool, exactly B labels; pool-based, so no online "
          "mistakes. (modAL's `teach` fails on scikit-learn ≥ 1.8; the harness refits instead.)",
          "* **skal-pal**, **skal-varunc**, **skal-split**: scikit-activeml's stream strategies "
          "`StreamProbabilisticAL` (Kottke et al. 2015; budget manager `BalancedIncrementalQuantileFilter`), "
          "`VariableUncertainty` and `Split` (Žliobaitė et al. 2014; `VariableUncertaintyBudgetManager`, "
          "`SplitBudgetManager`), each manager built with `budget=β`, around `ParzenWindowClassifier` (RBF, the "
          "library's `gamma=\"mean\"` bandwidth; the classifier of scikit-activeml's stream tutorial) on the "
          "per-example vector, refit on every bought label. Prequential: predict, count the mistake, `query`, "
          "`update`. The budget managers hold β only as a windowed rate (uncapped, they bought up to 10 % more than "
          "B on the 5,000-round low-noise stream), so the harness holds B as a hard cap: once B labels are bought "
          "it turns queries down (counted under the table) and tells `update` that nothing was queried.",
          "* Per-example vector of the multiclass peers: the flattened K × d candidate matrix on the synthetic "
          "streams; e(x) recovered exactly from φ(x, a) = [√h·e(x)⊙e(a), e(a), 1] on the encoder streams.",
          "* Online mistakes: prediction before the label, over every round of the stream. Held-out accuracy: "
          "the method's own model on the same test rounds for every method (synthetic: `env.test_rounds`; real "
          "data: the seeded test split).",
          "* Refit acc.: one downstream trainer for every bought set (`budgetsft.refit.refit_accuracy`): a "
          "conditional-logit head refit on exactly the rounds the method bought, C by 3-fold cross-validation "
          "on the bought set alone, scored on the same test rounds. Every method's set is refit on budgetsft's "
          "rounds of the setting, on `block` features where the setting has them (bbc-news), whatever features "
          "the method learnt on: it compares label sets, not learners. The refit is not timed.",
          "* Peak MiB: tracemalloc peak of one run (β = 0.1 or full, seed 0), the Python heap including numpy "
          "buffers; it does not see VW's C++ heap (VW's dense weight array is in the throughput table). "
          "Wall s: mean per run, tuning excluded.", ""]
    for name, res in peers_out["results"].items():
        f = res["facts"]
        extra = ""
        if name == "sarcasm":
            mx = res.get("max_examples")
            extra = (f" — a seeded subset of {mx} of the 28,498 headlines per seed (80/20 split)" if mx
                     else " — all 28,498 headlines")
        L += [f"### {name}{extra}", "",
              f"T = {f['T']} train rounds, {f['n_test']} test rounds, K = {f['K']}, d = {f['d']}; "
              f"peers' vector: {f['vector']}; refit on {f['refit_features']} features (d = {f['refit_d']})."
              + (f" {res['seconds']:.0f} s." if timing else ""), "",
              peers.markdown_table(res, betas, timing=timing), "", "Tuned: " + peers.knobs_line(res) + "."]
        if any(r["method"] in peers.SKAL for r in res["rows"]):
            L += ["", "Queries the harness turned down at B (mean over seeds): " + peers.cap_line(res) + "."]
        L += [""]
    L += ["## Regret scaling", "", "`benchmarks/regret_scaling.py`. " + _prose(rs.__doc__, 3, 4), "",
          rs.markdown(scaling), ""]
    if timing:
        L += ["## Throughput", "", "`benchmarks/peer_throughput.py`. " + _prose(pt.__doc__, 3, None), "",
              pt.markdown(thr["rows"]), "",
              "VW's update is O(d) per example; budgetsft's ridge keeps a full d × d inverse covariance, O(d²) per "
              "round, which is what buys its confidence widths.", ""]
    if fig_names:
        L += ["## Figures", ""] + [f"![{n}](figures/{n})" for n in fig_names] + [""]
    return "\n".join(L)


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small settings (CI / tests)")
    ap.add_argument("--out", default=str(HERE), help="folder for RESULTS.md and figures/")
    ap.add_argument("--peers-args", default="", help="extra arguments for peers.py")
    args = ap.parse_args(argv)
    q = ["--quick"] if args.quick else []
    p_argv = q + args.peers_args.split()
    t0 = time.perf_counter()
    print("peers ...", file=sys.stderr)
    peers_out = peers.run_all(peers.parse(p_argv), log=lambda m: print(m, file=sys.stderr))
    print("regret scaling ...", file=sys.stderr)
    scaling = rs.run_all(rs.parse(q))
    print("throughput ...", file=sys.stderr)
    thr = pt.run_all(pt.parse(q))
    out = Path(args.out)
    fig_names = figures(out / "figures", peers_out, scaling)
    minutes = (time.perf_counter() - t0) / 60
    py = "python"
    extra = ["--peers-args", repr(args.peers_args)] if args.peers_args else []
    commands = [f"{py} benchmarks/report.py {' '.join(q + extra)}".strip(),
                f"{py} benchmarks/peers.py {' '.join(p_argv)}".strip(),
                f"{py} benchmarks/regret_scaling.py {' '.join(q)}".strip(),
                f"{py} benchmarks/peer_throughput.py {' '.join(q)}".strip()]
    md = results_md(peers_out, scaling, thr, commands=commands, fig_names=fig_names, minutes=minutes)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "RESULTS.md"
    path.write_text(md + "\n")
    print(md)
    return path


if __name__ == "__main__":
    main()
