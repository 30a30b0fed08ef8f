"""Issue 13, Low: every broken input is a clear error naming the file, line or parameter (never a traceback),
plus hypothesis fuzzing of the answer API and of JSONL lines."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from budgetsft.config import load_config
from budgetsft.data import Example, load_jsonl, read_jsonl
from budgetsft.exceptions import ConfigError, DataError
from budgetsft.experiment import run
from budgetsft.sessions.ledger import Ledger, LedgerError
from budgetsft.sessions.oracles import DatasetOracle, WebOracle, import_answers
from budgetsft.sessions.session import CheckpointError, Session, SessionBusyError

SYN = {"env": {"name": "synthetic", "d": 5, "K": 3, "rounds": 200}, "test_rounds": 0, "seed": 1}


def _invoke(*args: str):
    from typer.testing import CliRunner

    from budgetsft.cli import app

    return CliRunner().invoke(app, list(args))


@contextmanager
def immutable(*paths: Path):
    """Files nobody can write, root included (this suite may run as root): ``chattr +i``."""
    if shutil.which("chattr") is None:
        pytest.skip("chattr is needed to make a file read-only for root")
    done = []
    try:
        for p in paths:
            if subprocess.run(["chattr", "+i", str(p)], capture_output=True).returncode != 0:
                pytest.skip("this file system does not support chattr +i")
            done.append(p)
        yield
    finally:
        for p in done:
            subprocess.run(["chattr", "-i", str(p)], check=True)


@pytest.fixture(scope="module")
def base_ledger(tmp_path_factory) -> Path:
    """A finished session with answers and checkpoints, copied by each fault test."""
    path = tmp_path_factory.mktemp("base") / "s.db"
    sess = Session.create(path, {**SYN, "gate": {"name": "llf", "beta": 0.1}}, checkpoint_every=50)
    assert sess.play(DatasetOracle(), stop_at=150).status == "stopped"
    sess.close()
    return path


def _copy(base: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "s.db"
    shutil.copy(base, dest)
    return dest


def _sql(path: Path, *statements, params=()) -> None:
    con = sqlite3.connect(path)
    for stmt in statements:
        con.execute(stmt, params)
    con.commit()
    con.close()


# ---------------------------------------------------------------- 10. the web app: 4xx or 503, never 500


@pytest.fixture
def web_session(tmp_path):
    from test_web import make_session

    path = tmp_path / "w.db"
    return path, make_session(path)


def test_web_odd_requests_get_clear_4xx(web_session):
    import httpx
    from test_web import client, ledger_state, served

    from budgetsft.sessions.web import COOKIE

    path, tokens = web_session
    with served(path, driver=False) as live:
        with httpx.Client(base_url=live.url, timeout=30) as c:
            for headers in ({"Authorization": "Bearer tökén".encode()}, {"Cookie": f"{COOKIE}=tökén".encode()}):
                r = c.get("/api/next", headers=headers)
                assert r.status_code == 401, r.text
            r = c.post("/login", content=b"token=t%C3%B6k%C3%A9n", headers={
                "Content-Type": "application/x-www-form-urlencoded"})
            assert r.status_code == 401 and "unknown token" in r.text
        with client(live, tokens["alice"]) as alice:
            for body, status in (({"query_id": 10**30, "label": 0}, 404), ({"query_id": -(10**30), "label": 0}, 404)):
                r = alice.post("/api/answer", json=body)
                assert r.status_code == status and r.json()["error"].startswith("unknown item"), r.text
            deep = b"[" * 8000 + b"]" * 8000
            r = alice.post("/api/answer", content=deep, headers={"Content-Type": "application/json"})
            assert r.status_code == 400 and "JSON object" in r.json()["error"]
    assert ledger_state(path) == (0.0, 0)


def test_web_busy_ledger_is_503_with_a_message(web_session):
    from test_web import client, ledger_state, served

    path, tokens = web_session
    with served(path, driver=False, busy_timeout=0.3) as live, client(live, tokens["alice"]) as alice:
        qid = alice.get("/api/next").json()["query_id"]
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # another writer holds the lock longer than the busy timeout
        try:
            r = alice.post("/api/answer", json={"query_id": qid, "label": 0})
            assert r.status_code == 503 and "busy" in r.json()["error"] and r.headers["retry-after"]
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert alice.post("/api/answer", json={"query_id": qid, "label": 0}).json()["recorded"] is True
    assert ledger_state(path) == (1.0, 1)


def test_web_read_only_ledger_is_503_and_status_says_why(web_session):
    from test_web import client, served

    path, tokens = web_session
    with immutable(path):
        with served(path) as live, client(live, tokens["alice"]) as alice:
            r = alice.get("/api/next")
            assert r.status_code == 503 and "cannot be written" in r.json()["error"], r.text
            status = alice.get("/api/status").json()
            assert status["driver"]["state"] == "error" and "read-only" in status["driver"]["error"]


# ---------------------------------------------------------------- 11. ledger faults name the file


FAULTS = {
    "schema_version 1.5": (["UPDATE meta SET value = '1.5' WHERE key = 'schema_version'"],
                           "'schema_version' must be an integer. Got '1.5'"),
    "missing budget_total": (["DELETE FROM meta WHERE key = 'budget_total'"], "no 'budget_total' setting"),
    "config not JSON": (["UPDATE meta SET value = '{not json' WHERE key = 'config'"], "'config' must be a JSON object"),
    "spent abc": (["UPDATE meta SET value = 'abc' WHERE key = 'spent'"], "'spent' must be a number. Got 'abc'"),
    "flipped spent": (["UPDATE meta SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT) WHERE key = 'spent'"],
                      "differs from the sum of its answers' prices"),
    "dropped answers": (["DROP TABLE answers"], "has no answers table"),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_a_broken_ledger_is_a_clear_error_naming_the_file(base_ledger, tmp_path, fault):
    path = _copy(base_ledger, tmp_path)
    statements, message = FAULTS[fault]
    _sql(path, *statements)
    with pytest.raises(LedgerError, match=message) as exc:
        Ledger.open(path)
    assert str(path) in str(exc.value)
    res = _invoke("session", "show", str(path))
    assert isinstance(res.exception, LedgerError) and str(path) in str(res.exception)


def test_unknown_gate_in_the_stored_config(base_ledger, tmp_path):
    path = _copy(base_ledger, tmp_path)
    with Ledger.open(path) as led:
        cfg = led.config
    cfg["gate"]["name"] = "nope"
    _sql(path, "UPDATE meta SET value = ? WHERE key = 'config'", params=(json.dumps(cfg),))
    with pytest.raises(LedgerError, match=f"{path}: the session's stored config is invalid:.*unknown gate 'nope'"):
        Session.open(path)


def test_random_bytes_mid_file(base_ledger, tmp_path):
    path = _copy(base_ledger, tmp_path)
    size = path.stat().st_size
    with path.open("r+b") as fh:
        fh.seek(size // 2)
        fh.write(np.random.default_rng(0).bytes(8192))
    with pytest.raises(LedgerError, match=str(path)):
        Session.open(path).play(DatasetOracle())
    res = subprocess.run([sys.executable, "-m", "budgetsft", "resume", str(path)], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 2 and str(path) in res.stderr and "Traceback" not in res.stderr


def test_a_corrupt_checkpoint_blob(base_ledger, tmp_path):
    path = _copy(base_ledger, tmp_path)
    _sql(path, "UPDATE checkpoints SET state = substr(state, 1, 40) || randomblob(64)")
    sess = Session.open(path)
    with pytest.raises(CheckpointError, match=f"{path}: checkpoint at round 150: corrupt checkpoint"):
        sess.play(DatasetOracle())


def test_a_read_only_file_on_resume(base_ledger, tmp_path):
    path = _copy(base_ledger, tmp_path)
    with immutable(path):
        res = _invoke("resume", str(path))
        assert isinstance(res.exception, LedgerError), res.output
        assert str(path) in str(res.exception) and "read-only" in str(res.exception)


# ---------------------------------------------------------------- 12. data lines


def test_hostile_jsonl_lines_are_reported_by_line(tmp_path):
    good = {"id": "a", "prompt": "p", "candidates": ["x", "y"], "answer": 0}
    lines = [json.dumps(good),
             '{"id": "b", "prompt": "p", "candidates": ["x", "y"], "answer": ' + "7" * 5000 + "}",
             "[" * 100_000 + "]" * 100_000,
             '{"id": "c", "prompt": "\\ud800", "candidates": ["x", "y"], "answer": 0}',
             '{"id": "d", "prompt": "p", "candidates": ["x", "\\udfff"], "answer": 0}',
             json.dumps({**good, "id": "e", "prompt": "z" * (10 << 20)})]
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    rep = read_jsonl(path)
    assert [e.id for e in rep.examples] == ["a"]
    reasons = {p.line: p.reason for p in rep.problems}
    assert "4300 digits" in reasons[2] or "unusable JSON" in reasons[2]
    assert reasons[3] == "unusable JSON (nested too deeply)"
    assert "lone surrogate '\\ud800'" in reasons[4] and "'candidates'[1] holds a lone surrogate" in reasons[5]
    assert "longer than the limit" in reasons[6]
    with pytest.raises(DataError, match=f"{path}:6: line of"):
        load_jsonl(path)


# ---------------------------------------------------------------- 13. the player lock through a symlink


def test_a_symlink_to_a_session_is_the_same_session(tmp_path):
    path = tmp_path / "s.db"
    Session.create(path, {**SYN, "gate": {"name": "llf", "beta": 0.1}}).close()
    link = tmp_path / "link.db"
    link.symlink_to(path)
    first, second = Session.open(path), Session.open(link)
    with first._player_lock(), pytest.raises(SessionBusyError, match="another process is playing"):
        second.play(DatasetOracle())
    assert second.play(DatasetOracle()).status == "finished"


# ---------------------------------------------------------------- 14. config and CLI values


@pytest.mark.parametrize("text, message", [
    ("seed: abc", "'seed' must be an int"),
    ("test_rounds: -1", "'test_rounds' must be an int >= 0. Got -1"),
    ("regret_lp: maybe", "'regret_lp' must be true or false. Got 'maybe'"),
    ("progress: loud", "'progress' must be true or false"),
    ("comparator_S: .nan", "'comparator_S' must be a finite number > 0"),
    ("env: {name: synthetic, rounds: 99999999999999999999}", "'env.rounds' must be an int in [1, 10**9]"),
])
def test_bad_config_values_name_the_parameter(tmp_path, text, message):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text + "\n")
    with pytest.raises(ConfigError) as exc:
        load_config(cfg)
    assert message in str(exc.value) and str(cfg) in str(exc.value)


def test_a_gate_budget_alone_is_usable(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("gate: {name: llf, budget: 5}\n")
    loaded = load_config(cfg)
    assert loaded["gate"]["budget"] == 5 and "beta" not in loaded["gate"]
    assert run(loaded | {"env": {**loaded["env"], "rounds": 200}, "regret_lp": False}).summary["labels_bought"] == 5
    both = tmp_path / "both.yaml"
    both.write_text("gate: {name: llf, budget: 5, beta: 0.1}\n")
    with pytest.raises(ConfigError, match="not both"):
        load_config(both)


def test_bad_cli_values_are_clear_errors(tmp_path):
    res = _invoke("run", "--rounds", "99999999999999999999", "--json")
    assert isinstance(res.exception, ConfigError) and "'env.rounds' must be an int" in str(res.exception)
    db = tmp_path / "s.db"
    res = _invoke("run", "--rounds", "50", "--session", str(db), "--checkpoint-every", "0")
    assert isinstance(res.exception, ConfigError) and "'checkpoint_every'" in str(res.exception)
    assert not db.exists()
    Session.create(db, {**SYN, "gate": {"name": "llf", "beta": 0.1}}).ledger.add_annotator("a")
    res = _invoke("annotate", str(db), "--port", "99999")
    assert isinstance(res.exception, ConfigError) and "'--port' must be an int in [1, 65535]" in str(res.exception)
    res = _invoke("resume", str(db), "--checkpoint-every", "0")
    assert isinstance(res.exception, ConfigError)


# ---------------------------------------------------------------- 15. the feature cache


class _Features:
    name = "hardening-test"
    dim = 4

    def settings(self) -> dict:
        return {"v": 1}

    def transform_many(self, examples):
        return [np.full((len(ex.candidates), self.dim), float(len(ex.prompt))) for ex in examples]


def test_a_directory_in_place_of_a_cache_entry_does_not_crash(tmp_path):
    from budgetsft.features import featurize
    from budgetsft.features.base import example_key
    from budgetsft.features.cache import open_cache

    examples = [Example("a", "hello", ("x", "y")), Example("b", "world!", ("x", "y", "z"))]
    cache = open_cache(_Features(), tmp_path)
    entry = cache.path(example_key(examples[0]))
    entry.mkdir(parents=True)
    (entry / "junk").write_text("x")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = featurize(examples, _Features(), cache_dir=tmp_path, progress=False)
    assert res.features[0].shape == (2, 4) and res.n_repaired == 1
    assert any("cannot write cache entry" in str(w.message) for w in caught)
    assert entry.is_dir()  # left alone; the other entry is cached
    assert featurize(examples, _Features(), cache_dir=tmp_path, progress=False).n_cached == 1


def test_the_cache_documents_what_its_checksum_protects():
    import budgetsft.features.cache as cache

    assert "It is not a signature" in cache.__doc__ and "use_cache=False" in cache.__doc__


# ---------------------------------------------------------------- fuzzing


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                     max_leaves=8)
_answer = st.fixed_dictionaries({}, optional={"query_id": _json | st.integers(), "label": _json | st.integers(0, 3),
                                              "x": _json})


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    from test_web import LiveServer, make_session

    from budgetsft.sessions.web import create_app

    path = tmp_path_factory.mktemp("fuzz") / "f.db"
    tokens = make_session(path)
    with LiveServer(create_app(path, driver=False)) as live:
        yield live, path, tokens


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=_answer | _json | st.binary(max_size=64), ctype=st.sampled_from(["application/json", "text/plain", None]))
def test_fuzz_api_answer_never_5xx_and_charges_nothing_on_refusal(fuzz_server, body, ctype):
    import httpx

    live, path, tokens = fuzz_server
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {tokens['alice']}"}
    if ctype:
        headers["Content-Type"] = ctype
    with Ledger.open(path) as led:
        before = (led.spent(), len(led.answers()))
    r = httpx.post(live.url + "/api/answer", content=content, headers=headers, timeout=30)
    assert r.status_code < 500, r.text
    assert "Traceback" not in r.text
    payload = r.json()
    with Ledger.open(path) as led:
        after = (led.spent(), len(led.answers()))
    if r.status_code == 200 and payload.get("recorded"):
        assert after == (before[0] + 1, before[1] + 1)
    else:
        assert after == before and (r.status_code == 200 or payload["error"])


_line = (st.text(max_size=40) | _json.map(json.dumps)
         | st.fixed_dictionaries({"id": _json, "prompt": _json, "candidates": _json}, optional={
             "answer": _json, "cost": _json}).map(json.dumps)
         | st.fixed_dictionaries({"query_id": st.integers(-2, 300) | _json, "label": _json | st.integers(-1, 4)},
                                 optional={"cost": _json, "annotator": _json}).map(json.dumps))


@pytest.fixture(scope="module")
def fuzz_ledger(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzzl") / "l.db"
    sess = Session.create(path, {**SYN, "gate": {"name": "llf", "beta": 0.2, "window": 100}}, oracle={"name": "web"})
    assert sess.play(WebOracle()).status == "waiting"
    yield sess.ledger, path.parent
    sess.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(_line, min_size=1, max_size=4))
def test_fuzz_jsonl_lines_are_problems_not_tracebacks(fuzz_ledger, lines):
    led, folder = fuzz_ledger
    path = folder / "fuzz.jsonl"
    path.write_text("\n".join(line.replace("\n", " ") for line in lines) + "\n", encoding="utf-8",
                    errors="surrogatepass")
    rep = read_jsonl(path)
    assert len(rep.examples) + len(rep.problems) == rep.n_lines
    for ex in rep.examples:
        ex.prompt.encode("utf-8")  # featurisable
    before = (led.spent(), len(led.answers()))
    try:
        import_answers(led, path)
    except DataError as exc:
        assert str(path) in str(exc)
        assert (led.spent(), len(led.answers())) == before
    assert led.spent() <= led.budget_total
    os.unlink(path)
