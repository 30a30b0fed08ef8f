"""Red-team items on files budgetsft reads back: comparator cache (M1, L6), `adapt --report-only` (M4, L7),
`adapt --labels` on an edited ledger (M5), and what the adapt report says (seeds, chance).

Every file is written by the real code, then damaged or edited the way the issue did it.
"""

from __future__ import annotations

import json
import math
import sqlite3
import warnings
from pathlib import Path

import numpy as np
import pytest

from budgetsft import comparator as comp
from budgetsft.adapt.report import rebuild_report, render_seed_markdown, seed_report, write_seed_report
from budgetsft.envs import LinearSoftmaxEnv
from budgetsft.exceptions import BudgetsftWarning, DataError

# --------------------------------------------------------------------------- M1, L6: the comparator cache


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A private cache directory and an empty in-process memo."""
    monkeypatch.setenv("BUDGETSFT_CACHE", str(tmp_path))
    monkeypatch.setattr(comp, "_MEMO", type(comp._MEMO)())
    return tmp_path


ROUNDS = list(LinearSoftmaxEnv(d=5, K=3, rounds=120, seed=4))


def _entry(cache: Path, rounds=ROUNDS, method: str = "exact") -> tuple[comp.Comparator, Path]:
    fresh = comp.solve(rounds, method=method)
    comp._MEMO.clear()  # a new process: only the disk entry is left
    (path,) = (cache / "comparator").glob("*.npz")
    return fresh, path


def _resolve(fresh: comp.Comparator, path: Path, rounds=ROUNDS, method: str = "exact") -> str:
    """Solve again from the tampered entry: it is recomputed (same numbers), with one budgetsft warning."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = comp.solve(rounds, method=method)
    assert not again.cached
    assert again.loss == pytest.approx(fresh.loss, abs=1e-7) and np.allclose(again.per_round, fresh.per_round)
    (w,) = [w for w in caught if issubclass(w.category, BudgetsftWarning)]
    assert str(path) in str(w.message) and "recomputing" in str(w.message) and "\n" not in str(w.message)
    comp._MEMO.clear()
    assert comp.solve(rounds, method=method).cached  # the entry was rewritten, good again
    comp._MEMO.clear()
    return str(w.message)


def test_a_truncated_or_bit_flipped_entry_is_recomputed(cache):
    fresh, path = _entry(cache)
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])
    _resolve(fresh, path)
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x10  # inside the stored arrays: the zip CRC no longer matches
    path.write_bytes(bytes(data))
    _resolve(fresh, path)


def _rewrite(path: Path, **changes) -> None:
    with np.load(path, allow_pickle=False) as z:
        fields = {k: z[k] for k in z.files}
    fields.update(changes)
    with open(path, "wb") as fh:
        np.savez(fh, **fields)


@pytest.mark.parametrize(("change", "why"), [
    ({"loss": np.array([1.0, 2.0])}, "'loss' is not a finite number"),
    ({"loss": -1e6}, "outside [0, T"),
    ({"loss": np.nan}, "'loss' is not a finite number"),
    ({"lower": np.nan}, "'lower' is not a finite number"),
    ({"loss": 1e9, "lower": 1e9}, "outside [0, T"),
    ({"method": "approx"}, "method 'approx'"),
    ({"key": "0" * 32}, "another stream's"),
    ({"theta": np.full(5, 1e6)}, "leaves the box"),
    ({"per_round": np.zeros(120), "loss": 0.0, "lower": 0.0}, "not the hinge loss of 'theta'"),
    ({"theta": np.zeros(5)}, "not the hinge loss of 'theta'"),
    ({"per_round": np.zeros(7)}, "'per_round' is not 120"),
])
def test_a_tampered_entry_is_checked_against_its_key_and_bounds_and_recomputed(cache, change, why):
    fresh, path = _entry(cache)
    _rewrite(path, **change)
    assert why in _resolve(fresh, path)


