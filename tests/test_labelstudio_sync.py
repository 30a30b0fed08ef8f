"""``budgetsft labelstudio sync``: Label Studio as a live front end of a session, on recorded Label Studio HTTP.

``tests/fixtures/labelstudio/sync_cassette.json`` holds every HTTP exchange of
the scenarios of ``tests/_labelstudio_replay.py`` with a real Label Studio
1.23 (``record_sync.py`` beside it made it). Here a local server answers the
same requests with the recorded answers, so the sync's real HTTP client runs;
any request the sync makes that the recording does not have, in that order,
fails the test. The live test at the end runs the scenario against a fresh
Label Studio (``make test-integration``) and skips otherwise.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from _labelstudio_replay import (
    POOL_BATCH,
    POOL_BUDGET,
    Replayer,
    User,
    new_project,
    pool_session,
    run_pool_scenario,
    run_stream_scenario,
    stream_session,
)

from budgetsft.exceptions import BudgetsftError, ConfigError, DataError
from budgetsft.labelstudio import import_export, import_tasks, session_key
from budgetsft.labelstudio_sync import (
    LabelStudioClient,
    LabelStudioError,
    SyncPass,
    is_budgetsft_config,
    pass_message,
    sync,
    sync_once,
)
from budgetsft.sessions.ledger import Ledger
from budgetsft.sessions.session import Session

HERE = Path(__file__).resolve().parent
FIXTURES = HERE / "fixtures" / "labelstudio"
CASSETTE = json.loads((FIXTURES / "sync_cassette.json").read_text(encoding="utf-8"))
TOKEN = CASSETTE["token"]


# ---------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def pool_template(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """The scenario's pool session as `budgetsft select` left it (made once; each test works on a copy)."""
    work = tmp_path_factory.mktemp("pool")
    return pool_session(work)


@pytest.fixture
def pool(pool_template, tmp_path) -> tuple[Path, dict[str, str]]:
    db, gold = pool_template
    for f in db.parent.glob(db.name + "*"):
        shutil.copy2(f, tmp_path / f.name)
    return tmp_path / db.name, gold


def _exchanges(part: str, passes=None) -> list[dict]:
    chosen = CASSETTE[part]["passes"] if passes is None else [CASSETTE[part]["passes"][i] for i in passes]
    return [e for p in chosen for e in p["exchanges"]]


def _replayer(db: Path, exchanges: list[dict], part: str = "pool") -> Replayer:
    with Ledger.open(db) as led:
        key = session_key(led)
    return Replayer(exchanges, {CASSETTE[part]["session_key"]: key})


def _expected(part: str, i: int, url: str) -> dict:
    """What pass ``i`` of the recording did, its messages naming this run's server."""
    return json.loads(json.dumps(CASSETTE[part]["passes"][i]["result"]).replace(CASSETTE["url"], url))


def _pass(db: Path, url: str, project: int, **kw) -> dict:
    sess = Session.open(db)
    try:
        return sync_once(sess, LabelStudioClient(url, kw.pop("token", TOKEN)), project, **kw).to_json()
    except BudgetsftError as exc:
        return {"error": str(exc)}
    finally:
        sess.close()


def _books(db: Path) -> dict:
    with Ledger.open(db) as led:
        return {"spent": led.spent(), "answers": led.answers(), "pending": sorted(q.id for q in led.pending()),
                "skipped": sorted(q.round for q in led.queries(("skipped",)))}


def _finished(server: Replayer) -> None:
    assert server.mismatches == []
    assert server.position == len(server.exchanges)


# ---------------------------------------------------------------- the recording
def test_the_recording_comes_from_label_studio_1_23():
    assert CASSETTE["label_studio"].startswith("1.23.")
    # Every request of the pool scenario, as Label Studio answered it.
    calls = [(e["method"], e["path"].replace("/1/", "/ID/"), e["status"]) for e in _exchanges("pool")]
    assert calls[:4] == [("GET", "/api/projects/ID/", 200), ("GET", "/api/projects/ID/export", 200),
                         ("PATCH", "/api/projects/ID/", 200), ("POST", "/api/projects/ID/import", 201)]
    export = CASSETTE["pool"]["passes"][1]["exchanges"][1]["answer"]
    assert {"id", "annotations", "data", "created_at"} <= set(export[0])
    assert any(a["was_cancelled"] for t in export for a in t["annotations"])


