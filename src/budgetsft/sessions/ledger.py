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
  refused with a message naming the file;
- the file is checked when opened: its tables, its settings, and the money
  spent against the sum of its answers; any fault is a :class:`LedgerError`
  naming the file, never a raw SQLite traceback;
- tokens are stored as SHA-256 hashes and the file is created readable by its
  owner only (0600);
- every acknowledged answer is counted twice: in the file and in a small
  ``<file>-acks`` companion, so a ledger that lost acknowledged answers (its
  ``-wal`` file deleted after a crash, or an older copy restored) is refused
  on open instead of buying those labels again.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import math
import os
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

__all__ = ["SCHEMA_VERSION", "Ledger", "LedgerError", "LedgerBusyError", "LedgerReadOnlyError", "AnnotatorRevokedError",
           "Query", "Answer",
           "Annotator", "record_to_json", "record_from_json", "hash_token", "example_digest"]

SCHEMA_VERSION = 5

# Migrations from version v to v + 1, applied in order by Ledger.open.
MIGRATIONS: dict[int, Sequence[str]] = {
    # v2: tokens hashed, annotators revocable, example digests on queries, an answer counter, and checkpoints
    # stored as data. The v1 checkpoints were pickles: they are dropped unread, with the records after them,
    # and the session replays from its start reusing every answer (nothing is asked or paid again).
    1: [
        "ALTER TABLE annotators RENAME COLUMN token TO token_hash",
        "UPDATE annotators SET token_hash = bsft_token_hash(token_hash)",
        "ALTER TABLE annotators ADD COLUMN revoked REAL",
        "ALTER TABLE queries ADD COLUMN example_digest TEXT",
        "DELETE FROM checkpoints",
        "DELETE FROM records",
        "UPDATE meta SET value = 'stopped' WHERE key = 'status' AND value IN ('finished', 'playing', 'waiting')",
        "INSERT OR REPLACE INTO meta SELECT 'acks', CAST(COUNT(*) AS TEXT) FROM answers",
    ],
    # v3: an annotator may pass on an item (the web page's skip button); it goes to the others.
    2: [
        "CREATE TABLE passes (query_id INTEGER NOT NULL REFERENCES queries(id), annotator TEXT NOT NULL, "
        "created REAL NOT NULL, PRIMARY KEY (query_id, annotator))",
    ],
    # v4: unlabelled pools. A query says why it was made (the gate's pick, or an audit pick drawn uniformly at
    # random) and what the model predicted before the label arrived (numbers that need no gold).
    3: [
        "ALTER TABLE queries ADD COLUMN purpose TEXT NOT NULL DEFAULT 'gate'",
        "ALTER TABLE queries ADD COLUMN prediction INTEGER",
        "ALTER TABLE queries ADD COLUMN applied_at INTEGER",
    ],
    # v5: LLF's default spending rule became the dual price. A session made before keeps the rule it played
    # (the power schedule), so a replay buys what it bought; sessions made since store the rule they play.
    4: [
        "UPDATE meta SET value = json_set(value, '$.gate.schedule', 'power') WHERE key = 'config' "
        "AND json_valid(value) AND json_extract(value, '$.gate.name') = 'llf' "
        "AND json_type(value, '$.gate.schedule') IS NULL",
    ],
}

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE annotators (
    name TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,
    cost TEXT NOT NULL,
    created REAL NOT NULL,
    revoked REAL
);
CREATE TABLE queries (
    id INTEGER PRIMARY KEY,
    round INTEGER NOT NULL UNIQUE,
    example_id TEXT,
    latency REAL NOT NULL,
    cost REAL NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'answered', 'skipped')),
    created REAL NOT NULL,
    example_digest TEXT,
    purpose TEXT NOT NULL DEFAULT 'gate',
    prediction INTEGER,
    applied_at INTEGER
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
CREATE TABLE passes (
    query_id INTEGER NOT NULL REFERENCES queries(id),
    annotator TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (query_id, annotator)
);
CREATE TABLE records (round INTEGER PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE checkpoints (position INTEGER PRIMARY KEY, state BLOB NOT NULL, created REAL NOT NULL);
CREATE TABLE events (id INTEGER PRIMARY KEY, kind TEXT NOT NULL, detail TEXT NOT NULL, created REAL NOT NULL);
CREATE INDEX queries_status ON queries(status, latency);
"""

# Tables every ledger holds, and the values its meta rows may take.
_TABLES = ("meta", "annotators", "queries", "answers", "leases", "passes", "records", "checkpoints", "events")
_TABLE_SINCE = {"passes": 3}  # tables a ledger holds from this schema version on (older ones gain them)
_STATUSES = ("created", "playing", "waiting", "stopped", "finished")
_MAX_ID = 2**63  # SQLite integers are signed 64-bit


class LedgerError(BudgetsftError):
    """A ledger file is missing, corrupt, of an unknown schema, or was asked something inconsistent."""


class LedgerBusyError(LedgerError):
    """Another connection held the ledger's write lock for longer than the busy timeout."""


class AnnotatorRevokedError(LedgerError):
    """The token a request was authorised with was revoked or replaced before its write."""


class LedgerReadOnlyError(LedgerError):
    """The ledger file (or its folder) cannot be written."""


@dataclass(frozen=True)
class Query:
    """A label the gate decided to buy: ``round`` of the stream, with its latency and nominal cost.

    ``round`` is the 1-based position in the stream (in a pool session, in the pool). ``purpose`` is
    ``gate`` (the gate chose it) or ``audit`` (drawn uniformly at random, to estimate accuracy without
    bias); ``prediction`` is the model's answer before the label arrived (None where not recorded).
    """

    id: int
    round: int
    example_id: str | None
    latency: float
    cost: float
    status: str
    example_digest: str | None = None
    purpose: str = "gate"
    prediction: int | None = None
    applied_at: int | None = None  # the round before which the game learnt its answer (or its skip)


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
    """An annotator: ``token`` is known only when the annotator was just created (the ledger keeps a hash)."""

    name: str
    token: str | None
    cost: float
    created: float | None = None
    revoked: float | None = None
    token_hash: str | None = None  # set by annotator_by_token: the token the request was authorised with


def example_digest(ex) -> str:
    """sha256 of everything of an example that a label depends on: id, prompt, candidates, answer, cost."""
    blob = json.dumps([ex.id, ex.prompt, list(ex.candidates), ex.answer, ex.cost], ensure_ascii=True)
    return hashlib.sha256(blob.encode("ascii")).hexdigest()


def hash_token(token: str) -> str:
    """What the ledger stores of a token: ``"sha256:" + hex digest`` of its UTF-8 bytes."""
    return "sha256:" + hashlib.sha256(str(token).encode("utf-8", "surrogatepass")).hexdigest()


def record_to_json(rec: Record) -> str:
    # json writes floats with repr(), which round-trips exactly; NaN is kept as NaN.
    return json.dumps({name: getattr(rec, name) for name in RECORD_FIELDS})


_RECORD_TYPES = {"round": int, "prediction": int, "gold": int, "alternative": int, "queried": bool, "cost": float,
                 "budget_left": float, "latency": float, "margin": float, "hinge_loss": float, "mistake": bool,
                 "regret": float, "n_candidates": int}


def record_from_json(text: str) -> Record:
    """A stored record; anything but the fields of a :class:`Record`, with their types, is a ValueError."""
    obj = json.loads(text)
    if not isinstance(obj, dict) or set(obj) - set(RECORD_FIELDS) or set(_RECORD_TYPES) - set(obj):
        raise ValueError(f"not a record: keys {sorted(obj) if isinstance(obj, dict) else type(obj).__name__}")
    for key, kind in _RECORD_TYPES.items():
        value = obj[key]
        ok = isinstance(value, bool) if kind is bool else (
            isinstance(value, int | float) and not isinstance(value, bool) if kind is float else
            isinstance(value, int) and not isinstance(value, bool))
        if not ok:
            raise ValueError(f"record field {key!r} must be {kind.__name__}; got {value!r}")
    if obj.get("id") is not None and not isinstance(obj["id"], str):
        raise ValueError(f"record field 'id' must be a string; got {obj['id']!r}")
    return Record(**obj)


def _exact(x) -> Fraction:
    # The same exact value Budget uses for a float price (Fraction of the float itself).
    return Fraction(float(x))


def _valid_id(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and -_MAX_ID <= x < _MAX_ID


def _check_cost(cost, query_id) -> float:
    if isinstance(cost, bool) or not isinstance(cost, int | float) or not math.isfinite(cost) or cost < 0:
        raise LedgerError(f"query {query_id}: 'cost' must be a finite number >= 0. Got {cost!r}.")
    return float(cost)


def _fault(path: Path, timeout: float, exc: sqlite3.Error) -> LedgerError:
    """A clear error naming the file for an SQLite failure (never a raw traceback)."""
    msg = str(exc)
    if isinstance(exc, sqlite3.OperationalError) and ("locked" in msg or "busy" in msg):
        return LedgerBusyError(f"{path}: the ledger is busy: another process held its write lock for more than "
                               f"{timeout:g} s ({msg}); try again shortly.")
    if "readonly" in msg or "read-only" in msg or "unable to open" in msg:
        return LedgerReadOnlyError(f"{path}: the ledger cannot be written ({msg}); check the permissions of the "
                                   f"file and of its folder {path.parent}.")
    return LedgerError(f"{path}: the ledger file is damaged or not a budgetsft ledger ({type(exc).__name__}: {msg}).")


def _translated(method):
    """Turn SQLite errors raised by a Ledger method into LedgerError naming the file."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as exc:
            raise _fault(self.path, self.timeout, exc) from exc

    return wrapper


class Ledger:
    """An open session ledger (one SQLite connection; open one Ledger per thread).

    Use :meth:`create` for a new file and :meth:`open` for an existing one.

    Parameters
    ----------
    path : str or Path
    conn : sqlite3.Connection
    timeout : float, default=30.0
        Seconds a write waits for another writer's lock before :class:`LedgerBusyError`.
    """

    def __init__(self, path: str | Path, conn: sqlite3.Connection, timeout: float = 30.0) -> None:
        self.path = Path(path)
        self.timeout = float(timeout)
        self._conn = conn
        self._unit: str | None = None

    # ---------------------------------------------------------------- opening
    @staticmethod
    def _connect(path: Path, timeout: float = 30.0) -> sqlite3.Connection:
        conn = sqlite3.connect(str(path), timeout=timeout, isolation_level=None, check_same_thread=False)
        conn.create_function("bsft_token_hash", 1, hash_token, deterministic=True)
        conn.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")  # a committed label survives power loss, not only kill -9
        conn.execute("PRAGMA foreign_keys=ON")
        return conn

    @property
    def acks_path(self) -> Path:
        """The companion file counting acknowledged answers (beside the resolved ledger path)."""
        return Path(os.path.realpath(self.path) + "-acks")

    @classmethod
    def create(cls, path: str | Path, config: dict, *, budget_total: float, budget_unit: str,
               oracle: dict | None = None, timeout: float = 30.0) -> Ledger:
        """Create a new ledger file (mode 0600) for a session; refuses to overwrite an existing file."""
        path = Path(path)
        if path.exists() or path.is_symlink():
            raise LedgerError(f"{path}: a session file already exists; resume it with `budgetsft resume {path}` "
                              f"or choose another path.")
        if not path.parent.is_dir():
            raise LedgerError(f"{path}: folder {path.parent} does not exist.")
        try:  # created by us, empty, owner-only: tokens, labels and money are nobody else's business
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except OSError as exc:
            raise LedgerError(f"{path}: cannot create the session file ({exc}).") from exc
        conn = cls._connect(path, timeout)
        ledger = cls(path, conn, timeout)
        try:
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
                    "acks": "0",
                    "ledger_id": secrets.token_hex(8),
                    "created": repr(time.time()),
                }
                conn.executemany("INSERT INTO meta VALUES (?, ?)", sorted(meta.items()))
        except sqlite3.Error as exc:
            conn.close()
            raise _fault(path, timeout, exc) from exc
        ledger._write_acks(0, force=True)  # a stale companion of an earlier file at this path is replaced
        return ledger

    @classmethod
    def open(cls, path: str | Path, *, timeout: float = 30.0) -> Ledger:
        """Open an existing ledger, migrating an older schema and checking the file; a newer one is refused."""
        path = Path(path)
        if not path.is_file():
            raise LedgerError(f"{path}: no such session file.")
        conn = None
        try:
            conn = cls._connect(path, timeout)
            ledger = cls(path, conn, timeout)
            ledger._open_checks()
            return ledger
        except sqlite3.Error as exc:
            if conn is not None:
                conn.close()
            if isinstance(exc, sqlite3.DatabaseError) and "file is not a database" in str(exc):
                raise LedgerError(f"{path}: not a budgetsft session ledger ({exc}).") from exc
            raise _fault(path, timeout, exc) from exc
        except BaseException:
            if conn is not None:
                conn.close()
            raise

    def _open_checks(self) -> None:
        path, conn = self.path, self._conn
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "meta" not in tables:
            raise LedgerError(f"{path}: not a budgetsft session ledger (no meta table).")
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None:
            raise LedgerError(f"{path}: not a budgetsft session ledger (no schema version).")
        try:
            version = int(row[0])
        except (TypeError, ValueError):
            raise LedgerError(f"{path}: the ledger's 'schema_version' must be an integer. Got {row[0]!r}.") from None
        if version > SCHEMA_VERSION:
            raise LedgerError(f"{path}: ledger schema version {version} is newer than this budgetsft "
                              f"understands ({SCHEMA_VERSION}); upgrade budgetsft.")
        if version < 1:
            raise LedgerError(f"{path}: ledger schema version {version} is not one budgetsft ever wrote.")
        missing = [t for t in _TABLES if t not in tables and _TABLE_SINCE.get(t, 1) <= version]
        if missing:
            raise LedgerError(f"{path}: the ledger has no {', '.join(missing)} table(s): the file is damaged.")
        check = conn.execute("PRAGMA quick_check").fetchone()
        if check is None or check[0] != "ok":
            raise LedgerError(f"{path}: the ledger file is damaged (SQLite integrity check: {check and check[0]}).")
        while version < SCHEMA_VERSION:
            steps = MIGRATIONS.get(version)
            if steps is None:
                raise LedgerError(f"{path}: no migration from ledger schema version {version}.")
            with self.transaction():
                for stmt in steps:
                    conn.execute(stmt)
                if version == 1:
                    conn.execute("INSERT OR IGNORE INTO meta VALUES ('ledger_id', ?)", (secrets.token_hex(8),))
                version += 1
                conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(version),))
        self._check_meta()
        self._check_books()
        self._check_acks()

    def _check_meta(self) -> None:
        path = self.path
        meta = dict(self._conn.execute("SELECT key, value FROM meta").fetchall())
        for key in ("config", "budget_total", "budget_unit", "oracle", "status", "spent"):
            if key not in meta:
                raise LedgerError(f"{path}: the ledger has no {key!r} setting: the file is damaged.")

        def bad(key: str, what: str) -> LedgerError:
            return LedgerError(f"{path}: the ledger's {key!r} must be {what}. Got {meta[key]!r}.")

        for key in ("config", "oracle"):
            try:
                value = json.loads(meta[key])
            except (TypeError, ValueError, RecursionError):
                raise bad(key, "a JSON object") from None
            if not isinstance(value, dict):
                raise bad(key, "a JSON object")
        try:
            total = float(meta["budget_total"])
        except (TypeError, ValueError):
            raise bad("budget_total", "a finite number >= 0") from None
        if not (math.isfinite(total) and total >= 0):
            raise bad("budget_total", "a finite number >= 0")
        if meta["budget_unit"] not in ("labels", "cost"):
            raise bad("budget_unit", "'labels' or 'cost'")
        if meta["status"] not in _STATUSES:
            raise bad("status", "one of " + ", ".join(_STATUSES))
        for key in ("spent", "acks"):
            if key in meta:
                try:
                    value = Fraction(meta[key])
                except (TypeError, ValueError, ZeroDivisionError):
                    raise bad(key, "a number") from None
                if value < 0 or (key == "acks" and value.denominator != 1):
                    raise bad(key, "a number >= 0" if key == "spent" else "a whole number >= 0")
        self._unit = meta["budget_unit"]

    def _check_books(self) -> None:
        """The running total must equal the sum of the answers' prices (a flipped byte is not silent)."""
        spent = self._spent_exact(self._conn)
        total = Fraction(0)
        for qid, cost in self._conn.execute("SELECT query_id, cost FROM answers"):
            try:
                price = _exact(cost)  # read whatever the unit: a label budget records the price too
                if not (math.isfinite(price) and price >= 0):
                    raise ValueError(cost)
                total += self._price(cost)
            except (TypeError, ValueError, OverflowError):
                raise LedgerError(f"{self.path}: answer to query {qid} has an unreadable cost {cost!r}: the file "
                                  f"is damaged.") from None
        if spent != total:
            raise LedgerError(f"{self.path}: the ledger's 'spent' ({float(spent):g} {self.budget_unit}) differs "
                              f"from the sum of its answers' prices ({float(total):g}): the file was altered or "
                              f"is damaged; refusing to go on.")
        if total > _exact(self.budget_total):
            raise LedgerError(f"{self.path}: the answers cost {float(total):g} {self.budget_unit}, more than the "
                              f"budget {self.budget_total:g}: the file was altered.")

    def _read_acks(self) -> tuple[str, int] | None:
        try:
            text = self.acks_path.read_text().split()
        except OSError:
            return None
        if len(text) != 2 or not text[1].isdigit():
            return None
        return text[0], int(text[1])

    def _check_acks(self) -> None:
        """The file must hold every answer it acknowledged (counted in ``<file>-acks`` after each commit)."""
        side = self._read_acks()
        mine = int(self.meta("acks", "0"))
        if side is not None and side[0] == self.meta("ledger_id") and side[1] > mine:
            lost = side[1] - mine
            raise LedgerError(
                f"{self.path}: {lost} acknowledged answer(s) are missing: this file holds {mine} of the {side[1]} "
                f"answers it acknowledged (was its -wal file deleted after a crash, or an older copy restored?). "
                f"Nothing will be bought again silently. Restore the missing -wal file; to go on without those "
                f"answers (their labels would be bought again), delete {self.acks_path}.")
        if side is None or side[0] != self.meta("ledger_id"):
            self._write_acks(mine, force=True)

    def _write_acks(self, n: int, force: bool = False) -> None:
        """Raise the companion counter to ``n`` (best effort: a read-only folder skips it)."""
        ledger_id = self.meta("ledger_id")
        try:
            fd = os.open(self.acks_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:
            return
        with os.fdopen(fd, "r+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            text = fh.read().split()
            current = int(text[1]) if len(text) == 2 and text[0] == ledger_id and text[1].isdigit() else -1
            if force or n > current:
                fh.seek(0)
                fh.truncate()
                fh.write(f"{ledger_id} {n}\n")
                fh.flush()

    def check_writable(self) -> None:
        """Raise :class:`LedgerReadOnlyError` if the file or its folder cannot be written (before any work)."""
        for target, what in ((self.path, "file"), (self.path.parent, "folder")):
            if not os.access(target, os.W_OK):
                raise LedgerReadOnlyError(f"{self.path}: the ledger {what} {target} is read-only; a session needs "
                                          f"to write its answers and checkpoints there.")

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
            try:
                self._conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # the error that got us here is the one to report
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
        if self._unit is None:
            self._unit = self.meta("budget_unit")
        return self._unit

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
        """What a label at an annotator's price ``cost`` charges the budget.

        One rule everywhere: under a budget of labels every label costs 1
        whatever the price (which is recorded, not charged); under a budget of
        cost units it costs its price.
        """
        return Fraction(1) if self.budget_unit == "labels" else _exact(cost)

    def price(self, cost: float) -> float:
        """What a label at price ``cost`` charges this ledger's budget (1 under a budget of labels)."""
        return float(self._price(cost))

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
    def add_queries(self, items: Sequence[tuple], *, budget_check: bool = False) -> dict[int, Query]:
        """Record queries ``(round, example_id, latency, cost[, example_digest[, purpose[, prediction]]])``.

        One transaction; idempotent: a replayed query returns the row already stored; rows by round.
        With ``budget_check`` (pool picks, which reserve their price until answered or skipped), the
        transaction refuses with :class:`BudgetExhaustedError` if the new queries' prices, added to what
        is spent and to what pending queries reserve, would exceed the budget.
        """
        rows = []
        for item in items:
            rnd, example_id, latency, cost = item[:4]
            digest = item[4] if len(item) > 4 else None
            purpose = item[5] if len(item) > 5 else "gate"
            prediction = item[6] if len(item) > 6 else None
            lat = float(latency) if math.isfinite(latency) else (1e308 if latency > 0 else -1e308)
            rows.append((int(rnd), example_id, lat, float(cost), time.time(), digest, str(purpose),
                         None if prediction is None else int(prediction)))
        if rows and any(self.query_for_round(r[0]) is None for r in rows):
            with self.transaction() as c:
                if budget_check:
                    new = [r for r in rows if c.execute("SELECT 1 FROM queries WHERE round = ?",
                                                        (r[0],)).fetchone() is None]
                    need = sum((self._price(r[3]) for r in new), Fraction(0))
                    held = self._pending_reserve(c)
                    total, spent = _exact(self.budget_total), self._spent_exact(c)
                    if spent + held + need > total:
                        raise BudgetExhaustedError(
                            f"{self.path}: {len(new)} new pick(s) of {float(need):g} {self.budget_unit} do not fit "
                            f"the budget ({float(spent):g} spent and {float(held):g} held by pending picks, of "
                            f"{float(total):g}).")
                c.executemany("INSERT OR IGNORE INTO queries (round, example_id, latency, cost, created, "
                              "example_digest, purpose, prediction) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
        return {r[0]: self.query_for_round(r[0]) for r in rows}

    def _pending_reserve(self, conn: sqlite3.Connection) -> Fraction:
        """What pending queries hold of the budget: each its price (1 under a budget of labels)."""
        return sum((self._price(c) for (c,) in conn.execute("SELECT cost FROM queries WHERE status = 'pending'")),
                   Fraction(0))

    def pending_reserve(self) -> float:
        """The budget held by pending queries (:meth:`_pending_reserve`), as a float."""
        return float(self._pending_reserve(self._conn))

    _QUERY_COLUMNS = "id, round, example_id, latency, cost, status, example_digest, purpose, prediction, applied_at"

    def mark_applied(self, query_id: int, position: int) -> None:
        """Log the round before which the game took this query's answer (or skip): a replay takes it there."""
        with self.transaction() as c:
            c.execute("UPDATE queries SET applied_at = ? WHERE id = ? AND applied_at IS NULL",
                      (int(position), int(query_id)))

    def _query(self, row) -> Query | None:
        return None if row is None else Query(*row)

    def query_for_round(self, round: int) -> Query | None:
        if not _valid_id(round):
            return None
        return self._query(self._conn.execute(
            f"SELECT {self._QUERY_COLUMNS} FROM queries WHERE round = ?", (int(round),)).fetchone())

    def query(self, query_id: int) -> Query | None:
        """The query of id ``query_id``; None for an unknown id (or one no query can have)."""
        if not _valid_id(query_id):
            return None
        return self._query(self._conn.execute(
            f"SELECT {self._QUERY_COLUMNS} FROM queries WHERE id = ?", (int(query_id),)).fetchone())

    def queries(self, statuses: Sequence[str] = ("pending", "answered", "skipped")) -> list[Query]:
        marks = ", ".join("?" * len(statuses))
        rows = self._conn.execute(f"SELECT {self._QUERY_COLUMNS} FROM queries WHERE status IN ({marks}) "
                                  f"ORDER BY round", tuple(statuses)).fetchall()
        return [Query(*r) for r in rows]

    def pending(self) -> list[Query]:
        """Unanswered queries, largest latency first (ties: earliest round)."""
        rows = self._conn.execute(f"SELECT {self._QUERY_COLUMNS} FROM queries "
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

    def _record(self, c: sqlite3.Connection, query_id, label, annotator: str, cost,
                n_candidates: int | None) -> bool:
        """Check and charge one answer inside the caller's transaction; False for a duplicate."""
        row = c.execute("SELECT status, round FROM queries WHERE id = ?", (int(query_id),)).fetchone() \
            if _valid_id(query_id) else None
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
        if not isinstance(annotator, str) or not annotator:
            raise LedgerError(f"query {query_id}: 'annotator' must be a non-empty string. Got {annotator!r}.")
        cost = _check_cost(cost, query_id)
        price = self._price(cost)
        reserved = self._reserved(c, exclude_query=int(query_id))
        total = _exact(self.budget_total)
        spent = self._spent_exact(c)
        if spent + reserved + price > total:
            raise BudgetExhaustedError(
                f"{self.path}: an answer of cost {float(price)} would exceed the budget "
                f"({float(spent)} of {float(total)} {self.budget_unit} spent, {float(reserved)} reserved).")
        c.execute("INSERT INTO answers VALUES (?, ?, ?, ?, ?)",
                  (int(query_id), int(label), annotator, repr(cost), time.time()))
        self._add_spent(c, price)
        c.execute("UPDATE meta SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT) WHERE key = 'acks'")
        c.execute("UPDATE queries SET status = 'answered' WHERE id = ?", (int(query_id),))
        c.execute("DELETE FROM leases WHERE query_id = ?", (int(query_id),))
        return True

    def record_answer(self, query_id: int, label: int, annotator: str, cost: float, *,
                      n_candidates: int | None = None, token_hash: str | None = None) -> bool:
        """Commit an answer and charge it; returns False (charging nothing) if the query was already answered.

        Raises :class:`LedgerError` for an unknown or skipped query, a label
        out of range or a cost that is not a finite number >= 0, and
        :class:`BudgetExhaustedError` if the charge does not fit the budget
        (counting other annotators' live leases as reserved). With ``token_hash``
        (a web request), :class:`AnnotatorRevokedError` if that token is no
        longer the annotator's live token, checked in the same transaction.
        """
        with self.transaction() as c:
            self._authorise(c, annotator, token_hash)
            recorded = self._record(c, query_id, label, annotator, cost, n_candidates)
            acks = int(self.meta("acks", "0")) if recorded else None
        if acks is not None:
            self._write_acks(acks)
        return recorded

    def correct_answer(self, query_id: int, label: int, annotator: str, *, n_candidates: int | None = None,
                       token_hash: str | None = None) -> bool:
        """The annotator who answered ``query_id`` replaces their label; returns False if it is the same label.

        Nothing is charged again; the old label stays in the ``events`` history. Only the annotator who gave
        the answer may correct it (:class:`LedgerError` otherwise). What was already learnt from the old
        label in a stream session stays learnt; exports, ``adapt --labels`` and a pool session's next batch
        use the new one.
        """
        if isinstance(label, bool) or not isinstance(label, int) or label < 0 or (
                n_candidates is not None and label >= n_candidates):
            hi = f" in [0, {n_candidates - 1}]" if n_candidates is not None else " >= 0"
            raise LedgerError(f"query {query_id}: 'label' must be an int{hi}. Got {label!r}.")
        with self.transaction() as c:
            self._authorise(c, annotator, token_hash)
            row = c.execute("SELECT label, annotator FROM answers WHERE query_id = ?", (int(query_id),)).fetchone()
            if row is None:
                raise LedgerError(f"{self.path}: query {query_id} has no answer to correct.")
            if row[1] != annotator:
                raise LedgerError(f"{self.path}: query {query_id} was answered by another annotator; only they "
                                  f"can correct it.")
            if row[0] == label:
                return False
            c.execute("UPDATE answers SET label = ? WHERE query_id = ?", (int(label), int(query_id)))
            self.log("correct", {"query_id": int(query_id), "annotator": annotator, "old": row[0], "new": label}, c)
            return True

    def has_passed(self, query_id: int, annotator: str) -> bool:
        """Whether ``annotator`` passed on (skipped) ``query_id``."""
        return self._conn.execute("SELECT 1 FROM passes WHERE query_id = ? AND annotator = ?",
                                  (int(query_id), annotator)).fetchone() is not None

    def record_answers(self, items: Sequence[tuple]) -> tuple[int, int]:
        """Commit answers ``(query_id, label, annotator, cost, n_candidates)`` all or none: one transaction.

        Returns ``(added, duplicates)``. If any answer is refused (budget,
        unknown or skipped query, bad label or cost) nothing is charged.
        """
        added = duplicates = 0
        with self.transaction() as c:
            for query_id, label, annotator, cost, n_candidates in items:
                if self._record(c, query_id, label, annotator, cost, n_candidates):
                    added += 1
                else:
                    duplicates += 1
            acks = int(self.meta("acks", "0"))
        if added:
            self._write_acks(acks)
        return added, duplicates

    def skip(self, query_id: int, annotator: str) -> None:
        """Mark a pending query skipped: it is never charged and the round counts as unqueried."""
        with self.transaction() as c:
            c.execute("UPDATE queries SET status = 'skipped' WHERE id = ? AND status = 'pending'", (int(query_id),))
            c.execute("DELETE FROM leases WHERE query_id = ?", (int(query_id),))
            self.log("skip", {"query_id": int(query_id), "annotator": annotator}, c)

    def pass_query(self, query_id: int, annotator: str, *, token_hash: str | None = None) -> bool:
        """``annotator`` passes on a pending query: it is never handed to them again and goes to the others.

        Their lease on it (if any) is dropped and nothing is charged. When every
        active annotator has passed on it, the query is skipped (its round counts
        as unqueried, as with :meth:`skip`). Returns whether it was skipped.
        Passing twice is harmless; an answered or skipped query is refused.
        """
        with self.transaction() as c:
            self._authorise(c, annotator, token_hash)
            row = c.execute("SELECT status FROM queries WHERE id = ?", (int(query_id),)).fetchone()
            if row is None:
                raise LedgerError(f"{self.path}: unknown query {query_id}.")
            if row[0] != "pending":
                raise LedgerError(f"{self.path}: query {query_id} is {row[0]}; only a pending query can be passed.")
            c.execute("INSERT OR IGNORE INTO passes VALUES (?, ?, ?)", (int(query_id), annotator, time.time()))
            c.execute("DELETE FROM leases WHERE query_id = ? AND annotator = ?", (int(query_id), annotator))
            self.log("pass", {"query_id": int(query_id), "annotator": annotator}, c)
            return int(query_id) in self._skip_passed_by_all(c)

    def passed_all_pending(self, annotator: str) -> bool:
        """Whether ``annotator`` passed on every pending query (so none will be handed to them)."""
        row = self._conn.execute("SELECT COUNT(*) FROM queries q WHERE q.status = 'pending' AND NOT EXISTS "
                                 "(SELECT 1 FROM passes p WHERE p.query_id = q.id AND p.annotator = ?)",
                                 (annotator,)).fetchone()
        return row[0] == 0

    def passes(self) -> dict[str, int]:
        """How many queries each annotator passed on (whoever answered them afterwards, if anyone did)."""
        return dict(self._conn.execute("SELECT annotator, COUNT(*) FROM passes GROUP BY annotator").fetchall())

    def _skip_passed_by_all(self, c: sqlite3.Connection) -> list[int]:
        # Pending queries that every active annotator passed on would wait for ever: skip them (no charge).
        # With no active annotator nobody has passed: the queries wait for the next one to be added.
        ids = [r[0] for r in c.execute(
            "SELECT q.id FROM queries q WHERE q.status = 'pending' "
            "AND EXISTS (SELECT 1 FROM annotators WHERE revoked IS NULL) "
            "AND NOT EXISTS (SELECT 1 FROM annotators a WHERE a.revoked IS NULL AND NOT EXISTS "
            "(SELECT 1 FROM passes p WHERE p.query_id = q.id AND p.annotator = a.name))")]
        for qid in ids:
            c.execute("UPDATE queries SET status = 'skipped' WHERE id = ?", (qid,))
            c.execute("DELETE FROM leases WHERE query_id = ?", (qid,))
            self.log("skip", {"query_id": qid, "annotator": None, "reason": "every annotator passed"}, c)
        return ids

    def undo_answer(self, query_id: int) -> None:
        """Withdraw an answer (refunding it) and put its query back to pending; logged in ``events``."""
        with self.transaction() as c:
            row = c.execute("SELECT label, annotator, cost FROM answers WHERE query_id = ?",
                            (int(query_id),)).fetchone()
            if row is None:
                raise LedgerError(f"{self.path}: query {query_id} has no answer to undo.")
            c.execute("DELETE FROM answers WHERE query_id = ?", (int(query_id),))
            self._add_spent(c, -self._price(row[2]))
            c.execute("UPDATE queries SET status = 'pending', applied_at = NULL WHERE id = ?", (int(query_id),))
            self.log("undo", {"query_id": int(query_id), "label": row[0], "annotator": row[1], "cost": row[2]}, c)

    # ---------------------------------------------------------------- annotators and leases
    def add_annotator(self, name: str, cost: float = 1.0, token: str | None = None) -> Annotator:
        """Create an annotator (or re-create a revoked one) with a fresh token; only its hash is stored.

        The returned :class:`Annotator` is the only place the token is ever shown.
        """
        if not name or not isinstance(name, str):
            raise ConfigError(f"An annotator needs a non-empty name. Got {name!r}.")
        if isinstance(cost, bool) or not (isinstance(cost, int | float) and math.isfinite(cost) and cost > 0):
            raise ConfigError(f"The 'cost' of annotator {name!r} must be a finite number > 0. Got {cost!r}.")
        token = token or secrets.token_urlsafe(24)
        now = time.time()
        with self.transaction() as c:
            row = c.execute("SELECT revoked FROM annotators WHERE name = ?", (name,)).fetchone()
            if row is not None and row[0] is None:
                raise ConfigError(f"{self.path}: annotator {name!r} already exists.")
            c.execute("INSERT OR REPLACE INTO annotators (name, token_hash, cost, created, revoked) "
                      "VALUES (?, ?, ?, ?, NULL)", (name, hash_token(token), repr(float(cost)), now))
            self.log("add_annotator", {"name": name, "cost": float(cost)}, c)
        return Annotator(name, token, float(cost), now)

    def revoke_annotator(self, name: str) -> None:
        """Revoke an annotator's token at once (their answers stay; their lease is dropped)."""
        with self.transaction() as c:
            cur = c.execute("UPDATE annotators SET revoked = ? WHERE name = ? AND revoked IS NULL",
                            (time.time(), name))
            if cur.rowcount == 0:
                known = c.execute("SELECT 1 FROM annotators WHERE name = ?", (name,)).fetchone()
                raise ConfigError(f"{self.path}: annotator {name!r} " + ("is already revoked." if known else
                                  "does not exist."))
            c.execute("DELETE FROM leases WHERE annotator = ?", (name,))
            self.log("revoke_annotator", {"name": name}, c)
            self._skip_passed_by_all(c)  # the others may all have passed on what only ``name`` had not

    def rotate_token(self, name: str, token: str | None = None) -> Annotator:
        """Give an active annotator a fresh token (the old one stops working at once); returned only here.

        The ledger keeps hashes, so a lost token cannot be shown again: this is
        how it is replaced. Answers, price and passes stay the annotator's.
        """
        token = token or secrets.token_urlsafe(24)
        with self.transaction() as c:
            row = c.execute("SELECT cost, created, revoked FROM annotators WHERE name = ?", (name,)).fetchone()
            if row is None or row[2] is not None:
                raise ConfigError(f"{self.path}: annotator {name!r} " + ("is revoked; add them again with "
                                  "--add-annotator." if row else "does not exist."))
            c.execute("UPDATE annotators SET token_hash = ? WHERE name = ?", (hash_token(token), name))
            self.log("rotate_token", {"name": name}, c)
        return Annotator(name, token, float(row[0]), row[1])

    def annotators(self, include_revoked: bool = False) -> list[Annotator]:
        """The annotators (tokens are not known: only their hashes are stored)."""
        where = "" if include_revoked else " WHERE revoked IS NULL"
        rows = self._conn.execute(f"SELECT name, cost, created, revoked FROM annotators{where} "
                                  "ORDER BY name").fetchall()
        return [Annotator(n, None, float(c), created, revoked) for n, c, created, revoked in rows]

    def annotator_by_token(self, token: str | None) -> Annotator | None:
        """The live annotator holding ``token`` (any string: it is hashed first), or None."""
        if not token or not isinstance(token, str):
            return None
        digest = hash_token(token)
        row = self._conn.execute("SELECT name, token_hash, cost, created FROM annotators WHERE token_hash = ? "
                                 "AND revoked IS NULL", (digest,)).fetchone()
        if row is None or not secrets.compare_digest(row[1], digest):
            return None
        return Annotator(row[0], None, float(row[2]), row[3], token_hash=row[1])

    def _authorise(self, c: sqlite3.Connection, annotator: str, token_hash: str | None) -> None:
        """Inside the caller's transaction: the token a request was authorised with must still be live.

        A request's token is checked when its headers arrive; its body is read later. A revoke or a
        rotation in between must stop it: this check and the write it guards are one transaction.
        """
        if token_hash is None:
            return
        row = c.execute("SELECT token_hash, revoked FROM annotators WHERE name = ?", (annotator,)).fetchone()
        if row is None or row[1] is not None or not secrets.compare_digest(row[0], token_hash):
            self.log("refused_stale_token", {"annotator": annotator}, c)
            raise AnnotatorRevokedError(f"{self.path}: the token of annotator {annotator!r} was revoked or "
                                        f"replaced while the request was under way; nothing was recorded.")

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

        An annotator holds at most one lease (asking again renews it) and is
        never handed a query they passed on (:meth:`pass_query`). Returns
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
                                "AND NOT EXISTS (SELECT 1 FROM passes p WHERE p.query_id = q.id "
                                "AND p.annotator = ?) ORDER BY q.latency DESC, q.round LIMIT 1",
                                (now, annotator.name)).fetchone()
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
            # What is spent, not what leases hold for a while: a lease that passes gives its share back.
            left = _exact(self.budget_total) - self._spent_exact(c)
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
            row = self._conn.execute("SELECT position, CAST(state AS BLOB) FROM checkpoints ORDER BY position DESC "
                                     "LIMIT 1").fetchone()
        else:
            row = self._conn.execute("SELECT position, CAST(state AS BLOB) FROM checkpoints WHERE position = ?",
                                     (int(position),)).fetchone()
        return None if row is None else (int(row[0]), bytes(row[1]))

    def rollback_to(self, position: int) -> None:
        """Forget records and checkpoints after ``position`` (answers are kept: replay reuses them)."""
        with self.transaction() as c:
            c.execute("DELETE FROM records WHERE round > ?", (int(position),))
            c.execute("DELETE FROM checkpoints WHERE position > ?", (int(position),))

    def records(self) -> list[Record]:
        out = []
        for rnd, data in self._conn.execute("SELECT round, data FROM records ORDER BY round"):
            try:
                out.append(record_from_json(data))
            except (ValueError, TypeError, RecursionError) as exc:
                raise LedgerError(f"{self.path}: the stored record of round {rnd} is damaged ({exc}); the file "
                                  f"was altered.") from None
        return out

    def n_records(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM records").fetchone()[0])


# Every public method turns SQLite's errors into LedgerError naming the file (never a raw traceback).
for _name, _member in list(vars(Ledger).items()):
    if callable(_member) and not _name.startswith("_") and _name not in ("create", "open", "transaction"):
        setattr(Ledger, _name, _translated(_member))
del _name, _member
