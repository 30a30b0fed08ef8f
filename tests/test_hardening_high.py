"""Issue 13, High: no silent label moves, no code in session files, no cross-origin answers.

Each test is a reproduction from the issue, against real SQLite files, real
uvicorn on 127.0.0.1 and a real headless Chromium.
"""

from __future__ import annotations

import collections
import json
import os
import pickle
import shutil
import sqlite3
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from budgetsft.budget import Budget
from budgetsft.config import DEFAULT_CONFIG, FOLLOWERS, GATES, LEARNERS, build, merge
from budgetsft.experiment import run
from budgetsft.sessions.ledger import Ledger
from budgetsft.sessions.oracles import DatasetOracle, FileOracle, make_oracle
from budgetsft.sessions.session import CheckpointError, DataChangedError, Session, decode_state, encode_state

N_EXAMPLES = 60
FEATURES = {"name": "encoder", "device": "cpu"}


def _example(i: int, answer: int | None = None) -> dict:
    return {"id": f"q{i:03d}", "prompt": f"Question {i}: which topic is item {i % 7} about?",
            "candidates": ["alpha", "beta", "gamma"], "answer": i % 3 if answer is None else answer}


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def feature_cache(tmp_path_factory):
    """One feature cache for the module: the encoder runs once, every later load reads the cache."""
    cache = tmp_path_factory.mktemp("features")
    old = os.environ.get("BUDGETSFT_CACHE")
    os.environ["BUDGETSFT_CACHE"] = str(cache)
    from budgetsft.data import load_jsonl
    from budgetsft.features import featurize, make_featurizer

    src = _write(cache / "all.jsonl", [_example(i) for i in range(N_EXAMPLES)])
    featurize(load_jsonl(src), make_featurizer("encoder", device="cpu"), progress=False)
    yield cache
    if old is None:
        os.environ.pop("BUDGETSFT_CACHE", None)
    else:
        os.environ["BUDGETSFT_CACHE"] = old


def _data_cfg(data: str) -> dict:
    return {"data": {"name": data}, "features": dict(FEATURES), "gate": {"name": "llf", "beta": 0.2},
            "regret_lp": False, "seed": 0}


def _cli(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "budgetsft", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, **(env or {})}, timeout=300)


def _paid_session(folder: Path, stop_at: int = 30) -> tuple[Path, Path, list]:
    data = _write(folder / "d.jsonl", [_example(i) for i in range(N_EXAMPLES)])
    db = folder / "s.db"
    sess = Session.create(db, _data_cfg(str(data)))
    assert sess.play(DatasetOracle(), stop_at=stop_at).status == "stopped"
    paid = [(a.round, sess.describe(a.round)["id"]) for a in sess.ledger.answers()]
    assert paid
    sess.close()
    return db, data, paid


# ---------------------------------------------------------------- 1. the data file is edited after the start


def test_an_edited_data_file_is_refused_and_labels_never_move(tmp_path, feature_cache):
    db, data, paid = _paid_session(tmp_path)
    # The edit: one more line (same texts as q000, another id and answer: no new features to compute).
    _write(data, [_example(i) for i in range(N_EXAMPLES)] + [{**_example(0), "id": "extra", "answer": 2}])
    sess = Session.open(db)
    # (the new line repeats q000's text under another answer: both copies are dropped as conflicting)
    with pytest.raises(DataChangedError, match=r"not the data it started on \(n_train 48 -> 47\).*--rebind"):
        sess.stream()
    with pytest.raises(DataChangedError):
        sess.export_labels()
    with pytest.raises(DataChangedError):
        sess.play(DatasetOracle())
    sess.close()
    # --rebind checks every paid example: the new split moved them, so it is refused, naming the rounds.
    sess = Session.open(db, rebind=True)
    with pytest.raises(DataChangedError, match=r"(?s)cannot rebind.*round \d+: was example 'q\d+', now"):
        sess.stream()
    sess.close()
    with Ledger.open(db) as led:
        assert [a.round for a in led.answers()] == [r for r, _ in paid]  # nothing moved, nothing re-bought


