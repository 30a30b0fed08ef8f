"""Label Studio's HTTP, recorded once from a live server and replayed by a local one: ``labelstudio sync``'s tests.

* :class:`Recorder` is a proxy on 127.0.0.1 in front of a live Label Studio: it
  forwards every request and keeps the exchange (method, path, query, body,
  the answer's status and body).
* :class:`Replayer` is a server on 127.0.0.1 that answers the recorded
  requests in their order with the recorded answers. A request that is not the
  next recorded one is answered 418 and kept in ``mismatches``. Strings of the
  recording (the session's digest, which depends on where the session file
  was) are replaced by this run's (``subs``) in both directions.
* :func:`run_pool_scenario` and :func:`run_stream_scenario` are what a team
  does: sync passes, and between them a person labels, skips and deletes tasks
  in Label Studio through its API. With a live server (``user``) the person
  acts; in a replay the recorded answers already hold what they did.

``tests/fixtures/labelstudio/record_sync.py`` records ``sync_cassette.json``
with them; ``tests/test_labelstudio_sync.py`` replays it (and, with
``make test-integration``, runs the same scenarios against a live server).
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

TOPICS = ("business", "sport", "tech")
_WORDS = {
    "business": ["shares", "profits", "bank", "merger", "market", "investors", "retail", "oil prices", "the euro"],
    "sport": ["the cup final", "a striker", "the coach", "Wimbledon", "the league", "a marathon", "the relay team"],
    "tech": ["a new phone", "broadband", "a search engine", "chip makers", "a video game", "software", "robots"],
}
POOL_SIZE = 40
POOL_BUDGET = 9
POOL_BATCH = 4


def make_pool(path: Path) -> dict[str, str]:
    """Write an unlabelled pool of headlines (no ``answer``); returns each item's topic (what a person would say)."""
    rng = random.Random(7)
    gold, lines = {}, []
    for i in range(POOL_SIZE):
        topic = TOPICS[i % 3]
        a, b = rng.sample(_WORDS[topic], 2)
        text = f"{a.capitalize()} and {b} make the news again ({i})"
        gold[f"h{i}"] = topic
        lines.append(json.dumps({"id": f"h{i}", "prompt": f"Which section does this headline belong in? {text}",
                                 "candidates": list(TOPICS)}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return gold


def budgetsft(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "budgetsft", *args], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise AssertionError(f"budgetsft {' '.join(args)}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


# ---------------------------------------------------------------- the person in Label Studio
class User:
    """A person's hand in a live Label Studio (straight to the server, not through the recorder)."""

    def __init__(self, url: str, token: str, project: int) -> None:
        from budgetsft.labelstudio_sync import LabelStudioClient

        self.client = LabelStudioClient(url, token)
        self.project = project
        self.ids: dict[str, int] = {}

    def add_users(self, *emails: str) -> None:
        for email in emails:
            self.ids[email] = self.client.request("POST", "/api/users/", body={
                "username": email.split("@")[0], "email": email})["id"]

    def open_tasks(self) -> list[dict]:
        """The tasks nobody has annotated yet, in the order Label Studio shows them."""
        return sorted((t for t in self.client.tasks(self.project) if not t["annotations"]), key=lambda t: t["id"])

    def label(self, task: dict, who: str, choice: str) -> int:
        result = [{"from_name": "label", "to_name": "prompt", "type": "choices", "value": {"choices": [choice]}}]
        return self.client.request("POST", f"/api/tasks/{task['id']}/annotations/", body={
            "result": result, "completed_by": self.ids[who], "lead_time": 2.5})["id"]

    def skip(self, task: dict, who: str) -> None:
        self.client.request("POST", f"/api/tasks/{task['id']}/annotations/", body={
            "result": [], "was_cancelled": True, "completed_by": self.ids[who]})

    def relabel(self, annotation: int, choice: str) -> None:
        result = [{"from_name": "label", "to_name": "prompt", "type": "choices", "value": {"choices": [choice]}}]
        self.client.request("PATCH", f"/api/annotations/{annotation}/", body={"result": result})

    def delete(self, task: dict) -> None:
        self.client.request("DELETE", f"/api/tasks/{task['id']}/")


def new_project(url: str, token: str, title: str) -> int:
    """An empty project, as a person makes one (no labeling config: the first sync sets it)."""
    from budgetsft.labelstudio_sync import LabelStudioClient

    return LabelStudioClient(url, token).request("POST", "/api/projects/", body={"title": title})["id"]


# ---------------------------------------------------------------- the scenarios
def pool_session(workdir: Path) -> tuple[Path, dict[str, str]]:
    """The pool session the scenario syncs: 40 headlines, budget 9 labels, batch 4; the first 4 picked."""
    gold = make_pool(workdir / "pool.jsonl")
    db = workdir / "pool.db"
    budgetsft("select", "--data", str(workdir / "pool.jsonl"), "--session", str(db), "--batch", str(POOL_BATCH),
              "--budget", str(POOL_BUDGET), "--out", str(workdir / "picks.jsonl"))
    from budgetsft.sessions.ledger import Ledger

    with Ledger.open(db) as led:
        led.add_annotator("ana@example.org", 1.0)  # ana is paid by email; bo only skips
    return db, gold


def run_pool_scenario(sync_pass: Callable[[], dict], gold: dict[str, str], user: User | None = None) -> list[dict]:
    """Six passes; returns what each did (a pass that failed: ``{"error": message}``).

    1. the project is empty: sync sets its labeling config and pushes the 4 picks;
    2. ana labelled two tasks, bo skipped one, one was deleted: 2 charged, 2 released, the next 4 pushed;
    3. nothing happened: nothing charged, nothing pushed;
    4. ana labelled the 4, one with a choice that is no candidate: refused whole, nothing charged;
    5. ana corrected it: 4 charged (6 of 9 spent), the 3 that fit the budget pushed;
    6. ana labelled the 3: 9 of 9 spent, done.
    """
    def answer(task):
        return gold[task["data"]["example_id"]]

    passes = [sync_pass()]
    if user is not None:
        open_ = user.open_tasks()
        user.label(open_[0], "ana@example.org", answer(open_[0]))
        user.label(open_[1], "ana@example.org", answer(open_[1]))
        user.skip(open_[2], "bo@example.org")
        user.delete(open_[3])
    passes.append(sync_pass())
    passes.append(sync_pass())
    bad = None
    if user is not None:
        open_ = user.open_tasks()
        for i, task in enumerate(open_):
            made = user.label(task, "ana@example.org", "weather" if i == 2 else answer(task))
            bad = (made, answer(task)) if i == 2 else bad
    passes.append(sync_pass())
    if user is not None:
        user.relabel(*bad)
    passes.append(sync_pass())
    if user is not None:
        for task in user.open_tasks():
            user.label(task, "ana@example.org", answer(task))
    passes.append(sync_pass())
    return passes


def stream_session(workdir: Path) -> Path:
    """A stream session with a web oracle: its first window of queries waits for people.

    The learner is pinned to the one the cassette was recorded with (the logistic learner's first-build
    curvature floor, ``floor: constant``): the second pass's picks depend on what it learnt from the first."""
    db = workdir / "stream.db"
    config = workdir / "recorded_learner.yaml"
    config.write_text("learner: {name: logistic, floor: constant}\n")
    budgetsft("run", "--config", str(config), "--rounds", "200", "--window", "50", "--beta", "0.1", "--seed", "3",
              "--session", str(db), "--oracle", "web")
    from budgetsft.sessions.ledger import Ledger

    with Ledger.open(db) as led:
        led.add_annotator("ana@example.org", 1.0)
    return db


def run_stream_scenario(sync_pass: Callable[[], dict], user: User | None = None) -> list[dict]:
    """Two passes: the pending queries pushed; then, all labelled, charged, the stream played on and the next pushed."""
    passes = [sync_pass()]
    if user is not None:
        for task in user.open_tasks():
            user.label(task, "ana@example.org", task["data"]["options"][0]["value"])
    passes.append(sync_pass())
    return passes


# ---------------------------------------------------------------- recording and replaying
def _query(path: str) -> tuple[str, dict]:
    parts = urllib.parse.urlsplit(path)
    return parts.path, {k: v for k, v in sorted(urllib.parse.parse_qs(parts.query, keep_blank_values=True).items())}


def _json_or_text(raw: bytes):
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return {"text": raw.decode("utf-8", "replace")}


class _Server:
    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.owner = self
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    def _body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _answer(self, status: int, payload) -> None:
        raw = b"" if payload is None else json.dumps(payload, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def do_GET(self) -> None:  # noqa: N802 - http.server's names
        self.exchange()

    do_POST = do_PATCH = do_DELETE = do_GET  # noqa: N815


class _RecordHandler(_Handler):
    def exchange(self) -> None:
        owner = self.server.owner
        body = self._body()
        headers = {k: v for k, v in self.headers.items() if k.lower() in ("authorization", "content-type", "accept")}
        request = urllib.request.Request(owner.target + self.path, data=body or None, method=self.command,
                                         headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=60) as res:
                status, raw = res.status, res.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        path, query = _query(self.path)
        with owner.lock:
            owner.exchanges.append({"method": self.command, "path": path, "query": query,
                                    "authorization": self.headers.get("Authorization"),
                                    "body": _json_or_text(body), "status": status, "answer": _json_or_text(raw)})
        self._answer(status, _json_or_text(raw))


class Recorder(_Server):
    """A recording proxy in front of the Label Studio at ``target``."""

    def __init__(self, target: str) -> None:
        super().__init__(_RecordHandler)
        self.target = target.rstrip("/")
        self.exchanges: list[dict] = []
        self._mark = 0

    def take(self) -> list[dict]:
        """The exchanges since the last call."""
        with self.lock:
            out, self._mark = self.exchanges[self._mark:], len(self.exchanges)
        return out


def _swap(obj, subs: dict[str, str]):
    text = json.dumps(obj, ensure_ascii=False)
    for old, new in subs.items():
        text = text.replace(old, new)
    return json.loads(text)


class _ReplayHandler(_Handler):
    def exchange(self) -> None:
        owner = self.server.owner
        body = _json_or_text(self._body())
        path, query = _query(self.path)
        got = {"method": self.command, "path": path, "query": query,
               "authorization": self.headers.get("Authorization"), "body": body}
        with owner.lock:
            if owner.position >= len(owner.exchanges):
                owner.mismatches.append({"unexpected": got})
                return self._answer(418, {"detail": "the recording has no more requests"})
            want = _swap(owner.exchanges[owner.position], owner.subs)
            expected = {k: want[k] for k in got}
            if got != expected:
                owner.mismatches.append({"expected": expected, "got": got})
                return self._answer(418, {"detail": f"not the recorded request #{owner.position}"})
            owner.position += 1
        self._answer(want["status"], want["answer"])


class Replayer(_Server):
    """A local server that answers ``exchanges`` in order (``subs``: recorded string -> this run's)."""

    def __init__(self, exchanges: list[dict], subs: dict[str, str] | None = None) -> None:
        super().__init__(_ReplayHandler)
        self.exchanges = exchanges
        self.subs = dict(subs or {})
        self.position = 0
        self.mismatches: list[dict] = []
