"""Label Studio round trip: tasks out, Label Studio's JSON export back in, each label paid once, all or nothing.

The fixture tests read ``tests/fixtures/labelstudio/export.json``, an export
written by a real Label Studio server (see the README beside it); the live
test makes such an export from scratch and runs when Label Studio is
installed (``make test-integration``), and skips otherwise.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from budgetsft.exceptions import BudgetExhaustedError, ConfigError, DataError
from budgetsft.labelstudio import choice_values, import_export, label_config, read_annotators, session_key
from budgetsft.sessions.ledger import Ledger
from budgetsft.sessions.oracles import WebOracle
from budgetsft.sessions.session import Session

HERE = Path(__file__).resolve().parent
FIXTURES = HERE / "fixtures" / "labelstudio"
# The session behind the fixtures: its first window leaves 17 queries pending; a budget of 30 cost units.
CONFIG = {"env": {"name": "synthetic", "d": 8, "K": 4, "rounds": 300}, "test_rounds": 50, "seed": 3,
          "gate": {"name": "llf", "beta": 0.1, "window": 50, "unit": "cost"}}
PRICES = {"ana": 1.0, "bo": 2.0, "web": 1.0}


def _cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "budgetsft", *args], capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def _scenario(tmp_path: Path) -> tuple[Path, dict[int, int]]:
    """The fixtures' session: a window of pending queries, one of them already bought; (file, gold by round)."""
    db = tmp_path / "ls.db"
    sess = Session.create(db, CONFIG, oracle={"name": "web"})
    assert sess.play(WebOracle()).status == "waiting"
    gold = {t: int(r.gold) for t, r in enumerate(sess.stream(), start=1)}
    led = sess.ledger
    led.add_annotator("ana", PRICES["ana"])
    bought = led.pending()[-1]
    assert led.record_answer(bought.id, gold[bought.round], "web", PRICES["web"], n_candidates=4)
    sess.close()
    return db, gold


def _plan(tasks: list[dict], gold: dict[int, int]) -> list[dict]:
    """Who labels what in Label Studio: ana five tasks, bo one more, one agreeing, one skip, one re-label."""
    def choice(i: int, label: int | None = None) -> str:
        data = tasks[i]["data"]
        return data["options"][gold[data["round"]] if label is None else label]["value"]

    bought = next(i for i, t in enumerate(tasks) if t["data"]["status"] == "answered")
    plan = [{"task": i, "annotator": "ana@example.org", "choice": choice(i)} for i in range(5)]
    plan += [{"task": 3, "annotator": "bo@example.org", "choice": choice(3)},  # agrees with ana: bought once
             {"task": 5, "annotator": "bo@example.org", "choice": choice(5)},
             {"task": 6, "annotator": "bo@example.org", "cancelled": True},  # skipped in Label Studio
             {"task": bought, "annotator": "bo@example.org", "choice": choice(bought)}]  # already in the ledger
    return plan


def _answers(db: Path) -> dict[int, tuple[int, str]]:
    with Ledger.open(db) as led:
        return {a.round: (a.label, a.annotator) for a in led.answers()}


def _spent(db: Path) -> float:
    with Ledger.open(db) as led:
        return led.spent()


def _ids(annotators: dict) -> tuple[str, str]:
    """The Label Studio user ids of ana and bo in an annotators map."""
    ana = next(k for k, v in annotators.items() if v == "ana")
    return ana, next(k for k in annotators if k != ana)


def _load_fixture() -> tuple[list, dict]:
    export = json.loads((FIXTURES / "export.json").read_text(encoding="utf-8"))
    annotators = json.loads((FIXTURES / "annotators.json").read_text(encoding="utf-8"))
    return export, annotators


