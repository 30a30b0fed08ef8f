"""Compare LoRA adaptations trained on different label sets (SPEC §7).

The question: at the same budget, does the LLF-chosen set give a better
adapted model than a random or first-B set, and how close does it come to
fine-tuning on every label?

* :func:`seed_report` / :func:`write_seed_report`: the report of
  ``budgetsft adapt`` over several seeds, with paired intervals
  (:mod:`budgetsft.adapt.stats`) that say which differences are noise;
  ``report.json``, ``report.md`` and ``accuracy.png``.
* :func:`compare_adaptations`: one seed, one fresh LoRA per named training set
  with a fixed number of steps (:func:`budgetsft.adapt.lora.finetune_lora`), one
  table without intervals (the library's generic path, any causal LM).
"""

from __future__ import annotations

import gc
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from budgetsft._validation import check_choice, check_float, check_int, check_seed, is_int
from budgetsft.adapt.evaluate import accuracy
from budgetsft.adapt.lora import check_examples, finetune_lora, save_adapters
from budgetsft.data.schema import Example
from budgetsft.exceptions import ConfigError, DataError

__all__ = ["compare_adaptations", "write_report", "seed_report", "write_seed_report", "render_seed_markdown",
           "plot_accuracy", "rebuild_report", "check_saved_report", "check_saved_predictions"]

#: Steps averaged for the "final train loss" column (a single step is noisy).
FINAL_LOSS_WINDOW = 10


