"""The console script, run as a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys

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
