"""Issue 22, second red-team pass: each test fails on the code before the fix."""

from __future__ import annotations

import json
import socket
import time

import pytest
from test_web import client, make_session, served

from budgetsft.sessions.ledger import Ledger


def _raw_post_in_two_parts(url: str, token: str, body: dict, between) -> dict:
    """POST /api/answer: send the headers, call ``between()``, then send the body; return the JSON reply."""
    host, port = url.removeprefix("http://").split(":")
    data = json.dumps(body).encode()
    head = (f"POST /api/answer HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\nConnection: close\r\n\r\n").encode()
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head)
        time.sleep(0.3)  # the server has read the headers and authenticated the token
        between()
        sock.sendall(data)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    status = int(reply.split(b" ", 2)[1])
    return {"status": status, **json.loads(reply.split(b"\r\n\r\n", 1)[1] or b"{}")}


@pytest.mark.parametrize("what", ["revoke", "rotate"])
def test_h1_a_revoke_or_rotation_stops_a_request_already_in_flight(tmp_path, what):
    path = tmp_path / "s.db"
    tokens = make_session(path, annotators={"alice": 1.0, "mallory": 1.0})
    with served(path) as live, client(live, tokens["mallory"]) as mallory:
        item = mallory.get("/api/next").json()

        def change():
            with Ledger.open(path) as led:
                led.revoke_annotator("mallory") if what == "revoke" else led.rotate_token("mallory")

        reply = _raw_post_in_two_parts(live.url, tokens["mallory"], {"query_id": item["query_id"], "label": 0},
                                       change)
    assert reply["status"] == 401 and "revoked" in reply["error"]
    with Ledger.open(path) as led:
        assert led.answers() == [] and led.spent() == 0


def test_h1_an_unrevoked_request_in_two_parts_is_recorded(tmp_path):
    path = tmp_path / "s.db"
    tokens = make_session(path, annotators={"alice": 1.0})
    with served(path) as live, client(live, tokens["alice"]) as alice:
        item = alice.get("/api/next").json()
        reply = _raw_post_in_two_parts(live.url, tokens["alice"], {"query_id": item["query_id"], "label": 0},
                                       lambda: None)
    assert reply["status"] == 200 and reply["recorded"] is True


# ---------------------------------------------------------------- M6: ledgers edited so that they still open


def _finished_session(tmp_path):
    from budgetsft.sessions.oracles import DatasetOracle
    from budgetsft.sessions.session import Session

    cfg = {"env": {"name": "synthetic", "d": 4, "K": 3, "rounds": 120}, "gate": {"name": "llf", "beta": 0.1},
           "test_rounds": 20, "comparator": "none"}
    path = tmp_path / "m6.db"
    sess = Session.create(path, cfg)
    assert sess.play(DatasetOracle()).status == "finished"
    sess.close()
    return path


def _cli_ok(*args):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "budgetsft", *args], capture_output=True, text=True)


@pytest.mark.parametrize("edit", ["config", "cost", "record_json", "record_keys"])
def test_m6_edited_ledgers_give_an_error_not_a_traceback(tmp_path, edit):
    import sqlite3

    path = _finished_session(tmp_path)
    conn = sqlite3.connect(path)
    if edit == "config":
        cfg = json.loads(conn.execute("SELECT value FROM meta WHERE key = 'config'").fetchone()[0])
        cfg.pop("learner")
        conn.execute("UPDATE meta SET value = ? WHERE key = 'config'", (json.dumps(cfg),))
    elif edit == "cost":
        conn.execute("UPDATE answers SET cost = 'abc' WHERE query_id = (SELECT MIN(query_id) FROM answers)")
    elif edit == "record_json":
        conn.execute("UPDATE records SET data = '{not json' WHERE round = 7")
    else:
        conn.execute("UPDATE records SET data = '{\"round\": 7, \"colour\": 1}' WHERE round = 7")
    conn.commit()
    conn.close()
    for args in (("session", "show", str(path)), ("resume", str(path)),
                 ("session", "export", str(path), str(tmp_path / "out.jsonl"))):
        res = _cli_ok(*args)
        assert "Traceback" not in res.stderr, (args, res.stderr)
        if args[0] == "session" and args[1] == "export" and edit.startswith("record"):
            continue  # the export reads answers, not records: it has nothing to refuse
        assert res.returncode != 0 and res.stderr.startswith("error:") and str(path) in res.stderr, (args, res)


# ---------------------------------------------------------------- M7 / L8: user text in rich output


def test_m7_l8_annotator_names_are_printed_as_text(tmp_path):
    path = tmp_path / "s.db"
    make_session(path, annotators={"[/bold]": 1.0, "evil\x1b[2Jname": 1.0})
    with Ledger.open(path) as led:
        q = led.pending()[0]
        led.record_answer(q.id, 0, "imported-ana", 1.0)  # an answer from an import, no token
    res = _cli_ok("annotate", str(path), "--list")
    assert res.returncode == 0, res.stderr
    assert "[/bold]" in res.stdout and "\x1b[2J" not in res.stdout and "\\x1b[2J" in res.stdout
    assert "imported-ana" in res.stdout and "imported (no token)" in res.stdout
    show = _cli_ok("session", "show", str(path))
    assert show.returncode == 0 and "imported-ana" in show.stdout


