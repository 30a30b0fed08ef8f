"""The numpy core imports without torch; the built wheel ships the package data; the CLI handles JSONL files
with bad lines."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STATIC = ("annotate.html", "login.html", "annotate.css", "annotate.js")


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


def test_wheel_and_sdist_ship_the_annotation_page_and_the_installed_wheel_serves_it(tmp_path):
    pytest.importorskip("setuptools")
    pytest.importorskip("starlette")
    project = tmp_path / "project"  # a copy, so that the build writes nothing into the checkout
    project.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, project / name)
    shutil.copytree(ROOT / "src", project / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    dist = tmp_path / "dist"
    build = ("import sys\nfrom setuptools import build_meta as b\n"  # (build_meta rewrites sys.argv)
             "out = sys.argv[1]\nb.build_wheel(out)\nb.build_sdist(out)\n")
    proc = subprocess.run([sys.executable, "-c", build, str(dist)], cwd=project, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,), (sdist_file,) = dist.glob("*.whl"), dist.glob("*.tar.gz")
    static = ROOT / "src" / "budgetsft" / "sessions" / "static"
    with zipfile.ZipFile(wheel) as whl:
        for name in STATIC:
            assert whl.read(f"budgetsft/sessions/static/{name}") == (static / name).read_bytes(), name
        whl.extractall(tmp_path / "site")
    with tarfile.open(sdist_file) as sdist:
        members = {m.name.partition("/")[2] for m in sdist.getmembers()}
    assert {f"src/budgetsft/sessions/static/{name}" for name in STATIC} <= members
    # The wheel's own copy renders the page (importlib.resources, not the checkout's files).
    render = ("import sys\nsys.path.insert(0, sys.argv[1])\nimport budgetsft.sessions.web as web\n"
              "assert web.__file__.startswith(sys.argv[1]), web.__file__\n"
              "print(web._html(web._PAGE, file='s.db', name='alice', cost='1').body.decode())\n")
    page = subprocess.run([sys.executable, "-c", render, str(tmp_path / "site")], capture_output=True, text=True,
                          check=True).stdout
    for name in ("annotate.css", "annotate.js"):
        assert (static / name).read_text(encoding="utf-8") in page, name
    assert "budgetsft annotate · s.db" in page
