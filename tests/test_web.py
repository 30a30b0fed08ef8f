"""The annotation web app: a real uvicorn server on loopback, real HTTP, and a real headless Chromium."""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")
pytest.importorskip("starlette")

from budgetsft.exceptions import ConfigError  # noqa: E402
from budgetsft.sessions.ledger import Ledger, LedgerError  # noqa: E402
from budgetsft.sessions.oracles import WebOracle  # noqa: E402
from budgetsft.sessions.session import Session  # noqa: E402
from budgetsft.sessions.web import COOKIE, create_app  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WINDOW = {"env": {"name": "synthetic", "d": 5, "K": 3, "rounds": 200},
          "gate": {"name": "llf", "beta": 0.2, "window": 20}, "seed": 0}


class LiveServer:
    """uvicorn serving ``app`` in a thread on a free loopback port (the socket is bound before it starts)."""

    def __init__(self, app) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self._sock]}, daemon=True)

    def __enter__(self) -> LiveServer:
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self._thread.join(30)
        self._sock.close()


def make_session(path: Path, config: dict = WINDOW, annotators: dict[str, float] | None = None) -> dict[str, str]:
    """A session waiting for its first window of labels, and the annotators' tokens."""
    session = Session.create(path, config)
    assert session.play(WebOracle()).status == "waiting"
    tokens = {name: session.ledger.add_annotator(name, cost).token
              for name, cost in (annotators or {"alice": 1.0, "bob": 1.0}).items()}
    session.close()
    return tokens


@contextmanager
def served(path: Path, **kwargs):
    with LiveServer(create_app(path, **kwargs)) as live:
        yield live


def client(live: LiveServer, token: str | None = None) -> httpx.Client:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    return httpx.Client(base_url=live.url, headers=headers, timeout=30)


def ledger_state(path: Path) -> tuple[float, int]:
    with Ledger.open(path) as led:
        return led.spent(), len(led.answers())


@pytest.fixture
def session_file(tmp_path) -> tuple[Path, dict[str, str]]:
    path = tmp_path / "session.db"
    return path, make_session(path)


def test_requests_without_a_valid_token_are_refused(session_file):
    path, tokens = session_file
    with served(path) as live:
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": f"Basic {tokens['alice']}"},
                        {"Authorization": "Bearer"}):
            with httpx.Client(base_url=live.url, headers=headers) as c:
                for method, url in (("GET", "/api/next"), ("GET", "/api/status"), ("POST", "/api/answer")):
                    r = c.request(method, url, json={"query_id": 1, "label": 0})
                    assert r.status_code == 401, (headers, url)
                    assert r.json()["error"]
        with httpx.Client(base_url=live.url, cookies={COOKIE: "forged"}) as c:
            assert c.get("/api/next").status_code == 401
            page = c.get("/")
            assert page.status_code == 401 and "unknown token" in page.text
    assert ledger_state(path) == (0.0, 0)


def test_an_item_leased_to_another_annotator_is_refused(session_file):
    path, tokens = session_file
    with served(path) as live, client(live, tokens["alice"]) as alice, client(live, tokens["bob"]) as bob:
        item = alice.get("/api/next").json()
        assert set(item) >= {"query_id", "round", "prompt", "candidates", "latency", "lease_expires_in", "budget"}
        assert item["budget"] == {"spent": 0.0, "remaining": 40.0, "total": 40.0, "unit": "labels"}
        r = bob.post("/api/answer", json={"query_id": item["query_id"], "label": 0})
        assert r.status_code == 403
        assert r.json()["error"] == f"item {item['query_id']} is leased to another annotator."
        assert ledger_state(path) == (0.0, 0)
        assert bob.get("/api/next").json()["query_id"] != item["query_id"]
        assert alice.post("/api/answer", json={"query_id": item["query_id"], "label": 1}).json()["recorded"]
    with Ledger.open(path) as led:
        assert [(a.query_id, a.annotator, a.label) for a in led.answers()] == [(item["query_id"], "alice", 1)]


