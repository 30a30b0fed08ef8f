"""The label ledger: one SQLite file per session, the source of truth for money spent.

A session's ledger holds its configuration, every query the gate made, every
answer received (label, annotator, cost, time), the annotators and their
tokens, the leases of items handed to annotators, the records of the rounds
played so far and checkpoints of the game state. It is the embedded default
store (stdlib :mod:`sqlite3`, WAL journal, so readers never block the writer).

Rules the ledger enforces, whatever its callers do:

- an answer is committed before anyone learns from it;
- a query is paid at most once (``answers.query_id`` is the primary key; a
  second answer to the same query is ignored and reported, not charged);
- the money spent never exceeds the budget: the check and the insert happen in
  one ``BEGIN IMMEDIATE`` transaction, with leases reserving their cost;
- the schema is versioned: an older file is migrated in place, a newer one is
  refused with a message naming the file.
"""

from __future__ import annotations

import json
import math
import secrets
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from budgetsft.base import RECORD_FIELDS, Record
from budgetsft.exceptions import BudgetExhaustedError, BudgetsftError, ConfigError

__all__ = ["SCHEMA_VERSION", "Ledger", "LedgerError", "Query", "Answer", "Annotator", "record_to_json",
           "record_from_json"]

SCHEMA_VERSION = 1