def _check_imported(db: Path, export: list, gold: dict[int, int], ana: str, bo: str) -> None:
    """What the scenario's labels must leave in the ledger (ana: 5 at 1.0, bo: 1 at 2.0, plus web's 1)."""
    answers = _answers(db)
    by_round = {t["data"]["round"]: t for t in export}
    labelled = {t["data"]["round"] for t in export if any(not a["was_cancelled"] for a in t["annotations"])}
    assert set(answers) == labelled and len(labelled) == 7
    for rnd, (label, who) in answers.items():
        assert label == gold[rnd]
        first = min((a for a in by_round[rnd]["annotations"] if not a["was_cancelled"]),
                    key=lambda a: (a["created_at"], a["id"]))
        expected = "web" if by_round[rnd]["data"]["status"] == "answered" else {ana: "ana", bo: "bo"}[
            str(first["completed_by"])]
        assert who == expected
    with Ledger.open(db) as led:
        assert led.labels_by_annotator() == {"ana": {"labels": 5, "spent": 5.0}, "bo": {"labels": 1, "spent": 2.0},
                                             "web": {"labels": 1, "spent": 1.0}}
        assert led.spent() == 8.0 and led.remaining() == 22.0
        assert len(led.pending()) == 17 - 7


# ---------------------------------------------------------------- export


def test_export_writes_tasks_and_the_labeling_config(tmp_path):
    db, gold = _scenario(tmp_path)
    dest = tmp_path / "tasks.json"
    proc = _cli("session", "export", str(db), str(dest), "--format", "label-studio")
    config = tmp_path / "tasks.label_config.xml"
    assert f"wrote 17 Label Studio task(s) to {dest} (16 pending, 1 bought)" in proc.stdout
    assert f"labeling config: {config}" in proc.stdout
    root = ET.fromstring(config.read_text())
    text, choices = root.find("Text"), root.find("Choices")
    assert (text.get("name"), text.get("value")) == ("prompt", "$prompt")
    assert (choices.get("name"), choices.get("toName"), choices.get("value")) == ("label", "prompt", "$options")
    assert config.read_text() == label_config()
    tasks = json.loads(dest.read_text())
    with Ledger.open(db) as led:
        pending = led.pending()
        key = session_key(led)
        bought = led.answers()[0]
    # Pending first, largest latency first (what the gate wants most), then the bought ones.
    assert [t["data"]["query_id"] for t in tasks[:16]] == [q.id for q in pending]
    assert {t["data"]["status"] for t in tasks[:16]} == {"pending"}
    for task in tasks:
        data = task["data"]
        assert data["session"] == key and data["example_id"] == f"r{data['round']}"
        assert data["candidates"] == [f"candidate {a}" for a in range(4)]
        assert data["options"] == [{"value": c} for c in data["candidates"]]
        assert data["prompt"].startswith(f"Synthetic round {data['round']}:")
    last = tasks[-1]
    assert (last["data"]["status"], last["data"]["query_id"]) == ("answered", bought.query_id)
    assert last["predictions"][0]["result"] == [{"from_name": "label", "to_name": "prompt", "type": "choices",
                                                 "value": {"choices": [f"candidate {gold[bought.round]}"]}}]
    # Existing files are kept unless --force; the ledger is never a destination.
    again = _cli("session", "export", str(db), str(dest), "--format", "label-studio", check=False)
    assert again.returncode == 2 and "file exists; pass --force" in again.stderr
    _cli("session", "export", str(db), str(dest), "--format", "label-studio", "--force")
    clash = _cli("session", "export", str(db), str(db), "--format", "label-studio", check=False)
    assert clash.returncode == 2 and "that is the session ledger" in clash.stderr
    bad = _cli("session", "export", str(db), str(dest), "--format", "csv", check=False)
    assert bad.returncode == 2 and "'--format' must be one of 'jsonl', 'label-studio'. Got 'csv'." in bad.stderr


def test_docstring_examples_run():
    import doctest

    import budgetsft.labelstudio

    assert doctest.testmod(budgetsft.labelstudio).failed == 0


def test_choices_name_one_candidate_each():
    assert choice_values(["Paris", "Lyon"]) == ["Paris", "Lyon"]
    assert choice_values(["yes", "yes", "no"]) == ["0: yes", "1: yes", "2: no"]
    assert choice_values(["a", " "]) == ["0: a", "1:  "]


# ---------------------------------------------------------------- import of a real Label Studio export