def test_pending_items_come_largest_latency_first(session_file):
    path, tokens = session_file
    with Ledger.open(path) as led:
        expected = [q.id for q in led.pending()]
    got = []
    with served(path, driver=False) as live, client(live, tokens["alice"]) as alice:
        for _ in range(5):
            item = alice.get("/api/next").json()
            assert alice.get("/api/next").json()["query_id"] == item["query_id"]  # asking again renews the lease
            got.append(item["query_id"])
            assert alice.post("/api/answer", json={"query_id": item["query_id"], "label": 0}).json()["recorded"]
    assert got == expected[:5]


def test_an_expired_lease_passes_to_the_next_annotator(session_file):
    path, tokens = session_file
    with served(path, lease_ttl=0.3, driver=False) as live, client(live, tokens["alice"]) as alice, \
            client(live, tokens["bob"]) as bob:
        first = alice.get("/api/next").json()["query_id"]
        assert bob.get("/api/next").json()["query_id"] != first
        time.sleep(0.4)  # both leases lapse; bob, asking first, gets the top item
        assert bob.get("/api/next").json()["query_id"] == first
        r = alice.post("/api/answer", json={"query_id": first, "label": 0})
        assert r.status_code == 403 and "leased to another annotator" in r.json()["error"]
        assert bob.post("/api/answer", json={"query_id": first, "label": 2}).json()["recorded"]
    assert ledger_state(path) == (1.0, 1)


MALFORMED = [
    ({"query_id": 10_000, "label": 0}, 404, "unknown item 10000."),
    ({"query_id": None, "label": 0}, 400, "'query_id' must be an int"),
    ({"query_id": "1", "label": 0}, 400, "'query_id' must be an int"),
    ({"label": 0}, 400, "'query_id' must be an int"),
    ({"query_id": "ITEM", "label": 3}, 422, "label must be an int in [0, 2]. Got 3."),
    ({"query_id": "ITEM", "label": -1}, 422, "label must be an int in [0, 2]. Got -1."),
    ({"query_id": "ITEM", "label": 1.0}, 422, "label must be an int in [0, 2]. Got 1.0."),
    ({"query_id": "ITEM", "label": True}, 422, "label must be an int in [0, 2]. Got True."),
    ({"query_id": "ITEM", "label": "1"}, 422, "label must be an int in [0, 2]. Got '1'."),
    ({"query_id": "ITEM"}, 400, "'label' is missing."),
    ([1, 2], 400, "the body must be a JSON object"),
    (b"{not json", 400, "the body must be a JSON object"),
    (b"", 400, "the body must be a JSON object"),
    (b"\xff\xfe", 400, "the body must be a JSON object"),
    (b'{"query_id": 1, "label": 0, "pad": "' + b"x" * (1 << 20) + b'"}', 413, "request body too large"),
    (b"x" * 20_000, 413, "request body too large: at most 16384 bytes."),
]


def test_malformed_answers_are_refused_and_charge_nothing(session_file):
    path, tokens = session_file
    with served(path) as live, client(live, tokens["alice"]) as alice:
        qid = alice.get("/api/next").json()["query_id"]
        for body, status, message in MALFORMED:
            if isinstance(body, dict) and body.get("query_id") == "ITEM":
                body = {**body, "query_id": qid}
            content = body if isinstance(body, bytes) else json.dumps(body).encode()
            r = alice.post("/api/answer", content=content, headers={"Content-Type": "application/json"})
            assert r.status_code == status, (body[:40] if isinstance(body, bytes) else body, r.text)
            assert message in r.json()["error"]
            assert ledger_state(path) == (0.0, 0)
        # The body cap does not rely on Content-Length: a chunked upload is counted as it arrives.
        r = alice.post("/api/answer", content=iter([b'{"query_id": 1, "pad": "', b"y" * 40_000, b'"}']))
        assert r.status_code == 413
        assert ledger_state(path) == (0.0, 0)
        # After all that, the item is still alice's to answer.
        assert alice.post("/api/answer", json={"query_id": qid, "label": 2}).json()["recorded"] is True
    assert ledger_state(path) == (1.0, 1)


