"""Every shipped config loads, validates and runs (STYLE habit 10)."""

from __future__ import annotations

from pathlib import Path

import pytest

from budgetsft.config import load_config, merge
from budgetsft.exceptions import ConfigError
from budgetsft.experiment import run

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


def test_configs_are_shipped():
    assert len(CONFIGS) >= 4


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_loads_and_runs(path):
    first = path.read_text().splitlines()[0]
    assert first.startswith("# budgetsft "), "the first line says how to run it"
    cfg = load_config(path)
    if "env" in cfg and "data" not in cfg:
        cfg = merge(cfg, {"env": {"rounds": 120}, "test_rounds": 50})
        res = run(cfg)
        assert res.summary["rounds"] == 120
        assert res.summary["labels_bought"] <= res.summary["budget"]


def test_unknown_top_level_key_is_refused(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("gates: {name: llf}\n")
    with pytest.raises(ConfigError, match="unknown top-level keys \\['gates'\\]"):
        load_config(p)


def test_bad_yaml_is_refused(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("env: {name: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)
