"""Sessions: the ledger-backed game equals the plain game, and survives kill -9 at any point."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from budgetsft.exceptions import BudgetExhaustedError, ConfigError, DataError
from budgetsft.experiment import run
from budgetsft.sessions.ledger import SCHEMA_VERSION, Ledger, LedgerError
from budgetsft.sessions.oracles import DatasetOracle, FileOracle, import_answers
from budgetsft.sessions.session import Session

SMALL = {"env": {"name": "synthetic", "d": 8, "K": 4, "rounds": 600}, "test_rounds": 200, "seed": 5}

GATES = [
    {"name": "llf", "beta": 0.1},
    {"name": "llf", "beta": 0.1, "window": 25},
    {"name": "random", "beta": 0.2},
    {"name": "margin", "beta": 0.1},
    {"name": "llf", "beta": 0.1, "unit": "cost"},
]


def _cfg(gate: dict, **over) -> dict:
    return {**SMALL, "gate": dict(gate), **over}


def _same_summary(a: dict, b: dict) -> None:
    a, b = dict(a), dict(b)
    a.pop("seconds"), b.pop("seconds")
    assert json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


@pytest.mark.parametrize("gate", GATES, ids=lambda g: "-".join(str(v) for v in g.values()))
def test_session_plays_exactly_the_run(tmp_path, gate):
    cfg = _cfg(gate)
    if gate.get("unit") == "cost":
        cfg["env"] = {**cfg["env"], "cost_low": 0.5, "cost_high": 2.0}
    ref = run(cfg)
    sess = Session.create(tmp_path / "s.db", cfg, checkpoint_every=37)
    assert sess.play(DatasetOracle()).status == "finished"
    assert sess.records() == ref.records
    _same_summary(sess.summary(), ref.summary)
    led = sess.ledger
    bought = [r.round for r in ref.records if r.queried]
    assert [a.round for a in led.answers()] == bought
    assert led.spent() == pytest.approx(ref.summary["budget"] - ref.records[-1].budget_left)
    assert led.spent() <= led.budget_total


@pytest.mark.parametrize("stops", [[1], [137, 138, 400], [599]])
def test_stop_and_reopen_anywhere_gives_the_same_records(tmp_path, stops):
    cfg = _cfg({"name": "llf", "beta": 0.1, "window": 10})
    ref = run(cfg)
    path = tmp_path / "s.db"
    Session.create(path, cfg, checkpoint_every=50).close()
    for stop in stops:
        sess = Session.open(path, checkpoint_every=50)
        assert sess.play(DatasetOracle(), stop_at=stop).status == "stopped"
        sess.close()
    sess = Session.open(path)
    assert sess.play(DatasetOracle()).status == "finished"
    assert sess.records() == ref.records
    # A finished session plays nothing more.
    assert sess.play(DatasetOracle()).status == "finished"
    assert len(sess.ledger.answers()) == ref.summary["labels_bought"]


def test_adversarial_env_is_refused_clearly(tmp_path):
    with pytest.raises(ConfigError, match="adversarial"):
        Session.create(tmp_path / "s.db", {"env": {"name": "adversarial", "rounds": 50}})
    assert not (tmp_path / "s.db").exists()


# ---------------------------------------------------------------- kill -9 at random points


def _answers(db: Path) -> int:
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return int(con.execute("SELECT COUNT(*) FROM answers").fetchone()[0])
        finally:
            con.close()
    except sqlite3.Error:
        return -1


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "budgetsft", *args]


def _kill_when(proc: subprocess.Popen, db: Path, answers: int, extra: float, deadline: float = 60.0) -> bool:
    """SIGKILL ``proc`` once the ledger holds ``answers`` answers (+ ``extra`` s); False if it ended first."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if proc.poll() is not None:
            return False
        if db.exists() and _answers(db) >= answers:
            time.sleep(extra)
            if proc.poll() is not None:
                return False
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.002)
    proc.kill()
    raise AssertionError("the session made no progress")


KILL_CASES = {
    "llf-stream": (["--gate", "llf", "--beta", "0.1"], {"name": "llf", "beta": 0.1}),
    "llf-window": (["--gate", "llf", "--beta", "0.1", "--window", "40"], {"name": "llf", "beta": 0.1, "window": 40}),
}