def test_a_double_submitted_answer_is_recorded_once(session_file):
    path, tokens = session_file
    with served(path) as live, client(live, tokens["alice"]) as alice, client(live, tokens["bob"]) as bob:
        qid = alice.get("/api/next").json()["query_id"]
        first = alice.post("/api/answer", json={"query_id": qid, "label": 1})
        again = alice.post("/api/answer", json={"query_id": qid, "label": 1})
        late = bob.post("/api/answer", json={"query_id": qid, "label": 0})
        assert first.json()["recorded"] is True
        assert again.status_code == 200 and again.json() | {"budget": None} == {
            "recorded": False, "duplicate": True, "query_id": qid, "budget": None}
        assert late.json()["duplicate"] is True
        assert again.json()["budget"]["spent"] == 1.0
    with Ledger.open(path) as led:
        assert led.spent() == 1.0
        assert [(a.query_id, a.label, a.annotator) for a in led.answers()] == [(qid, 1, "alice")]


def test_concurrent_annotators_never_hold_the_same_item(tmp_path):
    path = tmp_path / "s.db"
    names = [f"ann{i}" for i in range(4)]
    tokens = make_session(path, annotators=dict.fromkeys(names, 1.0))
    received: dict[str, list[int]] = {n: [] for n in names}
    errors: list[str] = []
    with served(path) as live:
        # All at once: four simultaneous first requests get four different items.
        barrier = threading.Barrier(len(names))
        first: dict[str, int] = {}

        def grab(name):
            with client(live, tokens[name]) as c:
                barrier.wait()
                first[name] = c.get("/api/next").json()["query_id"]

        threads = [threading.Thread(target=grab, args=(n,)) for n in names]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(set(first.values())) == len(names)

        def work(name):
            with client(live, tokens[name]) as c:
                done, deadline = 0, time.monotonic() + 30
                while done < 8 and time.monotonic() < deadline:
                    item = c.get("/api/next").json()
                    if item.get("item", True) is None:
                        time.sleep(0.02)  # the driver is making the next window pending
                        continue
                    received[name].append(item["query_id"])
                    r = c.post("/api/answer", json={"query_id": item["query_id"], "label": 0})
                    if r.status_code != 200 or not r.json()["recorded"]:
                        errors.append(f"{name}: {r.status_code} {r.text}")
                    done += 1

        threads = [threading.Thread(target=work, args=(n,)) for n in names]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []
    seen = [q for n in names for q in received[n]]
    assert len(seen) == 4 * 8 and len(set(seen)) == len(seen)  # no item was handed to two annotators
    with Ledger.open(path) as led:
        by_query = {a.query_id: a.annotator for a in led.answers()}
        assert len(by_query) == len(seen) and led.spent() == len(seen)
    for name in names:
        assert all(by_query[q] == name for q in received[name])


def test_annotators_are_charged_their_own_price_in_cost_units(tmp_path):
    path = tmp_path / "s.db"
    config = {**WINDOW, "env": {**WINDOW["env"], "rounds": 100},
              "gate": {"name": "llf", "beta": 0.2, "window": 20, "unit": "cost"}}
    tokens = make_session(path, config, {"expert": 2.0, "crowd": 0.5})
    with Ledger.open(path) as led:
        assert (led.budget_total, led.budget_unit) == (20.0, "cost")
    refused = set()
    with served(path) as live, client(live, tokens["expert"]) as expert, client(live, tokens["crowd"]) as crowd:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and refused != {"expert", "crowd"}:
            progressed = False
            for name, c in (("expert", expert), ("crowd", crowd)):
                r = c.get("/api/next")
                if r.status_code == 409:
                    assert "budget exhausted" in r.json()["error"]
                    refused.add(name)
                    continue
                item = r.json()
                if item.get("item", True) is None:
                    if item["reason"] == "session finished":
                        refused = {"expert", "crowd"}
                    continue
                a = c.post("/api/answer", json={"query_id": item["query_id"], "label": 0})
                assert a.status_code == 200, a.text
                assert a.json()["budget"]["spent"] <= 20.0
                progressed = True
            if not progressed:
                time.sleep(0.02)
        status = expert.get("/api/status").json()
    assert refused == {"expert", "crowd"}
    by = status["by_annotator"]
    assert by["expert"]["spent"] == 2.0 * by["expert"]["labels"] and by["expert"]["labels"] >= 1
    assert by["crowd"]["spent"] == 0.5 * by["crowd"]["labels"] and by["crowd"]["labels"] >= 1
    with Ledger.open(path) as led:
        assert led.spent() == by["expert"]["spent"] + by["crowd"]["spent"] == status["budget"]["spent"]
        assert led.spent() <= led.budget_total
        assert led.remaining() < 0.5 or led.status == "finished"


