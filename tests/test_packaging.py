"""The numpy core imports without torch; the CLI handles JSONL files with bad lines."""

from __future__ import annotations

import json
import subprocess
import sys


def test_numpy_core_imports_without_torch():
    code = (
        "import sys\n"
        "import budgetsft.game, budgetsft.learners, budgetsft.gates, budgetsft.followers, budgetsft.envs\n"
        "import budgetsft.regret, budgetsft.config, budgetsft.experiment, budgetsft.cli, budgetsft.data\n"
        "import budgetsft.features\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'peft', 'datasets') if m in sys.modules)\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_cli_reports_bad_jsonl_lines_and_skip_invalid_counts_them(tmp_path):
    good = [json.dumps({"id": f"q{i}", "prompt": f"question {i}?", "candidates": ["yes", "no"], "answer": i % 2})
            for i in range(12)]
    f = tmp_path / "mine.jsonl"
    _write(f, good[:5] + ['{"id": "bad", "prompt": "x", "candidates": ["only one"], "answer": 0}', "{not json"]
           + good[5:])
    strict = subprocess.run([sys.executable, "-m", "budgetsft", "data", "show", str(f)], capture_output=True,
                            text=True)
    assert strict.returncode == 2
    assert f"{f}:6:" in strict.stderr and f"{f}:7:" in strict.stderr
    lenient = subprocess.run([sys.executable, "-m", "budgetsft", "data", "show", str(f), "--skip-invalid",
                              "--json"], capture_output=True, text=True)
    assert lenient.returncode == 0, lenient.stderr
    info = json.loads(lenient.stdout.strip().splitlines()[-1])
    assert info["n_train"] + info["n_test"] == 12 and info["n_skipped"] == 2
    assert lenient.stderr.startswith(f"warning: {f}: skipped 2 invalid lines of 14 (skip_invalid): {f}:6: ")