# ---------------------------------------------------------------- the pool scenario, pass by pass
def test_push_pull_release_and_pick_again_until_the_budget_is_spent(pool):
    db, gold = pool
    project = CASSETTE["pool"]["project"]
    books = []
    with _replayer(db, _exchanges("pool")) as server:
        def one() -> dict:
            out = _pass(db, server.url, project)
            books.append(_books(db))
            return out

        passes = run_pool_scenario(one, gold)
        _finished(server)
    for i, got in enumerate(passes):
        assert got == _expected("pool", i, server.url), i
    first, second, third, bad, fifth, last = passes
    # 1. An empty project gets the labeling config and the 4 picks of `budgetsft select`.
    assert (first["pushed"], first["configured"], first["pending"]) == (4, True, 4)
    # 2. Two labels charged; a skipped and a deleted task released (their budget freed); the next 4 pushed.
    assert (second["imported"], second["cancelled"], second["deleted"], second["selected"], second["pushed"]) == (
        2, 1, 1, 4, 4)
    # 3. Nothing new: nothing charged, nothing pushed, the ledger untouched.
    assert (third["imported"], third["pushed"], third["released"]) == (0, 0, 0) and books[2] == books[1]
    # 4. A choice that is not a candidate: the whole pass refused, nothing charged, released or pushed.
    assert "nothing imported: 1 bad item(s)" in bad["error"] and "'weather' is not among the candidates" in bad["error"]
    assert books[3] == books[2]
    # 5. Corrected: 4 charged; only 3 of the 4 asked fit the budget (6 spent of 9).
    assert (fifth["imported"], fifth["spent"], fifth["selected"], fifth["pushed"]) == (4, 6.0, 3, 3)
    assert fifth["selected"] < POOL_BATCH
    # 6. The budget is spent, exactly: done.
    assert last["done"] and last["spent"] == POOL_BUDGET and last["pending"] == 0
    assert "the budget is spent: 9 of 9 labels" in last["reason"]
    # Never over the budget, pending picks included; every label the one a person gave; no query pushed twice.
    assert all(p["spent"] + p["pending"] <= POOL_BUDGET for p in passes if "error" not in p)
    final = books[-1]
    assert {str(a.round): [a.label, a.annotator] for a in final["answers"]} == CASSETTE["pool"]["answers"]
    assert final["skipped"] == CASSETTE["pool"]["skipped"]
    sess = Session.open(db)
    try:
        for a in final["answers"]:
            item = sess.describe(a.round)
            assert item["candidates"][a.label] == gold[item["id"]]
    finally:
        sess.close()
    pushed = [t["data"]["query_id"] for e in _exchanges("pool") if e["method"] == "POST" for t in e["body"]]
    assert len(pushed) == len(set(pushed)) == 4 + 4 + 3
    assert len(final["answers"]) + len(final["skipped"]) == len(pushed)


def test_the_loop_runs_until_the_budget_is_spent_and_ctrl_c_loses_nothing(pool):
    db, _ = pool
    project = CASSETTE["pool"]["project"]
    reports, errors, sleeps = [], [], []

    def interrupt_second_sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 2:
            raise KeyboardInterrupt

    with _replayer(db, _exchanges("pool")) as server:
        client = LabelStudioClient(server.url, TOKEN)
        sess = Session.open(db)
        try:
            with pytest.raises(KeyboardInterrupt):
                sync(sess, client, project, interval=5.0, report=reports.append, on_error=errors.append,
                     sleep=interrupt_second_sleep)
        finally:
            sess.close()
        assert len(reports) == 2 and sleeps == [5.0, 5.0]
        after_two = _books(db)
        assert after_two["spent"] == 2.0 and len(after_two["pending"]) == 4
        # Run again: it goes on from where the ledger and Label Studio say, to the end of the budget.
        sess = Session.open(db)
        try:
            last = sync(sess, client, project, interval=0.0, report=reports.append, on_error=errors.append,
                        sleep=lambda s: None)
        finally:
            sess.close()
        _finished(server)
    assert last.done and last.spent == POOL_BUDGET
    assert [r.imported for r in reports] == [0, 2, 0, 4, 3]  # the refused pass is an error, not a report
    assert len(errors) == 1 and isinstance(errors[0], DataError)
    # --once makes one pass and gives up on an error instead of waiting.
    with _replayer(db, _exchanges("pool", [5])) as server:
        sess = Session.open(db)
        try:
            assert sync(sess, LabelStudioClient(server.url, TOKEN), project, once=True).imported == 0
        finally:
            sess.close()