def _clear_the_first_window(path: Path, token: str, act) -> tuple[set[int], dict]:
    """Serve ``path``; one annotator calls ``act(client, query_id)`` on every item of the first window, then
    waits until the driver has played on to the next window. Returns the first window's ids and the status."""
    with Ledger.open(path) as led:
        first_window = {q.id for q in led.pending()}
    with served(path) as live, client(live, token) as alice:
        for _ in first_window:
            item = alice.get("/api/next").json()
            assert item["query_id"] in first_window
            act(alice, item["query_id"])
        deadline = time.monotonic() + 20
        while (item := alice.get("/api/next").json()).get("item", True) is None:
            assert item["reason"] == "waiting for the session" and time.monotonic() < deadline
            time.sleep(0.05)
        assert item["query_id"] not in first_window
        # The next window's queries are written just before its checkpoint: wait for the driver to settle.
        while (status := alice.get("/api/status").json())["driver"]["state"] != "waiting":
            assert time.monotonic() < deadline
            time.sleep(0.05)
    return first_window, status


def test_the_driver_plays_on_once_the_answers_are_in(session_file):
    path, tokens = session_file

    def answer(alice, qid):
        assert alice.post("/api/answer", json={"query_id": qid, "label": 0}).json()["recorded"]

    first_window, status = _clear_the_first_window(path, tokens["alice"], answer)
    assert status["rounds_played"] >= 20 and status["horizon"] == 200 and status["driver"]["error"] is None
    n = len(first_window)
    assert n > 0 and status["labels_bought"] == n and status["by_annotator"]["alice"]["labels"] == n


def test_the_driver_waits_while_another_process_plays_the_session(session_file):
    path, tokens = session_file
    app = create_app(path)
    app.state.annotate.driver.busy_retry = 0.1
    other = Session.open(path)
    with LiveServer(app) as live, client(live, tokens["alice"]) as alice:
        with other._player_lock():  # as `budgetsft resume` would hold it
            while (item := alice.get("/api/next").json()).get("item", True) is not None:
                assert alice.post("/api/answer", json={"query_id": item["query_id"], "label": 0}).json()["recorded"]
            deadline = time.monotonic() + 10
            while (status := alice.get("/api/status").json())["driver"]["state"] != "blocked":
                assert time.monotonic() < deadline
                time.sleep(0.05)
            assert "another process is playing" in status["driver"]["error"]
            assert alice.get("/api/next").json()["reason"] == "waiting for the session"
        while alice.get("/api/next").json().get("item", True) is None:  # released: the game goes on
            assert time.monotonic() < deadline
            time.sleep(0.05)
        while (status := alice.get("/api/status").json())["driver"]["state"] != "waiting":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert status["driver"]["error"] is None
    other.close()


def test_a_skipped_item_goes_to_the_other_annotators_and_is_never_charged(session_file):
    path, tokens = session_file
    with served(path, driver=False) as live, client(live, tokens["alice"]) as alice, \
            client(live, tokens["bob"]) as bob:
        top = alice.get("/api/next").json()["query_id"]
        r = bob.post("/api/skip", json={"query_id": top})  # not bob's to skip while alice holds it
        assert r.status_code == 403 and "leased to another annotator" in r.json()["error"]
        r = alice.post("/api/skip", json={"query_id": top})
        assert r.status_code == 200 and r.json() | {"budget": None} == {"skipped": top, "unlabelled": False,
                                                                       "budget": None}
        assert alice.get("/api/next").json()["query_id"] != top  # never handed to alice again
        assert bob.get("/api/next").json()["query_id"] == top    # the largest latency goes to bob
        r = alice.post("/api/answer", json={"query_id": top, "label": 0})
        assert r.status_code == 403
        assert bob.post("/api/answer", json={"query_id": top, "label": 2}).json()["recorded"]
        r = bob.post("/api/skip", json={"query_id": top})
        assert r.status_code == 409 and r.json()["error"] == f"item {top} is answered; it cannot be skipped."
        for body, status, message in [({"query_id": 10_000}, 404, "unknown item 10000."),
                                      ({"query_id": "1"}, 400, "'query_id' must be an int"),
                                      ([1], 400, 'the body must be a JSON object {"query_id": int}.')]:
            r = alice.post("/api/skip", json=body)
            assert (r.status_code, message in r.json()["error"]) == (status, True), r.text
        r = alice.post("/api/skip", content=b'{"query_id": 1}', headers={"Content-Type": "text/plain"})
        assert r.status_code == 415
    with Ledger.open(path) as led:
        assert [(a.query_id, a.annotator, a.label) for a in led.answers()] == [(top, "bob", 2)]
        assert led.spent() == 1.0 and led.passes() == {"alice": 1} and led.query(top).status == "answered"