def test_fixture_is_an_export_of_this_scenario(tmp_path):
    # The fixture's tasks are exactly what `session export --format label-studio` writes today; if the export
    # format changes, regenerate the fixture (tests/fixtures/labelstudio/README.md).
    db, _ = _scenario(tmp_path)
    dest = tmp_path / "tasks.json"
    _cli("session", "export", str(db), str(dest), "--format", "label-studio")
    tasks = json.loads(dest.read_text())
    export, _ = _load_fixture()
    with Ledger.open(db) as led:
        assert all(t["data"].pop("ledger") == led.meta("ledger_id") for t in tasks)
    assert [t["data"] for t in sorted(export, key=lambda t: t["id"])] == [t["data"] for t in tasks]
    # ... as Label Studio's "Export -> JSON" writes them: its own task ids, annotations with their authors.
    assert all({"id", "annotations", "predictions", "data"} <= set(t) for t in export)
    assert all(isinstance(a["completed_by"], int) for t in export for a in t["annotations"])


def test_round_trip_from_a_real_label_studio_export(tmp_path):
    db, gold = _scenario(tmp_path)
    export, annotators = _load_fixture()
    mapping = tmp_path / "annotators.json"
    mapping.write_text(json.dumps(annotators))
    ana, bo = _ids(annotators)
    proc = _cli("session", "import", str(db), str(FIXTURES / "export.json"), "--format", "label-studio",
                "--annotators", str(mapping))
    said = " ".join(proc.stdout.split())
    assert "imported 6 label(s) from" in said and ("charged 7 cost units (22 of 30 left); 1 already in the ledger, "
                                                   "1 skipped in Label Studio, 1 further annotation(s) not bought "
                                                   "(one label per query), 9 task(s) without annotations; 10 still "
                                                   "pending") in said
    _check_imported(db, export, gold, ana, bo)
    acks = (tmp_path / "ls.db-acks").read_text()
    # The same export again: a no-op that says so.
    again = _cli("session", "import", str(db), str(FIXTURES / "export.json"), "--format", "label-studio",
                 "--annotators", str(mapping))
    assert "nothing new: all 7 label(s) of" in again.stdout and "nothing charged" in again.stdout
    _check_imported(db, export, gold, ana, bo)
    assert (tmp_path / "ls.db-acks").read_text() == acks
    # The session plays on with the imported labels (and waits for the rest of its window).
    sess = Session.open(db)
    try:
        assert sess.play(WebOracle()).status == "waiting"
        assert sess.ledger.spent() == 8.0
    finally:
        sess.close()


def _bad_variant(export: list, ledger: Ledger) -> tuple[list, dict[str, str]]:
    """The fixture with one fault per task: {task id: what the error must say}."""
    export = copy.deepcopy(export)
    tasks = sorted(export, key=lambda t: t["id"])
    by_status = [t for t in tasks if t["data"]["status"] == "pending" and t["annotations"]]
    expect = {}

    def first(t):
        return next(a for a in t["annotations"] if not a["was_cancelled"])

    t = by_status[0]
    t["data"]["query_id"] = 9999
    expect[t["id"]] = "unknown query id 9999"
    t = by_status[1]
    first(t)["result"][0]["value"]["choices"] = ["candidate 9"]
    expect[t["id"]] = "choice 'candidate 9' is not among the candidates"
    t = by_status[2]
    other = copy.deepcopy(first(t))
    other["id"] += 1000
    other["result"][0]["value"]["choices"] = ["candidate 3" if first(t)["result"][0]["value"]["choices"] != [
        "candidate 3"] else "candidate 0"]
    t["annotations"].append(other)
    expect[t["id"]] = "its annotations disagree"
    t = by_status[3]
    first(t)["completed_by"] = 77
    expect[t["id"]] = "Label Studio annotator 77 has no ledger annotator and so no price"
    t = by_status[4]
    t["data"]["session"] = "0123456789abcdef"
    expect[t["id"]] = "exported from another session"
    t = by_status[5]
    ledger.skip(t["data"]["query_id"], "someone")
    expect[t["id"]] = "was skipped; it takes no answer"
    t = next(t for t in tasks if t["data"]["status"] == "answered")
    a = first(t)
    a["result"][0]["value"]["choices"] = ["candidate 0" if a["result"][0]["value"]["choices"] != [
        "candidate 0"] else "candidate 1"]
    expect[t["id"]] = "the ledger already holds label"
    t = next(t for t in tasks if not t["annotations"])
    t["data"]["round"] += 1
    expect[t["id"]] = "is not the query's round"
    return export, expect