def test_an_entry_of_another_stream_under_this_key_is_recomputed(cache):
    other = list(LinearSoftmaxEnv(d=5, K=3, rounds=120, seed=5))
    _, other_path = _entry(cache, other)
    saved = other_path.read_bytes()
    other_path.unlink()
    fresh, path = _entry(cache)
    path.write_bytes(saved)
    _resolve(fresh, path)


def test_a_good_approx_entry_is_still_read(cache):
    fresh, path = _entry(cache, method="approx")
    with warnings.catch_warnings():
        warnings.simplefilter("error", BudgetsftWarning)
        again = comp.solve(ROUNDS, method="approx")
    assert again.cached and again.loss == fresh.loss and again.lower == fresh.lower


# --------------------------------------------------------------------------- M4, L7: adapt --report-only


def _saved_run(out: Path, seeds=(0, 1), n: int = 6, chance: float | None = None,
               zero_shot: list[int] | None = None, gate: str = "llf") -> dict:
    """An `adapt` output folder as run_adapt writes it: report.json, report.md, accuracy.png, predictions."""
    rng = np.random.default_rng(0)
    results = []
    for seed in seeds:
        correct = {m: rng.integers(0, 2, size=n).tolist() for m in ("zero-shot", gate, "random", "all")}
        if zero_shot is not None:
            correct["zero-shot"] = list(zero_shot)
        row = {"seed": seed, "test_size": n, "train_size": 20, "budget": 2, "features": "block",
               "labels": {"zero-shot": 0, gate: 2, "random": 2, "all": 20}, "correct": correct}
        if chance is not None:
            row["chance"] = chance
        results.append(row)
        (out / f"seed-{seed}").mkdir(parents=True, exist_ok=True)
        (out / f"seed-{seed}" / "predictions.json").write_text(json.dumps({"test_ids": [str(i) for i in range(n)],
                                                                           "correct": correct}))
    report = seed_report(results, gate=gate, baselines=["random", "all"])
    report.update(data="topics.jsonl", model="./llama", beta=0.1, mode="stream", labels_file=None,
                  settings={"epochs": 1, "lr": 3e-3, "lora_r": 16, "lora_alpha": 16, "lora_layers": 2,
                            "n_layers": 2, "batch_size": 4, "max_prompt_tokens": 64, "eval_batch_size": 8,
                            "dtype": "fp32", "device": "cpu", "normalize": "mean"},
                  timing={"estimate_seconds": 10.0, "wall_seconds": 12.0})
    write_seed_report(report, out)
    return report


def _edit_report(out: Path, edit) -> None:
    path = out / "report.json"
    report = json.loads(path.read_text())
    edit(report)
    path.write_text(json.dumps(report))


def _edit_predictions(out: Path, seed: int, edit) -> None:
    path = out / f"seed-{seed}" / "predictions.json"
    pred = json.loads(path.read_text())
    edit(pred)
    path.write_text(json.dumps(pred))


def _replace_with_dir(path: Path) -> None:
    path.unlink()
    path.mkdir()