def test_an_item_every_annotator_skips_goes_unlabelled(tmp_path):
    path = tmp_path / "s.db"
    tokens = make_session(path, annotators={"alice": 1.0, "bob": 1.0, "carol": 1.0})
    with served(path, driver=False) as live, client(live, tokens["alice"]) as alice, \
            client(live, tokens["bob"]) as bob, client(live, tokens["carol"]) as carol:
        qid = alice.get("/api/next").json()["query_id"]
        assert alice.post("/api/skip", json={"query_id": qid}).json()["unlabelled"] is False
        assert bob.get("/api/next").json()["query_id"] == qid
        assert bob.post("/api/skip", json={"query_id": qid}).json()["unlabelled"] is False
        with Ledger.open(path) as led:
            assert led.query(qid).status == "pending"
            led.revoke_annotator("carol")  # the last one who had not passed leaves: nobody will answer it
            assert led.query(qid).status == "skipped"
        r = alice.post("/api/answer", json={"query_id": qid, "label": 0})
        assert r.status_code == 409 and "was skipped" in r.json()["error"]
        assert carol.get("/api/next").status_code == 401
        # A second item: both remaining annotators pass, and the second pass is what drops it.
        other = alice.get("/api/next").json()["query_id"]
        assert alice.post("/api/skip", json={"query_id": other}).json()["unlabelled"] is False
        assert bob.get("/api/next").json()["query_id"] == other
        assert bob.post("/api/skip", json={"query_id": other}).json()["unlabelled"] is True
    with Ledger.open(path) as led:
        assert led.spent() == 0 and led.answers() == []
        assert [led.query(q).status for q in (qid, other)] == ["skipped", "skipped"]
        events = [json.loads(d) for k, d in led._conn.execute("SELECT kind, detail FROM events") if k == "skip"]
        assert [e["query_id"] for e in events] == [qid, other]
        assert {e["reason"] for e in events} == {"every annotator passed"}


def test_skipping_a_whole_window_lets_the_session_play_on(tmp_path):
    path = tmp_path / "s.db"
    tokens = make_session(path, annotators={"alice": 1.0})

    def skip(alice, qid):  # the only annotator: each skip leaves the item unlabelled
        assert alice.post("/api/skip", json={"query_id": qid}).json()["unlabelled"] is True

    first_window, status = _clear_the_first_window(path, tokens["alice"], skip)
    assert status["rounds_played"] >= 20 and status["labels_bought"] == 0 and status["budget"]["spent"] == 0
    with Ledger.open(path) as led:
        queried = {r.round: r.queried for r in led.records()}
        skipped_rounds = {led.query(q).round for q in first_window}
    assert skipped_rounds and all(queried[t] is False for t in skipped_rounds)


def test_create_app_checks_its_arguments(tmp_path):
    with pytest.raises(LedgerError, match="no such session file"):
        create_app(tmp_path / "missing.db")
    path = tmp_path / "s.db"
    make_session(path)
    with pytest.raises(ConfigError, match="The 'lease_ttl' parameter of create_app must be a float in"):
        create_app(path, lease_ttl=0)


def _chromium(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"headless Chromium not installed at {CHROMIUM} "
                    "(CI installs Debian's `chromium`)")
