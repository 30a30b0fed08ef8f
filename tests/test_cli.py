"""The console script, run as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from budgetsft.base import RECORD_FIELDS

RUN_KEYS = {"gate", "beta", "budget", "labels_bought", "rounds", "mistakes", "hinge_loss", "pseudo_regret",
            "stackelberg_regret", "regret_queried", "regret_unqueried", "seconds"}


def cli(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "budgetsft", *args], capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def test_run_json_has_the_contract_keys(tmp_path):
    proc = cli("run", "--env", "synthetic", "--gate", "llf", "--beta", "0.1", "--rounds", "400", "--seed", "0",
               "--json", "--out", str(tmp_path))
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert RUN_KEYS <= set(summary)
    assert summary["rounds"] == 400 and summary["budget"] == 40 and summary["labels_bought"] <= 40
    assert summary["regret_queried"] + summary["regret_unqueried"] == pytest.approx(summary["stackelberg_regret"])
    frame = pd.read_csv(tmp_path / "records.csv")
    assert tuple(frame.columns) == RECORD_FIELDS and len(frame) == 400
    assert int(frame["queried"].sum()) == summary["labels_bought"]
    png = (tmp_path / "regret.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000

    out_png = tmp_path / "again.png"
    cli("plot", str(tmp_path / "records.csv"), "--out", str(out_png))
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_run_readable_summary_and_parquet(tmp_path):
    proc = cli("run", "--gate", "random", "--rounds", "200", "--out", str(tmp_path), "--format", "parquet")
    assert "labels_bought" in proc.stdout and "stackelberg_regret" in proc.stdout
    assert len(pd.read_parquet(tmp_path / "records.parquet")) == 200


def test_sweep_json_last_line_is_deterministic():
    args = ("sweep", "--gates", "llf,random,first,full", "--betas", "0.05,0.1", "--seeds", "0,1", "--rounds", "300",
            "--json")
    a, b = cli(*args), cli(*args)
    last_a, last_b = a.stdout.strip().splitlines()[-1], b.stdout.strip().splitlines()[-1]
    assert last_a == last_b
    data = json.loads(last_a)
    # 3 gates x 2 betas x 2 seeds + full x 2 seeds
    assert len(data["cells"]) == 14
    assert [(c["gate"], c["beta"], c["seed"]) for c in data["cells"]][:3] == [("llf", 0.05, 0), ("llf", 0.05, 1),
                                                                            ("llf", 0.1, 0)]
    assert all("seconds" not in c for c in data["cells"])
    assert {r["gate"] for r in data["table"]} == {"llf", "random", "first", "full"}
    assert json.loads(a.stdout) == data  # stdout holds only the JSON (pipe it to jq)
    assert "llf" in a.stderr and "±" in a.stderr  # the table went to stderr
    for key in ("test_accuracy", "refit_accuracy"):
        assert all(key in c for c in data["cells"])


def test_version():
    from importlib.metadata import version

    assert cli("--version").stdout.strip() == f"budgetsft {version('budgetsft')}"


def test_config_file_and_overrides(tmp_path):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text("env: {name: drifting, d: 5, rounds: 150}\nlearner: {name: logistic}\n"
                   "gate: {name: bbq, beta: 0.2}\n")
    summary = json.loads(cli("run", "--config", str(cfg), "--seed", "3", "--json").stdout.strip().splitlines()[-1])
    assert summary["gate"] == "bbq" and summary["learner"] == "logistic" and summary["rounds"] == 150
    assert summary["budget"] == 30


@pytest.mark.parametrize(
    "args, message",
    [
        (("run", "--beta", "1.5"), "The 'beta' parameter of Budget must be a float in (0, 1]. Got 1.5."),
        (("run", "--gate", "oracle"), "unknown gate 'oracle'"),
        (("sweep", "--gates", "llf,nope"), "unknown gate(s) ['nope']"),
        (("sweep", "--betas", "0.1,x"), "'betas' must be a comma-separated list of numbers"),
        (("run", "--env", "synthetic", "--rounds", "0"), "The 'rounds' parameter of LinearSoftmaxEnv"),
        (("plot", "missing.csv"), "records file not found"),
        (("run", "--data", "bbc-news", "--rounds", "50"), "'--rounds' does not apply with a data set"),
        (("sweep", "--data", "bbc-news", "--env", "drifting", "--rounds", "5"),
         "'--env' and '--rounds' do not apply with a data set"),
        (("run", "--rounds", "50", "--oracle", "file"), "'--oracle' needs '--session FILE'"),
        (("run", "--config", "nowhere.yaml"), "Config file not found"),
    ],
)
def test_bad_input_exits_with_a_clear_message(args, message):
    proc = cli(*args, check=False)
    assert proc.returncode != 0
    assert message in " ".join((proc.stderr + proc.stdout).split())
    assert "Traceback" not in proc.stderr


# ---------------------------------------------------------------- what a newcomer sees


def _commands():
    import typer

    from budgetsft.cli import app

    def walk(cmd, path=()):
        if hasattr(cmd, "commands"):
            for name, sub in cmd.commands.items():
                yield from walk(sub, (*path, name))
        else:
            yield path, cmd

    return list(walk(typer.main.get_command(app)))


# `adapt` is documented by the adaptation work; the annotate options are actions (given: do this and exit).
NO_DEFAULT = {("annotate",): {"add_annotator", "revoke", "rotate"}}


def test_every_command_help_has_examples_and_every_default():
    commands = _commands()
    assert {" ".join(p) for p, _ in commands} >= {"run", "sweep", "featurize", "plot", "demo", "resume", "annotate",
                                                  "data list", "data show", "data export", "session show",
                                                  "session export", "session import"}
    for path, cmd in commands:
        if path in NO_DEFAULT and NO_DEFAULT[path] is None:
            continue
        assert "Examples:" in cmd.help and "budgetsft " in cmd.help.split("Examples:")[1], path
        for p in cmd.params:
            # typer shows the default of an option whose value is not None; a None default stands for one that
            # comes from the config (or for "none"): its help must say what it is.
            if p.param_type_name == "option" and p.default is None and not p.is_flag and not p.required:
                if p.name not in (NO_DEFAULT.get(path) or ()):
                    assert "[default: " in p.help, (path, p.name)


def test_run_help_shows_the_config_defaults_and_examples():
    proc = subprocess.run([sys.executable, "-m", "budgetsft", "run", "--help"], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "COLUMNS": "250"})
    text = " ".join(proc.stdout.split())
    for shown in ("[default: llf, from the built-in config]", "[default: 0.1, from the built-in config]",
                  "[default: 5000, from the built-in config]", "[default: 0, from the built-in config]",
                  "[default: synthetic, from the built-in config]", "[default: csv]", "budgetsft run --gate random"):
        assert shown in text, shown


def test_skip_invalid_says_what_it_skipped_in_one_line(tmp_path):
    good = [{"id": i, "prompt": f"q{i}", "candidates": ["a", "b"], "answer": i % 2} for i in range(4)]
    path = tmp_path / "mine.jsonl"
    path.write_text("\n".join([json.dumps(good[0]), "{oops", json.dumps(good[1]), '{"id": 9}',
                               json.dumps(good[2]), json.dumps(good[3])]) + "\n")
    proc = cli("data", "show", str(path), "--skip-invalid")
    notes = proc.stderr.strip().splitlines()
    assert len(notes) == 1 and notes[0].startswith(f"warning: {path}: skipped 2 invalid lines of 6")
    assert f"{path}:2: invalid JSON" in notes[0] and f"{path}:4: " in notes[0]
    assert "UserWarning" not in proc.stderr and "typer" not in proc.stderr
    # and `data show` counts the skipped lines by reason
    assert "2 of 6 source items skipped:" in proc.stdout and "invalid JSON (e.g. " in proc.stdout


def test_data_show_gives_the_reasons_items_were_skipped():
    proc = cli("data", "show", "bbc-news")
    assert "98 of 2,225 source items skipped:" in proc.stdout
    assert "98  exact duplicate of an earlier item (e.g. bbcnews/data/" in proc.stdout
    data = json.loads(cli("data", "show", "bbc-news", "--json").stdout)
    assert data["skip_reasons"] == {"exact duplicate of an earlier item": 98} and len(data["skipped"]) == 98


def test_data_list_shows_example_counts():
    text = cli("data", "list").stdout
    row = next(line for line in text.splitlines() if "bbc-news" in line)
    assert "1,702" in row and "425" in row and "98 of 2,225" in row


def test_hf_offline_is_one_clear_error_at_once(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "budgetsft", "data", "show", "hf:some-org/some-set"],
                          capture_output=True, text=True, timeout=120, env=env)
    assert time.perf_counter() - start < 15  # the process start included; the check itself is immediate
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: Cannot load the Hugging Face data set 'hf:some-org/some-set'")
    assert "save_to_disk" in proc.stderr and "Traceback" not in proc.stderr


def test_summary_names_the_environment(tmp_path):
    summary = json.loads(cli("run", "--rounds", "100", "--no-comparator", "--json", "--out", str(tmp_path)).stdout)
    assert summary["env"] == "synthetic" and "data" not in summary and "features" not in summary
    assert json.loads((tmp_path / "summary.json").read_text())["env"] == "synthetic"


def test_summary_names_the_data_set_and_its_features(tmp_path):
    from _streams import random_stream

    from budgetsft.experiment import run

    path = tmp_path / "topics.jsonl"
    path.write_text("".join(json.dumps({"id": i, "prompt": f"text {i}", "candidates": ["x", "y", "z"],
                                        "answer": i % 3}) + "\n" for i in range(10)))
    stream = random_stream(50, 6, 3, seed=0)
    s = run({"data": {"name": str(path)}, "features": {"name": "auto"}, "comparator": "none"}, stream=stream).summary
    assert (s["data"], s["features"]) == (str(path), "block")  # auto, resolved: a fixed label set
    s = run({"data": {"name": str(path)}, "features": {"name": "encoder"}, "comparator": "none"},
            stream=stream).summary
    assert (s["data"], s["features"]) == (str(path), "encoder") and "env" not in s


def test_demo_default_folders_differ(monkeypatch):
    from typer.testing import CliRunner

    from budgetsft import cli as cli_mod

    seen = []
    monkeypatch.setattr(cli_mod, "_sweep_and_report", lambda cfg, *a, runs_dir=None, **k: seen.append(
        (bool(cfg.get("data")), runs_dir)))
    runner = CliRunner()
    assert runner.invoke(cli_mod.app, ["demo"]).exit_code == 0
    assert runner.invoke(cli_mod.app, ["demo", "--synthetic"]).exit_code == 0
    assert runner.invoke(cli_mod.app, ["demo", "--synthetic", "--out", "elsewhere"]).exit_code == 0
    assert seen == [(True, Path("runs/demo")), (False, Path("runs/demo-synthetic")), (False, Path("elsewhere"))]


def test_plot_names_runs_by_gate_and_beta_and_titles_the_setting(tmp_path):
    from budgetsft.cli import _plot_names, _saved_run

    for gate in ("llf", "first"):
        cli("run", "--rounds", "150", "--gate", gate, "--no-comparator", "--out", str(tmp_path / f"run-{gate}"))
    png = tmp_path / "both.png"
    cli("plot", str(tmp_path / "run-llf"), str(tmp_path / "run-first" / "records.csv"), "--out", str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    runs = [(tmp_path / f"run-{g}" / "records.csv", None, *_saved_run(tmp_path / f"run-{g}" / "records.csv"))
            for g in ("llf", "first")]
    assert _plot_names(runs) == (["llf β=0.1", "first β=0.1"], "synthetic: d=20, K=5, T=150: seed 0")
    # the same cell twice: the folders tell them apart; a bare records file keeps its name
    bare = tmp_path / "other.csv"
    bare.write_text((tmp_path / "run-llf" / "records.csv").read_text())
    names, _ = _plot_names([runs[0], runs[0], (bare, None, None, None)])
    assert names == ["llf β=0.1 (run-llf)", "llf β=0.1 (run-llf)", "other"]