TAMPERS = {
    "report is a list": (lambda out: (out / "report.json").write_text("[1, 2]"), "report.json", "(top level)"),
    "report nested too deep": (lambda out: (out / "report.json").write_text("[" * 100_000 + "]" * 100_000),
                               "report.json", "nested too deep"),
    "report is a directory": (lambda out: _replace_with_dir(out / "report.json"), "report.json", "a directory"),
    "per_seed not a list": (lambda out: _edit_report(out, lambda r: r.update(per_seed={"seed": 0})),
                            "report.json", "'per_seed'"),
    "per_seed lacks seed": (lambda out: _edit_report(out, lambda r: r["per_seed"][1].pop("seed")),
                            "report.json", "'per_seed[1].seed'"),
    "per_seed lacks labels": (lambda out: _edit_report(out, lambda r: r["per_seed"][0].pop("labels")),
                              "report.json", "'per_seed[0].labels'"),
    "seed is a path": (lambda out: _edit_report(out, lambda r: r["per_seed"][0].update(seed="../x")),
                       "report.json", "'per_seed[0].seed'"),
    "test_size a string": (lambda out: _edit_report(out, lambda r: r["per_seed"][0].update(test_size="6")),
                           "report.json", "'per_seed[0].test_size'"),
    "test_size 1e9": (lambda out: _edit_report(out, lambda r: r["per_seed"][0].update(test_size=10**9)),
                      "report.json", "'per_seed[0].test_size'"),
    "test_size not the predictions'": (lambda out: _edit_report(out, lambda r: r["per_seed"][0].update(test_size=5)),
                                       "seed-0/predictions.json", "'correct.zero-shot'"),
    "paired key without a dash": (lambda out: _edit_report(out, lambda r: r["paired"].update(llfrandom={})),
                                  "report.json", "'paired.llfrandom'"),
    "settings not numbers": (lambda out: _edit_report(out, lambda r: r["settings"].update(epochs="three")),
                             "report.json", "'settings.epochs'"),
    "predictions a directory": (lambda out: _replace_with_dir(out / "seed-1" / "predictions.json"),
                                "seed-1/predictions.json", "a directory"),
    "predictions a list": (lambda out: (out / "seed-0" / "predictions.json").write_text("[]"),
                           "seed-0/predictions.json", "(top level)"),
    "values are strings": (lambda out: _edit_predictions(out, 0, lambda p: p["correct"]["llf"].__setitem__(0, "1")),
                           "seed-0/predictions.json", "'correct.llf[0]'"),
    "a method missing": (lambda out: _edit_predictions(out, 1, lambda p: p["correct"].pop("random")),
                         "seed-1/predictions.json", "'correct'"),
    # L7: an accuracy of 500 % or NaN
    "correct is 5": (lambda out: _edit_predictions(out, 1, lambda p: p["correct"]["all"].__setitem__(2, 5)),
                     "seed-1/predictions.json", "'correct.all[2]'"),
    "correct is NaN": (lambda out: _edit_predictions(out, 0, lambda p: p["correct"]["llf"].__setitem__(3, math.nan)),
                       "seed-0/predictions.json", "'correct.llf[3]'"),
}


def _report_only(out: Path):
    from typer.testing import CliRunner

    from budgetsft.cli import app

    return CliRunner().invoke(app, ["adapt", "--out", str(out), "--report-only"])


@pytest.mark.parametrize("case", list(TAMPERS))
def test_report_only_on_a_tampered_run_names_the_file_and_the_field(tmp_path, case):
    tamper, file, field = TAMPERS[case]
    out = tmp_path / "run"
    _saved_run(out)
    res = _report_only(out)
    assert res.exit_code == 0, res.output  # the untouched run rebuilds
    tamper(out)
    res = _report_only(out)
    assert isinstance(res.exception, DataError), (case, res.exception)
    message = str(res.exception)
    assert file in message and field in message and "\n" not in message


def test_report_only_with_out_a_file(tmp_path):
    (tmp_path / "run").write_text("not a folder")
    res = _report_only(tmp_path / "run")
    assert isinstance(res.exception, DataError) and "a file, not the output folder" in str(res.exception)


def test_report_only_rebuilds_the_same_report(tmp_path):
    out = tmp_path / "run"
    report = _saved_run(out)
    again = rebuild_report(out)
    assert again["methods"] == report["methods"] and again["paired"] == report["paired"]


def test_a_gate_named_with_a_hyphen_is_paired_whole(tmp_path):
    # `adapt --features grad` names its gate's sets llf-grad/<recipe>: the paired rows must not split that name
    out = tmp_path / "run"
    report = _saved_run(out, gate="llf-grad/plain")
    text = (out / "report.md").read_text()
    assert "| llf-grad/plain − random |" in text and "| llf-grad/plain − all |" in text
    assert "llf-grad/plain − random = " in text and "llf − grad" not in text
    assert "no difference between llf-grad/plain and random is shown" in text
    again = rebuild_report(out)
    assert list(again["paired"]) == ["llf-grad/plain-random", "llf-grad/plain-all"]
    assert again["paired"] == report["paired"]