def test_an_annotator_answers_three_items_in_chromium(session_file):
    sync_api = pytest.importorskip("playwright.sync_api")
    expect = sync_api.expect
    path, tokens = session_file
    with served(path) as live, sync_api.sync_playwright() as p:
        browser = _chromium(p)
        try:
            page = browser.new_page()
            page.goto(live.url + "/")
            page.fill("#token", "not-a-token")
            page.click("#login")
            assert "unknown token" in page.text_content("#message")
            page.fill("#token", tokens["alice"])
            page.click("#login")
            page.wait_for_selector("#candidates button")
            assert page.text_content("#who") == "alice"
            assert "remaining 40" in page.text_content("#budget")
            answered = []
            for n in range(1, 4):
                qid = page.get_attribute("#item", "data-query-id")
                answered.append(int(qid))
                page.click(f"#candidates button[data-label='{n % 3}']")
                # Locator waits, not wait_for_function: the page's CSP (rightly) forbids evaluating strings.
                expect(page.locator("#answered")).to_have_text(str(n))
                expect(page.locator("#item")).not_to_have_attribute("data-query-id", qid)
            expect(page.locator("#budget")).to_contain_text("spent 3 of 40 labels · remaining 37")
            passed = int(page.get_attribute("#item", "data-query-id"))
            page.click("#skip")  # bob has not passed on it: it goes to him, and alice is handed the next one
            expect(page.locator("#skipped")).to_have_text("1")
            expect(page.locator("#message")).to_have_text(f"item {passed} skipped: it goes to the other "
                                                          "annotators.")
            expect(page.locator("#item")).not_to_have_attribute("data-query-id", str(passed))
            page.keyboard.press("s")
            expect(page.locator("#skipped")).to_have_text("2")
            shot = os.environ.get("BUDGETSFT_SCREENSHOT")
            if shot:  # BUDGETSFT_SCREENSHOT=docs/annotate.png pytest tests/test_web.py -k chromium
                page.set_viewport_size({"width": 900, "height": 640})
                page.screenshot(path=shot, full_page=True)
            cookie = next(c for c in page.context.cookies() if c["name"] == COOKIE)
            assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        finally:
            browser.close()
    with Ledger.open(path) as led:
        got = sorted((a.query_id, a.label) for a in led.answers() if a.annotator == "alice")
        assert led.labels_by_annotator() == {"alice": {"labels": 3, "spent": 3.0}}
        assert led.passes() == {"alice": 2} and led.spent() == 3.0
        assert led.query(passed).status == "pending"
    assert got == sorted(zip(answered, [1, 2, 0], strict=True))



def test_the_page_is_the_package_files_filled_in_under_a_fresh_nonce(tmp_path):
    static = resources.files("budgetsft.sessions").joinpath("static")
    css, js = (static.joinpath(f"annotate.{ext}").read_text("utf-8") for ext in ("css", "js"))
    assert "function next()" in js and "#candidates button" in css
    path = tmp_path / "{script} & {name}.db"  # placeholders in a field are shown, never filled in again
    shown = "{script} &amp; {name}.db"
    tokens = make_session(path)
    with served(path, driver=False) as live, \
            httpx.Client(base_url=live.url, cookies={COOKIE: tokens["alice"]}) as alice:
        pages = [alice.get("/"), alice.get("/"), httpx.get(f"{live.url}/")]
    nonces = [re.search(r"script-src 'nonce-([\w-]+)'", p.headers["content-security-policy"]).group(1)
              for p in pages]
    assert [p.status_code for p in pages] == [200, 200, 200] and len(set(nonces)) == 3
    for page, nonce in zip(pages, nonces, strict=True):
        assert f'<style nonce="{nonce}">\n{css}</style>' in page.text
        unfilled = re.findall(r"\{(?:nonce|style|script|file|name|cost|error)\}", page.text.replace(shown, ""))
        assert unfilled == []
    for page, nonce in zip(pages[:2], nonces, strict=False):
        assert page.text.count(js) == 1 and f'<script nonce="{nonce}">\n{js}</script>' in page.text
        assert f"budgetsft annotate · {shown}" in page.text and '<b id="who">alice</b>' in page.text
    assert 'id="token"' in pages[2].text and js not in pages[2].text