def _write_jsonl(path: Path, examples: Sequence[Example]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for ex in examples:
            f.write(json.dumps(ex.to_json(), ensure_ascii=False) + "\n")


def _fmt(x: float | None, spec: str) -> str:
    return "–" if x is None else format(x, spec)


def render_markdown(report: Mapping[str, Any]) -> str:
    """The report as a Markdown table (one row per method, zero-shot first)."""
    s = report["settings"]
    lines = [
        "# Budgeted adaptation: LoRA on bought labels",
        "",
        f"Test examples: {report['test_size']}. LoRA r={s['lora_r']}, lr={s['lr']}, "
        f"max_steps={s['max_steps']}, batch_size={s['batch_size']}, seed={s['seed']}, "
        f"dtype={s['dtype']}, scoring={s['normalize']} log-likelihood.",
        "",
        "| method | labels used | test accuracy | Δ vs zero-shot | train s | final train loss |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in report["rows"]:
        lines.append(
            f"| {row['method']} | {row['labels']} | {row['accuracy']:.4f} | "
            f"{row['delta']:+.4f} | {_fmt(row['train_seconds'], '.1f')} | "
            f"{_fmt(row['final_loss'], '.4f')} |"
        )
    lines += [
        "",
        f"Final train loss: mean of the last {FINAL_LOSS_WINDOW} steps' losses. "
        "A set with no labels is reported as the zero-shot model.",
        "",
    ]
    return "\n".join(lines)


def write_report(report: Mapping[str, Any], out_dir: str | Path) -> None:
    """Write ``report.json`` and ``report.md`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (out / "report.md").write_text(render_markdown(report), encoding="utf-8")


def compare_adaptations(
    base_loader: Callable[[], tuple[Any, Any]],
    train_sets: Mapping[str, Sequence[Example]],
    test: Sequence[Example],
    *,
    out_dir: str | Path,
    max_steps: int = 100,
    lr: float = 2e-4,
    lora_r: int = 8,
    seed: int = 0,
    batch_size: int = 8,
    dtype: str = "bf16",
    eval_batch_size: int = 16,
    normalize: str = "mean",
    eval_dtype: str = "fp32",
    progress: bool = True,
) -> dict[str, Any]:
    """Fine-tune one LoRA per training set and compare test accuracies.

    Zero-shot accuracy is measured once on a model from ``base_loader()``.
    Then, for each named set in order, a fresh base model is loaded, LoRA is
    fine-tuned on the set with the shared hyper-parameters and seed
    (:func:`budgetsft.adapt.lora.finetune_lora`), its test accuracy is
    measured (:func:`budgetsft.adapt.evaluate.accuracy`), and the adapters and
    the set are written. A set with no examples is not trained: its row
    repeats the zero-shot accuracy.

    Files written under ``out_dir``::

        adapters/<name>/     LoRA adapters (save_pretrained)
        labels/<name>.jsonl  the training set, canonical JSONL
        report.json          the returned dict
        report.md            Markdown table: method, labels used, test
                             accuracy, delta vs zero-shot, train seconds,
                             final train loss

    Every number except the timings is identical across two runs with the
    same seed, loader and data.

    Parameters
    ----------
    base_loader : callable () -> (model, tokenizer)
        Returns a fresh base model and its tokenizer at each call.
    train_sets : mapping of str to sequence of Example
        E.g. ``{"llf": ..., "random": ..., "first": ..., "all": ...}``.
    test : sequence of Example
        Labelled held-out split.
    out_dir : path
    max_steps, lr, lora_r, seed, batch_size, dtype
        Passed to :func:`finetune_lora`.
    eval_batch_size, normalize, eval_dtype
        Passed to :func:`score_candidates` (through :func:`accuracy`) as
        ``batch_size``, ``normalize`` and ``dtype``.
    progress : bool, default=True

    Returns
    -------
    dict
        ``{"settings": {...}, "test_size": n, "zero_shot_accuracy": a0,
        "rows": [{"method", "labels", "accuracy", "delta", "train_seconds",
        "final_loss", "history", "adapters", "labels_file"}, ...]}``; the
        first row is ``"zero-shot"``.

    Examples
    --------
    >>> report = compare_adaptations(
    ...     lambda: load_causal_lm("smollm2-135m-instruct"),
    ...     {"llf": llf_set, "random": random_set},
    ...     test, out_dir="runs/adapt", max_steps=100)  # doctest: +SKIP
    """
    owner = "compare_adaptations"
    max_steps = check_int(owner, "max_steps", max_steps, low=1)
    lr = check_float(owner, "lr", lr, low=0, low_open=True, high_open=True)
    lora_r = check_int(owner, "lora_r", lora_r, low=1)
    seed = check_seed(owner, seed)
    seed = 0 if seed is None else seed
    batch_size = check_int(owner, "batch_size", batch_size, low=1)
    eval_batch_size = check_int(owner, "eval_batch_size", eval_batch_size, low=1)
    dtype = check_choice(owner, "dtype", dtype, ("bf16", "fp32"))
    normalize = check_choice(owner, "normalize", normalize, ("mean", "sum"))
    eval_dtype = check_choice(owner, "eval_dtype", eval_dtype, ("fp32", "bf16"))
    if not callable(base_loader):
        raise ConfigError(
            f"The 'base_loader' parameter of {owner} must be a callable returning "
            f"(model, tokenizer). Got {base_loader!r}."
        )
    if not isinstance(train_sets, Mapping) or not train_sets:
        raise ConfigError(
            f"The 'train_sets' parameter of {owner} must be a non-empty mapping of name to "
            f"examples. Got {train_sets!r}."
        )
    names = list(train_sets)
    for name in names:
        if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
            raise ConfigError(
                f"The 'train_sets' parameter of {owner} needs names usable as directory names. "
                f"Got {name!r}."
            )
    sets = {name: list(train_sets[name]) for name in names}
    for name, examples in sets.items():
        if examples:
            check_examples(f"{owner} (train set {name!r})", examples, what="fine-tune on")
    test = check_examples(f"{owner} (test)", test, what="evaluate")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = {
        "max_steps": max_steps,
        "lr": lr,
        "lora_r": lora_r,
        "seed": seed,
        "batch_size": batch_size,
        "dtype": dtype,
        "eval_batch_size": eval_batch_size,
        "normalize": normalize,
        "eval_dtype": eval_dtype,
    }
    eval_kw = {
        "batch_size": eval_batch_size,
        "normalize": normalize,
        "dtype": eval_dtype,
        "progress": progress,
    }

    model, tokenizer = base_loader()
    t0 = time.perf_counter()
    acc0 = accuracy(model, tokenizer, test, **eval_kw)
    eval_seconds = time.perf_counter() - t0
    del model
    gc.collect()

    rows: list[dict[str, Any]] = [
        {
            "method": "zero-shot",
            "labels": 0,
            "accuracy": acc0,
            "delta": 0.0,
            "train_seconds": None,
            "final_loss": None,
            "history": [],
            "adapters": None,
            "labels_file": None,
            "eval_seconds": eval_seconds,
        }
    ]
    for name, examples in sets.items():
        labels_file = Path("labels") / f"{name}.jsonl"
        _write_jsonl(out / labels_file, examples)
        row: dict[str, Any] = {
            "method": name,
            "labels": len(examples),
            "labels_file": str(labels_file),
        }
        if not examples:
            row.update(
                accuracy=acc0, delta=0.0, train_seconds=None, final_loss=None, history=[],
                adapters=None, eval_seconds=None,
            )
            rows.append(row)
            continue
        model, tokenizer = base_loader()
        t0 = time.perf_counter()
        peft_model, history = finetune_lora(
            model, tokenizer, examples, max_steps=max_steps, lr=lr, lora_r=lora_r,
            batch_size=batch_size, seed=seed, dtype=dtype, progress=progress,
        )
        train_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        acc = accuracy(peft_model, tokenizer, test, **eval_kw)
        eval_seconds = time.perf_counter() - t0
        adapters = Path("adapters") / name
        save_adapters(peft_model, out / adapters)
        tail = history[-FINAL_LOSS_WINDOW:]
        row.update(
            accuracy=acc,
            delta=acc - acc0,
            train_seconds=train_seconds,
            final_loss=sum(tail) / len(tail),
            history=history,
            adapters=str(adapters),
            eval_seconds=eval_seconds,
        )
        rows.append(row)
        del model, peft_model
        gc.collect()

    report = {
        "settings": settings,
        "test_size": len(test),
        "zero_shot_accuracy": acc0,
        "rows": rows,
    }
    write_report(report, out)
    return report


# --------------------------------------------------------------------------- #
# Several seeds, with noise bars
# --------------------------------------------------------------------------- #


def seed_report(results: Sequence[Mapping[str, Any]], *, gate: str, baselines: Sequence[str],
                n_resamples: int | None = None, bootstrap_seed: int | None = None,
                comparisons: Sequence[tuple[str, str]] = ()) -> dict[str, Any]:
    """Accuracy of every method and paired differences ``gate − baseline``, with 95 % intervals.

    The intervals are :class:`budgetsft.adapt.stats.PairedBootstrap`'s default:
    a seed-level Student t interval with two seeds or more, a percentile
    bootstrap over the test items with one; ``bootstrap["interval"]`` names
    which (``"seed-t"`` or ``"items-bootstrap"``).

    Parameters
    ----------
    results : sequence of dict, one per seed
        Each with ``seed``, ``test_size``, ``labels`` (method -> labels used) and
        ``correct`` (method -> 0/1 list over that seed's test items); every seed
        has the same methods.
    gate : str
        The method every baseline is compared with (``"llf"``).
    baselines : sequence of str
        ``paired`` holds ``"<gate>-<baseline>"`` for each one present.
    n_resamples, bootstrap_seed : int, optional
        Default :data:`budgetsft.adapt.stats.N_RESAMPLES` and
        :data:`~budgetsft.adapt.stats.BOOTSTRAP_SEED`.
    comparisons : sequence of (a, b)
        Further paired differences a − b (e.g. ``("llf/distill", "random")``), reported in
        ``comparisons`` as ``{"a", "b", "mean", "ci95", "within_noise"}``; pairs with a method
        that is not present are left out.

    Returns
    -------
    dict
        ``{"seeds", "test_sizes", "methods": {name: {"accuracy": [per seed], "mean",
        "ci95", "labels": [per seed]}}, "paired": {"llf-random": {"mean", "ci95",
        "per_seed", "within_noise"}, ...}, "bootstrap": {...}, "per_seed": [...]}``.
    """
    from budgetsft.adapt.stats import BOOTSTRAP_SEED, INTERVAL_METHODS, N_RESAMPLES, PairedBootstrap

    if not results:
        raise ConfigError("seed_report needs the results of at least one seed.")
    n_resamples = N_RESAMPLES if n_resamples is None else n_resamples
    bootstrap_seed = BOOTSTRAP_SEED if bootstrap_seed is None else bootstrap_seed
    names = list(results[0]["correct"])
    for r in results:
        if list(r["correct"]) != names:
            raise ConfigError(f"seed_report: seed {r['seed']} has methods {list(r['correct'])}, seed "
                              f"{results[0]['seed']} has {names}.")
    boot = PairedBootstrap([int(r["test_size"]) for r in results], n_resamples=n_resamples, seed=bootstrap_seed)
    methods = {}
    with_nll = all(isinstance(r.get("nll"), Mapping) and list(r["nll"]) == names for r in results)
    nll_boot = PairedBootstrap([int(r["test_size"]) for r in results], n_resamples=n_resamples, seed=bootstrap_seed,
                               bounds=None)
    for m in names:
        s = boot.summary([r["correct"][m] for r in results])
        methods[m] = {"accuracy": s["per_seed"], "mean": s["mean"], "ci95": s["ci95"],
                      "labels": [int(r["labels"][m]) for r in results]}
        if with_nll:  # gold NLL of the model's distribution over the candidates (lower is better)
            n = nll_boot.summary([r["nll"][m] for r in results])
            methods[m]["nll"] = {"per_seed": n["per_seed"], "mean": n["mean"], "ci95": n["ci95"]}
    paired = {}
    for b in baselines:
        if b in methods and gate in methods and b != gate:
            paired[f"{gate}-{b}"] = boot.paired([r["correct"][gate] for r in results],
                                                [r["correct"][b] for r in results])
    compared = []
    for a, b in comparisons:
        if a in methods and b in methods and a != b:
            d = boot.paired([r["correct"][a] for r in results], [r["correct"][b] for r in results])
            compared.append({"a": a, "b": b, "mean": d["mean"], "ci95": d["ci95"], "within_noise": d["within_noise"]})
    per_seed = [{k: v for k, v in r.items() if k not in ("correct", "nll")} for r in results]
    return {
        "comparisons": compared,
        "seeds": [int(r["seed"]) for r in results],
        "test_sizes": [int(r["test_size"]) for r in results],
        "gate": gate,
        "methods": methods,
        "paired": paired,
        "bootstrap": {"n_resamples": n_resamples, "seed": bootstrap_seed, "level": 0.95,
                      "interval": boot.interval_method_, "method": INTERVAL_METHODS[boot.interval_method_]},
        "per_seed": per_seed,
    }


def _ci(ci: Sequence[float], spec: str = ".4f") -> str:
    return f"[{format(ci[0], spec)}, {format(ci[1], spec)}]"


def _pair(name: str, gate: str) -> tuple[str, str]:
    """The two methods of a ``paired`` key, ``f"{gate}-{baseline}"``: the gate's own name may hold a "-"
    (``llf-grad/plain``), so it is taken off the front whole."""
    if name.startswith(f"{gate}-"):
        return gate, name[len(gate) + 1:]
    a, b = name.split("-", 1)
    return a, b


def _verdict(name: str, p: Mapping[str, Any], gate: str) -> str:
    a, b = _pair(name, gate)
    if p["within_noise"]:
        return f"within noise (the interval contains 0): no difference between {a} and {b} is shown"
    better = a if p["mean"] > 0 else b
    return f"{better} is better (the interval excludes 0)"


def render_seed_markdown(report: Mapping[str, Any]) -> str:
    """``report.md``: the method table, the paired differences with verdicts, the plot, the settings."""
    s = report.get("settings", {})
    seeds = report["seeds"]
    methods, paired = report["methods"], report["paired"]
    gate = report.get("gate", "llf")
    lines = [f"# Budgeted adaptation: LoRA on bought labels ({report.get('data', '?')}, "
             f"{len(seeds)} seed{'s' if len(seeds) > 1 else ''})", ""]
    what = [f"Model {report.get('model', '?')}"]
    if report.get("beta") is not None:
        def each(key: str) -> str:
            values = [r.get(key) for r in report.get("per_seed", [])]
            return str(values[0]) if len(set(values)) == 1 else ", ".join(map(str, values))

        what.append(f"β = {report['beta']} (B = {each('budget')} of {each('train_size')} "
                    f"train examples), labels bought as `budgetsft run` buys them "
                    f"({report.get('mode', 'stream')} mode, features {report['per_seed'][0].get('features')})")
    if report.get("labels_file"):
        what.append(f"labels from {report['labels_file']}")
    if isinstance(report.get("random_sets"), str):  # with --labels: the random sets of the same size, or why none
        what.append(report["random_sets"])
    sizes = report["test_sizes"]
    what.append(f"seeds {', '.join(map(str, seeds))}, test items per seed "
                f"{sizes[0] if len(set(sizes)) == 1 else ', '.join(map(str, sizes))}")
    lines += ["; ".join(what) + ".", ""]
    if s:
        lines += [f"Recipe (every set): LoRA r = {s['lora_r']}, α = {s['lora_alpha']} on every linear layer of the "
                  f"top {s['lora_layers']} of {s['n_layers']} decoder layers; {s['epochs']:g} epochs over the set"
                  f"{_all_passes_note(s, methods)}, "
                  f"batch {s['batch_size']}, AdamW lr {s['lr']:g} decaying linearly to 0; prompt = label "
                  f"instruction + the first {s['max_prompt_tokens']} tokens of the text; {s['dtype']} on "
                  f"{s['device']}; a candidate's score is the mean log-likelihood of its tokens.", ""]
    lines += _recommendation_lines(report)
    with_nll = all("nll" in m for m in methods.values())
    lines += ["| method | labels | accuracy per seed | mean | 95 % CI |" + (" gold NLL | 95 % CI |" if with_nll
                                                                          else ""),
              "|---|---:|---|---:|---|" + ("---:|---|" if with_nll else "")]
    for name, m in methods.items():
        labels = m["labels"]
        lab = str(labels[0]) if len(set(labels)) == 1 else f"{np.mean(labels):.0f} ({min(labels)}–{max(labels)})"
        shown = f"**{name}** (recommended)" if name == report.get("recommended") else name
        lines.append(f"| {shown} | {lab} | {', '.join(f'{a:.4f}' for a in m['accuracy'])} | {m['mean']:.4f} | "
                     f"{_ci(m['ci95'])} |" + (f" {m['nll']['mean']:.3f} | {_ci(m['nll']['ci95'], '.3f')} |"
                                              if with_nll else ""))
    grid = _selection_grid(methods)
    if grid:
        lines += ["", "Selection × recipe (mean accuracy over seeds; head: the refit linear head, plain: LoRA on the "
                  "gold labels, distill: LoRA on the gold labels plus the head's labels for the rest of the train "
                  "split):", "", *grid]
    if paired:
        lines += ["", "| paired difference | mean | 95 % CI | per seed | verdict |", "|---|---:|---|---|---|"]
        for name, p in paired.items():
            lines.append(f"| {' − '.join(_pair(name, gate))} | {p['mean']:+.4f} | {_ci(p['ci95'], '+.4f')} | "
                         f"{', '.join(f'{d:+.4f}' for d in p['per_seed'])} | {_verdict(name, p, gate)} |")
    compared = report.get("comparisons", [])
    if compared:
        lines += ["", "| comparison | mean | 95 % CI | verdict |", "|---|---:|---|---|"]
        for c in compared:
            verdict = ("within noise" if c["within_noise"] else
                       f"{c['a'] if c['mean'] > 0 else c['b']} is better (the interval excludes 0)")
            lines.append(f"| {c['a']} − {c['b']} | {c['mean']:+.4f} | {_ci(c['ci95'], '+.4f')} | {verdict} |")
    lines.append("")
    words = []
    for name, p in paired.items():
        a, b = _pair(name, gate)
        diff = f"{a} − {b} = {100 * p['mean']:+.1f} points, 95 % CI {100 * p['ci95'][0]:+.1f} to " \
               f"{100 * p['ci95'][1]:+.1f}"
        if p["within_noise"]:
            words.append(f"{diff}: within noise, the data do not tell {a} from {b}.")
        else:
            words.append(f"{diff}: {a if p['mean'] > 0 else b} is better beyond the noise of seeds and test "
                         "items.")
    chance = _chance(report)
    zero = methods.get("zero-shot")
    if chance is not None and zero is not None and zero["ci95"][0] <= chance:  # its interval reaches chance
        where = "at" if zero["ci95"][1] >= chance else "below"
        words.append(f"Zero-shot accuracy ({zero['mean']:.4f}, 95 % CI {_ci(zero['ci95'])}) is {where} chance "
                     f"({chance:.4f}, one over the number of candidates): the base model does not do this task "
                     "before fine-tuning, so every gain over zero-shot is learnt from the labels.")
    every = "all/plain" if "all/plain" in methods else "all"
    for name in dict.fromkeys([gate, report.get("recommended")]):
        if name in methods and every in methods and methods[every]["mean"] > 0:
            words.append(f"{name} reaches {methods[name]['mean'] / methods[every]['mean']:.3f}× the all-labels "
                         f"accuracy ({methods[name]['mean']:.4f} vs {methods[every]['mean']:.4f}).")
    if words:
        lines += ["In words: " + " ".join(words), ""]
    lines += ["![accuracy against labels](accuracy.png)", "", _intervals_words(report.get("bootstrap", {}), len(seeds)),
              ""]
    t = report.get("timing")
    if t:
        whole = ""
        if _is_number(t.get("before_seconds")):
            whole = (f"; {(t['before_seconds'] + t['wall_seconds']) / 60:.1f} min in all with the "
                     f"{t['before_seconds'] / 60:.1f} min before the estimate (selection, features, model)")
        lines += [f"Wall time {t['wall_seconds'] / 60:.1f} min (estimated {t['estimate_seconds'] / 60:.1f} min "
                  f"before the start){whole}.", ""]
    return "\n".join(lines)


def _all_passes_note(settings: dict[str, Any], methods: dict[str, Any]) -> str:
    """" (N for all/plain, ...)" where all/plain made fewer passes than the other sets (``--all-passes``), else ""."""
    n = settings.get("all_passes")
    if n is None or "all/plain" not in methods or n >= settings["epochs"]:
        return ""
    return f" ({n:g} for all/plain, as many examples as a distill set)"


def _recommendation_lines(report: Mapping[str, Any]) -> list[str]:
    """The paragraph of report.md that says which model is handed back and why."""
    rec = report.get("recommendation")
    if not isinstance(rec, Mapping):
        return []
    method = rec.get("method")
    if method is None:
        return [f"No model is recommended: {rec.get('rule')}.", ""]
    load = f"`budgetsft.adapt.load_adapted(\"{report.get('out', '<this folder>')}\")`"
    if not rec.get("cv"):
        return [f"**Recommended: {method}**, {rec.get('rule')}. Load it with {load}.", ""]
    cv = rec["cv"]
    table = ", ".join(f"{m} {t['nll_mean']:.3f} (accuracy {t['mean']:.4f})"
                      for m, t in sorted(cv.items(), key=lambda kv: kv[1]["nll_mean"]))
    picks = rec.get("per_seed") or []
    agree = sum(p == method for p in picks)
    if rec.get("validation") == "audit":
        n = rec.get("audit") or []
        how = (f"by its gold NLL on the audit labels ({', '.join(map(str, n))} per seed: drawn uniformly at random "
               "within the gate's budget and held out of every model's training; no test item is read)")
        caveat = ("The audit items are a uniform sample of the pool, so these are unbiased estimates for models "
                  "trained on the other labels; with a few dozen items, models within a few points of accuracy are "
                  "a toss-up.")
    else:
        how = f"by {rec.get('folds')}-fold cross-validation on the bought labels alone (no test item is read)"
        caveat = ("The bought labels of a confidence gate are the rounds it was least sure of, so cross-validated "
                  "values are worse than test values and biased against the gate's own head: only their order is "
                  "used; an audit share (--audit) removes that bias.")
    lines = [f"**Recommended: {method}**, {how}: held-out NLL, mean over seeds, {table}. Seeds that pick it on "
             f"their own: {agree} of {len(picks)}. Load it with {load}; "
             "`load_adapted(folder, method=..., seed=...)` loads any other model of the table.",
             "", "Rule: " + str(rec.get("rule")) + ". " + caveat, ""]
    return lines


def _selection_grid(methods: Mapping[str, Any]) -> list[str]:
    """A selection × recipe table of mean accuracies (rows: selections; columns: head, plain, distill)."""
    recipes = [r for r in ("head", "plain", "distill") if any(n.endswith(f"/{r}") for n in methods)]
    sels = list(dict.fromkeys(n.split("/")[0] for n in methods if "/" in n))
    if len(recipes) < 2:
        return []
    lines = ["| selection | " + " | ".join(recipes) + " |", "|---|" + "---:|" * len(recipes)]
    for sel in sels:
        cells = [f"{methods[f'{sel}/{r}']['mean']:.4f}" if f"{sel}/{r}" in methods else "–" for r in recipes]
        lines.append(f"| {sel} | " + " | ".join(cells) + " |")
    return lines


def _intervals_words(b: Mapping[str, Any], n: int) -> str:
    """The paragraph of report.md that says how the intervals were computed (``b``: the report's "bootstrap")."""
    within = "A difference is within noise when its interval contains 0."
    method = b.get("interval", "seeds-items-bootstrap" if n > 1 else "items-bootstrap")
    if method == "seed-t":
        from budgetsft.adapt.stats import t_quantile

        q = t_quantile(n, 0.95)
        return (f"Intervals: Student t on the {n} per-seed values, mean ± {q:.2f} × sd / √{n} ({n - 1} degree"
                f"{'s' if n > 2 else ''} of freedom; sd the standard deviation of the per-seed values), never "
                "narrower than the normal interval of the test-item noise alone; a paired difference uses the "
                "per-seed differences, both methods read on the same test items. It covers the mean over seeds "
                "95 % of the time when the per-seed values are normal, approximately otherwise. "
                f"{within} {_seeds_caveat(n, q)}")
    if method == "items-bootstrap":
        what = ("the test items resampled with replacement within each seed; the same resample for every method "
                "(paired differences)")
    else:
        what = ("the seeds resampled with replacement, and the test items with replacement within each seed; the "
                "same resample for every method (paired differences), statistic averaged over the drawn seeds")
    kind = "two-level percentile bootstrap" if method == "seeds-items-bootstrap" else "percentile bootstrap"
    return (f"Intervals: {kind}, {b.get('n_resamples')} replicates (numpy default_rng({b.get('seed')})): {what}. "
            f"{within} {_seeds_caveat(n)}")


def _seeds_caveat(n: int, q: float | None = None) -> str:
    """What counting the seeds does, said for the number of seeds there are (``q``: the t quantile)."""
    if n == 1:
        return ("With one seed only the test items are resampled: the intervals do not count the variation "
                "between label sets drawn the same way or between LoRA runs (run several seeds, --seeds 0,1,2, "
                "for that).")
    if q is None:
        what = ("Resampling seeds counts the variation between label sets drawn the same way and between LoRA "
                "runs, not only between test items")
        return f"{what}; with {n} seeds it is coarse." if n < 10 else f"{what}."
    what = ("The spread between seeds counts the variation between label sets drawn the same way and between LoRA "
            "runs, not only between test items")
    if n < 10:
        return (f"{what}; with {n} seeds it is coarse: the spread is estimated from {n} values, hence the t quantile "
                f"{q:.2f} (1.96 with many seeds) and wide intervals; more seeds narrow them.")
    return f"{what}."


def _chance(report: Mapping[str, Any]) -> float | None:
    """Accuracy of a uniform guess over the test items (mean of 1/K), when every seed recorded it."""
    values = [r.get("chance") for r in report.get("per_seed", []) if isinstance(r, Mapping)]
    if not values or not all(_is_number(v) and 0 < v <= 1 for v in values):
        return None
    return float(np.mean(values))


def rebuild_report(out_dir: str | Path) -> dict[str, Any]:
    """Recompute an ``adapt`` run's report from what it saved (``report.json`` and ``seed-*/predictions.json``).

    Nothing is trained or scored: the intervals, verdicts, ``report.md`` and
    ``accuracy.png`` are computed again with this version's statistics, and
    written over the old ones. Everything else in the report is kept.

    Both files are checked against the schema ``budgetsft adapt`` writes
    (:func:`check_saved_report`, :func:`check_saved_predictions`) before
    anything is computed: a damaged or edited file is a
    :class:`~budgetsft.exceptions.DataError` naming the file and the field.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out}: a file, not the output folder of `budgetsft adapt`.")
    path = out / "report.json"
    saved = _read_json(path, f"no report here; `budgetsft adapt --out {out}` writes one")
    if isinstance(saved, dict) and saved.get("unscored"):
        raise DataError(f"{path}: this run trained on {saved['unscored'].split(':')[0]}, so it has no test "
                        "predictions to rebuild a report from.")
    old = check_saved_report(saved, path)
    results = []
    methods: list[str] | None = None
    for i, row in enumerate(old["per_seed"]):
        pred = out / f"seed-{row['seed']}" / "predictions.json"
        stored = _read_json(pred, f"the saved predictions of seed {row['seed']} are missing")
        correct = check_saved_predictions(stored, pred, row, field=f"per_seed[{i}]", methods=methods)
        methods = list(correct)
        results.append({**row, "correct": correct, **_saved_nll(stored, correct)})
    gate = old.get("gate", "llf")
    baselines = [_pair(name, gate)[1] for name in old.get("paired", {})]
    comparisons = [(c["a"], c["b"]) for c in old.get("comparisons", [])
                   if isinstance(c, dict) and "a" in c and "b" in c]
    report = {**old, **seed_report(results, gate=gate, baselines=baselines, comparisons=comparisons)}
    try:
        write_seed_report(report, out)
    except OSError as exc:
        raise DataError(f"--out {out}: cannot write the report there ({type(exc).__name__}: {exc}).") from None
    return report


def _saved_nll(pred: Mapping[str, Any], correct: Mapping[str, list[int]]) -> dict[str, Any]:
    """``{"nll": method -> per-item gold NLL}`` from a seed's saved scores, or ``{}`` when they do not fit
    (an older run without scores, or an edited file: the accuracy is still rebuilt)."""
    from budgetsft.adapt.recommend import candidate_nll

    gold, scores = pred.get("gold"), pred.get("scores")
    if not isinstance(gold, list) or not isinstance(scores, dict) or set(scores) != set(correct):
        return {}
    out = {}
    try:
        for m in correct:
            rows = scores[m]
            if len(rows) != len(gold):
                return {}
            if not all(is_int(g, 0, len(v) - 1) for v, g in zip(rows, gold, strict=True)):
                return {}
            out[m] = [candidate_nll(v, g) for v, g in zip(rows, gold, strict=True)]
    except (TypeError, ValueError, IndexError):
        return {}
    if not all(math.isfinite(x) for v in out.values() for x in v):
        return {}
    return {"nll": out}


#: Most test items one seed of a saved report may hold (a bound for hand-edited files).
MAX_TEST_SIZE = 10_000_000


def _read_json(path: Path, missing: str) -> Any:
    """A JSON file's value; every way it can fail is a DataError naming it."""
    if not path.exists():
        raise DataError(f"{path}: {missing}.")
    if path.is_dir():
        raise DataError(f"{path}: a directory, not a JSON file.")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot be read ({type(exc).__name__}: {exc}).") from None
    try:
        return json.loads(text)
    except RecursionError:
        raise DataError(f"{path}: not a report of `budgetsft adapt` (JSON nested too deep).") from None
    except ValueError as exc:
        raise DataError(f"{path}: not valid JSON ({exc}).") from None


def _bad(path: Path, field: str, expected: str, value: Any) -> DataError:
    shown = repr(value)
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    return DataError(f"{path}: field '{field}' must be {expected}. Got {shown}; the file is damaged or was "
                      "edited (run `budgetsft adapt` again to rewrite it).")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_saved_report(report: Any, path: str | Path = "report.json") -> dict[str, Any]:
    """Check a saved ``report.json`` against the schema ``budgetsft adapt`` writes; return it.

    The fields that :func:`rebuild_report` reads or renders are checked:
    ``per_seed`` (a non-empty list of objects with a distinct ``seed`` >= 0, a
    ``test_size`` >= 1 and ``labels``, method -> count >= 0), ``gate``,
    ``paired`` (keys ``"<gate>-<baseline>"``), and when present ``settings``,
    ``timing`` and the scalars of the title.

    Raises
    ------
    DataError
        Naming the file and the first field that does not fit.
    """
    path = Path(path)
    if not isinstance(report, dict):
        raise _bad(path, "(top level)", "an object (the report of `budgetsft adapt`)", report)
    gate = report.get("gate", "llf")
    if not isinstance(gate, str) or not gate:
        raise _bad(path, "gate", "a method name", gate)
    rows = report.get("per_seed")
    if not isinstance(rows, list) or not rows:
        raise _bad(path, "per_seed", "a non-empty list (one object per seed)", rows)
    seen: set[int] = set()
    for i, row in enumerate(rows):
        where = f"per_seed[{i}]"
        if not isinstance(row, dict):
            raise _bad(path, where, "an object", row)
        if not is_int(row.get("seed"), 0):
            raise _bad(path, f"{where}.seed", "an integer >= 0", row.get("seed"))
        if row["seed"] in seen:
            raise _bad(path, f"{where}.seed", "a seed not listed before", row["seed"])
        seen.add(row["seed"])
        if not is_int(row.get("test_size"), 1, MAX_TEST_SIZE):
            raise _bad(path, f"{where}.test_size", f"an integer in [1, {MAX_TEST_SIZE:,}]", row.get("test_size"))
        labels = row.get("labels")
        if not isinstance(labels, dict) or not labels:
            raise _bad(path, f"{where}.labels", "an object: method -> labels used", labels)
        for name, n in labels.items():
            if not is_int(n, 0):
                raise _bad(path, f"{where}.labels.{name}", "an integer >= 0", n)
    paired = report.get("paired", {})
    if not isinstance(paired, dict):
        raise _bad(path, "paired", "an object: '<gate>-<baseline>' -> difference", paired)
    for name in paired:
        if not name.startswith(f"{gate}-") or len(name) == len(gate) + 1:
            raise _bad(path, f"paired.{name}", f"keyed '{gate}-<baseline>' (the gate, a '-', a baseline)", name)
    for key in ("data", "model", "mode", "labels_file"):
        if report.get(key) is not None and not isinstance(report[key], str):
            raise _bad(path, key, "a string", report[key])
    if report.get("beta") is not None and not _is_number(report["beta"]):
        raise _bad(path, "beta", "a number", report["beta"])
    settings = report.get("settings")
    if settings:
        if not isinstance(settings, dict):
            raise _bad(path, "settings", "an object", settings)
        for key in ("lora_r", "lora_alpha", "lora_layers", "n_layers", "epochs", "batch_size", "lr",
                    "max_prompt_tokens"):
            if not _is_number(settings.get(key)):
                raise _bad(path, f"settings.{key}", "a number", settings.get(key))
        for key in ("dtype", "device"):
            if not isinstance(settings.get(key), str):
                raise _bad(path, f"settings.{key}", "a string", settings.get(key))
    timing = report.get("timing")
    if timing:
        if not isinstance(timing, dict):
            raise _bad(path, "timing", "an object", timing)
        for key in ("wall_seconds", "estimate_seconds"):
            if not _is_number(timing.get(key)):
                raise _bad(path, f"timing.{key}", "a number", timing.get(key))
    return report


def check_saved_predictions(pred: Any, path: str | Path, row: Mapping[str, Any], *, field: str = "per_seed[0]",
                            methods: Sequence[str] | None = None) -> dict[str, list[int]]:
    """Check a seed's saved ``predictions.json`` against its row of the report; return its ``correct``.

    ``correct`` must map the methods of ``row["labels"]`` (in the order of
    ``methods``, the previous seed's, when given) to lists of ``row["test_size"]``
    values that are 0 or 1: an accuracy above 1 or a NaN is refused.

    Raises
    ------
    DataError
        Naming the file and the first field that does not fit.
    """
    path = Path(path)
    if not isinstance(pred, dict):
        raise _bad(path, "(top level)", "an object (the predictions of one seed)", pred)
    correct = pred.get("correct")
    if not isinstance(correct, dict) or not correct:
        raise _bad(path, "correct", "an object: method -> list of 0/1 per test item", correct)
    if set(correct) != set(row["labels"]):
        raise _bad(path, "correct", f"keyed by the methods of report.json's {field}.labels "
                   f"({', '.join(row['labels'])})", list(correct))
    if methods is not None and list(correct) != list(methods):
        raise _bad(path, "correct", f"keyed by the methods of the seeds before, in order ({', '.join(methods)})",
                   list(correct))
    n = row["test_size"]
    for name, values in correct.items():
        if not isinstance(values, list) or len(values) != n:
            raise _bad(path, f"correct.{name}", f"a list of {n} values (report.json's {field}.test_size)",
                       values if not isinstance(values, list) else f"a list of {len(values)}")
        for j, v in enumerate(values):
            if not (isinstance(v, int) and v in (0, 1)):  # bools are ints: true/false pass
                raise _bad(path, f"correct.{name}[{j}]", "0 or 1 (whether the method got test item "
                           f"{j} right)", v)
    return {name: [int(v) for v in values] for name, values in correct.items()}


def plot_accuracy(report: Mapping[str, Any], out: str | Path) -> Path:
    """Accuracy against labels used, one point per method with its 95 % interval (zero-shot: a band)."""
    from budgetsft.plots import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    methods = report["methods"]
    # Sets of one size (every gate buys B) share an x: dodge them apart (multiplicatively, the axis is log).
    xs = {name: float(np.mean(m["labels"])) for name, m in methods.items()}
    same = {x: [n for n in xs if xs[n] == x] for x in set(xs.values())}
    i = 0
    for name, m in methods.items():
        lo, hi = m["ci95"]
        group = same[xs[name]]
        x = xs[name] * 1.035 ** (group.index(name) - (len(group) - 1) / 2)
        if x <= 0:
            ax.axhspan(lo, hi, color="0.85", zorder=0)
            ax.axhline(m["mean"], color="0.4", ls="--", lw=1.2, label=f"{name} (band: 95 % CI)")
            continue
        ax.errorbar([x], [m["mean"]], yerr=[[m["mean"] - lo], [hi - m["mean"]]], fmt="os^Dv*P"[i % 7],
                    color=f"C{i % 10}", capsize=4, ms=6, label=name, zorder=3)
        i += 1
    if any(float(np.mean(m["labels"])) > 0 for m in methods.values()):
        ax.set_xscale("log")
    ax.set_xlabel("labels used to fine-tune (mean over seeds)")
    ax.set_ylabel("test accuracy (mean over seeds)")
    ax.set_title(f"LoRA on bought labels: {report.get('data', '')}, {len(report['seeds'])} seed(s), 95 % CI",
                 fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_seed_report(report: Mapping[str, Any], out_dir: str | Path) -> None:
    """Write ``report.json``, ``report.md`` and ``accuracy.png`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    plot_accuracy(report, out / "accuracy.png")
    (out / "report.md").write_text(render_seed_markdown(report), encoding="utf-8")