# ---------------------------------------------------------------- corrections, L1, L2


def test_an_annotator_corrects_their_answer_charged_once_with_history(tmp_path):
    path = tmp_path / "s.db"
    tokens = make_session(path, annotators={"alice": 1.0, "bob": 1.0})
    with served(path) as live, client(live, tokens["alice"]) as alice, client(live, tokens["bob"]) as bob:
        qid = alice.get("/api/next").json()["query_id"]
        assert alice.post("/api/answer", json={"query_id": qid, "label": 1}).json()["recorded"] is True
        fix = alice.post("/api/answer", json={"query_id": qid, "label": 2}).json()
        assert fix["recorded"] is True and fix["corrected"] is True
        same = alice.post("/api/answer", json={"query_id": qid, "label": 2}).json()
        assert same["recorded"] is False and same["duplicate"] is True
        other = bob.post("/api/answer", json={"query_id": qid, "label": 0}).json()
        assert other["recorded"] is False and other["duplicate"] is True
    with Ledger.open(path) as led:
        assert led.spent() == 1.0
        assert [(a.query_id, a.label, a.annotator) for a in led.answers()] == [(qid, 2, "alice")]
        hist = [json.loads(d) for (d,) in led._conn.execute("SELECT detail FROM events WHERE kind = 'correct'")]
        assert hist == [{"query_id": qid, "annotator": "alice", "old": 1, "new": 2}]


def test_l1_an_annotator_cannot_answer_an_item_they_skipped(tmp_path):
    path = tmp_path / "s.db"
    tokens = make_session(path, annotators={"alice": 1.0, "bob": 1.0})
    with served(path) as live, client(live, tokens["alice"]) as alice:
        qid = alice.get("/api/next").json()["query_id"]
        assert alice.post("/api/skip", json={"query_id": qid}).status_code == 200
        res = alice.post("/api/answer", json={"query_id": qid, "label": 0})
        assert res.status_code == 409 and "skipped" in res.json()["error"]
    with Ledger.open(path) as led:
        assert led.answers() == []


def test_l2_leases_do_not_make_pending_items_unaffordable(tmp_path):
    from budgetsft.sessions.oracles import WebOracle
    from budgetsft.sessions.session import Session

    cfg = {"env": {"name": "synthetic", "d": 4, "K": 3, "rounds": 200}, "seed": 0,
           "gate": {"name": "llf", "budget": 3.0, "unit": "cost", "window": 50}}
    path = tmp_path / "c.db"
    sess = Session.create(path, cfg)
    assert sess.play(WebOracle()).status == "waiting"
    led = sess.ledger
    a = led.add_annotator("ana", 2.0)
    led.add_annotator("bo", 2.0)
    n_pending = len(led.pending())
    assert led.lease_next(led.annotator_by_token(a.token)) is not None  # ana holds 2 of the 3 for a while
    assert led.skip_unaffordable() == 0  # bo can still be paid once ana's lease passes: nothing is dropped
    assert len(led.pending()) == n_pending
    sess.close()


def test_annotate_exits_once_the_session_is_finished_unless_stay(tmp_path):
    import subprocess
    import sys

    import httpx

    from budgetsft.sessions.session import Session

    cfg = {"env": {"name": "synthetic", "d": 4, "K": 3, "rounds": 40}, "seed": 0,
           "gate": {"name": "llf", "budget": 3}, "max_pending": 0}
    for stay in (False, True):
        path = tmp_path / f"fin{stay}.db"
        Session.create(path, cfg).close()
        with Ledger.open(path) as led:
            token = led.add_annotator("ana", 1.0).token
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()
        args = [sys.executable, "-m", "budgetsft", "annotate", str(path), "--port", str(port)]
        proc = subprocess.Popen(args + (["--stay"] if stay else []), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            answered = 0
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=10) as c:
                while answered < 3:
                    assert time.monotonic() < deadline and proc.poll() is None
                    try:
                        item = c.get("/api/next").json()
                    except httpx.TransportError:
                        time.sleep(0.1)
                        continue
                    if item.get("item", True) is None:
                        time.sleep(0.1)
                        continue
                    assert c.post("/api/answer", json={"query_id": item["query_id"], "label": 0}).json()["recorded"]
                    answered += 1
            if stay:
                time.sleep(3)
                assert proc.poll() is None  # still serving
            else:
                out, err = proc.communicate(timeout=30)
                assert proc.returncode == 0 and "finished: 3 label(s) bought" in out and "exiting" in out, err
        finally:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(10)


