"""`budgetsft adapt`: select labels with a gate, fine-tune LoRA on them, compare (SPEC §7).

1. The train split is featurised (cached) and streamed through the game with
   the chosen gate at budget B = ⌊βn⌋ (stream mode), or the gate picks from
   the whole pool in batches (pool mode, :func:`budgetsft.gates.select_pool`).
2. The same budget is spent by ``random`` and by ``first`` (first-come) on
   the same stream, and ``all`` takes every train label.
3. One fresh LoRA per labelled set, evaluated by candidate log-likelihood on
   the test split, beside zero-shot (:func:`compare_adaptations`).

The causal LM is ``model``: the packaged SmolLM2-135M-Instruct by default, or a
local directory or Hugging Face id (:func:`budgetsft.features.models.resolve_model`);
with ``features="causal"`` the gate's scoring head reads the same model. The
adapters record that name as their base (:func:`budgetsft.adapt.lora.load_adapted`).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from budgetsft._validation import check_choice, check_float
from budgetsft.budget import Budget
from budgetsft.config import GATES, LEARNERS, SEEDED_OFFSET
from budgetsft.data import Example
from budgetsft.exceptions import ConfigError

__all__ = ["select_labels", "run_adapt"]


def select_labels(
    streams,
    gate: str,
    beta: float,
    *,
    seed: int = 0,
    mode: str = "stream",
    learner: dict | None = None,
    baselines: tuple[str, ...] = ("random", "first"),
    batch_size: int = 8,
    progress: bool = False,
) -> dict[str, dict[str, Any]]:
    """Labelled train sets bought by ``gate`` and by each baseline at the same budget.

    ``progress`` shows a tqdm bar on stderr over the labels bought in pool mode.

    Returns
    -------
    dict
        name -> {"examples": list of Example, "ids": list of str,
        "head_accuracy": held-out accuracy of the scoring head trained on them}.
    """
    from budgetsft.experiment import held_out_accuracy, run

    check_choice("select_labels", "mode", mode, ("stream", "pool"))
    if gate not in GATES:
        raise ConfigError(f"unknown gate {gate!r}; valid: {', '.join(sorted(GATES))}.")
    check_float("select_labels", "beta", beta, low=0.0, high=1.0, low_open=True)
    train, test = streams.train, streams.test
    by_id = {ex.id: ex for ex in streams.dataset.train}
    learner = learner or {"name": "ridge"}
    out: dict[str, dict[str, Any]] = {}
    names = [gate] + [b for b in baselines if b != gate]
    for name in names:
        cfg = {"gate": {"name": name, "beta": beta}, "learner": dict(learner), "seed": seed, "test_rounds": 0}
        if name == gate and mode == "pool":
            from tqdm.auto import tqdm

            from budgetsft.gates import select_pool

            spec = dict(learner)
            head = LEARNERS[spec.pop("name")](**spec)
            budget = Budget.from_beta(beta, len(train))
            with tqdm(total=int(budget.total), desc=f"{name} pool selection", unit="label",
                      disable=not progress, file=sys.stderr, leave=False) as bar:
                bought = select_pool(head, [r.features for r in train], budget, lambda i: train[i].gold,
                                     batch_size=batch_size, costs=[r.cost for r in train],
                                     progress=lambda k: bar.update(k - bar.n))
            ids = [train[i].id for i in bought]
            acc = held_out_accuracy(head, test)
        else:
            res = run(cfg, stream=train, test=test)
            ids = [r.id for r in res.records if r.queried]
            acc = res.summary["test_accuracy"]
        out[name] = {"examples": [by_id[i] for i in ids], "ids": ids, "head_accuracy": acc}
    out["all"] = {"examples": list(streams.dataset.train), "ids": [ex.id for ex in streams.dataset.train],
                  "head_accuracy": run({"gate": {"name": "full", "beta": 1.0}, "learner": dict(learner),
                                        "seed": seed, "test_rounds": 0}, stream=train, test=test
                                       ).summary["test_accuracy"]}
    return out


def run_adapt(
    data: str,
    out_dir: str | Path,
    *,
    gate: str = "llf",
    beta: float = 0.1,
    seed: int = 0,
    features: str = "causal",
    model: str = "smollm2-135m-instruct",
    mode: str = "stream",
    max_examples: int | None = None,
    max_test: int | None = None,
    max_steps: int = 60,
    lr: float = 2e-4,
    lora_r: int = 8,
    batch_size: int = 8,
    device: str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Select, fine-tune and compare; writes adapters, labelled sets and the report under ``out_dir``.

    ``model`` is the causal LM fine-tuned (and featurising, when ``features="causal"``).
    """
    from budgetsft.adapt.report import compare_adaptations, write_report
    from budgetsft.features.models import load_causal_lm, resolve_device, resolve_model
    from budgetsft.realdata import load_streams

    out = Path(out_dir)
    resolve_model(model, "causal")  # a bad name fails before anything is featurised
    options = {"model_name": model} if features == "causal" else None
    streams = load_streams(data, features, seed=seed, max_examples=max_examples, device=device, progress=progress,
                           feature_options=options)
    if progress:
        print(f"selecting labels: {gate} ({mode} mode), random, first at β = {beta} "
              f"(B = {math.floor(beta * len(streams.train) + 1e-9)} of {len(streams.train)})", file=sys.stderr)
    sets = select_labels(streams, gate, beta, seed=seed, mode=mode, progress=progress)
    test: list[Example] = list(streams.dataset.test)
    if max_test is not None and len(test) > max_test:
        keep = np.sort(np.random.default_rng([seed, SEEDED_OFFSET["gate"]]).choice(len(test), max_test, replace=False))
        test = [test[i] for i in keep]
    dev = resolve_device(device)
    report = compare_adaptations(
        lambda: load_causal_lm(model, device=dev),
        {name: s["examples"] for name, s in sets.items()},
        test,
        out_dir=out,
        max_steps=max_steps,
        lr=lr,
        lora_r=lora_r,
        seed=seed,
        batch_size=batch_size,
        eval_dtype="bf16" if dev == "cpu" else "fp32",  # bf16 autocast is 2-4x faster on AVX-512 BF16 CPUs
        progress=progress,
    )
    report["model"] = model
    report["selection"] = {
        "data": data,
        "features": features,
        "gate": gate,
        "mode": mode,
        "beta": beta,
        "budget": math.floor(beta * len(streams.train) + 1e-9),
        "train_size": len(streams.train),
        "head_accuracy": {name: s["head_accuracy"] for name, s in sets.items()},
    }
    write_report(report, out)
    with (out / "report.md").open("a", encoding="utf-8") as f:
        f.write(f"Model: {model}. Selection: data={data}, features={features}, gate={gate} ({mode} mode), β={beta}, "
                f"budget={report['selection']['budget']} of {len(streams.train)} train examples, seed={seed}.\n\n")
        f.write("Held-out accuracy of the linear scoring head trained on each set (same features): "
                + ", ".join(f"{k} {v:.4f}" for k, v in report["selection"]["head_accuracy"].items()) + ".\n")
    (out / "selection.json").write_text(json.dumps({k: s["ids"] for k, s in sets.items()}, indent=1) + "\n")
    return report