def test_bad_items_are_reported_by_task_id_and_nothing_is_written(tmp_path):
    db, _ = _scenario(tmp_path)
    export, annotators = _load_fixture()
    with Ledger.open(db) as led:
        bad, expect = _bad_variant(export, led)
        path = tmp_path / "bad.json"
        path.write_text(json.dumps(bad))
        before = (led.spent(), led.answers(), len(led.pending()))
        with pytest.raises(DataError) as exc:
            import_export(led, path, annotators=annotators)
        assert (led.spent(), led.answers(), len(led.pending())) == before
    lines = str(exc.value).splitlines()
    assert lines[0] == f"{path}: nothing imported: {len(expect)} bad item(s):"
    for tid, what in expect.items():
        hits = [line for line in lines[1:] if line.strip().startswith(f"task {tid} ") and what in line]
        assert len(hits) == 1, (tid, what, lines)
    assert len(lines) == 1 + len(expect)
    # Listed in the order of the tasks.
    ids = [int(line.split()[1]) for line in lines[1:]]
    order = [t["id"] for t in bad]
    assert ids == sorted(ids, key=order.index)


def test_files_that_are_not_label_studio_exports_are_refused(tmp_path):
    db, _ = _scenario(tmp_path)
    cases = {"min.json": ([{"id": 1, "prompt": "x", "label": "candidate 0"}], "task 1: not a Label Studio task"),
             "obj.json": ({"tasks": []}, "a Label Studio JSON export is a list of tasks"),
             "other.json": ([{"id": 4, "data": {"text": "hi"}, "annotations": []}], "task 4: not a budgetsft task")}
    with Ledger.open(db) as led:
        for name, (content, what) in cases.items():
            (tmp_path / name).write_text(json.dumps(content))
            with pytest.raises(DataError, match=what):
                import_export(led, tmp_path / name)
        (tmp_path / "broken.json").write_text("[{")
        with pytest.raises(DataError, match="not valid JSON"):
            import_export(led, tmp_path / "broken.json")
        with pytest.raises(DataError, match="no such Label Studio export"):
            import_export(led, tmp_path / "missing.json")
        assert led.spent() == 1.0


def test_an_export_over_the_budget_left_is_refused_whole(tmp_path):
    db, _ = _scenario(tmp_path)
    export, annotators = _load_fixture()
    ana = next(k for k, v in annotators.items() if v == "ana")
    dear = {**annotators, ana: {"name": "ana6", "cost": 6.0}}  # 5 x 6 + 2 = 32 > 29 left
    mapping = tmp_path / "dear.json"
    mapping.write_text(json.dumps(dear))
    proc = _cli("session", "import", str(db), str(FIXTURES / "export.json"), "--format", "label-studio",
                "--annotators", str(mapping), check=False)
    assert proc.returncode == 2
    assert "nothing imported: its 6 new label(s) would charge 32 cost units but only 29 of the budget's 30 " \
           "cost units remain" in " ".join(proc.stderr.split())
    assert _spent(db) == 1.0 and len(_answers(db)) == 1
    with Ledger.open(db) as led:  # the same through the library; one label less than the budget left fits
        with pytest.raises(BudgetExhaustedError, match="nothing imported"):
            import_export(led, FIXTURES / "export.json", annotators=dear)
        fits = {**annotators, ana: {"name": "ana5", "cost": 5.375}}  # 5 x 5.375 + 2 = 28.875 <= 29
        assert import_export(led, FIXTURES / "export.json", annotators=fits)["added"] == 6
        assert led.remaining() == 0.125


def test_annotators_map_to_ledger_annotators_and_their_prices(tmp_path):
    db, _ = _scenario(tmp_path)
    export, annotators = _load_fixture()
    ana, bo = _ids(annotators)
    with Ledger.open(db) as led:
        # Without a map: a ledger annotator named as the Label Studio user (id here) is charged its price.
        led.add_annotator(ana, 1.0)
        led.add_annotator(bo, 2.0)
        res = import_export(led, FIXTURES / "export.json")
        assert (res["added"], res["charged"], led.spent()) == (6, 7.0, 8.0)
        assert set(led.labels_by_annotator()) == {ana, bo, "web"}
    assert read_annotators({"2": "ana", 3: {"name": "bo", "cost": 2}, "Bo@Example.org": "bo"}) == {
        "2": ("ana", None), "3": ("bo", 2.0), "bo@example.org": ("bo", None)}
    for bad, what in (({"2": 5}, "must be a ledger annotator's name"),
                      ({"2": {"name": "x", "cost": -1}}, "must be a finite number > 0"),
                      ({"2": {"name": "x", "price": 1}}, "must be a ledger annotator's name")):
        with pytest.raises(ConfigError, match=what):
            read_annotators(bad)
    (tmp_path / "two").mkdir()
    db2, _ = _scenario(tmp_path / "two")
    with Ledger.open(db2) as led:
        # A map to a name the ledger does not know, with no price, or a second price for a ledger annotator.
        with pytest.raises(DataError, match="maps to 'zoe', which is not an annotator in this ledger"):
            import_export(led, FIXTURES / "export.json", annotators={ana: "zoe", bo: "ana"})
        with pytest.raises(DataError, match="the map prices 'ana' at 3 but the ledger's annotator 'ana' costs 1"):
            import_export(led, FIXTURES / "export.json", annotators={ana: {"name": "ana", "cost": 3}, bo: "ana"})
        assert led.spent() == 1.0