def test_the_sweep_table_fits_80_columns_and_says_nothing_of_one_seed():
    from rich.console import Console

    from budgetsft.cli import _columns, _print_table
    from budgetsft.config import DEFAULT_CONFIG, merge
    from budgetsft.experiment import aggregate, sweep

    cfg = merge(DEFAULT_CONFIG, {"env": {"name": "synthetic", "rounds": 300}, "comparator": "none"})
    for seeds in ([0], [0, 1]):
        summaries = sweep(cfg, ["llf", "random", "first", "full"], [0.1], seeds)
        keys = _columns(cfg, None)
        rows = aggregate(summaries, keys)
        console = Console(width=80, record=True, color_system=None)
        _print_table(rows, cfg, console=console, keys=keys)
        text = console.export_text()
        assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80, text
        assert ("±" in text) == (len(seeds) > 1), text
        assert "over 1 seeds" not in text


def test_l3_an_export_from_another_ledger_with_the_same_config_is_refused(tmp_path):
    from test_labelstudio import _scenario

    from budgetsft.exceptions import DataError
    from budgetsft.labelstudio import CONTROL, OBJECT, export_tasks, import_tasks
    from budgetsft.sessions.session import Session

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    db_a, gold = _scenario(tmp_path / "a")
    db_b, _ = _scenario(tmp_path / "b")  # the same config, another ledger
    sess = Session.open(db_a)
    tasks = export_tasks(sess)
    sess.close()
    t = next(t for t in tasks if t["data"]["status"] == "pending")
    t["id"] = 1
    t["annotations"] = [{"id": 1, "completed_by": {"email": "ana"}, "was_cancelled": False,
                         "result": [{"from_name": CONTROL, "to_name": OBJECT, "type": "choices",
                                     "value": {"choices": [t["data"]["options"][0]["value"]]}}]}]
    with Ledger.open(db_b) as led:
        with pytest.raises(DataError, match="another session file"):
            import_tasks(led, [t])
        assert led.answers()[0].annotator == "web" and len(led.answers()) == 1


def test_l4_a_map_price_never_pays_a_revoked_annotator_and_l5_errors_are_capped(tmp_path):
    from test_labelstudio import _scenario

    from budgetsft.exceptions import DataError
    from budgetsft.labelstudio import CONTROL, MAX_LISTED, OBJECT, export_tasks, import_tasks
    from budgetsft.sessions.session import Session

    db, _ = _scenario(tmp_path)
    sess = Session.open(db)
    tasks = export_tasks(sess)
    sess.close()
    t = next(t for t in tasks if t["data"]["status"] == "pending")
    t["id"] = 1
    t["annotations"] = [{"id": 1, "completed_by": 7, "was_cancelled": False,
                         "result": [{"from_name": CONTROL, "to_name": OBJECT, "type": "choices",
                                     "value": {"choices": [t["data"]["options"][0]["value"]]}}]}]
    with Ledger.open(db) as led:
        led.revoke_annotator("ana")
        with pytest.raises(DataError, match="revoked"):
            import_tasks(led, [t], annotators={"7": {"name": "ana", "cost": 1}})
        assert len(led.answers()) == 1
        foreign = [{"id": i, "data": {"query_id": i, "session": "0123456789abcdef"}, "annotations": []}
                   for i in range(5000)]
        with pytest.raises(DataError) as exc:
            import_tasks(led, foreign)
        msg = str(exc.value)
        assert "5000 bad item(s)" in msg and f"and {5000 - MAX_LISTED} more" in msg and len(msg) < 5000


def test_off_a_terminal_long_steps_print_a_progress_line(monkeypatch, capsys):
    import budgetsft.cli as cli

    monkeypatch.setattr(cli, "PROGRESS_LINE_S", 0.0)
    seen = cli._with_progress(lambda cb: [cb(n) for n in (1, 2, 4)] and "done", total=4, what="sweep cells",
                              quiet=False)
    lines = capsys.readouterr().err.splitlines()
    assert seen == "done" and lines[0].startswith("sweep cells: 1 of 4 (25 %)") and "left" in lines[0]
    assert lines[-1].startswith("sweep cells: 4 of 4 (100 %)")
    assert cli._with_progress(lambda cb: cb, total=4, what="x", quiet=True) is None  # quiet: no callback


def test_off_a_terminal_the_featuriser_prints_lines_not_a_redrawn_bar(tmp_path):
    import subprocess
    import sys

    code = ("import sys\n"
            "from budgetsft.features.cache import _LineWriter\n"
            "from tqdm.auto import tqdm\n"
            "bar = tqdm(total=3, desc='features[block]', unit='ex', file=_LineWriter(sys.stderr), mininterval=0,"
            " ascii=True)\n"
            "for _ in range(3):\n    bar.update(1)\n"
            "bar.close()\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "\r" not in res.stderr
    lines = [x for x in res.stderr.splitlines() if x]
    assert lines[-1].startswith("features[block]: 100%") and "3/3" in lines[-1]