# Migrations from version v to v + 1, applied in order by Ledger.open (none yet: v1 is the first).
MIGRATIONS: dict[int, Sequence[str]] = {}

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE annotators (
    name TEXT PRIMARY KEY,
    token TEXT NOT NULL UNIQUE,
    cost TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE queries (
    id INTEGER PRIMARY KEY,
    round INTEGER NOT NULL UNIQUE,
    example_id TEXT,
    latency REAL NOT NULL,
    cost REAL NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'answered', 'skipped')),
    created REAL NOT NULL
);
CREATE TABLE answers (
    query_id INTEGER PRIMARY KEY REFERENCES queries(id),
    label INTEGER NOT NULL,
    annotator TEXT NOT NULL,
    cost TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE leases (
    query_id INTEGER PRIMARY KEY REFERENCES queries(id),
    annotator TEXT NOT NULL,
    cost TEXT NOT NULL,
    expires REAL NOT NULL
);
CREATE TABLE records (round INTEGER PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE checkpoints (position INTEGER PRIMARY KEY, state BLOB NOT NULL, created REAL NOT NULL);
CREATE TABLE events (id INTEGER PRIMARY KEY, kind TEXT NOT NULL, detail TEXT NOT NULL, created REAL NOT NULL);
CREATE INDEX queries_status ON queries(status, latency);
"""


class LedgerError(BudgetsftError):
    """A ledger file is missing, corrupt, of an unknown schema, or was asked something inconsistent."""


@dataclass(frozen=True)
class Query:
    """A label the gate decided to buy: ``round`` of the stream, with its latency and nominal cost."""

    id: int
    round: int
    example_id: str | None
    latency: float
    cost: float
    status: str


@dataclass(frozen=True)
class Answer:
    """A label received for a query, with who gave it and what it cost."""

    query_id: int
    round: int
    label: int
    annotator: str
    cost: float


@dataclass(frozen=True)
class Annotator:
    name: str
    token: str
    cost: float


def record_to_json(rec: Record) -> str:
    # json writes floats with repr(), which round-trips exactly; NaN is kept as NaN.
    return json.dumps({name: getattr(rec, name) for name in RECORD_FIELDS})


def record_from_json(text: str) -> Record:
    return Record(**json.loads(text))


def _exact(x) -> Fraction:
    # The same exact value Budget uses for a float price (Fraction of the float itself).
    return Fraction(float(x))


class Ledger:
    """An open session ledger (one SQLite connection; open one Ledger per thread).

    Use :meth:`create` for a new file and :meth:`open` for an existing one.
    """

    def __init__(self, path: str | Path, conn: sqlite3.Connection) -> None:
        self.path = Path(path)
        self._conn = conn

    # ---------------------------------------------------------------- opening
    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        conn = sqlite3.connect(str(path), timeout=30.0, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")  # a committed label survives power loss, not only kill -9
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=30000")
        return conn

    @classmethod
    def create(cls, path: str | Path, config: dict, *, budget_total: float, budget_unit: str,
               oracle: dict | None = None) -> Ledger:
        """Create a new ledger file for a session; refuses to overwrite an existing file."""
        path = Path(path)
        if path.exists():
            raise LedgerError(f"{path}: a session file already exists; resume it with `budgetsft resume {path}` "
                              f"or choose another path.")
        if not path.parent.is_dir():
            raise LedgerError(f"{path}: folder {path.parent} does not exist.")
        conn = cls._connect(path)
        ledger = cls(path, conn)
        with ledger.transaction():
            for stmt in _SCHEMA.strip().split(";"):
                if stmt.strip():
                    conn.execute(stmt)
            meta = {
                "schema_version": str(SCHEMA_VERSION),
                "config": json.dumps(config, sort_keys=True),
                "budget_total": repr(float(budget_total)),
                "budget_unit": budget_unit,
                "oracle": json.dumps(oracle or {"name": "dataset"}, sort_keys=True),
                "status": "created",
                "spent": "0",
                "created": repr(time.time()),
            }
            conn.executemany("INSERT INTO meta VALUES (?, ?)", sorted(meta.items()))
        return ledger

    @classmethod
    def open(cls, path: str | Path) -> Ledger:
        """Open an existing ledger, migrating an older schema; a newer one is refused."""
        path = Path(path)
        if not path.is_file():
            raise LedgerError(f"{path}: no such session file.")
        try:
            conn = cls._connect(path)
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"{path}: not a budgetsft session ledger ({exc}).") from exc
        if row is None:
            raise LedgerError(f"{path}: not a budgetsft session ledger (no schema version).")
        version = int(row[0])
        if version > SCHEMA_VERSION:
            conn.close()
            raise LedgerError(f"{path}: ledger schema version {version} is newer than this budgetsft "
                              f"understands ({SCHEMA_VERSION}); upgrade budgetsft.")
        ledger = cls(path, conn)
        while version < SCHEMA_VERSION:
            steps = MIGRATIONS.get(version)
            if steps is None:
                raise LedgerError(f"{path}: no migration from ledger schema version {version}.")
            with ledger.transaction():
                for stmt in steps:
                    conn.execute(stmt)
                version += 1
                conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(version),))
        return ledger

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` … ``COMMIT`` (rolled back on error): one writer at a time."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    # ---------------------------------------------------------------- meta
    def meta(self, key: str, default: str | None = None) -> str | None:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else row[0]

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction() as c:
            c.execute("INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                      (key, value))

    @property
    def config(self) -> dict:
        return json.loads(self.meta("config"))

    @property
    def oracle(self) -> dict:
        return json.loads(self.meta("oracle", '{"name": "dataset"}'))

    @property
    def budget_total(self) -> float:
        return float(self.meta("budget_total"))

    @property
    def budget_unit(self) -> str:
        return self.meta("budget_unit")

    @property
    def status(self) -> str:
        return self.meta("status")

    def log(self, kind: str, detail: dict, conn: sqlite3.Connection | None = None) -> None:
        (conn or self._conn).execute("INSERT INTO events (kind, detail, created) VALUES (?, ?, ?)",
                                     (kind, json.dumps(detail, sort_keys=True), time.time()))

    # ---------------------------------------------------------------- money
    def _spent_exact(self, conn: sqlite3.Connection) -> Fraction:
        # A running exact total (a fraction "p/q"), updated in the transaction of every charge and refund.
        return Fraction(conn.execute("SELECT value FROM meta WHERE key = 'spent'").fetchone()[0])

    def _add_spent(self, conn: sqlite3.Connection, amount: Fraction) -> None:
        total = self._spent_exact(conn) + amount
        conn.execute("UPDATE meta SET value = ? WHERE key = 'spent'", (str(total),))

    def _price(self, cost) -> Fraction:
        return Fraction(1) if self.budget_unit == "labels" else _exact(cost)

    def spent(self) -> float:
        return float(self._spent_exact(self._conn))

    def remaining(self) -> float:
        return float(_exact(self.budget_total) - self._spent_exact(self._conn))

    def labels_by_annotator(self) -> dict[str, dict]:
        out: dict[str, dict] = {}
        for name, cost in self._conn.execute("SELECT annotator, cost FROM answers ORDER BY query_id"):
            row = out.setdefault(name, {"labels": 0, "spent": 0.0})
            row["labels"] += 1
            row["spent"] += float(self._price(cost))
        return out

    # ---------------------------------------------------------------- queries and answers
    def add_queries(self, items: Sequence[tuple[int, str | None, float, float]]) -> dict[int, Query]:
        """Record the gate's queries ``(round, example_id, latency, cost)`` in one transaction; rows by round.

        Idempotent: a replayed query returns the row already stored.
        """
        rows = []
        for rnd, example_id, latency, cost in items:
            lat = float(latency) if math.isfinite(latency) else (1e308 if latency > 0 else -1e308)
            rows.append((int(rnd), example_id, lat, float(cost), time.time()))
        if rows and any(self.query_for_round(r[0]) is None for r in rows):
            with self.transaction() as c:
                c.executemany("INSERT OR IGNORE INTO queries (round, example_id, latency, cost, created) "
                              "VALUES (?, ?, ?, ?, ?)", rows)
        return {r[0]: self.query_for_round(r[0]) for r in rows}

    def _query(self, row) -> Query | None:
        return None if row is None else Query(*row)

    def query_for_round(self, round: int) -> Query | None:
        return self._query(self._conn.execute(
            "SELECT id, round, example_id, latency, cost, status FROM queries WHERE round = ?", (int(round),)
        ).fetchone())

    def query(self, query_id: int) -> Query | None:
        return self._query(self._conn.execute(
            "SELECT id, round, example_id, latency, cost, status FROM queries WHERE id = ?", (int(query_id),)
        ).fetchone())

    def pending(self) -> list[Query]:
        """Unanswered queries, largest latency first (ties: earliest round)."""
        rows = self._conn.execute("SELECT id, round, example_id, latency, cost, status FROM queries "
                                  "WHERE status = 'pending' ORDER BY latency DESC, round").fetchall()
        return [Query(*r) for r in rows]

    def answer_for_round(self, round: int) -> Answer | None:
        row = self._conn.execute(
            "SELECT a.query_id, q.round, a.label, a.annotator, a.cost FROM answers a JOIN queries q "
            "ON q.id = a.query_id WHERE q.round = ?", (int(round),)).fetchone()
        return None if row is None else Answer(row[0], row[1], row[2], row[3], float(row[4]))

    def answers(self) -> list[Answer]:
        rows = self._conn.execute("SELECT a.query_id, q.round, a.label, a.annotator, a.cost FROM answers a "
                                  "JOIN queries q ON q.id = a.query_id ORDER BY q.round").fetchall()
        return [Answer(r[0], r[1], r[2], r[3], float(r[4])) for r in rows]

    def record_answer(self, query_id: int, label: int, annotator: str, cost: float, *,
                      n_candidates: int | None = None) -> bool:
        """Commit an answer and charge it; returns False (charging nothing) if the query was already answered.

        Raises :class:`LedgerError` for an unknown or skipped query or a label
        out of range, and :class:`BudgetExhaustedError` if the charge does not
        fit the budget (counting other annotators' live leases as reserved).
        """
        with self.transaction() as c:
            row = c.execute("SELECT status, round FROM queries WHERE id = ?", (int(query_id),)).fetchone()
            if row is None:
                raise LedgerError(f"{self.path}: no query with id {query_id}.")
            if row[0] == "answered":
                self.log("duplicate_answer", {"query_id": int(query_id), "annotator": annotator, "label": label}, c)
                return False
            if row[0] == "skipped":
                raise LedgerError(f"{self.path}: query {query_id} (round {row[1]}) was skipped; it takes no answer.")
            if isinstance(label, bool) or not isinstance(label, int) or label < 0 or (
                    n_candidates is not None and label >= n_candidates):
                hi = f" in [0, {n_candidates - 1}]" if n_candidates is not None else " >= 0"
                raise LedgerError(f"query {query_id}: 'label' must be an int{hi}. Got {label!r}.")
            price = self._price(cost)
            reserved = self._reserved(c, exclude_query=int(query_id))
            total = _exact(self.budget_total)
            spent = self._spent_exact(c)
            if spent + reserved + price > total:
                raise BudgetExhaustedError(
                    f"{self.path}: an answer of cost {float(price)} would exceed the budget "
                    f"({float(spent)} of {float(total)} {self.budget_unit} spent, {float(reserved)} reserved).")
            c.execute("INSERT INTO answers VALUES (?, ?, ?, ?, ?)",
                      (int(query_id), int(label), annotator, repr(float(cost)), time.time()))
            self._add_spent(c, price)
            c.execute("UPDATE queries SET status = 'answered' WHERE id = ?", (int(query_id),))
            c.execute("DELETE FROM leases WHERE query_id = ?", (int(query_id),))
        return True

    def skip(self, query_id: int, annotator: str) -> None:
        """Mark a pending query skipped: it is never charged and the round counts as unqueried."""
        with self.transaction() as c:
            c.execute("UPDATE queries SET status = 'skipped' WHERE id = ? AND status = 'pending'", (int(query_id),))
            c.execute("DELETE FROM leases WHERE query_id = ?", (int(query_id),))
            self.log("skip", {"query_id": int(query_id), "annotator": annotator}, c)

    def undo_answer(self, query_id: int) -> None:
        """Withdraw an answer (refunding it) and put its query back to pending; logged in ``events``."""
        with self.transaction() as c:
            row = c.execute("SELECT label, annotator, cost FROM answers WHERE query_id = ?",
                            (int(query_id),)).fetchone()
            if row is None:
                raise LedgerError(f"{self.path}: query {query_id} has no answer to undo.")
            c.execute("DELETE FROM answers WHERE query_id = ?", (int(query_id),))
            self._add_spent(c, -self._price(row[2]))
            c.execute("UPDATE queries SET status = 'pending' WHERE id = ?", (int(query_id),))
            self.log("undo", {"query_id": int(query_id), "label": row[0], "annotator": row[1], "cost": row[2]}, c)

    # ---------------------------------------------------------------- annotators and leases
    def add_annotator(self, name: str, cost: float = 1.0, token: str | None = None) -> Annotator:
        if not name or not isinstance(name, str):
            raise ConfigError(f"An annotator needs a non-empty name. Got {name!r}.")
        if not (isinstance(cost, int | float) and math.isfinite(cost) and cost > 0):
            raise ConfigError(f"The 'cost' of annotator {name!r} must be a finite number > 0. Got {cost!r}.")
        token = token or secrets.token_urlsafe(24)
        with self.transaction() as c:
            if c.execute("SELECT 1 FROM annotators WHERE name = ?", (name,)).fetchone():
                raise ConfigError(f"{self.path}: annotator {name!r} already exists.")
            c.execute("INSERT INTO annotators VALUES (?, ?, ?, ?)", (name, token, repr(float(cost)), time.time()))
        return Annotator(name, token, float(cost))

    def annotators(self) -> list[Annotator]:
        rows = self._conn.execute("SELECT name, token, cost FROM annotators ORDER BY name").fetchall()
        return [Annotator(n, t, float(c)) for n, t, c in rows]

    def annotator_by_token(self, token: str | None) -> Annotator | None:
        if not token:
            return None
        for a in self.annotators():  # compare in constant time, token by token
            if secrets.compare_digest(a.token, token):
                return a
        return None

    def _reserved(self, conn: sqlite3.Connection, exclude_query: int | None = None,
                  exclude_annotator: str | None = None) -> Fraction:
        now = time.time()
        total = Fraction(0)
        for qid, who, cost in conn.execute("SELECT query_id, annotator, cost FROM leases WHERE expires > ?", (now,)):
            if qid == exclude_query or who == exclude_annotator:
                continue
            total += self._price(cost)
        return total

    def lease_next(self, annotator: Annotator, ttl: float = 300.0) -> Query | None:
        """Hand ``annotator`` the pending query of largest latency that nobody else holds, for ``ttl`` seconds.

        An annotator holds at most one lease (asking again renews it). Returns
        None when nothing is pending or free; raises BudgetExhaustedError when
        the budget left (after others' leases) cannot pay this annotator's rate.
        """
        now = time.time()
        with self.transaction() as c:
            mine = c.execute("SELECT l.query_id FROM leases l JOIN queries q ON q.id = l.query_id "
                             "WHERE l.annotator = ? AND l.expires > ? AND q.status = 'pending'",
                             (annotator.name, now)).fetchone()
            if mine is not None:
                c.execute("UPDATE leases SET expires = ? WHERE query_id = ?", (now + ttl, mine[0]))
                qid = mine[0]
            else:
                price = self._price(annotator.cost)
                left = _exact(self.budget_total) - self._spent_exact(c) - self._reserved(
                    c, exclude_annotator=annotator.name)
                row = c.execute("SELECT q.id FROM queries q LEFT JOIN leases l ON l.query_id = q.id "
                                "AND l.expires > ? WHERE q.status = 'pending' AND l.query_id IS NULL "
                                "ORDER BY q.latency DESC, q.round LIMIT 1", (now,)).fetchone()
                if row is None:
                    return None
                if price > left:
                    raise BudgetExhaustedError(
                        f"the budget left ({float(left)} {self.budget_unit}) cannot pay annotator "
                        f"{annotator.name!r} at {annotator.cost} per label.")
                qid = row[0]
                c.execute("DELETE FROM leases WHERE annotator = ? OR query_id = ?", (annotator.name, qid))
                c.execute("INSERT INTO leases VALUES (?, ?, ?, ?)", (qid, annotator.name, repr(annotator.cost),
                                                                      now + ttl))
        return self.query(qid)

    def skip_unaffordable(self) -> int:
        """Skip the pending, unleased queries that no annotator can be paid for any more; returns how many.

        In a cost-unit budget an annotator's rate may exceed what is left; the
        items nobody can afford would otherwise stay pending for good. Nothing
        is charged for a skipped query and its round counts as unqueried.
        """
        prices = [self._price(a.cost) for a in self.annotators()]
        if not prices:
            return 0
        now = time.time()
        with self.transaction() as c:
            left = _exact(self.budget_total) - self._spent_exact(c) - self._reserved(c)
            if left >= min(prices):
                return 0
            ids = [r[0] for r in c.execute(
                "SELECT q.id FROM queries q LEFT JOIN leases l ON l.query_id = q.id AND l.expires > ? "
                "WHERE q.status = 'pending' AND l.query_id IS NULL", (now,))]
            for qid in ids:
                c.execute("UPDATE queries SET status = 'skipped' WHERE id = ?", (qid,))
                self.log("skip", {"query_id": qid, "annotator": None, "reason": "no annotator can be paid"}, c)
        return len(ids)

    def lease_holder(self, query_id: int) -> str | None:
        row = self._conn.execute("SELECT annotator FROM leases WHERE query_id = ? AND expires > ?",
                                 (int(query_id), time.time())).fetchone()
        return None if row is None else row[0]

    # ---------------------------------------------------------------- records and checkpoints
    def save_checkpoint(self, position: int, state: bytes, records: Sequence[Record]) -> None:
        """Store the records played since the last checkpoint and the game state after ``position`` rounds."""
        with self.transaction() as c:
            c.executemany("INSERT OR REPLACE INTO records VALUES (?, ?)",
                          [(r.round, record_to_json(r)) for r in records])
            c.execute("INSERT OR REPLACE INTO checkpoints VALUES (?, ?, ?)", (int(position), state, time.time()))
            # Keep the newest few: the last to resume from, earlier ones to undo into. (Any checkpoint is a
            # correct place to replay from, the start included; older ones only make an undo replay shorter.)
            c.execute("DELETE FROM checkpoints WHERE position NOT IN "
                      "(SELECT position FROM checkpoints ORDER BY position DESC LIMIT 4)")

    def checkpoints(self) -> list[int]:
        return [r[0] for r in self._conn.execute("SELECT position FROM checkpoints ORDER BY position")]

    def load_checkpoint(self, position: int | None = None) -> tuple[int, bytes] | None:
        if position is None:
            row = self._conn.execute("SELECT position, state FROM checkpoints ORDER BY position DESC "
                                     "LIMIT 1").fetchone()
        else:
            row = self._conn.execute("SELECT position, state FROM checkpoints WHERE position = ?",
                                     (int(position),)).fetchone()
        return None if row is None else (int(row[0]), bytes(row[1]))

    def rollback_to(self, position: int) -> None:
        """Forget records and checkpoints after ``position`` (answers are kept: replay reuses them)."""
        with self.transaction() as c:
            c.execute("DELETE FROM records WHERE round > ?", (int(position),))
            c.execute("DELETE FROM checkpoints WHERE position > ?", (int(position),))

    def records(self) -> list[Record]:
        return [record_from_json(d) for (d,) in self._conn.execute("SELECT data FROM records ORDER BY round")]

    def n_records(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM records").fetchone()[0])