# --------------------------------------------------------------------------- the report's words


def test_the_report_speaks_of_the_seeds_it_has_and_of_chance(tmp_path):
    half = [1, 0] * 20
    one = render_seed_markdown(_saved_run(tmp_path / "one", seeds=(0,), n=40, chance=0.5, zero_shot=half))
    assert "with 3 seeds" not in one and "With one seed only the test items are resampled" in one
    three = render_seed_markdown(_saved_run(tmp_path / "three", seeds=(0, 1, 2)))
    assert "with 3 seeds it is coarse" in three
    # zero-shot right on half the items of two candidates: at chance, and said so
    assert "is at chance (0.5000" in one
    # right on every item where a guess is right one time in ten: far above chance, nothing is said
    far = _saved_run(tmp_path / "far", seeds=(0,), n=40, chance=0.1, zero_shot=[1] * 40)
    assert "chance" not in render_seed_markdown(far)
    # a report written before chance was recorded: nothing is said either
    assert "chance" not in render_seed_markdown(_saved_run(tmp_path / "old", seeds=(0,), n=40, zero_shot=half))


# --------------------------------------------------------------------------- M5: an edited ledger


def test_adapt_labels_on_a_ledger_with_an_edited_answer_names_the_ledger_and_the_query(tmp_path, monkeypatch):
    from budgetsft.adapt.pipeline import read_labels
    from budgetsft.sessions.oracles import DatasetOracle
    from budgetsft.sessions.session import Session

    monkeypatch.setenv("BUDGETSFT_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    rows = [{"id": f"q{i:03d}", "prompt": f"Question {i}: which topic is item {i % 7} about?",
             "candidates": ["alpha", "beta", "gamma"], "answer": i % 3} for i in range(40)]
    Path("d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = {"data": {"name": "d.jsonl"}, "features": {"name": "encoder", "device": "cpu"},
           "gate": {"name": "llf", "beta": 0.2}, "regret_lp": False, "seed": 0}
    sess = Session.create("s.db", cfg)
    sess.play(DatasetOracle(), stop_at=20)
    sess.close()
    assert all(0 <= ex.answer < 3 for ex in read_labels("s.db"))
    with sqlite3.connect("s.db") as db:
        (query, rnd) = db.execute("SELECT a.query_id, q.round FROM answers a JOIN queries q ON q.id = a.query_id "
                                  "ORDER BY a.query_id LIMIT 1").fetchone()
        db.execute("UPDATE answers SET label = 99 WHERE query_id = ?", (query,))
    with pytest.raises(DataError) as info:
        read_labels("s.db")
    message = str(info.value)
    assert "s.db" in message and f"round {rnd}" in message and "99" in message
    from typer.testing import CliRunner

    from budgetsft.cli import app

    Path("model").mkdir()  # --model is only resolved (it names a config.json) before the labels are read
    Path("model/config.json").write_text("{}")
    res = CliRunner().invoke(app, ["adapt", "--data", "d.jsonl", "--labels", "s.db", "--model", "model", "--out",
                                   "out", "--device", "cpu"])  # the CLI says the same, before any model is loaded
    assert isinstance(res.exception, DataError) and str(res.exception) == message


def test_the_report_gives_the_whole_commands_time_when_it_knows_what_came_before_the_estimate(tmp_path):
    report = _saved_run(tmp_path)
    assert "Wall time 0.2 min (estimated 0.2 min before the start)." in render_seed_markdown(report)
    report["timing"]["before_seconds"] = 90.0
    text = render_seed_markdown(report)
    assert ("Wall time 0.2 min (estimated 0.2 min before the start); 1.7 min in all with the 1.5 min before the "
            "estimate (selection, features, model).") in text
    report["settings"]["all_passes"] = 2  # no all/plain method in this run: nothing said about its passes
    assert "for all/plain" not in render_seed_markdown(report)