def test_once_through_the_command_line(pool):
    db, gold = pool
    project = CASSETTE["pool"]["project"]
    env = {**os.environ, "LABEL_STUDIO_API_KEY": TOKEN}
    with _replayer(db, _exchanges("pool")) as server:
        def cli(*extra: str) -> subprocess.CompletedProcess:
            return subprocess.run([sys.executable, "-m", "budgetsft", "labelstudio", "sync", str(db), "--url",
                                   server.url, "--project", str(project), "--once", *extra],
                                  capture_output=True, text=True, timeout=300, env=env)

        outputs = []

        def one() -> dict:
            as_json = len(outputs) % 2 == 0  # every other pass as JSON
            proc = cli("--json") if as_json else cli()
            outputs.append(proc)
            if proc.returncode != 0:
                return {"error": proc.stderr}
            return json.loads(proc.stdout) if as_json else {"line": proc.stdout.strip()}

        passes = run_pool_scenario(one, gold)
        _finished(server)
    for i, got in enumerate(passes):
        want = _expected("pool", i, server.url)
        if "error" in want:
            assert outputs[i].returncode == 2 and "not among the candidates" in got["error"]
            assert got["error"].startswith("error: Label Studio project")
        elif "line" in got:
            assert got["line"] == pass_message(SyncPass(**{**want, "notes": tuple(want["notes"])}), 1)
        else:
            assert got == {"pass": 1, **want}
    assert passes[1]["line"] == "pass 1: pushed 4, imported 2, released 2 (1 skipped, 1 deleted); 2 of 9 labels " \
                                "spent, 4 pending"
    assert "4 pending: label them in Label Studio" in outputs[1].stderr
    assert passes[5]["line"].endswith("done: the budget is spent: 9 of 9 labels. Nothing more will be picked.")
    show = subprocess.run([sys.executable, "-m", "budgetsft", "session", "show", str(db), "--json"],
                          capture_output=True, text=True, timeout=120)
    assert json.loads(show.stdout)["spent"] == POOL_BUDGET
    # Options are checked before Label Studio is asked anything.
    bad = subprocess.run([sys.executable, "-m", "budgetsft", "labelstudio", "sync", str(db), "--url", "ftp://x",
                          "--project", "1", "--once"], capture_output=True, text=True, timeout=120, env=env)
    assert bad.returncode == 2 and "must be an http(s) address" in bad.stderr
    no_key = subprocess.run([sys.executable, "-m", "budgetsft", "labelstudio", "sync", str(db), "--url",
                             "http://127.0.0.1:9", "--project", "1", "--once"], capture_output=True, text=True,
                            timeout=120, env={k: v for k, v in env.items() if k != "LABEL_STUDIO_API_KEY"})
    assert no_key.returncode == 2 and "set LABEL_STUDIO_API_KEY or pass --api-key" in no_key.stderr