def test_import_options_are_checked(tmp_path):
    db, _ = _scenario(tmp_path)
    proc = _cli("session", "import", str(db), str(FIXTURES / "export.json"), "--annotators", "x.json", check=False)
    assert proc.returncode == 2 and "'--annotators' maps Label Studio's annotators" in proc.stderr


# ---------------------------------------------------------------- a live Label Studio server


def _label_studio_python() -> str | None:
    """A Python with label-studio and its SDK: $LABEL_STUDIO_PYTHON (its own venv), or this one."""
    env = os.environ.get("LABEL_STUDIO_PYTHON")
    if env:
        return env
    have = all(importlib.util.find_spec(m) is not None for m in ("label_studio", "label_studio_sdk"))
    return sys.executable if have else None


@pytest.mark.integration
@pytest.mark.skipif(_label_studio_python() is None,
                    reason="label-studio is not installed: `make test-integration` installs it in its own venv "
                           "(or pip install 'budgetsft[labelstudio]'; or set LABEL_STUDIO_PYTHON); the fixture "
                           "tests above cover the round trip meanwhile")
def test_live_label_studio_round_trip(tmp_path):
    """Start Label Studio on SQLite, label the exported tasks through its API, export, import, check the ledger.

    With BUDGETSFT_WRITE_LS_FIXTURES=1 the export and the annotators map are also written to the fixtures.
    """
    db, gold = _scenario(tmp_path)
    tasks_path = tmp_path / "tasks.json"
    _cli("session", "export", str(db), str(tasks_path), "--format", "label-studio")
    tasks = json.loads(tasks_path.read_text())
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(_plan(tasks, gold)))
    export_path = tmp_path / "export.json"
    proc = subprocess.run([_label_studio_python(), str(HERE / "_labelstudio_live.py"), str(tasks_path),
                           str(tmp_path / "tasks.label_config.xml"), str(plan), str(export_path)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"Label Studio {info['label_studio']} answered after {info['start_seconds']} s")
    users = info["users"]
    annotators = {str(users["ana@example.org"]): "ana", str(users["bo@example.org"]): {"name": "bo", "cost": 2.0}}
    mapping = tmp_path / "annotators.json"
    mapping.write_text(json.dumps(annotators))
    res = _cli("session", "import", str(db), str(export_path), "--format", "label-studio", "--annotators",
               str(mapping))
    assert "imported 6 label(s)" in res.stdout
    export = json.loads(export_path.read_text())
    _check_imported(db, export, gold, str(users["ana@example.org"]), str(users["bo@example.org"]))
    again = _cli("session", "import", str(db), str(export_path), "--format", "label-studio", "--annotators",
                 str(mapping))
    assert "nothing new" in again.stdout and _spent(db) == 8.0
    if os.environ.get("BUDGETSFT_WRITE_LS_FIXTURES") == "1":
        FIXTURES.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(export_path, FIXTURES / "export.json")
        (FIXTURES / "annotators.json").write_text(json.dumps(annotators, indent=1) + "\n")
        (FIXTURES / "provenance.json").write_text(json.dumps(
            {"label_studio": info["label_studio"], "label_studio_sdk": info["label_studio_sdk"],
             "start_seconds": info["start_seconds"],
             "made_by": "BUDGETSFT_WRITE_LS_FIXTURES=1 make test-integration"}, indent=1) + "\n")
