"""Rough edges from the red-team issue: `adapt --labels` against random sets, conflicting duplicates in a data
file, label names at the terminal oracle, and no stray library progress bars in `--json` runs.

The causal LM is a tiny random-weight Llama (hidden size 32) saved with the packaged SmolLM2 tokenizer, as in
test_adapt_value.py; the session and `select` featurise a tiny file with the packaged all-MiniLM-L6-v2.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from test_adapt_value import EXAMPLES, LABELS, WORDS  # the same 48 examples (38 train, 10 test)

from budgetsft.data import Example, describe, load_dataset, write_jsonl
from budgetsft.exceptions import DataWarning


def _lines(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _cli(args, env, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "budgetsft", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


# --------------------------------------------------------------------------- 1. adapt --labels vs random sets


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    pytest.importorskip("torch")
    pytest.importorskip("peft")
    pytest.importorskip("transformers")
    from _tiny_llama import tiny_llama

    from budgetsft.features.models import load_causal_tokenizer

    tok = load_causal_tokenizer()
    model = tiny_llama(len(tok))
    root = tmp_path_factory.mktemp("llama")
    model.save_pretrained(root)
    tok.save_pretrained(root)
    return root


def test_adapt_labels_is_compared_with_random_sets_of_the_same_size(llama_dir, tmp_path):
    import torch

    from budgetsft.adapt.pipeline import run_adapt

    data = write_jsonl(EXAMPLES, tmp_path / "topics.jsonl")
    train0 = load_dataset(str(data), seed=0).train
    # an annotator who is always wrong: the random sets (gold answers) are what they should be compared with
    given = [Example(ex.id, ex.prompt, ex.candidates, answer=(ex.answer + 1) % 3) for ex in train0[:6]]
    labels = write_jsonl(given, tmp_path / "bought.jsonl")
    out = tmp_path / "adapt"
    threads = torch.get_num_threads()
    try:
        report = run_adapt(str(data), out, labels_file=labels, model=str(llama_dir), seeds=(0, 1), epochs=1,
                           batch_size=4, max_prompt_tokens=16, device="cpu", threads=1, progress=False)
    finally:
        torch.set_num_threads(threads)

    assert list(report["methods"]) == ["zero-shot", "labels/plain", "random/plain"]
    assert report["methods"]["labels/plain"]["labels"] == report["methods"]["random/plain"]["labels"] == [6, 6]
    assert set(report["paired"]) == {"labels/plain-random/plain", "labels/plain-zero-shot"}
    from budgetsft.adapt.pipeline import random_set

    drawn = []
    for seed in (0, 1):
        train = load_dataset(str(data), seed=seed).train
        selection = json.loads((out / f"seed-{seed}" / "selection.json").read_text())
        # the same draw as random_set: seeded by the run's seed, from that seed's train split, gold answers
        assert selection["random"] == [ex.id for ex in random_set(train, 6, seed)]
        assert set(selection["random"]) <= {ex.id for ex in train}
        gold = {ex.id: ex.answer for ex in train}
        saved = (out / f"seed-{seed}" / "labels" / "random.jsonl").read_text().splitlines()
        rows = [json.loads(line) for line in saved]
        assert [r["answer"] for r in rows] == [gold[r["id"]] for r in rows]
        assert (out / f"seed-{seed}" / "adapters" / "random-plain" / "adapter_config.json").is_file()
        drawn.append(selection["random"])
    assert drawn[0] != drawn[1]  # one draw per seed
    md = (out / "report.md").read_text()
    assert "| labels/plain − random/plain |" in md and "random: 6 examples with their gold answers" in md
    assert json.loads((out / "report.json").read_text())["random_sets"].startswith("random: 6 examples")
    # too few gold answers in the train split: no random set
    assert random_set(train0, len(train0) + 1, 0) is None
    assert random_set([Example("u", "p", ("a", "b"))], 1, 0) is None  # an unlabelled pool


# --------------------------------------------------------------------------- 2. conflicting duplicates


def _topic(i: int, prompt: str, answer: int | None) -> dict:
    rec = {"id": f"t{i}", "prompt": prompt, "candidates": list(LABELS)}
    if answer is not None:
        rec["answer"] = answer
    return rec


def test_conflicting_duplicates_are_dropped_counted_and_warned_once(tmp_path):
    records = [_topic(i, f"story number {i}", i % 3) for i in range(8)]
    records += [
        _topic(10, "The bank story.", 0),
        _topic(11, "  The bank story. ", 2),   # same text (trimmed), another answer: a conflict
        _topic(12, "The bank story.", 0),      # an exact copy of the first: part of the same conflict
        _topic(13, "The bank story.", None),   # unlabelled: conflicts with nothing, kept
        _topic(14, "story number 1", 1),       # an exact duplicate (same answer): dropped as before
    ]
    path = _lines(tmp_path / "conflicts.jsonl", records)
    with pytest.warns(DataWarning) as caught:
        ds = load_dataset(str(path), test_fraction=0.0)
    msgs = [str(w.message) for w in caught if "conflicting" in str(w.message)]
    assert len(msgs) == 1 and "\n" not in msgs[0]
    assert msgs[0].startswith(f"{path}: 1 text (same prompt and candidates) has conflicting answers; all 3 "
                              "labelled copies were dropped")
    assert f"{path}:9 (id 't10', answer 0) vs {path}:10 (id 't11', answer 2)" in msgs[0]
    ids = {ex.id for ex in ds.train}
    assert {"t10", "t11", "t12", "t14"}.isdisjoint(ids) and "t13" in ids and len(ids) == 9
    assert ds.meta["n_conflicts"] == 1
    assert ds.meta["conflicts"] == [{"ids": ["t10", "t11", "t12"], "where": [f"{path}:9", f"{path}:10", f"{path}:11"],
                                     "answers": [0, 2, 0]}]
    assert ds.meta["n_skipped"] == 4
    assert ds.meta["skip_reasons"] == {"conflicting answers: the same prompt and candidates have another answer": 3,
                                       "exact duplicate of an earlier item": 1}
    assert ds.meta["skipped"][0] == (f"{path}:9: conflicting answers: answer 0 here, the same prompt and candidates "
                                     f"have {path}:10 (answer 2)")
    assert describe(ds)["n_conflicts"] == 1
    # dedupe=False keeps every copy, and still says so
    with pytest.warns(DataWarning, match="their 3 labelled copies were kept, as dedupe=False asks"):
        kept = load_dataset(str(path), test_fraction=0.0, dedupe=False)
    assert {"t10", "t11", "t12"} <= {ex.id for ex in kept.train} and kept.meta["n_conflicts"] == 1
    # a clean file: no warning, nothing counted
    clean = _lines(tmp_path / "clean.jsonl", records[:8])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_dataset(str(clean)).meta["n_conflicts"] == 0


def test_conflicts_are_one_warning_line_of_the_cli(tmp_path):
    records = [_topic(i, f"story number {i}", i % 3) for i in range(6)] + [_topic(7, "x y", 0), _topic(8, "x y", 1)]
    path = _lines(tmp_path / "c.jsonl", records)
    proc = _cli(["data", "show", path, "--json"], os.environ, tmp_path)
    assert proc.returncode == 0, proc.stderr
    warned = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert len(warned) == 1 and "conflicting answers" in warned[0] and "Traceback" not in proc.stderr
    info = json.loads(proc.stdout)
    assert info["n_conflicts"] == 1 and info["n_train"] + info["n_test"] == 6


# --------------------------------------------------------------------------- 3. names at the terminal oracle


def test_terminal_oracle_takes_a_label_name(tmp_path, monkeypatch):
    from budgetsft.sessions.ledger import Ledger
    from budgetsft.sessions.oracles import TerminalOracle
    from budgetsft.sessions.session import Session

    monkeypatch.setenv("BUDGETSFT_CACHE", str(tmp_path / "cache"))
    cands = ["Finance", "sports", "finance", "science"]  # "finance" names two candidates
    path = _lines(tmp_path / "named.jsonl", [{"id": f"x{i}", "prompt": f"story {i} about things",
                                              "candidates": cands, "answer": i % 4} for i in range(30)])
    db = tmp_path / "n.db"
    sess = Session.create(db, {"data": {"name": str(path)}, "gate": {"name": "llf", "beta": 0.2}, "seed": 0})
    out = io.StringIO()
    typed = "finance\nbanana\n  SPORTS \nScience\nq\n"
    outcome = sess.play(TerminalOracle(annotator="ann", stdin=io.StringIO(typed), stdout=out))
    sess.close()
    assert outcome.status == "stopped"
    shown = out.getvalue()
    assert "answer [0-3] or a name, s=skip, u=undo last, q=quit and save: " in shown
    assert "not understood: 'finance'; candidates 0, 2 have that name, type a number" in shown
    assert "not understood: 'banana'\n" in shown
    led = Ledger.open(db)
    try:
        assert [(a.label, a.annotator) for a in led.answers()] == [(1, "ann"), (3, "ann")]  # SPORTS, Science
    finally:
        led.close()


# --------------------------------------------------------------------------- 4. no library bars in --json runs


def test_json_run_that_loads_the_encoder_has_no_loading_bars(tmp_path):
    records = [{"id": f"{label}-{i}", "prompt": f"The {w} story.", "candidates": list(LABELS)}
               for label, words in WORDS.items() for i, w in enumerate(words[:4])]
    _lines(tmp_path / "pool.jsonl", records)
    env = {**os.environ, "BUDGETSFT_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}  # nothing cached
    proc = _cli(["select", "--data", "pool.jsonl", "--session", "s.db", "--batch", "3", "--budget", "3", "--json"],
                env, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Loading weights" not in proc.stderr and "%|" not in proc.stderr, proc.stderr[-2000:]
    assert len(json.loads(proc.stdout)["picks"]) == 3


def test_quiet_loading_restores_the_libraries_bars(capfd):
    pytest.importorskip("transformers")
    from huggingface_hub.utils import are_progress_bars_disabled
    from transformers.utils import logging as hf_logging

    from budgetsft.features.models import load_encoder, quiet_loading

    assert hf_logging.is_progress_bar_enabled() and not are_progress_bars_disabled()
    with quiet_loading():
        assert not hf_logging.is_progress_bar_enabled() and are_progress_bars_disabled()
    assert hf_logging.is_progress_bar_enabled() and not are_progress_bars_disabled()
    load_encoder()
    assert "Loading weights" not in capfd.readouterr().err
    assert hf_logging.is_progress_bar_enabled()
