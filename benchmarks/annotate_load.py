"""Load check of ``budgetsft annotate``: N scripted annotators answering through the JSON API on loopback.

    .venv/bin/python benchmarks/annotate_load.py                  # 8 annotators, 400 answers
    .venv/bin/python benchmarks/annotate_load.py --quick          # 4 annotators, 100 answers
    .venv/bin/python benchmarks/annotate_load.py --quick --kill 4 # ... with 4 kill -9s of the server

A synthetic session in window mode (many queries pending at once, cost units,
annotators at 1.0 and 0.5 per label) is served by ``budgetsft.sessions.web.serve`` in a
subprocess, with its driver playing the game on as answers come in. Each
annotator thread keeps one HTTP/1.1 connection and loops ``GET /api/next`` →
``POST /api/answer`` until M answers have been given in all; every tenth
answer is sent twice to check that a double submission is charged once.

Prints requests per second and p50/p99 latency of each endpoint, then checks
the ledger after the server has shut down: every answer acknowledged with
``recorded: true`` is in the ledger with its annotator and label (nothing
lost), no query was acknowledged twice, the ledger holds exactly the
acknowledged answers (nothing duplicated), and the money spent equals the sum
of the annotators' prices for their answers. Exits 1 if any check fails.

With ``--kill N`` the server is killed with SIGKILL N times at random moments
and restarted on the same port; annotators reconnect and resend what they had
in flight. An answer whose acknowledgement was lost with the server comes back
as a duplicate on the resend, which acknowledges it; the same checks must
hold: acknowledged answers = ledger rows, spent = the sum of the prices.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from fractions import Fraction
from pathlib import Path

from budgetsft.sessions.ledger import Ledger
from budgetsft.sessions.oracles import WebOracle
from budgetsft.sessions.session import Session

COSTS = (1.0, 0.5)  # annotator i is charged COSTS[i % 2] per label


def percentile(xs: list[float], q: float) -> float:
    if not xs:
        return math.nan
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, math.ceil(q / 100 * len(xs)) - 1))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Annotator(threading.Thread):
    """One scripted annotator: next → answer over one keep-alive connection, until the shared count is reached."""

    def __init__(self, name: str, token: str, port: int, tickets: Ticketer) -> None:
        super().__init__(name=name, daemon=True)
        self.token, self.port, self.tickets = token, port, tickets
        self.next_ms: list[float] = []
        self.answer_ms: list[float] = []
        self.waiting = 0
        self.recorded: list[tuple[int, int]] = []  # (query_id, label) acknowledged with recorded: true
        self.resubmits = 0
        self.resubmits_charged = 0
        self.errors: list[str] = []

    def _call(self, conn: http.client.HTTPConnection, method: str, url: str, body: dict | None = None
              ) -> tuple[int, dict, float]:
        """One request; after a dropped connection (a killed server) reconnect and send it again."""
        headers = {"Authorization": f"Bearer {self.token}"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        self.resent = False
        deadline = time.monotonic() + 120
        while True:
            t0 = time.perf_counter()
            try:
                conn.request(method, url, body=data, headers=headers)
                resp = conn.getresponse()
                payload = json.loads(resp.read())
                if resp.status == 503:  # the ledger is busy (a restart is replaying): try again shortly
                    raise ConnectionError("503")
                return resp.status, payload, (time.perf_counter() - t0) * 1e3
            except (OSError, http.client.HTTPException, ValueError):
                if time.monotonic() > deadline:
                    raise
                conn.close()
                self.resent = True
                time.sleep(0.1)

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            while self.tickets.take():
                while True:
                    status, item, ms = self._call(conn, "GET", "/api/next")
                    if status != 200:
                        self.errors.append(f"next: {status} {item}")
                        return
                    if item.get("item", True) is not None:
                        self.next_ms.append(ms)
                        break
                    if item["reason"] == "session finished":
                        self.errors.append("the session finished before all answers were given")
                        return
                    self.waiting += 1  # the game is being played on; ask again shortly
                    time.sleep(0.02)
                qid = item["query_id"]
                label = qid % len(item["candidates"])
                status, ans, ms = self._call(conn, "POST", "/api/answer", {"query_id": qid, "label": label})
                self.answer_ms.append(ms)
                if status == 200 and self.resent and ans.get("duplicate"):
                    ans["recorded"] = True  # committed before the server died: this duplicate is our acknowledgement
                if status != 200 or ans.get("recorded") is not True:
                    self.errors.append(f"answer {qid}: {status} {ans}")
                    continue
                self.recorded.append((qid, label))
                if len(self.recorded) % 10 == 0:  # a double submission: must come back as a duplicate
                    status, again, ms = self._call(conn, "POST", "/api/answer", {"query_id": qid, "label": label})
                    self.answer_ms.append(ms)
                    self.resubmits += 1
                    if status != 200 or again.get("recorded") is not False or not again.get("duplicate"):
                        self.resubmits_charged += 1
        except Exception as exc:  # reported, not raised: the verification counts it
            self.errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            conn.close()


class Ticketer:
    """Hands out exactly ``total`` answer tickets across threads."""

    def __init__(self, total: int) -> None:
        self._left = total
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            if self._left <= 0:
                return False
            self._left -= 1
            return True


def make_session(folder: Path, n_annotators: int, n_answers: int) -> tuple[Path, dict[str, tuple[str, float]]]:
    path = folder / "load.db"
    # beta 0.5 over 3M rounds in windows of 128: a budget of 1.5M cost units, dozens of queries pending at once.
    config = {"env": {"name": "synthetic", "d": 5, "K": 3, "rounds": 3 * n_answers},
              "gate": {"name": "llf", "beta": 0.5, "window": 128, "unit": "cost"}, "seed": 0}
    session = Session.create(path, config)
    session.play(WebOracle())
    anns = {}
    for i in range(n_annotators):
        a = session.ledger.add_annotator(f"ann{i}", COSTS[i % len(COSTS)])
        anns[a.name] = (a.token, a.cost)
    session.close()
    return path, anns


def start_server(path: Path, port: int) -> subprocess.Popen:
    code = "import sys; from budgetsft.sessions.web import serve; serve(sys.argv[1], port=int(sys.argv[2]))"
    proc = subprocess.Popen([sys.executable, "-c", code, str(path), str(port)])
    deadline = time.monotonic() + 60
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/")
            if conn.getresponse().status == 200:
                conn.close()
                return proc
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit("the annotate server did not start")
        time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--annotators", type=int, default=8, help="concurrent scripted annotators (default 8)")
    ap.add_argument("--answers", type=int, default=400, help="answers to give in all (default 400)")
    ap.add_argument("--quick", action="store_true", help="4 annotators, 100 answers")
    ap.add_argument("--kill", type=int, default=0, help="kill -9 the server this many times (restarting it)")
    args = ap.parse_args(argv)
    if args.quick:
        args.annotators, args.answers = 4, 100

    with tempfile.TemporaryDirectory() as tmp:
        path, anns = make_session(Path(tmp), args.annotators, args.answers)
        port = free_port()
        proc = start_server(path, port)
        tickets = Ticketer(args.answers)
        workers = [Annotator(name, token, port, tickets) for name, (token, _) in anns.items()]
        t0 = time.perf_counter()
        for w in workers:
            w.start()
        kills = 0
        rng = random.Random(0)
        while kills < args.kill and any(w.is_alive() for w in workers):
            time.sleep(rng.uniform(0.1, 0.6))
            if not any(w.is_alive() for w in workers):
                break
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
            proc = start_server(path, port)
        for w in workers:
            w.join()
        wall = time.perf_counter() - t0
        proc.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown: the driver is stopped, connections closed
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        with Ledger.open(path) as led:
            ledger_answers = {a.query_id: (a.annotator, a.label) for a in led.answers()}
            spent = Fraction(led.spent())
            rounds_played = led.n_records()

    acked = Counter(q for w in workers for q, _ in w.recorded)
    n_acked = sum(acked.values())
    twice = sum(1 for c in acked.values() if c > 1)
    lost = sum(1 for w in workers for q, lab in w.recorded if ledger_answers.get(q) != (w.name, lab))
    extra = len(set(ledger_answers) - set(acked))
    expected_spent = sum((Fraction(anns[w.name][1]) * len(w.recorded) for w in workers), Fraction(0))
    errors = [e for w in workers for e in w.errors]
    resubmits = sum(w.resubmits for w in workers)
    resubmits_charged = sum(w.resubmits_charged for w in workers)
    next_ms = [x for w in workers for x in w.next_ms]
    answer_ms = [x for w in workers for x in w.answer_ms]
    waiting = sum(w.waiting for w in workers)

    print(f"annotate load: {args.annotators} annotators × HTTP/1.1 keep-alive on loopback, {args.answers} answers, "
          f"server (uvicorn, 1 worker) in a subprocess; synthetic d=5 K=3, LLF window 128, costs {COSTS}"
          + (f"; server killed with SIGKILL {kills} time(s)" if args.kill else ""))
    print(f"{'request':<18}{'count':>7}{'p50 ms':>9}{'p99 ms':>9}")
    for name, xs in (("GET /api/next", next_ms), ("POST /api/answer", answer_ms)):
        print(f"{name:<18}{len(xs):>7}{percentile(xs, 50):>9.2f}{percentile(xs, 99):>9.2f}")
    print(f"answers/s: {n_acked / wall:.1f}  ({n_acked} answers in {wall:.2f} s wall; {waiting} 'item: null' replies "
          f"while the game played on; {rounds_played} rounds played)")
    ok = (not errors and n_acked == args.answers and len(ledger_answers) == n_acked and twice == 0 and lost == 0
          and extra == 0 and spent == expected_spent and resubmits_charged == 0)
    print(f"verification: ledger answers {len(ledger_answers)} == acknowledged {n_acked} "
          f"(unique query ids {len(acked)}); acknowledged twice {twice}; lost {lost}; in ledger but never "
          f"acknowledged {extra}; double submissions {resubmits}, charged again {resubmits_charged}; "
          f"spent {float(spent):g} == Σ price × answers {float(expected_spent):g}; errors {len(errors)} "
          f"→ {'OK' if ok else 'FAILED'}")
    for e in errors[:10]:
        print("  error:", e)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