def test_ctrl_c_stops_the_loop_cleanly(pool):
    db, _ = pool
    project = CASSETTE["pool"]["project"]
    env = {**os.environ, "LABEL_STUDIO_API_KEY": TOKEN}
    with _replayer(db, _exchanges("pool", [0])) as server:
        proc = subprocess.Popen([sys.executable, "-m", "budgetsft", "labelstudio", "sync", str(db), "--url",
                                 server.url, "--project", str(project), "--interval", "600"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                # a suite started in the background (`make test &`) inherits SIGINT ignored, and
                                # Python then installs no KeyboardInterrupt handler: give the child the default back
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        first = proc.stdout.readline()  # the first pass is done: the loop now waits for the next
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=60)
        _finished(server)
    assert first.startswith("pass 1: pushed 4, imported 0, released 0; 0 of 9 labels spent, 4 pending")
    assert proc.returncode == 130 and "Traceback" not in err
    assert "stopped after 1 pass(es); nothing is lost" in " ".join(err.split())
    books = _books(db)
    assert books["spent"] == 0.0 and len(books["pending"]) == 4


# ---------------------------------------------------------------- variants of the recording
def test_annotators_paid_by_map_or_by_a_default_price(pool):
    db, _ = pool
    project = CASSETTE["pool"]["project"]
    exchanges = copy.deepcopy(_exchanges("pool", [0, 1]))
    users = exchanges[6]["answer"]  # user 2 is zoe here: the ledger has no annotator of that name, so no price
    next(u for u in users if u["id"] == 2)["email"] = "zoe@example.org"
    with _replayer(db, exchanges) as server:
        _pass(db, server.url, project)
        refused = _pass(db, server.url, project)
    assert "Label Studio annotator 2 (zoe@example.org) has no ledger annotator and so no price" in refused["error"]
    assert _books(db)["spent"] == 0.0
    with _replayer(db, exchanges[4:]) as server:
        got = _pass(db, server.url, project, cost=1.5)
        _finished(server)
    assert got["imported"] == 2
    with Ledger.open(db) as led:
        assert led.labels_by_annotator() == {"zoe@example.org": {"labels": 2, "spent": 2.0}}
        assert {a.cost for a in led.answers()} == {1.5}  # recorded; a budget of labels charges 1 each
    with pytest.raises(ConfigError, match="must be a finite number > 0"):
        sess = Session.open(db)
        try:
            sync_once(sess, LabelStudioClient("http://127.0.0.1:9", TOKEN), project, cost=-1)
        finally:
            sess.close()


def test_a_project_with_another_labeling_config_is_refused(pool):
    db, _ = pool
    project = CASSETTE["pool"]["project"]
    exchanges = copy.deepcopy(_exchanges("pool", [0, 1]))
    exchanges[4]["answer"]["label_config"] = "<View><Text name='text' value='$text'/></View>"
    with _replayer(db, exchanges[:6]) as server:
        _pass(db, server.url, project)
        before = _books(db)
        got = _pass(db, server.url, project)
        _finished(server)
    assert "its labeling config does not show budgetsft tasks and it holds 3 task(s)" in got["error"]
    assert _books(db) == before
    assert is_budgetsft_config(CASSETTE["pool"]["passes"][1]["exchanges"][0]["answer"]["label_config"])
    assert not is_budgetsft_config("<View") and not is_budgetsft_config("<View/>")


def test_tasks_of_other_sessions_are_left_alone(pool):
    db, _ = pool
    project = CASSETTE["pool"]["project"]
    exchanges = copy.deepcopy(_exchanges("pool", [0, 1]))
    export = exchanges[5]["answer"]
    other = copy.deepcopy(export[0])
    other["id"] = 999
    other["data"]["session"] = "0123456789abcdef"
    export.append(other)
    with _replayer(db, exchanges) as server:
        _pass(db, server.url, project)
        got = _pass(db, server.url, project)
        _finished(server)
    assert got["imported"] == 2 and "1 task(s) of the project are not this session's: left alone" in got["notes"]


# ---------------------------------------------------------------- a stream session, tokens, refusals
def test_a_stream_session_is_pushed_pulled_and_played_on(tmp_path, monkeypatch):
    db = stream_session(tmp_path)
    part = CASSETTE["stream"]
    with _replayer(db, _exchanges("stream") + _exchanges("auth"), "stream") as server:
        passes = run_stream_scenario(lambda: _pass(db, server.url, part["project"]))
        for i, got in enumerate(passes):
            assert got == _expected("stream", i, server.url), i
        first, second = passes
        assert (first["mode"], first["pushed"], first["pending"]) == ("stream", 13, 13)
        # All 13 labelled: charged, the game played on to its next window, whose queries were pushed.
        assert (second["imported"], second["selected"], second["pushed"]) == (13, 7, 7)
        # A personal access token is exchanged for an access token (recorded then: the clock is set back).
        import budgetsft.labelstudio_sync as mod

        monkeypatch.setattr(mod, "_now", lambda: CASSETTE["auth"]["at"])
        got = _pass(db, server.url, part["project"], token=CASSETTE["auth"]["token"])
        _finished(server)
    assert got == _expected("auth", 0, server.url)
    sess = Session.open(db)
    try:
        with pytest.raises(ConfigError, match="'--batch' is for pool sessions"):
            sync_once(sess, LabelStudioClient("http://127.0.0.1:9", TOKEN), 1, batch=3)
    finally:
        sess.close()


def test_refusals_name_what_to_fix(pool):
    db, _ = pool
    with _replayer(db, _exchanges("refused")) as server:
        bad_key = _pass(db, server.url, CASSETTE["auth"]["project"], token="not-a-token")
        no_project = _pass(db, server.url, 999)
        _finished(server)
    assert "refused the API key (401 Invalid token.)" in bad_key["error"]
    assert "has no project 999 that this API key can see" in no_project["error"]
    # No server there: a transient error (the loop tries again), named as such.
    client = LabelStudioClient(server.url, TOKEN)
    with pytest.raises(LabelStudioError, match="cannot reach Label Studio") as exc:
        client.project(1)
    assert exc.value.transient
    for url in ("localhost:8080", "ftp://x", ""):
        with pytest.raises(ConfigError, match="must be an http"):
            LabelStudioClient(url, TOKEN)
    with pytest.raises(ConfigError, match="needs an API key"):
        LabelStudioClient("http://x", " ")


# ---------------------------------------------------------------- the shared import
def test_import_tasks_takes_tasks_in_memory(tmp_path):
    from test_labelstudio import FIXTURES as LS_FIXTURES
    from test_labelstudio import _load_fixture, _scenario

    export, annotators = _load_fixture()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    db_a, _ = _scenario(tmp_path / "a")
    db_b, _ = _scenario(tmp_path / "b")
    with Ledger.open(db_a) as a, Ledger.open(db_b) as b:
        from_file = import_export(a, LS_FIXTURES / "export.json", annotators=annotators)
        in_memory = import_tasks(b, export, annotators=annotators, source="memory")
        assert from_file == in_memory and a.answers() == b.answers()
        with pytest.raises(DataError, match="memory: Label Studio tasks come as a list"):
            import_tasks(b, {"tasks": []}, source="memory")


def test_docstring_examples_run():
    import doctest

    import budgetsft.labelstudio_sync

    assert doctest.testmod(budgetsft.labelstudio_sync).failed == 0


# ---------------------------------------------------------------- a live Label Studio
def _label_studio_python() -> str | None:
    import importlib.util

    env = os.environ.get("LABEL_STUDIO_PYTHON")
    if env:
        return env
    return sys.executable if importlib.util.find_spec("label_studio") is not None else None


@pytest.mark.integration
@pytest.mark.skipif(_label_studio_python() is None,
                    reason="label-studio is not installed: `make test-integration` installs it in its own venv "
                           "(or set LABEL_STUDIO_PYTHON); the replayed recording above covers the sync meanwhile")
def test_live_label_studio_sync(tmp_path):
    """Start Label Studio, then: the recorded scenarios again, and the command line against the live server.

    With BUDGETSFT_WRITE_LS_FIXTURES=1 the recording is written to the fixtures.
    """
    import _labelstudio_live as live

    sys.path.insert(0, str(FIXTURES))
    import record_sync

    port = live.free_port()
    url = f"http://127.0.0.1:{port}"
    proc, seconds = live.start_server(tmp_path, port, python=_label_studio_python())
    try:
        print(f"Label Studio answered after {seconds:.1f} s")
        (tmp_path / "rec").mkdir()
        cassette = record_sync.record(url, tmp_path / "rec")
        results = [p["result"] for p in cassette["pool"]["passes"]]
        assert [r.get("imported") for r in results] == [0, 2, 0, None, 4, 3]
        assert results[-1]["done"] and results[-1]["spent"] == POOL_BUDGET
        assert [p["result"]["imported"] for p in cassette["stream"]["passes"]] == [0, 13]
        # The command line: a project made by a person, sync, label through the API, sync again.
        (tmp_path / "cli").mkdir()
        db, gold = pool_session(tmp_path / "cli")
        project = new_project(url, live.TOKEN, "budgetsft cli")
        user = User(url, live.TOKEN, project)
        user.ids = {"admin": 1}
        env = {**os.environ, "LABEL_STUDIO_API_KEY": live.TOKEN}
        cmd = [sys.executable, "-m", "budgetsft", "labelstudio", "sync", str(db), "--url", url, "--project",
               str(project), "--once", "--cost", "1"]
        first = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
        assert first.returncode == 0 and "pushed 4, imported 0" in first.stdout, first.stderr
        for task in user.open_tasks():
            user.label(task, "admin", gold[task["data"]["example_id"]])
        second = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
        assert second.returncode == 0 and "pushed 4, imported 4, released 0; 4 of 9 labels spent" in second.stdout
        with Ledger.open(db) as led:
            assert led.labels_by_annotator() == {"budgetsft-admin@example.org": {"labels": 4, "spent": 4.0}}
            assert len(led.pending()) == 4
    finally:
        live.stop_server(proc)
    if os.environ.get("BUDGETSFT_WRITE_LS_FIXTURES") == "1":
        record_sync.save(cassette, _label_studio_python(), seconds)