def test_rebind_accepts_a_change_that_leaves_every_paid_example_in_place(tmp_path, feature_cache):
    db, data, paid = _paid_session(tmp_path)
    sess = Session.open(db)
    test_ids = [ex.id for ex in sess._loaded().real.dataset.test]
    sess.close()
    paid_ids = {i for _, i in paid}
    # Correct the gold answer of a held-out example: ids and order stay, the content fingerprint changes.
    rows = [_example(i) for i in range(N_EXAMPLES)]
    fix = next(r for r in rows if r["id"] == test_ids[0])
    fix["answer"] = (fix["answer"] + 1) % 3
    assert fix["id"] not in paid_ids
    _write(data, rows)
    with pytest.raises(DataChangedError, match="the examples' content or order changed"):
        Session.open(db).stream()
    sess = Session.open(db, rebind=True)
    assert sess.horizon() == 48
    assert sess.play(DatasetOracle()).status == "finished"
    sess.close()
    assert Session.open(db).horizon() == 48  # the new fingerprint is stored: no --rebind needed any more
    # A change to a paid example itself is refused even with --rebind.
    round_, ex_id = paid[0]
    rows = [dict(r, answer=(r["answer"] + 1) % 3) if r["id"] == ex_id else r for r in rows]
    _write(data, rows)
    with pytest.raises(DataChangedError, match=f"round {round_}: example '{ex_id}' changed"):
        Session.open(db, rebind=True).stream()


def _invoke(*args: str):
    """The CLI in this process (its code path as the console script, without a new interpreter)."""
    from typer.testing import CliRunner

    from budgetsft.cli import app

    return CliRunner().invoke(app, list(args))


