"""Issue 13, Medium: imports are one transaction, exports never clobber, costs are checked where they
enter, one price rule, lost acknowledged answers are detected, tokens are hashed and revocable."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from budgetsft.exceptions import BudgetExhaustedError, ConfigError, DataError
from budgetsft.experiment import run
from budgetsft.sessions.ledger import SCHEMA_VERSION, Ledger, LedgerError
from budgetsft.sessions.oracles import DatasetOracle, FileOracle, TerminalOracle, WebOracle, import_answers
from budgetsft.sessions.session import Session

SYN = {"env": {"name": "synthetic", "d": 5, "K": 3, "rounds": 200}, "test_rounds": 0, "seed": 1}


def _cfg(**gate) -> dict:
    return {**SYN, "gate": {"name": "llf", **gate}}


def _invoke(*args: str):
    from typer.testing import CliRunner

    from budgetsft.cli import app

    return CliRunner().invoke(app, list(args))


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "budgetsft", *args], capture_output=True, text=True, timeout=300)


# ---------------------------------------------------------------- 4. an import is all or nothing


def test_an_import_over_the_budget_charges_nothing(tmp_path):
    path = tmp_path / "s.db"
    sess = Session.create(path, _cfg(beta=0.3, window=100, unit="cost"), oracle={"name": "file"})
    assert sess.play(FileOracle()).status == "waiting"
    led = sess.ledger
    pending = led.pending()
    total = led.budget_total
    price = 3.0
    assert len(pending) * price > total  # the case: more answers than the budget left
    answers = tmp_path / "a.jsonl"
    answers.write_text("".join(json.dumps({"query_id": q.id, "label": 0, "cost": price}) + "\n" for q in pending))
    with pytest.raises(BudgetExhaustedError, match=f"{answers}: nothing imported"):
        import_answers(led, answers)
    assert led.spent() == 0 and led.answers() == [] and len(led.pending()) == len(pending)
    sess.close()
    res = _invoke("session", "import", str(path), str(answers))
    assert isinstance(res.exception, BudgetExhaustedError)
    with Ledger.open(path) as led:
        assert led.spent() == 0 and led.answers() == []
        # What fits is imported whole.
        fits = int(total // price)
        answers.write_text("".join(json.dumps({"query_id": q.id, "label": 1, "cost": price}) + "\n"
                                   for q in pending[:fits]))
        assert import_answers(led, answers)["added"] == fits
        assert led.spent() == fits * price


# ---------------------------------------------------------------- 5. export never writes over a ledger


def test_export_refuses_the_ledger_and_existing_files(tmp_path):
    path = tmp_path / "f.db"
    sess = Session.create(path, _cfg(beta=0.1))
    assert sess.play(DatasetOracle()).status == "finished"
    n = len(sess.ledger.answers())
    sess.close()
    before = path.read_bytes()
    for dest in (path, tmp_path / "." / "f.db"):
        res = _invoke("session", "export", str(path), str(dest))
        assert isinstance(res.exception, ConfigError) and "that is the session ledger" in str(res.exception)
        res = _invoke("session", "export", str(path), str(dest), "--force")
        assert isinstance(res.exception, ConfigError)
    link = tmp_path / "link.db"
    link.symlink_to(path)
    assert isinstance(_invoke("session", "export", str(link), str(path), "--force").exception, ConfigError)
    assert path.read_bytes() == before
    with Ledger.open(path) as led:
        assert len(led.answers()) == n
    out = tmp_path / "out.jsonl"
    out.write_text("keep me\n")
    res = _invoke("session", "export", str(path), str(out))
    assert isinstance(res.exception, ConfigError) and "file exists; pass --force" in str(res.exception)
    assert out.read_text() == "keep me\n"
    assert _invoke("session", "export", str(path), str(out), "--force").exit_code == 0
    assert len(out.read_text().splitlines()) == n
    # (Item 14) a missing folder is a clear error, not FileNotFoundError.
    res = _invoke("session", "export", str(path), str(tmp_path / "nope" / "o.jsonl"))
    assert isinstance(res.exception, ConfigError) and "does not exist" in str(res.exception)


# ---------------------------------------------------------------- 6. costs are checked where they enter


@pytest.mark.parametrize("cost", ["-1", "nan", "inf", "0"])
def test_a_terminal_price_that_is_not_a_positive_number_is_refused(tmp_path, cost):
    db = tmp_path / "t.db"
    res = _invoke("run", "--rounds", "50", "--session", str(db), "--oracle", "terminal", "--cost", cost)
    assert isinstance(res.exception, ConfigError), res.output
    assert "The 'cost' parameter of TerminalOracle must be a finite number > 0" in str(res.exception)
    assert not db.exists()
    with pytest.raises(ConfigError, match="finite number > 0"):
        TerminalOracle(cost=float(cost))


def test_the_ledger_refuses_bad_costs_and_resume_still_works(tmp_path):
    path = tmp_path / "s.db"
    sess = Session.create(path, _cfg(beta=0.2, window=50), oracle={"name": "web"})
    assert sess.play(WebOracle()).status == "waiting"
    q = sess.ledger.pending()[0]
    for bad in (-1.0, float("nan"), float("inf"), "1", True):
        with pytest.raises(LedgerError, match="'cost' must be a finite number >= 0"):
            sess.ledger.record_answer(q.id, 0, "x", bad, n_candidates=3)
    assert sess.ledger.spent() == 0
    ans = tmp_path / "a.jsonl"
    ans.write_text(f'{{"query_id": {q.id}, "label": 0, "cost": 1e999}}\n')
    with pytest.raises(DataError, match="'cost' must be a number > 0, finite. Got inf"):
        import_answers(sess.ledger, ans)
    res = _invoke("resume", str(path), "--oracle", "terminal", "--cost", "-1")
    assert isinstance(res.exception, ConfigError)
    sess.close()
    assert Session.open(path).play(DatasetOracle()).status == "finished"


# ---------------------------------------------------------------- 7. one price rule under a label budget


def test_an_annotator_price_under_a_label_budget_is_recorded_not_charged(tmp_path):
    path = tmp_path / "s.db"
    cfg = _cfg(beta=0.1, window=40)
    sess = Session.create(path, cfg, oracle={"name": "web"})
    res = _invoke("annotate", str(path), "--add-annotator", "expert", "--cost", "2.0")
    assert res.exit_code == 0, res.output
    assert "budget counts labels (20)" in res.output and "recorded, not charged" in res.output
    while (outcome := sess.play(WebOracle())).status == "waiting":
        for q in sess.ledger.pending():
            assert sess.ledger.record_answer(q.id, 0, "expert", 2.0, n_candidates=3)
    assert outcome.status == "finished"
    led = sess.ledger
    summary = sess.summary()
    assert led.spent() == summary["spent"] == summary["labels_bought"] <= led.budget_total == 20
    assert all(r.cost == 1.0 for r in sess.records() if r.queried)
    assert led.labels_by_annotator()["expert"]["spent"] == summary["labels_bought"]
    assert [a.cost for a in led.answers()] == [2.0] * summary["labels_bought"]  # the price, on record
    report = sess.progress_report()
    assert report["spent"] <= report["budget"]
    sess.close()


# ---------------------------------------------------------------- 8. acknowledged answers lost with the -wal file


_ANSWER_THEN_DIE = """
import os, signal, sys
from budgetsft.sessions.ledger import Ledger
led = Ledger.open(sys.argv[1])
for q in led.pending()[:5]:
    assert led.record_answer(q.id, 0, "ann", 1.0, n_candidates=3)
    print("ack", q.id, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def _answer_five_then_sigkill(path: Path) -> subprocess.CompletedProcess:
    """A web session waiting for answers; a child process acknowledges 5 of them, then dies by SIGKILL."""
    sess = Session.create(path, _cfg(beta=0.2, window=50), oracle={"name": "web"})
    assert sess.play(WebOracle()).status == "waiting"
    sess.close()
    proc = subprocess.run([sys.executable, "-c", _ANSWER_THEN_DIE, str(path)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == -9
    return proc


def test_answers_lost_with_a_deleted_wal_file_are_detected(tmp_path):
    path = tmp_path / "s.db"
    proc = _answer_five_then_sigkill(path)
    assert proc.stdout.count("ack") == 5
    wal = Path(str(path) + "-wal")
    assert wal.exists()
    wal.unlink()
    Path(str(path) + "-shm").unlink(missing_ok=True)
    with pytest.raises(LedgerError, match=r"5 acknowledged answer\(s\) are missing.*-wal.*Nothing will be bought "
                                          r"again silently"):
        Ledger.open(path)
    res = _cli("resume", str(path))
    assert res.returncode == 2 and "acknowledged answer(s) are missing" in res.stderr
    # The way out is explicit: delete the companion counter (the message names it).
    Path(str(path) + "-acks").unlink()
    with Ledger.open(path) as led:
        assert led.answers() == []


def test_a_clean_kill_keeps_every_acknowledged_answer(tmp_path):
    path = tmp_path / "s.db"
    _answer_five_then_sigkill(path)
    with Ledger.open(path) as led:  # the -wal file is there: nothing lost, nothing reported
        assert len(led.answers()) == 5 and led.spent() == 5


# ---------------------------------------------------------------- 9. tokens hashed, 0600, revocable


def test_tokens_are_hashed_files_are_private_and_tokens_revocable(tmp_path):
    from test_web import client, served

    path = tmp_path / "s.db"
    sess = Session.create(path, _cfg(beta=0.2, window=50), oracle={"name": "web"})
    assert sess.play(WebOracle()).status == "waiting"
    sess.close()
    res = _invoke("annotate", str(path), "--add-annotator", "alice")
    token = res.output.split("token: ", 1)[1].split()[0]
    bob = _invoke("annotate", str(path), "--add-annotator", "bob").output.split("token: ", 1)[1].split()[0]
    for f in (path, Path(str(path) + "-wal"), Path(str(path) + "-shm"), Path(str(path) + "-acks")):
        if f.exists():
            assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    raw = b"".join(Path(str(path) + s).read_bytes() for s in ("", "-wal") if Path(str(path) + s).exists())
    assert token.encode() not in raw and bob.encode() not in raw
    con = sqlite3.connect(path)
    stored = [r[0] for r in con.execute("SELECT token_hash FROM annotators")]
    con.close()
    assert all(h.startswith("sha256:") for h in stored) and token not in stored
    listing = _invoke("annotate", str(path), "--list")
    assert listing.exit_code == 0 and "alice" in listing.output and "active" in listing.output
    assert token not in listing.output
    with served(path, driver=False) as live, client(live, token) as c:
        qid = c.get("/api/next").json()["query_id"]
        assert _invoke("annotate", str(path), "--revoke", "alice").exit_code == 0
        r = c.post("/api/answer", json={"query_id": qid, "label": 0})
        assert r.status_code == 401 and r.json()["error"] == "unknown token."
        with client(live, bob) as b:
            assert b.get("/api/next").json()["query_id"] == qid  # the revoked annotator's lease is freed
    assert "revoked" in _invoke("annotate", str(path), "--list").output
    res = _invoke("annotate", str(path), "--revoke", "alice")
    assert isinstance(res.exception, ConfigError) and "already revoked" in str(res.exception)
    with Ledger.open(path) as led:
        assert led.spent() == 0
        new = led.add_annotator("alice")  # a revoked name can be given a fresh token
        assert led.annotator_by_token(new.token).name == "alice" and led.annotator_by_token(token) is None


def test_a_version_1_ledger_is_migrated_tokens_hashed_and_pickles_dropped(tmp_path):
    cfg = _cfg(beta=0.1, window=20)
    ref = run(cfg)
    path = tmp_path / "v1.db"
    sess = Session.create(path, cfg, checkpoint_every=30)
    assert sess.play(DatasetOracle(), stop_at=90).status == "stopped"
    sess.close()
    # Write the file back as version 1 wrote it: plaintext tokens, pickled checkpoints, no counters.
    con = sqlite3.connect(path)
    con.executescript("""
        ALTER TABLE annotators RENAME COLUMN token_hash TO token;
        ALTER TABLE annotators DROP COLUMN revoked;
        ALTER TABLE queries DROP COLUMN example_digest;
        ALTER TABLE queries DROP COLUMN purpose;
        ALTER TABLE queries DROP COLUMN prediction;
        ALTER TABLE queries DROP COLUMN applied_at;
        DROP TABLE passes;
        INSERT INTO annotators VALUES ('old', 'plain-token-v1', '1.0', 0);
        DELETE FROM meta WHERE key IN ('acks', 'ledger_id');
        UPDATE meta SET value = '1' WHERE key = 'schema_version';
    """)
    con.execute("UPDATE checkpoints SET state = ?", (pickle.dumps({"position": 0}),))
    con.commit()
    con.close()
    Path(str(path) + "-acks").unlink()
    with Ledger.open(path) as led:
        assert led.meta("schema_version") == str(SCHEMA_VERSION)
        assert led.annotator_by_token("plain-token-v1").name == "old"
        assert led.checkpoints() == [] and led.n_records() == 0 and led.status == "stopped"
        assert len(led.answers()) > 0
    sess = Session.open(path)
    assert sess.play(DatasetOracle()).status == "finished"
    assert sess.records() == ref.records  # replayed from the start, every stored answer reused
    sess.close()


def test_a_version_3_ledger_gains_purposes_predictions_and_applied_rounds_and_plays_on(tmp_path):
    """A window session saved by the version before unlabelled pools (schema 3), waiting for answers: it opens,
    its queries read as the gate's, and it finishes with the records of the plain run once answered."""
    cfg = {**_cfg(beta=0.2, window=50), "max_pending": 0}
    ref = run(cfg)
    path = tmp_path / "v3.db"
    sess = Session.create(path, cfg, oracle={"name": "file"})
    assert sess.play(FileOracle()).status == "waiting"
    sess.close()
    con = sqlite3.connect(path)
    con.executescript("ALTER TABLE queries DROP COLUMN purpose; ALTER TABLE queries DROP COLUMN prediction; "
                      "ALTER TABLE queries DROP COLUMN applied_at; "
                      "UPDATE meta SET value = '3' WHERE key = 'schema_version';")
    con.close()
    gold = {r.round: r.gold for r in ref.records}
    sess = Session.open(path)
    assert sess.ledger.meta("schema_version") == "5"
    pend = sess.ledger.pending()
    assert pend and all(q.purpose == "gate" and q.applied_at is None for q in pend)
    while True:
        sess.ledger.record_answers([(q.id, gold[q.round], "f", 1.0, None) for q in sess.ledger.pending()])
        if sess.play(FileOracle()).status == "finished":
            break
    assert sess.records() == ref.records
    sess.close()


def test_a_version_4_ledger_keeps_the_power_schedule_it_played(tmp_path):
    """A stream session made when LLF's default was the power schedule (schema 4, no 'schedule' in its config),
    stopped before its first checkpoint: it replays and finishes with the power schedule's records, not the
    dual price's, the default since."""
    cfg = _cfg(beta=0.1)
    ref = run({**cfg, "gate": {**cfg["gate"], "schedule": "power"}})
    assert ref.records != run(cfg).records  # the two rules buy differently here
    path = tmp_path / "v4.db"
    sess = Session.create(path, cfg)
    assert json.loads(sess.ledger.meta("config"))["gate"]["schedule"] == "dual"  # a new session stores its rule
    sess.close()
    con = sqlite3.connect(path)
    stored = json.loads(con.execute("SELECT value FROM meta WHERE key = 'config'").fetchone()[0])
    del stored["gate"]["schedule"]
    old = json.dumps(stored, sort_keys=True)  # the config as a schema-4 session stored it
    con.execute("UPDATE meta SET value = ? WHERE key = 'config'", (old,))
    con.execute("UPDATE meta SET value = '4' WHERE key = 'schema_version'")
    con.commit()
    con.close()
    sess = Session.open(path, checkpoint_every=10_000)
    assert sess.ledger.meta("schema_version") == "5"
    assert json.loads(sess.ledger.meta("config"))["gate"]["schedule"] == "power"
    # Label Studio tasks exported before the upgrade carry the old key (a digest of the stored config): still valid
    from budgetsft.labelstudio import session_key
    assert session_key(sess.ledger) == hashlib.sha256(old.encode("utf-8")).hexdigest()[:16]
    assert sess.play(DatasetOracle(), stop_at=150).status == "stopped"
    sess.close()
    sess = Session.open(path)
    assert sess.play(DatasetOracle()).status == "finished"
    assert sess.records() == ref.records
    sess.close()


def test_a_version_2_ledger_gains_the_passes_table(tmp_path):
    path = tmp_path / "v2.db"
    sess = Session.create(path, _cfg(beta=0.2, window=50), oracle={"name": "web"})
    assert sess.play(WebOracle()).status == "waiting"
    alice = sess.ledger.add_annotator("alice")
    sess.close()
    con = sqlite3.connect(path)
    con.executescript("DROP TABLE passes; ALTER TABLE queries DROP COLUMN purpose; "
                      "ALTER TABLE queries DROP COLUMN prediction; ALTER TABLE queries DROP COLUMN applied_at; "
                      "UPDATE meta SET value = '2' WHERE key = 'schema_version';")
    con.close()
    with Ledger.open(path) as led:
        assert led.meta("schema_version") == str(SCHEMA_VERSION) == "5"
        qid = led.pending()[0].id
        assert led.pass_query(qid, "alice") is True  # alice is the only annotator: nobody else will answer
        assert led.passes() == {"alice": 1} and led.query(qid).status == "skipped"
        assert led.lease_next(led.annotator_by_token(alice.token)).id != qid


def test_a_lost_token_is_rotated_and_actions_are_not_combined(tmp_path):
    from test_web import client, served

    path = tmp_path / "s.db"
    sess = Session.create(path, _cfg(beta=0.2, window=50), oracle={"name": "web"})
    assert sess.play(WebOracle()).status == "waiting"
    sess.close()
    old = _invoke("annotate", str(path), "--add-annotator", "alice").output.split("token: ", 1)[1].split()[0]
    res = _invoke("annotate", str(path), "--rotate", "alice")
    assert res.exit_code == 0 and "alice: new token: " in res.output
    new = res.output.split("new token: ", 1)[1].split()[0]
    assert new != old
    with served(path, driver=False) as live, client(live, old) as c_old, client(live, new) as c_new:
        assert c_old.get("/api/next").status_code == 401
        qid = c_new.get("/api/next").json()["query_id"]
        assert c_new.post("/api/skip", json={"query_id": qid}).status_code == 200
    listing = _invoke("annotate", str(path), "--list")
    assert listing.exit_code == 0 and new not in listing.output and "skipped" in listing.output
    assert re.search(r"alice\s*│\s*1\s*│\s*0\s*│\s*0\.0000\s*│\s*1\s*│\s*active", listing.output), listing.output
    for args, message in [(("--rotate", "nobody"), "annotator 'nobody' does not exist."),
                          (("--rotate", "alice", "--list"), "--rotate and --list cannot be combined"),
                          (("--add-annotator", "bo", "--revoke", "alice"),
                           "--add-annotator and --revoke cannot be combined")]:
        res = _invoke("annotate", str(path), *args)
        assert isinstance(res.exception, ConfigError) and message in str(res.exception), (args, res.output)
    assert _invoke("annotate", str(path), "--revoke", "alice").exit_code == 0
    res = _invoke("annotate", str(path), "--rotate", "alice")
    assert isinstance(res.exception, ConfigError) and "is revoked" in str(res.exception)
    with Ledger.open(path) as led:
        assert led.spent() == 0 and [a.name for a in led.annotators()] == []


def test_ledgers_are_created_owner_only_whatever_the_umask(tmp_path):
    old = os.umask(0o000)
    try:
        Session.create(tmp_path / "u.db", _cfg(beta=0.1)).close()
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "u.db").stat().st_mode) == 0o600