@pytest.mark.parametrize("case", sorted(KILL_CASES))
def test_sigkill_at_random_points_then_resume_equals_uninterrupted(tmp_path, case):
    flags, gate = KILL_CASES[case]
    rounds, seed = 4000, 11
    cfg = {"env": {"name": "synthetic", "d": 20, "K": 5, "rounds": rounds}, "gate": gate, "seed": seed}
    ref = run(cfg)
    bought = ref.summary["labels_bought"]
    db = tmp_path / "kill.db"
    rng = random.Random(f"kill-{case}")
    thresholds = sorted(rng.sample(range(1, bought - 5), 7))
    common = ["--rounds", str(rounds), "--seed", str(seed), "--json", "--checkpoint-every", "25"]
    kills = []
    proc = subprocess.Popen(_cli("run", *flags, *common, "--session", str(db)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    for threshold in thresholds:
        extra = rng.choice([0.0, 0.0, rng.uniform(0, 0.01), rng.uniform(0, 0.05)])
        if _kill_when(proc, db, threshold, extra):
            kills.append((threshold, _answers(db)))
        proc = subprocess.Popen(_cli("resume", str(db), "--json", "--checkpoint-every", "25"),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert len(kills) >= 4, f"too few kills landed: {kills}"
    print(f"\n{case}: killed at answers {[k[1] for k in kills]} of {bought}; resumed each time")

    led = Ledger.open(db)
    # Same records as the uninterrupted run, bit for bit.
    assert led.records() == ref.records
    # Each bought label paid once: one answer per queried round, none for others, spend = labels.
    queried = [r.round for r in ref.records if r.queried]
    assert [a.round for a in led.answers()] == queried
    assert led.spent() == len(queried) <= led.budget_total
    assert not led.pending()
    # And the same --json summary line as `run --json` (timings aside).
    plain = subprocess.run(_cli("run", *flags, "--rounds", str(rounds), "--seed", str(seed), "--json"),
                           capture_output=True, text=True, check=True)
    _same_summary(json.loads(stdout.strip().splitlines()[-1]), json.loads(plain.stdout.strip().splitlines()[-1]))


# ---------------------------------------------------------------- the file oracle


def test_file_oracle_waits_imports_and_ends_like_the_run(tmp_path):
    # max_pending 0: wait for every label of a decision before playing on (the simulation's order of play).
    cfg = _cfg({"name": "llf", "beta": 0.1, "window": 50}, max_pending=0)
    ref = run(cfg)
    gold = {r.round: r.gold for r in ref.records}
    path = tmp_path / "f.db"
    sess = Session.create(path, cfg, oracle={"name": "file"})
    oracle = FileOracle()
    rounds_waited = 0
    while (outcome := sess.play(oracle)).status == "waiting":
        rounds_waited += 1
        qfile = oracle.queries_path(sess)
        lines = [json.loads(x) for x in qfile.read_text().splitlines()]
        assert lines and len(lines) == outcome.pending
        lat = [x["latency"] for x in lines]
        assert lat == sorted(lat, reverse=True)  # largest latency first
        ans = tmp_path / f"answers{rounds_waited}.jsonl"
        ans.write_text("".join(json.dumps({"query_id": x["query_id"], "label": gold[x["round"]],
                                           "annotator": "alice"}) + "\n" for x in lines))
        assert import_answers(sess.ledger, ans)["added"] == len(lines)
        # A second import of the same file charges nothing.
        before = sess.ledger.spent()
        assert import_answers(sess.ledger, ans)["duplicates"] == len(lines)
        assert sess.ledger.spent() == before
    assert outcome.status == "finished" and rounds_waited > 1
    recs = sess.records()
    # Answered with the gold, the file oracle gives the dataset oracle's records (annotator aside).
    assert recs == ref.records
    assert sess.ledger.labels_by_annotator() == {"alice": {"labels": ref.summary["labels_bought"],
                                                           "spent": float(ref.summary["labels_bought"])}}


def test_bad_answer_file_is_reported_by_line_and_charges_nothing(tmp_path):
    sess = Session.create(tmp_path / "f.db", _cfg({"name": "llf", "beta": 0.1, "window": 50}))
    assert sess.play(FileOracle()).status == "waiting"
    q = sess.ledger.pending()[0]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps({"query_id": q.id, "label": 1}) + "\n"
        + "{not json\n"
        + json.dumps({"query_id": 99999, "label": 0}) + "\n"
        + json.dumps({"query_id": q.id, "label": 9}) + "\n"
        + json.dumps({"query_id": q.id, "label": 0, "cost": -1}) + "\n"
    )
    with pytest.raises(DataError) as exc:
        import_answers(sess.ledger, bad)
    msg = str(exc.value)
    assert f"{bad}:2: not valid JSON" in msg
    assert f"{bad}:3: unknown 'query_id' 99999" in msg
    assert f"{bad}:4: 'label' must be an int in [0, 3]. Got 9" in msg
    assert f"{bad}:5: 'cost' must be a number > 0" in msg
    assert sess.ledger.spent() == 0 and not sess.ledger.answers()
    # An answer to a skipped query is refused too, before anything is written.
    q2 = sess.ledger.pending()[1]
    sess.ledger.skip(q2.id, "someone")
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(json.dumps({"query_id": q.id, "label": 1}) + "\n" + json.dumps({"query_id": q2.id, "label": 0}))
    with pytest.raises(DataError, match=f"{mixed}:2: query {q2.id} was skipped"):
        import_answers(sess.ledger, mixed)
    assert sess.ledger.spent() == 0 and not sess.ledger.answers()


def test_cli_file_oracle_round_trip(tmp_path):
    db = tmp_path / "cli.db"
    base = ["--rounds", "300", "--seed", "1", "--gate", "llf", "--beta", "0.1", "--window", "100"]
    res = subprocess.run(_cli("run", *base, "--session", str(db), "--oracle", "file"), capture_output=True,
                         text=True, check=True)
    assert "waiting for" in res.stdout and "session import" in res.stdout
    qfile = db.with_suffix(".queries.jsonl")
    for _ in range(10):
        lines = [json.loads(x) for x in qfile.read_text().splitlines()]
        ans = tmp_path / "a.jsonl"
        ans.write_text("".join(json.dumps({"query_id": x["query_id"], "label": 0}) + "\n" for x in lines))
        res = subprocess.run(_cli("session", "import", str(db), str(ans)), capture_output=True, text=True, check=True)
        assert f"imported {len(lines)} answer(s)" in res.stdout
        res = subprocess.run(_cli("resume", str(db), "--json"), capture_output=True, text=True, check=True)
        last = json.loads(res.stdout.strip().splitlines()[-1])
        if last.get("status") != "waiting":
            break
    assert last["rounds"] == 300 and last["labels_bought"] == 30
    show = json.loads(subprocess.run(_cli("session", "show", str(db), "--json"), capture_output=True, text=True,
                                     check=True).stdout)
    assert show["spent"] == 30 and show["remaining"] == 0 and show["by_annotator"]["file"]["labels"] == 30
    out = tmp_path / "bought.jsonl"
    subprocess.run(_cli("session", "export", str(db), str(out)), check=True, capture_output=True)
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 30 and all(r["answer"] == 0 and len(r["candidates"]) == 5 for r in rows)


# ---------------------------------------------------------------- the ledger itself


def test_ledger_refuses_newer_schema_and_foreign_files(tmp_path):
    sess = Session.create(tmp_path / "s.db", _cfg({"name": "llf", "beta": 0.1}))
    sess.ledger.set_meta("schema_version", str(SCHEMA_VERSION + 1))
    sess.close()
    with pytest.raises(LedgerError, match="newer than this budgetsft"):
        Ledger.open(tmp_path / "s.db")
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(LedgerError, match="not a budgetsft session ledger"):
        Ledger.open(junk)
    with pytest.raises(LedgerError, match="no such session file"):
        Ledger.open(tmp_path / "missing.db")


def test_ledger_migrates_an_older_schema(tmp_path, monkeypatch):
    import budgetsft.sessions.ledger as ledger_mod

    sess = Session.create(tmp_path / "s.db", _cfg({"name": "llf", "beta": 0.1}))
    sess.ledger.set_meta("schema_version", str(SCHEMA_VERSION - 1))
    sess.close()
    monkeypatch.setitem(ledger_mod.MIGRATIONS, SCHEMA_VERSION - 1,
                        ["CREATE TABLE migrated_marker (x INTEGER)"])
    led = Ledger.open(tmp_path / "s.db")
    assert led.meta("schema_version") == str(SCHEMA_VERSION)
    assert led._conn.execute("SELECT COUNT(*) FROM migrated_marker").fetchone()[0] == 0


def test_costs_per_annotator_never_exceed_a_cost_budget(tmp_path):
    cfg = _cfg({"name": "llf", "beta": 0.2, "window": 100, "unit": "cost"})
    sess = Session.create(tmp_path / "c.db", cfg, oracle={"name": "web"})
    led = sess.ledger
    expert = led.add_annotator("expert", 2.0)
    crowd = led.add_annotator("crowd", 0.5)
    total = led.budget_total
    paid = 0.0
    for _ in range(200):
        outcome = sess.play(FileOracle(tmp_path / "q.jsonl"))
        if outcome.status == "finished":
            break
        for ann in (expert, crowd):
            try:
                q = led.lease_next(ann)
            except BudgetExhaustedError:
                continue
            if q is None:
                continue
            if led.record_answer(q.id, 0, ann.name, ann.cost, n_candidates=4):
                paid += ann.cost if led.budget_unit == "cost" else 1
            assert led.spent() <= total + 1e-12
        if not led.pending():
            continue
        # nobody can pay for what is left: skip it (no charge)
        for q in led.pending():
            try:
                led.lease_next(crowd)
            except BudgetExhaustedError:
                led.skip(q.id, "crowd")
    by = led.labels_by_annotator()
    assert by["expert"]["spent"] == 2.0 * by["expert"]["labels"]
    assert by["crowd"]["spent"] == 0.5 * by["crowd"]["labels"]
    assert led.spent() == pytest.approx(paid) and led.spent() <= total


def test_double_answers_are_recorded_once_and_leases_are_exclusive(tmp_path):
    sess = Session.create(tmp_path / "d.db", _cfg({"name": "llf", "beta": 0.2, "window": 100}), oracle={"name": "web"})
    assert sess.play(FileOracle(tmp_path / "q.jsonl")).status == "waiting"
    led = sess.ledger
    a, b = led.add_annotator("a"), led.add_annotator("b")
    qa, qb = led.lease_next(a), led.lease_next(b)
    assert qa.id != qb.id and led.lease_holder(qa.id) == "a"
    assert led.lease_next(a).id == qa.id  # asking again renews, never hands a second item
    assert led.record_answer(qa.id, 1, "a", 1.0, n_candidates=4) is True
    assert led.record_answer(qa.id, 2, "a", 1.0, n_candidates=4) is False
    assert led.spent() == 1 and led.answer_for_round(qa.round).label == 1
    with pytest.raises(LedgerError, match="'label' must be an int in \\[0, 3\\]"):
        led.record_answer(qb.id, 4, "b", 1.0, n_candidates=4)
    with pytest.raises(LedgerError, match="no query with id"):
        led.record_answer(10_000, 0, "b", 1.0)
    assert led.spent() == 1
    # An expired lease frees the item for someone else.
    led._conn.execute("UPDATE leases SET expires = 0")
    c = led.add_annotator("c")
    assert led.lease_next(c).id == qb.id


@pytest.mark.skipif(os.name != "posix", reason="needs a pseudo-terminal")
def test_terminal_oracle_through_a_real_pty(tmp_path):
    pexpect = pytest.importorskip("pexpect")
    db = tmp_path / "t.db"
    args = ["-m", "budgetsft", "run", "--rounds", "80", "--seed", "0", "--gate", "llf", "--beta", "0.1",
            "--session", str(db), "--oracle", "terminal", "--annotator", "ann", "--env", "synthetic"]
    child = pexpect.spawn(sys.executable, args, encoding="utf-8", timeout=60, dimensions=(50, 200))
    prompt = r"answer \[0-4\] or a name, s=skip, u=undo last, q=quit and save: "
    child.expect(prompt)
    first_round = int(child.before.split("[round ")[1].split("/")[0])
    child.sendline("2")  # answer round A
    child.expect(prompt)
    child.sendline("u")  # undo it: the session rolls back and asks round A again
    child.expect("undone: round")
    child.expect(prompt)
    assert int(child.before.split("[round ")[1].split("/")[0]) == first_round
    child.sendline("9")  # out of range: asked again
    child.expect("no candidate 9")
    child.expect(prompt)
    child.sendline("3")  # the corrected answer
    child.expect(prompt)
    child.sendline("s")  # skip the next one: no charge
    child.expect(prompt)
    child.sendline("q")  # quit and save
    child.expect("saved; continue with")
    child.expect(pexpect.EOF)
    led = Ledger.open(db)
    answers = led.answers()
    assert [(a.round, a.label, a.annotator) for a in answers] == [(first_round, 3, "ann")]
    assert led.spent() == 1
    undo = led._conn.execute("SELECT detail FROM events WHERE kind = 'undo'").fetchall()
    assert len(undo) == 1 and json.loads(undo[0][0])["label"] == 2
    assert led._conn.execute("SELECT COUNT(*) FROM queries WHERE status = 'skipped'").fetchone()[0] == 1
    led.close()
    # Resume with the dataset oracle to finish: the human answers stay, nothing is re-asked for them.
    res = subprocess.run(_cli("resume", str(db), "--oracle", "dataset", "--json"), capture_output=True, text=True,
                         check=True)
    last = json.loads(res.stdout.strip().splitlines()[-1])
    assert last["rounds"] == 80
    led = Ledger.open(db)
    assert led.answer_for_round(first_round).label == 3 and led.answer_for_round(first_round).annotator == "ann"
    assert led.spent() == last["labels_bought"] <= led.budget_total


@pytest.mark.integration
def test_real_data_session_resumes_to_the_run(tmp_path):
    from budgetsft.sessions.ledger import record_to_json

    cfg = {"data": {"name": "bbc-news", "max_examples": 300}, "features": {"name": "encoder"},
           "gate": {"name": "llf", "beta": 0.1}, "seed": 0, "regret_lp": False}
    ref = run(cfg)
    path = tmp_path / "bbc.db"
    sess = Session.create(path, cfg, checkpoint_every=40)
    assert sess.play(DatasetOracle(), stop_at=101).status == "stopped"
    sess.close()
    sess = Session.open(path)
    assert sess.play(DatasetOracle()).status == "finished"
    # Real data has no pseudo-regret (NaN), so compare the records' exact JSON.
    assert [record_to_json(r) for r in sess.records()] == [record_to_json(r) for r in ref.records]
    _same_summary(sess.summary(), ref.summary)
    rows = sess.export_labels()
    assert len(rows) == ref.summary["labels_bought"]
    assert all(r["prompt"] and len(r["candidates"]) == 5 and 0 <= r["answer"] < 5 for r in rows)


def test_one_player_per_session_file(tmp_path):
    path = tmp_path / "p.db"
    Session.create(path, _cfg({"name": "llf", "beta": 0.1})).close()
    first, second = Session.open(path), Session.open(path)
    with first._player_lock():
        with pytest.raises(LedgerError, match="another process is playing this session \\(pid"):
            second.play(DatasetOracle())
    assert second.play(DatasetOracle()).status == "finished"


def test_items_no_annotator_can_afford_are_skipped_not_left_pending(tmp_path):
    sess = Session.create(tmp_path / "u.db", _cfg({"name": "llf", "beta": 0.05, "window": 100, "unit": "cost"}),
                          oracle={"name": "web"})
    assert sess.play(FileOracle(tmp_path / "q.jsonl")).status == "waiting"
    led = sess.ledger
    assert led.skip_unaffordable() == 0  # no annotators yet: nothing decided
    pricey = led.add_annotator("pricey", cost=led.budget_total + 1.0)
    with pytest.raises(BudgetExhaustedError, match="cannot pay annotator 'pricey'"):
        led.lease_next(pricey)
    n = len(led.pending())
    assert n and led.skip_unaffordable() == n and not led.pending()
    assert led.spent() == 0
    assert sess.play(FileOracle(tmp_path / "q.jsonl")).status in ("waiting", "finished")


def test_cli_annotate_adds_annotators_and_refuses_to_serve_without_any(tmp_path):
    db = tmp_path / "w.db"
    subprocess.run(_cli("run", "--rounds", "200", "--gate", "llf", "--beta", "0.1", "--window", "50",
                        "--session", str(db), "--oracle", "web"), check=True, capture_output=True, text=True)
    res = subprocess.run(_cli("annotate", str(db)), capture_output=True, text=True)
    assert res.returncode == 2 and "no annotators yet" in res.stderr and "--add-annotator" in res.stderr
    res = subprocess.run(_cli("annotate", str(db), "--add-annotator", "expert", "--cost", "2.5"), capture_output=True,
                         text=True, check=True)
    token = res.stdout.strip().rsplit("token: ", 1)[1]
    led = Ledger.open(db)
    ann = led.annotator_by_token(token)
    assert ann is not None and ann.name == "expert" and ann.cost == 2.5
    res = subprocess.run(_cli("annotate", str(db), "--add-annotator", "expert"), capture_output=True, text=True)
    assert res.returncode == 2 and "already exists" in res.stderr
    res = subprocess.run(_cli("annotate", str(db), "--add-annotator", "x", "--cost", "-1"), capture_output=True,
                         text=True)
    assert res.returncode == 2 and "'cost' of annotator 'x' must be a finite number > 0" in res.stderr


# ---------------------------------------------------------------- a killed player is seen as gone


def _wait_for(predicate, what: str, deadline: float = 60.0) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_player_killed_with_sigkill_shows_as_interrupted(tmp_path):
    db = tmp_path / "k.db"
    # A terminal annotator who never answers: the player sits at its first query, status "playing", lock held.
    proc = subprocess.Popen(_cli("run", "--rounds", "300", "--seed", "0", "--session", str(db), "--oracle",
                                 "terminal"), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        def playing() -> bool:
            if not Path(str(db) + ".lock").exists():
                return False
            with Ledger.open(db) as led:
                return led.status == "playing"

        _wait_for(playing, "the player to start")
        shown = json.loads(subprocess.run(_cli("session", "show", str(db), "--json"), capture_output=True,
                                          text=True, check=True).stdout)
        assert shown["status"] == "playing"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    with Ledger.open(db) as led:
        assert led.status == "playing"  # what the ledger says: a killed player cannot change it
    shown = json.loads(subprocess.run(_cli("session", "show", str(db), "--json"), capture_output=True, text=True,
                                      check=True).stdout)
    assert shown["status"] == "interrupted"
    table = subprocess.run(_cli("session", "show", str(db)), capture_output=True, text=True, check=True).stdout
    assert "interrupted" in table and "playing" not in table
    # Resuming it plays it to the end.
    done = subprocess.run(_cli("resume", str(db), "--oracle", "dataset", "--json"), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    sess = Session.open(db)
    assert sess.status == "finished"
    sess.close()


def test_stale_lock_detection_by_pid_start_time_and_heartbeat(tmp_path):
    import socket

    from budgetsft.sessions.session import STALE_S, _player_alive, _player_id

    lock = tmp_path / "s.db.lock"
    assert not _player_alive(lock)  # no lock file: no player
    me = _player_id(os.getpid())
    lock.write_text(" ".join(f"{k} {v}" for k, v in me.items()))
    assert _player_alive(lock)
    if "start" in me:  # the same pid, started at another time: another process now
        lock.write_text(f"pid {os.getpid()} host {socket.gethostname()} start 1")
        assert not _player_alive(lock)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock.write_text(f"pid {dead.pid} host {socket.gethostname()}")
    assert not _player_alive(lock)
    # Another host's pid cannot be asked: its heartbeat (the file's mtime) decides.
    lock.write_text("pid 1 host some-other-host")
    assert _player_alive(lock)
    old = time.time() - STALE_S - 5
    os.utime(lock, (old, old))
    assert not _player_alive(lock)


def test_a_ledger_names_no_module_of_sessions_so_older_files_open(tmp_path):
    # The session modules moved from the top level into budgetsft.sessions; a ledger written before the move
    # still opens because it stores the module path of no class of theirs (checkpoints name core classes only).
    path = tmp_path / "s.db"
    sess = Session.create(path, _cfg({"name": "llf", "beta": 0.1, "window": 10}), checkpoint_every=50)
    assert sess.play(DatasetOracle(), stop_at=300).status == "stopped"
    sess.close()
    con = sqlite3.connect(path)
    stored = b""
    for (table,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
        for row in con.execute(f'SELECT * FROM "{table}"'):
            stored += b"\0".join(v if isinstance(v, bytes) else str(v).encode() for v in row) + b"\n"
    con.close()
    assert b"budgetsft.gates.llf:LLFGate" in stored  # class paths are visible in the bytes searched
    assert re.findall(rb"budgetsft\.(?:sessions?|ledger|oracles|web)\b[\w.:]*", stored) == []


# ---------------------------------------------------------------- delayed feedback (issue 19)


def test_stream_session_plays_on_while_answers_are_pending(tmp_path):
    """With max_pending K the game plays on while up to K labels are awaited, learns each when it comes,
    holds their price (never spending past the budget), and a skipped item gives its price back."""
    K = 6
    cfg = _cfg({"name": "llf", "beta": 0.1}, max_pending=K)
    ref = run(cfg)
    gold = {r.round: r.gold for r in ref.records}
    sess = Session.create(tmp_path / "d.db", cfg, oracle={"name": "file"})
    oracle = FileOracle()
    trips, skipped = 0, 0
    while (outcome := sess.play(oracle)).status == "waiting":
        trips += 1
        pend = sess.ledger.pending()
        assert len(pend) <= K  # never more awaited than K
        assert sess.ledger.spent() + len(pend) <= sess.ledger.budget_total
        # Answer all but one (it stays pending over the next trip), and skip one item now and then.
        rows = []
        for i, q in enumerate(sorted(pend, key=lambda q: q.round)):
            if i == len(pend) - 1 and len(pend) > 1:
                continue
            if q.round % 7 == 0:
                sess.ledger.skip(q.id, "alice")
                skipped += 1
                continue
            rows.append(json.dumps({"query_id": q.id, "label": gold[q.round], "annotator": "alice"}))
        ans = tmp_path / f"a{trips}.jsonl"
        ans.write_text("\n".join(rows) + "\n")
        if rows:
            import_answers(sess.ledger, ans)
        assert trips < 200
    assert outcome.status == "finished"
    recs = sess.records()
    assert [r.round for r in recs] == list(range(1, len(ref.records) + 1))
    bought = [r for r in recs if r.queried]
    assert len(bought) == len(sess.ledger.answers()) == sess.ledger.spent() <= sess.ledger.budget_total
    assert all(r.gold == gold[r.round] for r in bought)
    # Far fewer trips than labels: the stream did not stop for each of them.
    assert trips < len(bought) / 2
    assert skipped > 0 and sess.summary()["labels_bought"] == len(bought)


def test_delayed_session_resumes_after_a_kill_with_the_same_records(tmp_path):
    """Answers are taken where they were first seen (logged in the ledger): replaying from an older
    checkpoint (as after kill -9) gives the records of the uninterrupted session."""
    cfg = _cfg({"name": "llf", "beta": 0.1}, max_pending=4)
    ref = run(cfg)
    gold = {r.round: r.gold for r in ref.records}
    path = tmp_path / "k.db"
    sess = Session.create(path, cfg, oracle={"name": "file"}, checkpoint_every=1000)
    while sess.play(FileOracle()).status == "waiting":
        rows = [json.dumps({"query_id": q.id, "label": gold[q.round], "annotator": "a"})
                for q in sess.ledger.pending()[:2]]
        (tmp_path / "a.jsonl").write_text("\n".join(rows) + "\n")
        import_answers(sess.ledger, tmp_path / "a.jsonl")
    first = sess.records()
    # Forget everything after the start, as a replay after a crash would, and play again: same records.
    sess.ledger.rollback_to(0)
    with sess.ledger.transaction() as c:
        c.execute("DELETE FROM checkpoints")
        c.execute("UPDATE meta SET value = 'stopped' WHERE key = 'status'")
    assert sess.play(FileOracle()).status == "finished"
    assert sess.records() == first