def test_cli_refuses_changed_data_and_resumes_from_any_folder(tmp_path, feature_cache, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    _write(work / "d.jsonl", [_example(i) for i in range(N_EXAMPLES)])
    # Created with a path relative to the working directory ...
    monkeypatch.chdir(work)
    res = _invoke("run", "--data", "d.jsonl", "--features", "encoder", "--device", "cpu", "--beta", "0.2",
                  "--session", "s.db", "--oracle", "file", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout.strip().splitlines()[-1])["status"] == "waiting"
    with Ledger.open(work / "s.db") as led:
        assert led.config["data"]["name"] == str((work / "d.jsonl").resolve())
    # ... resumed from another folder: the data is found (before the fix: "JSONL file not found").
    other = tmp_path / "elsewhere"
    other.mkdir()
    monkeypatch.chdir(other)
    res = _invoke("resume", str(work / "s.db"), "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout.strip().splitlines()[-1])["horizon"] == 48
    # The folder moved whole: found beside the session file.
    moved = tmp_path / "moved"
    shutil.move(work, moved)
    s = Session.open(moved / "s.db")
    assert s.horizon() == 48
    s.close()
    with Ledger.open(moved / "s.db") as led:
        led.add_annotator("ann")
    # One more line: resume, export and annotate refuse it with a clear message.
    with (moved / "d.jsonl").open("a") as fh:
        fh.write(json.dumps({**_example(1), "id": "extra", "answer": 0}) + "\n")
    for args in (["resume", str(moved / "s.db")], ["session", "export", str(moved / "s.db"), str(moved / "o.jsonl")],
                 ["annotate", str(moved / "s.db")]):
        res = _invoke(*args)
        assert isinstance(res.exception, DataChangedError), (args, res.output)
        assert "not the data it started on" in str(res.exception) and "--rebind" in str(res.exception)
    assert not (moved / "o.jsonl").exists()
    # As the console script: exit 2, one clear line, no traceback.
    res = _cli("resume", str(moved / "s.db"), cwd=other)
    assert res.returncode == 2 and "not the data it started on" in res.stderr and "Traceback" not in res.stderr


# ---------------------------------------------------------------- 2. session files are data, not pickles


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_a_pickled_checkpoint_is_never_loaded(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "s.db"
    sess = Session.create(path, {"env": {"name": "synthetic", "d": 4, "K": 3, "rounds": 120},
                                 "gate": {"name": "llf", "beta": 0.1}, "test_rounds": 0})
    assert sess.play(DatasetOracle(), stop_at=50).status == "stopped"
    sess.close()
    con = sqlite3.connect(path)
    con.execute("UPDATE checkpoints SET state = ?", (pickle.dumps(_Payload()),))
    con.commit()
    con.close()
    sess = Session.open(path)
    with pytest.raises(CheckpointError, match="not a budgetsft checkpoint.*pickle"):
        sess.play(DatasetOracle())
    sess.close()
    res = _cli("resume", str(path))
    assert res.returncode == 2 and "not a budgetsft checkpoint" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "PWNED").exists()
    with Ledger.open(path) as led:
        assert b"pickle" not in led.load_checkpoint()[1][:16]


def _played(cfg: dict, rounds: int = 60):
    """Components of ``cfg`` after ``rounds`` rounds of the plain game (so their lazy state exists)."""
    from budgetsft.experiment import budget_for
    from budgetsft.game import play

    base = {"env": {"name": "synthetic", "d": 4, "K": 3, "rounds": rounds, "cost_low": 0.5, "cost_high": 1.5},
            "seed": 3, "test_rounds": 0}
    cfg = merge(merge(DEFAULT_CONFIG, base), cfg)
    objs = build(cfg)
    budget = budget_for(cfg, objs["env"])
    list(play(objs["env"], objs["learner"], objs["gate"], budget, follower=objs["follower"]))
    return objs, budget


def _same(a, b, where="state") -> None:
    """Bit-for-bit equality of two restored states (arrays by bytes, generators by state)."""
    assert type(a) is type(b), where
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes(), where
    elif isinstance(a, np.random.Generator):
        assert a.bit_generator.state == b.bit_generator.state, where
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            _same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, list | tuple | collections.deque):
        assert len(a) == len(b), where
        if isinstance(a, collections.deque):
            assert a.maxlen == b.maxlen, where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _same(x, y, f"{where}[{i}]")
    elif hasattr(a, "__dict__") and not isinstance(a, type):
        _same(vars(a), vars(b), f"{where}.")
    elif isinstance(a, float) and a != a:
        assert b != b, where
    else:
        assert a == b, where


@pytest.mark.parametrize("role,name", [("learner", n) for n in LEARNERS] + [("gate", n) for n in GATES]
                         + [("follower", n) for n in FOLLOWERS])
def test_every_registered_component_round_trips_bit_for_bit(role, name):
    cfg = {role: {"name": name}}
    if role == "gate":
        cfg["gate"]["beta"] = 0.3
    try:
        objs, budget = _played(cfg)
    except Exception as exc:  # noqa: BLE001 - a component that cannot play this tiny game is not our subject
        pytest.skip(f"{role} {name!r} does not play the default game: {exc}")
    obj = objs[role]
    restored = decode_state(encode_state(obj))
    _same(obj, restored)
    # And they go on identically: the same next decisions / scores / draws.
    X = np.random.default_rng(7).normal(size=(3, 4))
    if role == "learner":
        assert obj.score_many(X).tobytes() == restored.score_many(X).tobytes()
        obj.learn_one(X, 0, 1)
        restored.learn_one(X, 0, 1)
        _same(obj, restored)
    elif role == "follower":
        scores = np.array([0.3, 0.1, 0.2])
        assert [obj.respond(scores, 0) for _ in range(5)] == [restored.respond(scores, 0) for _ in range(5)]


def test_budget_round_trips_in_both_units():
    for budget in (Budget(7, "labels"), Budget(3.25, "cost")):
        budget.spend(1.0 if budget.unit == "labels" else 0.1)
        back = decode_state(encode_state(budget))
        _same(budget, back)
        assert type(back._spent) is type(budget._spent) and back.remaining == budget.remaining


def test_the_codec_keeps_every_kind_and_refuses_anything_else():
    gen = np.random.default_rng(5)
    arr = np.arange(6.0).reshape(2, 3)
    state = {"a": arr, "same": arr, "f": np.float32(0.1), "i": np.int64(-3), "py": [1, 2.5, True, None, "x"],
             "t": (1, (2, 3)), "q": collections.deque([0.5, 1.5], maxlen=4), "fr": Fraction(1, 3), "g": gen,
             "inf": float("inf"), "nan": float("nan"), "big": 2**80, "nested": {3: "int key"}, "s": {1, 2}}
    back = decode_state(encode_state(state))
    _same({k: v for k, v in state.items() if k != "nan"}, {k: v for k, v in back.items() if k != "nan"})
    assert back["same"] is back["a"]  # shared arrays stay shared
    assert gen.random() == back["g"].random()
    with pytest.raises(CheckpointError, match=r"state\['fn'\].*function"):
        encode_state({"fn": lambda: 0})
    with pytest.raises(CheckpointError, match=r"state\['o'\].*dtype object"):
        encode_state({"o": np.array([object()])})
    with pytest.raises(CheckpointError, match=r"state\['p'\].*pathlib"):
        encode_state({"p": Path("x")})
    learner = LEARNERS["ridge"]()
    learner.hook = print
    with pytest.raises(CheckpointError, match=r"state\.hook.*builtin_function_or_method"):
        encode_state(learner)


def test_a_forged_checkpoint_cannot_name_a_class_outside_budgetsft(tmp_path):
    blob = encode_state({"x": LEARNERS["ridge"]()})
    forged = blob.replace(b"budgetsft.learners.ridge:RidgeLearner", b"subprocess:Popen\x00\x00\x00\x00\x00\x00"
                                                                        b"\x00\x00\x00\x00\x00\x00\x00\x00\x00"
                                                                        b"\x00\x00\x00")
    with pytest.raises(CheckpointError, match="corrupt checkpoint"):
        decode_state(forged)
    import io
    import zipfile

    # A well-formed container whose tree names os.system as a class.
    buf = io.BytesIO(blob[len(b"BSFTSTATE1\n"):])
    with np.load(buf) as z:
        arrays = {k: z[k] for k in z.files}
    tree = json.loads(arrays["__state__"].tobytes())
    tree["$dict"]["x"]["$obj"] = "os:system"
    arrays["__state__"] = np.frombuffer(json.dumps(tree).encode(), dtype=np.uint8)
    out = io.BytesIO()
    np.savez(out, **arrays)
    with pytest.raises(CheckpointError, match="class 'os:system' is not one a checkpoint may hold"):
        decode_state(b"BSFTSTATE1\n" + out.getvalue())
    assert zipfile.is_zipfile(io.BytesIO(out.getvalue()))


def test_a_stored_oracle_spec_cannot_choose_where_resume_writes(tmp_path):
    folder = tmp_path / "sess"
    folder.mkdir()
    path = folder / "s.db"
    outside = tmp_path / "outside.jsonl"
    Session.create(path, {"env": {"name": "synthetic", "d": 4, "K": 3, "rounds": 200},
                          "gate": {"name": "llf", "beta": 0.1, "window": 50}, "test_rounds": 0},
                   oracle={"name": "file", "path": str(outside)}).close()
    res = _cli("resume", str(path))
    assert res.returncode == 2 and "outside the session's folder" in res.stderr, res.stderr
    assert not outside.exists()
    # A spec with keys an oracle does not take (e.g. a file handle for the terminal) is refused too.
    with pytest.raises(Exception, match="takes no 'stdin'"):
        make_oracle({"name": "terminal", "stdin": "/etc/passwd"})
    # Inside the folder is fine.
    sess = Session.open(path)
    assert sess.play(FileOracle(folder / "q.jsonl")).status == "waiting"
    assert (folder / "q.jsonl").is_file()
    sess.close()


def test_resume_still_equals_the_uninterrupted_run_with_data_checkpoints(tmp_path):
    cfg = {"env": {"name": "synthetic", "d": 6, "K": 4, "rounds": 300}, "gate": {"name": "margin", "beta": 0.15},
           "follower": {"name": "random"}, "seed": 2, "test_rounds": 0}
    ref = run(cfg)
    path = tmp_path / "s.db"
    Session.create(path, cfg, checkpoint_every=23).close()
    for stop in (41, 42, 170):
        sess = Session.open(path, checkpoint_every=23)
        assert sess.play(DatasetOracle(), stop_at=stop).status == "stopped"
        sess.close()
    sess = Session.open(path)
    assert sess.play(DatasetOracle()).status == "finished"
    assert sess.records() == ref.records


# ---------------------------------------------------------------- 3. cross-origin answers


def test_api_answer_requires_json_and_its_own_origin(tmp_path):
    from test_web import client, ledger_state, make_session, served

    path = tmp_path / "s.db"
    tokens = make_session(path)
    from budgetsft.sessions.web import COOKIE

    with served(path, driver=False) as live:
        with client(live, tokens["alice"]) as alice:
            qid = alice.get("/api/next").json()["query_id"]
            body = json.dumps({"query_id": qid, "label": 0})
            r = alice.post("/api/answer", content=body, headers={"Content-Type": "text/plain"})
            assert r.status_code == 415 and "application/json" in r.json()["error"]
        import httpx

        own = live.url
        evil = own.rsplit(":", 1)[0] + ":1"
        with httpx.Client(base_url=live.url, cookies={COOKIE: tokens["alice"]}, timeout=30) as c:
            for headers, status in (({"Origin": evil, "Content-Type": "application/json"}, 403),
                                    ({"Sec-Fetch-Site": "same-site", "Content-Type": "application/json"}, 403),
                                    ({"Content-Type": "application/json"}, 403),  # a cookie POST with no origin
                                    ({"Origin": evil, "Content-Type": "text/plain"}, 403)):
                r = c.post("/api/answer", content=body, headers=headers)
                assert r.status_code == status, (headers, r.text)
                assert ledger_state(path) == (0.0, 0)
            r = c.post("/login", content=f"token={tokens['bob']}", headers={
                "Origin": evil, "Content-Type": "application/x-www-form-urlencoded"})
            assert r.status_code == 403
            r = c.post("/api/answer", content=body, headers={"Origin": own, "Content-Type": "application/json"})
            assert r.status_code == 200 and r.json()["recorded"] is True
    assert ledger_state(path) == (1.0, 1)


CHROMIUM = "/usr/bin/chromium"

_ATTACK = """<!doctype html><html><body><p id="done">no</p><form id="f" method="post" enctype="text/plain"
action="{target}/api/answer"><input name='{{"query_id": {qid}, "label": 1, "x": "' value='"}}'></form>
<script>
(async () => {{
  const body = JSON.stringify({{query_id: {qid}, label: 2}});
  const tries = [
    fetch("{target}/api/answer", {{method: "POST", mode: "no-cors", credentials: "include",
                                   headers: {{"Content-Type": "text/plain"}}, body}}),
    fetch("{target}/api/answer", {{method: "POST", credentials: "include",
                                   headers: {{"Content-Type": "application/json"}}, body}}),
    fetch("{target}/api/next", {{credentials: "include"}}),
  ];
  for (const t of tries) {{ try {{ await t; }} catch (e) {{}} }}
  document.getElementById("done").textContent = "yes";
}})();
</script></body></html>"""


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"headless Chromium not installed at {CHROMIUM}")
def test_a_page_on_another_port_cannot_answer_as_the_logged_in_annotator(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    from starlette.applications import Starlette
    from starlette.responses import HTMLResponse
    from starlette.routing import Route
    from test_web import CHROMIUM_ARGS, LiveServer, make_session, served

    path = tmp_path / "s.db"
    tokens = make_session(path)
    with Ledger.open(path) as led:
        qid = led.pending()[0].id
    html: dict[str, str] = {}

    async def attack(request):
        return HTMLResponse(html["page"])

    async def form(request):
        return HTMLResponse(html["page"].replace('<p id="done">', '<p id="form">').replace(
            "(async", "document.getElementById('f').submit(); (async"))

    with served(path, driver=False) as live, LiveServer(Starlette(routes=[Route("/", attack),
                                                                          Route("/form", form)])) as evil:
        assert evil.url != live.url  # two origins: same host, other ports
        html["page"] = _ATTACK.format(target=live.url, qid=qid)
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            try:
                context = browser.new_context()
                page = context.new_page()
                page.goto(live.url + "/")
                page.fill("#token", tokens["alice"])
                page.click("#login")
                page.wait_for_selector("#candidates button")
                # The same browser, logged in, visits the other origin's page.
                other = context.new_page()
                other.goto(evil.url + "/")
                sync_api.expect(other.locator("#done")).to_have_text("yes", timeout=20_000)
                other.goto(evil.url + "/form")
                other.wait_for_load_state()
                other.wait_for_timeout(500)
            finally:
                browser.close()
    with Ledger.open(path) as led:
        assert led.answers() == [] and led.spent() == 0.0
        assert led.lease_holder(qid) in (None, "alice")  # the page's own lease at most
