"""Sessions: a game played against a ledger, resumable after any interruption.

A session is one run config played round by round with a :class:`Ledger`
beside it. Every label the gate buys goes through the ledger: the query is
written, an oracle is asked, and the answer is committed *before* the learner
learns from it. Every ``checkpoint_every`` rounds (and whenever the session
has to wait for people) the records played so far and the game state (learner,
gate, follower, budget with their random generators, and the stream position)
are checkpointed in the same file.

Checkpoints are data, never pickles: numpy arrays in an ``.npz`` plus a JSON
tree (:func:`encode_state`), so opening someone else's session file cannot run
their code. A session over a data file records a fingerprint of the data, its
split and the feature settings; reopening it on changed data is refused (see
:meth:`Session.open`'s ``rebind``).

Resuming loads the newest checkpoint, regenerates the stream up to its
position, and plays on. Rounds after the checkpoint are replayed: the game is
deterministic, so the gate queries the same rounds again, and the answers the
ledger already holds are reused instead of being bought again. The final
records are therefore those of an uninterrupted run with the same seed, with
each label paid once, whatever the point of interruption (``kill -9``
included).
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import fcntl
import hashlib
import importlib
import io
import itertools
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from budgetsft._validation import check_int
from budgetsft.base import QueryInfo, Record, Round
from budgetsft.budget import Budget
from budgetsft.config import DEFAULT_CONFIG, build, merge, validate_config
from budgetsft.exceptions import ConfigError
from budgetsft.experiment import amount as _amount
from budgetsft.game import SKIPPED, UNLABELLED, Game, audit_rounds
from budgetsft.sessions.ledger import Ledger, LedgerError, example_digest

__all__ = ["Session", "PlayOutcome", "StopSession", "SessionBusyError", "CheckpointError", "DataChangedError",
           "encode_state", "decode_state", "example_digest"]

CHECKPOINT_EVERY = 100
# Labels awaited at once while a stream session plays on, for oracles whose people answer later (web, file):
# the delayed-feedback benchmark (benchmarks/delayed_feedback.py) sets it; 0 waits for every label.
DEFAULT_MAX_PENDING = 10
HEARTBEAT_S = 10.0  # a player touches its lock file this often
STALE_S = 60.0  # seen from another host, a lock file untouched this long has lost its player


def _process_start(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, /proc), to tell it from a later one with its pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return None


def _player_id(pid: int) -> dict[str, str]:
    import socket

    me = {"pid": str(pid), "host": socket.gethostname()}
    start = _process_start(pid)
    if start is not None:
        me["start"] = start
    return me


def _player_alive(lock_path: Path) -> bool:
    """Whether the player named in a session's lock file still runs (see :attr:`Session.status`)."""
    import socket

    try:
        words = lock_path.read_text().split()
        age = time.time() - lock_path.stat().st_mtime
    except OSError:
        return False  # no lock file: no player ever held this copy of the session
    owner = dict(zip(words[::2], words[1::2], strict=False))
    if not owner.get("pid", "").isdigit():
        return age < STALE_S
    if owner.get("host", socket.gethostname()) != socket.gethostname():
        return age < STALE_S  # another host's pid cannot be asked: trust its heartbeat
    pid = int(owner["pid"])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    start = owner.get("start")
    return start is None or _process_start(pid) in (None, start)


class _Heartbeat:
    """Touch a file every :data:`HEARTBEAT_S` seconds from a daemon thread, until stopped."""

    def __init__(self, path: Path) -> None:
        import threading

        self._path = path
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="budgetsft-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self._path)
            except OSError:
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


# ---------------------------------------------------------------- checkpoints as data (never pickles)
_STATE_MAGIC = b"BSFTSTATE1\n"
# Packages whose plain classes a checkpoint may rebuild (plus the modules of every registered component).
_STATE_PACKAGES = ("budgetsft.base", "budgetsft.budget", "budgetsft.learners", "budgetsft.gates",
                   "budgetsft.followers", "budgetsft.game")
_BIT_GENERATORS = ("PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64")
_WHAT = ("numpy arrays and scalars, int, float, bool, str, None, lists, tuples, dicts, sets, deques, Fractions, "
         "numpy Generators and plain budgetsft objects")


class CheckpointError(LedgerError):
    """Game state that cannot be stored as data, or a stored checkpoint that is not valid state."""


def _state_modules() -> set[str]:
    from budgetsft.config import FOLLOWERS, GATES, LEARNERS

    return {c.__module__ for reg in (LEARNERS, GATES, FOLLOWERS) for c in reg.values() if isinstance(c, type)}


def _allowed_module(module: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in _STATE_PACKAGES) or module in _state_modules()


def _plain_class(cls: type) -> bool:
    """A class whose instances are rebuilt with ``cls.__new__(cls)`` and their ``__dict__`` alone."""
    return (isinstance(cls, type) and _allowed_module(cls.__module__) and "<locals>" not in cls.__qualname__
            and cls.__new__ is object.__new__ and not issubclass(cls, BaseException))


class _Encoder:
    """Game state -> (JSON tree, arrays). Shared objects stay shared (``$id``/``$ref``)."""

    def __init__(self) -> None:
        self.arrays: dict[str, np.ndarray] = {}
        self._ids: dict[int, int] = {}
        self._alive: list = []  # keeps every memoised object alive, so that no id() is reused meanwhile

    def _memo(self, obj) -> tuple[int, dict | None]:
        key = id(obj)
        if key in self._ids:
            return self._ids[key], {"$ref": self._ids[key]}
        n = len(self._ids)
        self._ids[key] = n
        self._alive.append(obj)
        return n, None

    def _array(self, arr: np.ndarray, where: str) -> str:
        if arr.dtype.hasobject:
            raise CheckpointError(f"cannot checkpoint {where}: a numpy array of Python objects (dtype object); "
                                  f"checkpoints hold {_WHAT}.")
        name = f"a{len(self.arrays)}"
        self.arrays[name] = arr
        return name

    def encode(self, obj, where: str):
        kind = type(obj)
        if obj is None or kind in (bool, int, str):
            return obj
        if kind is float:
            return obj if math.isfinite(obj) else {"$float": repr(obj)}
        if isinstance(obj, np.generic):
            return {"$scalar": self._array(np.asarray(obj), where)}
        if kind is Fraction:
            return {"$fraction": str(obj)}
        if kind is tuple:
            return {"$tuple": [self.encode(v, f"{where}[{i}]") for i, v in enumerate(obj)]}
        if kind is frozenset:
            return {"$frozenset": [self.encode(v, f"{where}{{}}") for v in obj]}
        if kind is np.dtype or isinstance(obj, np.dtype):
            if obj.hasobject or obj.fields is not None:
                raise CheckpointError(f"cannot checkpoint {where}: numpy dtype {obj} is not a plain dtype.")
            return {"$dtype": obj.str}
        n, ref = self._memo(obj)
        if ref is not None:
            return ref
        if isinstance(obj, np.ndarray):
            return {"$array": self._array(obj, where), "$id": n}
        if kind is list:
            return {"$list": [self.encode(v, f"{where}[{i}]") for i, v in enumerate(obj)], "$id": n}
        if kind is set:
            return {"$set": [self.encode(v, f"{where}{{}}") for v in obj], "$id": n}
        if kind is collections.deque:
            return {"$deque": [self.encode(v, f"{where}[{i}]") for i, v in enumerate(obj)], "maxlen": obj.maxlen,
                    "$id": n}
        if kind is dict:
            if all(type(k) is str for k in obj):
                return {"$dict": {k: self.encode(v, f"{where}[{k!r}]") for k, v in obj.items()}, "$id": n}
            return {"$items": [[self.encode(k, f"{where} key"), self.encode(v, f"{where}[{k!r}]")]
                               for k, v in obj.items()], "$id": n}
        if kind is np.random.Generator:
            bit = type(obj.bit_generator).__name__
            if bit not in _BIT_GENERATORS:
                raise CheckpointError(f"cannot checkpoint {where}: a numpy Generator over {bit}.")
            return {"$generator": bit, "state": self.encode(obj.bit_generator.state, f"{where}.state"), "$id": n}
        if _plain_class(kind) and hasattr(obj, "__dict__") and not hasattr(kind, "__slots__"):
            return {"$obj": f"{kind.__module__}:{kind.__qualname__}",
                    "attrs": {k: self.encode(v, f"{where}.{k}") for k, v in vars(obj).items()}, "$id": n}
        raise CheckpointError(f"cannot checkpoint {where}: a {kind.__module__}.{kind.__qualname__} is not state "
                              f"data; checkpoints hold {_WHAT}.")


class _Decoder:
    """(JSON tree, arrays) -> game state, refusing anything but the encoder's own node kinds."""

    _TAGS = ("$float", "$scalar", "$fraction", "$tuple", "$frozenset", "$dtype", "$ref", "$array", "$list", "$set",
             "$deque", "$dict", "$items", "$generator", "$obj")

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        self.arrays = arrays
        self._objs: dict[int, object] = {}

    def _bad(self, where: str, what: str) -> CheckpointError:
        return CheckpointError(f"{where}: {what}")

    def _take(self, name, where: str) -> np.ndarray:
        if type(name) is not str or name not in self.arrays:
            raise self._bad(where, f"refers to a missing array {name!r}")
        return self.arrays[name]

    def _register(self, node: dict, obj, where: str):
        n = node.get("$id")
        if type(n) is not int or n in self._objs:
            raise self._bad(where, f"bad object id {n!r}")
        self._objs[n] = obj
        return obj

    def _items(self, node: dict, tag: str, where: str) -> list:
        items = node[tag]
        if type(items) is not list:
            raise self._bad(where, f"{tag} must hold a list")
        return [self.decode(v, f"{where}[{i}]") for i, v in enumerate(items)]

    def decode(self, node, where: str):
        if node is None or type(node) in (bool, int, str):
            return node
        if type(node) is float:
            return node
        if type(node) is not dict:
            raise self._bad(where, f"unexpected {type(node).__name__} node")
        tags = [k for k in node if k in self._TAGS]
        if len(tags) != 1:
            raise self._bad(where, f"a node must have exactly one kind; got keys {sorted(node)[:5]}")
        tag = tags[0]
        if tag == "$float":
            if node[tag] not in ("nan", "inf", "-inf"):
                raise self._bad(where, f"bad float {node[tag]!r}")
            return float(node[tag])
        if tag == "$scalar":
            arr = self._take(node[tag], where)
            if arr.shape != ():
                raise self._bad(where, "a numpy scalar must be a 0-d array")
            return arr[()]
        if tag == "$fraction":
            try:
                return Fraction(node[tag])
            except (TypeError, ValueError, ZeroDivisionError):
                raise self._bad(where, f"bad fraction {node[tag]!r}") from None
        if tag == "$tuple":
            return tuple(self._items(node, tag, where))
        if tag == "$frozenset":
            return frozenset(self._items(node, tag, where))
        if tag == "$dtype":
            try:
                return np.dtype(str(node[tag]))
            except TypeError:
                raise self._bad(where, f"bad dtype {node[tag]!r}") from None
        if tag == "$ref":
            n = node[tag]
            if type(n) is not int or n not in self._objs:
                raise self._bad(where, f"reference to an unknown object {n!r}")
            return self._objs[n]
        if tag == "$array":
            return self._register(node, self._take(node[tag], where), where)
        if tag == "$list":
            out: list = self._register(node, [], where)
            out.extend(self._items(node, tag, where))
            return out
        if tag == "$set":
            return self._register(node, set(self._items(node, tag, where)), where)
        if tag == "$deque":
            maxlen = node.get("maxlen")
            if maxlen is not None and (type(maxlen) is not int or maxlen < 0):
                raise self._bad(where, f"bad deque maxlen {maxlen!r}")
            dq: collections.deque = self._register(node, collections.deque(maxlen=maxlen), where)
            dq.extend(self._items(node, tag, where))
            return dq
        if tag == "$dict":
            if type(node[tag]) is not dict:
                raise self._bad(where, "$dict must hold an object")
            d: dict = self._register(node, {}, where)
            for k, v in node[tag].items():
                d[k] = self.decode(v, f"{where}[{k!r}]")
            return d
        if tag == "$items":
            d = self._register(node, {}, where)
            for pair in node[tag] if type(node[tag]) is list else [None]:
                if type(pair) is not list or len(pair) != 2:
                    raise self._bad(where, "$items must hold [key, value] pairs")
                d[self.decode(pair[0], f"{where} key")] = self.decode(pair[1], f"{where} value")
            return d
        if tag == "$generator":
            bit = node[tag]
            if bit not in _BIT_GENERATORS:
                raise self._bad(where, f"unknown bit generator {bit!r}")
            bg = getattr(np.random, bit)()
            gen = self._register(node, np.random.Generator(bg), where)
            try:
                bg.state = self.decode(node.get("state"), f"{where}.state")
            except (TypeError, ValueError, KeyError) as exc:
                raise self._bad(where, f"bad {bit} state ({exc})") from None
            return gen
        # "$obj": a plain budgetsft object, rebuilt without running any of its code.
        name = node[tag]
        module, _, qualname = name.partition(":") if type(name) is str else ("", "", "")
        if not module or not _allowed_module(module):
            raise self._bad(where, f"class {name!r} is not one a checkpoint may hold")
        try:
            cls = importlib.import_module(module)
            for part in qualname.split("."):
                cls = getattr(cls, part)
        except (ImportError, AttributeError):
            raise self._bad(where, f"unknown class {name!r}") from None
        if not _plain_class(cls):
            raise self._bad(where, f"class {name!r} is not one a checkpoint may hold")
        attrs = node.get("attrs")
        if type(attrs) is not dict:
            raise self._bad(where, "an object needs its attributes")
        obj = self._register(node, cls.__new__(cls), where)
        obj.__dict__.update({k: self.decode(v, f"{where}.{k}") for k, v in attrs.items()})
        return obj


def encode_state(obj) -> bytes:
    """Serialise game state as data: an ``.npz`` of its arrays plus a JSON tree (no pickle anywhere).

    Walks ``obj`` and the ``__dict__`` of every plain budgetsft object in it;
    anything else is refused with :class:`CheckpointError` naming the
    attribute. :func:`decode_state` rebuilds it bit for bit.
    """
    enc = _Encoder()
    tree = enc.encode(obj, "state")
    payload = json.dumps(tree, allow_nan=False, separators=(",", ":")).encode("utf-8")
    buf = io.BytesIO()
    np.savez(buf, allow_pickle=False, __state__=np.frombuffer(payload, dtype=np.uint8), **enc.arrays)
    return _STATE_MAGIC + buf.getvalue()


def decode_state(blob: bytes, where: str = "checkpoint"):
    """Rebuild what :func:`encode_state` stored; anything else is a :class:`CheckpointError` naming ``where``."""
    if not isinstance(blob, bytes | bytearray) or not bytes(blob[:len(_STATE_MAGIC)]) == _STATE_MAGIC:
        raise CheckpointError(f"{where}: not a budgetsft checkpoint (corrupt bytes, or a pickle, which budgetsft "
                              f"never loads).")
    try:
        with np.load(io.BytesIO(bytes(blob[len(_STATE_MAGIC):])), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        raw = arrays.pop("__state__")
        if raw.dtype != np.uint8 or raw.ndim != 1:
            raise ValueError("bad state payload")
        tree = json.loads(raw.tobytes().decode("utf-8"))
    except Exception as exc:  # any failure to read the container means the blob is corrupt  # noqa: BLE001
        raise CheckpointError(f"{where}: corrupt checkpoint ({type(exc).__name__}: {exc}).") from None
    try:
        return _Decoder(arrays).decode(tree, "state")
    except CheckpointError as exc:
        raise CheckpointError(f"{where}: corrupt checkpoint: {exc}") from None
    except RecursionError:
        raise CheckpointError(f"{where}: corrupt checkpoint: nested too deeply.") from None


@dataclass
class _GameState:
    """What a checkpoint restores (stored as data with :func:`encode_state`)."""

    position: int
    learner: object
    gate: object
    follower: object
    budget: Budget
    awaited: list = dataclasses.field(default_factory=list)  # bought rounds whose labels have not arrived


@dataclass(frozen=True)
class PlayOutcome:
    """How a call to :meth:`Session.play` ended: ``finished``, ``waiting`` (for answers) or ``stopped``."""

    status: str
    position: int
    pending: int = 0


class SessionBusyError(LedgerError):
    """Another process holds the session's player lock (``budgetsft resume`` or ``annotate`` is playing it)."""


class DataChangedError(LedgerError):
    """The data behind a session is not the data it started on (its fingerprint differs)."""


def _data_path(cfg: dict) -> str | None:
    """The data file of a config (a ``.jsonl`` path), or None for built-in data sets and synthetic streams."""
    data = cfg.get("data")
    name = data if isinstance(data, str) else (data or {}).get("name") if isinstance(data, dict) else None
    if not isinstance(name, str) or name.startswith("hf:"):
        return None
    from budgetsft.data.builtin import is_builtin

    if is_builtin(name):
        return None
    p = Path(name).expanduser()
    return name if name.endswith(".jsonl") or p.is_file() else None


def _with_data_path(cfg: dict, path: str) -> dict:
    cfg = copy.deepcopy(cfg)
    data = cfg["data"]
    cfg["data"] = {**(data if isinstance(data, dict) else {}), "name": path}
    return cfg


class StopSession(Exception):
    """Raised by an oracle to quit-and-save (``undo_round=None``) or to undo the answer of ``undo_round``.

    The session has checkpointed the game before the decision that asked, so
    quitting loses nothing; an oracle that raises for an undo has already
    withdrawn that answer from the ledger (:meth:`Ledger.undo_answer`).
    """

    def __init__(self, undo_round: int | None = None) -> None:
        super().__init__("undo" if undo_round is not None else "quit")
        self.undo_round = undo_round


@dataclass
class _Streams:
    """The rounds a session plays, its held-out rounds, and the examples behind the rounds (real data)."""

    rounds: Sequence[Round]
    test: Sequence[Round] | None
    examples: list | None
    real: object = None

    @classmethod
    def of(cls, cfg: dict) -> _Streams:
        from budgetsft.experiment import stream_of

        rounds, test, real = stream_of(cfg)
        return cls(rounds, test, None if real is None else list(real.dataset.train), real)

    def fingerprint(self, cfg: dict) -> str | None:
        """A content fingerprint of the data, its split and the feature settings (None for synthetic streams)."""
        if self.real is None:
            return None
        ds = self.real.dataset
        h = hashlib.sha256()
        for tag, examples in ((b"train", ds.train), (b"test", ds.test)):
            for ex in examples:
                h.update(tag + example_digest(ex).encode("ascii"))
        feats = cfg.get("features") or {"name": "auto"}
        feats = {"name": feats} if isinstance(feats, str) else {k: v for k, v in feats.items() if k != "device"}
        return json.dumps({"examples": h.hexdigest(), "n_train": len(ds.train), "n_test": len(ds.test),
                           "features": feats, "dim": int(self.real.dim)}, sort_keys=True)


def stream_audit(ledger: Ledger) -> dict | None:
    """The audit estimate of a stream session: the online model's prequential accuracy on its audit rounds.

    Audit rounds are drawn uniformly from the stream (:func:`budgetsft.game.audit_rounds`) and bought
    whatever the gate says; the model's prediction on each was made before its label arrived. The share
    right is an unbiased estimate of the online model's accuracy over the stream so far (Wilson 95 %
    interval). None when the session has no audit share.
    """
    from budgetsft.sessions.pool import wilson_interval

    queries = [q for q in ledger.queries(("answered",)) if q.purpose == "audit" and q.prediction is not None]
    audit = [q for q in ledger.queries() if q.purpose == "audit"]
    if not audit:
        return None
    answers = {a.query_id: a for a in ledger.answers()}
    hits = sum(int(answers[q.id].label == q.prediction) for q in queries)
    n = len(queries)
    lo, hi = wilson_interval(hits, n)
    return {"n": n, "correct": hits, "accuracy": hits / n if n else None, "ci95": [lo, hi] if n else None,
            "estimator": "prequential accuracy of the online model on the audit rounds (drawn uniformly at random "
                         "from the stream, each predicted before its label arrived); Wilson 95 % interval"}


class _Stopped(Exception):
    """Raised at a round boundary (after the checkpoint) to leave the game: a quit, or ``stop_at``."""

    def __init__(self, position: int) -> None:
        super().__init__(position)
        self.position = position


class _LedgerLabels:
    """The game's label source in a session: queries go to the ledger and the oracle; answers come back.

    An answer is taken by the game at the round before which it was first seen, and that round is logged
    in the ledger (``applied_at``): a replay from a checkpoint (resume after ``kill -9``, an undo) takes
    it at the same place, so the records do not depend on when the replay runs.
    """

    def __init__(self, session: Session, oracle) -> None:
        self.session = session
        self.oracle = oracle
        self.stop_requested = False

    def request(self, asked, audit=frozenset()) -> None:
        session, ledger = self.session, self.session.ledger
        examples = session.examples()
        stored = ledger.add_queries([
            (info.t, rnd.id, info.latency, info.cost,
             None if examples is None else example_digest(examples[info.t - 1]),
             "audit" if info.t in audit else "gate", info.prediction)
            for rnd, info in asked])
        missing = [stored[info.t] for _, info in asked if stored[info.t].status == "pending"]
        if not missing:
            return
        context = {info.t: (rnd, rnd.features, info) for rnd, info in asked}
        try:
            self.oracle.request(session, sorted(missing, key=lambda q: (-q.latency, q.round)), context)
        except StopSession as stop:
            if stop.undo_round is not None:
                raise
            self.stop_requested = True  # the person quits: the game saves at the next round boundary

    def arrival(self, rnd: Round, info: QueryInfo, now: int):
        ledger = self.session.ledger
        q = ledger.query_for_round(info.t)
        if q is None or q.status == "pending":
            return None
        if q.applied_at is None:
            if now != info.t:  # taken late: log where (taken at its own round needs no log: a replay does the same)
                ledger.mark_applied(q.id, now)
        elif q.applied_at > now:  # a replay: the game took it later the first time
            return None
        if q.status == "skipped":
            return SKIPPED
        ans = ledger.answer_for_round(info.t)
        # One rule with the ledger: a label budget charges 1 per label whatever the annotator's price (the
        # record keeps the round's nominal cost, as `run` does); a cost budget charges the price paid.
        return int(ans.label), None if ledger.budget_unit == "labels" else float(ans.cost)


class Session:
    """One session file: its ledger, its config, and the stream it plays.

    Parameters
    ----------
    ledger : Ledger
    checkpoint_every : int, default=100
        Rounds between checkpoints when no one has to be waited for.
    rebind : bool, default=False
        Accept data that changed since the session started, after checking
        that every paid (or pending) example is still at its round, unchanged;
        the new fingerprint is then stored. Without it a changed source is a
        :class:`DataChangedError`.
    """

    def __init__(self, ledger: Ledger, checkpoint_every: int = CHECKPOINT_EVERY,
                 streams: _Streams | None = None, rebind: bool = False) -> None:
        self.ledger = ledger
        self.config = ledger.config
        self.checkpoint_every = check_int("Session", "checkpoint_every", checkpoint_every, low=1)
        self.rebind = bool(rebind)
        self._streams = streams  # regenerated from the config on first use

    # ---------------------------------------------------------------- creating and opening
    @classmethod
    def create(cls, path, config: dict, *, oracle: dict | None = None, checkpoint_every: int = CHECKPOINT_EVERY
               ) -> Session:
        """Validate ``config``, work out its budget, and create the session file (nothing is played)."""
        from budgetsft.experiment import budget_for

        cfg = merge(DEFAULT_CONFIG, config or {})
        cfg.pop("progress", None)
        validate_config(cfg)
        if cfg["gate"].get("name") == "llf" and "schedule" not in cfg["gate"]:
            # the rule "auto" resolves to, stored: a later default cannot change what a replay buys
            cfg["gate"] = {**cfg["gate"], "schedule": build(cfg)["gate"].schedule_used}
        if not cfg.get("data") and cfg["env"]["name"] == "adversarial":
            raise ConfigError("sessions cannot resume the 'adversarial' environment: its contexts depend on the "
                              "learner's live state, which a replayed stream cannot reproduce. Use `run` without "
                              "--session.")
        check_int("Session", "checkpoint_every", checkpoint_every, low=1)
        data_file = _data_path(cfg)
        relpath = None
        if data_file is not None:  # stored absolute (resume from any folder), and relative to the session's folder
            resolved = Path(data_file).expanduser().resolve()
            cfg = _with_data_path(cfg, str(resolved))
            relpath = os.path.relpath(resolved, Path(path).parent.resolve())
        streams = _Streams.of(cfg)
        budget = budget_for(cfg, streams.rounds)
        ledger = Ledger.create(path, cfg, budget_total=budget.total, budget_unit=budget.unit, oracle=oracle)
        fingerprint = streams.fingerprint(cfg)
        if fingerprint is not None:
            ledger.set_meta("data_fingerprint", fingerprint)
        if relpath is not None:
            ledger.set_meta("data_relpath", relpath)
        return cls(ledger, checkpoint_every, streams)

    @classmethod
    def open(cls, path, checkpoint_every: int = CHECKPOINT_EVERY, *, rebind: bool = False,
             timeout: float = 30.0) -> Session:
        """Open a session file; its stored config is checked (a bad one is a LedgerError naming the file)."""
        check_int("Session", "checkpoint_every", checkpoint_every, low=1)
        ledger = Ledger.open(path, timeout=timeout)
        try:
            cfg = ledger.config
            missing = [k for k in ("learner", "gate") if not isinstance(cfg.get(k), dict)]
            if not cfg.get("data") and not isinstance(cfg.get("env"), dict):
                missing.append("env (or data)")
            if missing:
                raise ConfigError(f"it lacks the section(s) {', '.join(missing)}: the file was altered")
            validate_config(cfg, where=f"{path} (stored config)")
            return cls(ledger, checkpoint_every, rebind=rebind)
        except (ConfigError, KeyError, TypeError, ValueError, AttributeError) as exc:
            ledger.close()
            raise LedgerError(f"{path}: the session's stored config is invalid: {exc}") from None
        except BaseException:
            ledger.close()
            raise

    def close(self) -> None:
        self.ledger.close()

    # ---------------------------------------------------------------- the stream
    def _source_config(self) -> dict:
        """The config with its data file found: where it was, or beside the session file if both moved."""
        cfg = self.config
        data_file = _data_path(cfg)
        if data_file is None and cfg.get("data"):
            name = cfg["data"] if isinstance(cfg["data"], str) else cfg["data"].get("name")
            data_file = name if isinstance(name, str) and name.endswith(".jsonl") else None
        if data_file is not None and not Path(data_file).is_file():
            rel = self.ledger.meta("data_relpath")
            moved = self.ledger.path.parent / rel if rel else None
            if moved is not None and moved.is_file():
                return _with_data_path(cfg, str(moved.resolve()))
            raise LedgerError(f"{self.ledger.path}: the session's data file {data_file} is missing"
                              + (f" (also looked for {moved})" if moved is not None else "") + ".")
        return cfg

    def _loaded(self) -> _Streams:
        if self._streams is None:
            streams = _Streams.of(self._source_config())
            self._check_source(streams)
            self._streams = streams
        return self._streams

    def _check_source(self, streams: _Streams) -> None:
        """Refuse data that is not the data the session started on (unless ``rebind`` and the paid rows hold)."""
        now = streams.fingerprint(self.config)
        stored = self.ledger.meta("data_fingerprint")
        if now is None or now == stored:
            return
        path = self.ledger.path
        if stored is None:
            what = "it predates data fingerprints"
        else:
            old, new = json.loads(stored), json.loads(now)
            diffs = [f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
                     if k != "examples" and old.get(k) != new.get(k)]
            what = "; ".join(diffs) if diffs else "the examples' content or order changed"
        if not self.rebind:
            raise DataChangedError(
                f"{path}: the data behind this session is not the data it started on ({what}). Its paid labels "
                f"would land on other examples. Restore the original data, or pass --rebind to check that every "
                f"paid example is still at its round, unchanged, and go on with this data.")
        examples = streams.examples or []
        problems = []
        for q in self.ledger.queries(("answered", "pending")):
            if q.round > len(examples):
                problems.append(f"round {q.round} ({q.example_id!r}): gone, the stream now has {len(examples)} "
                                f"rounds")
                continue
            ex = examples[q.round - 1]
            if q.example_id is not None and ex.id != q.example_id:
                problems.append(f"round {q.round}: was example {q.example_id!r}, now {ex.id!r}")
            elif q.example_digest is not None and example_digest(ex) != q.example_digest:
                problems.append(f"round {q.round}: example {ex.id!r} changed")
        if problems:
            more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
            raise DataChangedError(f"{path}: cannot rebind to the changed data: {len(problems)} paid or pending "
                                   f"example(s) moved or changed:\n  " + "\n  ".join(problems[:20]) + more)
        with self.ledger.transaction() as c:
            c.execute("INSERT INTO meta VALUES ('data_fingerprint', ?) ON CONFLICT(key) DO UPDATE SET "
                      "value = excluded.value", (now,))
            self.ledger.log("rebind", {"from": stored, "to": now}, c)

    def check_source(self) -> None:
        """Load the stream now, refusing changed data (a CLI calls it before doing anything else)."""
        self._loaded()

    def stream(self) -> Sequence[Round]:
        """The rounds of the session, regenerated from its config (deterministic in the seed)."""
        return self._loaded().rounds

    def test_rounds(self) -> Sequence[Round] | None:
        """Held-out rounds: the evaluation file's (config ``eval``) if given, else the data's test split."""
        if self.config.get("eval"):
            return self.eval_rounds()
        return self._loaded().test

    def examples(self) -> list:
        """The examples behind the rounds (real data; None for a synthetic stream)."""
        return self._loaded().examples

    def eval_rounds(self) -> list[Round]:
        """The labelled evaluation file of the config (``eval``), featurised as the session's data."""
        if getattr(self, "_eval", None) is None:
            from budgetsft.realdata import load_streams

            path = self.config["eval"]
            if not Path(path).is_file():
                raise LedgerError(f"{self.ledger.path}: the evaluation file {path} is missing.")
            cfg = self._source_config()
            feats = dict(cfg.get("features") or {"name": "auto"})
            kind = self._loaded().real.featurizer
            feats.pop("name", None)
            device = feats.pop("device", "auto")
            ev = load_streams(path, kind, seed=int(cfg.get("seed", 0)), test_fraction=0.0, device=device,
                              feature_options=feats, progress=False)
            labels = self._loaded().real.dataset.labels
            if kind == "block" and ev.dataset.labels != labels:
                raise ConfigError(f"{path}: the evaluation file's label set {ev.dataset.labels} is not the "
                                  f"data's {labels}.")
            self._eval = ev.train
        return self._eval

    def describe(self, t: int) -> dict:
        """What an annotator sees for round ``t`` (1-based): the prompt and the numbered candidates."""
        streams = self._loaded()
        if streams.examples is not None:
            ex = streams.examples[t - 1]
            return {"id": ex.id, "prompt": ex.prompt, "candidates": list(ex.candidates)}
        rnd = next(itertools.islice(iter(streams.rounds), t - 1, None))
        return {"id": rnd.id or f"round-{t}", "prompt": f"Synthetic round {t}: which candidate is correct?",
                "candidates": [f"candidate {a}" for a in range(rnd.n_candidates)]}

    def horizon(self) -> int:
        return len(self.stream())

    # ---------------------------------------------------------------- state
    def _fresh_state(self) -> _GameState:
        from budgetsft.experiment import budget_for

        objs = build(self.config)
        budget = budget_for(self.config, self.stream())
        return _GameState(0, objs["learner"], objs["gate"], objs["follower"], budget)

    def _restore(self, position: int | None = None) -> _GameState:
        saved = self.ledger.load_checkpoint(position)
        if saved is None:
            return self._fresh_state()
        pos, blob = saved
        where = f"{self.ledger.path}: checkpoint at round {pos}"
        state = decode_state(blob, where)
        from budgetsft.config import FOLLOWERS, GATES, LEARNERS

        keys = {"position", "learner", "gate", "follower", "budget"}
        if type(state) is not dict or set(state) - {"awaited"} != keys:
            raise CheckpointError(f"{where}: corrupt checkpoint: not a game state.")
        follower = self.config.get("follower", {"name": "best_response"})
        for key, registry, spec in (("learner", LEARNERS, self.config["learner"]), ("gate", GATES, self.config["gate"]),
                                    ("follower", FOLLOWERS, follower)):
            cls = registry.get(spec.get("name"))
            if cls is None or type(state[key]) is not cls:
                raise CheckpointError(f"{where}: corrupt checkpoint: its {key} is a {type(state[key]).__name__}, "
                                      f"not the config's {spec.get('name')!r}.")
        if type(state["budget"]) is not Budget:
            raise CheckpointError(f"{where}: corrupt checkpoint: its budget is not a Budget.")
        if state["position"] != pos:
            raise CheckpointError(f"{where}: holds position {state['position']!r}.")
        from budgetsft.game import Awaited

        awaited = state.get("awaited", [])
        if type(awaited) is not list or any(type(a) is not Awaited for a in awaited):
            raise CheckpointError(f"{where}: corrupt checkpoint: its awaited labels are not a list of Awaited.")
        return _GameState(**state)

    def _checkpoint(self, state: _GameState, buffered: list[Record], gate_override: object | None = None) -> None:
        if gate_override is not None:
            state = dataclasses.replace(state, gate=gate_override)
        blob = encode_state({"position": state.position, "learner": state.learner, "gate": state.gate,
                             "follower": state.follower, "budget": state.budget, "awaited": list(state.awaited)})
        self.ledger.save_checkpoint(state.position, blob, buffered)
        buffered.clear()

    @property
    def finished(self) -> bool:
        return self.ledger.status == "finished"

    # ---------------------------------------------------------------- playing
    def play(self, oracle, *, progress: Callable[[int], None] | None = None,
             stop_at: int | None = None) -> PlayOutcome:
        """Play from the newest checkpoint until the stream ends or the oracle makes us wait or stop.

        ``stop_at`` stops cleanly (checkpointed) after that many rounds: for
        tests and for playing a long session in slices.
        """
        if self.finished:
            return PlayOutcome("finished", self.horizon())
        self.ledger.check_writable()
        with self._player_lock():
            if self.config.get("mode") == "pool":
                from budgetsft.sessions.pool import play_pool

                with threadpool_limits(limits=1, user_api="blas"):
                    return PlayOutcome(*play_pool(self, oracle, progress=progress, stop_at=stop_at))
            return self._play_locked(oracle, progress, stop_at)

    @property
    def lock_path(self) -> Path:
        """The player's lock file: beside the resolved file, so a symlink to the session is the same session."""
        return Path(os.path.realpath(self.ledger.path) + ".lock")

    @contextmanager
    def _player_lock(self):
        """One player per session file at a time (an OS lock: a killed player releases it at once).

        The file names the player (pid, host, process start) and its modification time is a heartbeat,
        so that a player killed with ``kill -9`` is seen as gone (:meth:`status`).
        """
        lock_path = self.lock_path
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        fh = os.fdopen(fd, "r+")  # held for the whole play
        beating = None
        try:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.seek(0)
                raise SessionBusyError(f"{self.ledger.path}: another process is playing this session "
                                  f"({fh.read().strip() or 'pid unknown'}); wait for it or stop it first.") from None
            fh.seek(0)
            fh.truncate()
            me = _player_id(os.getpid())
            fh.write(" ".join(f"{k} {v}" for k, v in me.items()))
            fh.flush()
            beating = _Heartbeat(lock_path)
            yield
        finally:
            if beating is not None:
                beating.stop()
            fh.close()

    @property
    def status(self) -> str:
        """The ledger's status, except that a session whose player is gone (killed) is ``interrupted``.

        The ledger says ``playing`` from the first round played until the player saves and stops; a
        player killed with ``kill -9`` cannot say otherwise. It is gone when its pid is not alive on this
        host (or is another process now), or, seen from another host, when its heartbeat (the lock file's
        modification time, touched every :data:`HEARTBEAT_S` seconds) is older than :data:`STALE_S`.
        """
        status = self.ledger.status
        if status == "playing" and not _player_alive(self.lock_path):
            return "interrupted"
        return status

    def _play_locked(self, oracle, progress, stop_at) -> PlayOutcome:
        t0 = time.perf_counter()
        try:
            with threadpool_limits(limits=1, user_api="blas"):
                while True:
                    try:
                        return self._play(oracle, progress, stop_at)
                    except StopSession as stop:
                        if stop.undo_round is None:  # a quit outside the game's own loop: saved at the last one
                            self.ledger.set_meta("status", "stopped")
                            return PlayOutcome("stopped", self.ledger.checkpoints()[-1] if
                                               self.ledger.checkpoints() else 0)
                        # Undo: the oracle withdrew an answer; replay from the newest checkpoint before its round
                        # (the ledger's other answers are reused, so nothing else is asked or paid again).
                        before = [p for p in self.ledger.checkpoints() if p < stop.undo_round]
                        self.ledger.rollback_to(before[-1] if before else 0)
        finally:
            seconds = float(self.ledger.meta("seconds", "0")) + time.perf_counter() - t0
            self.ledger.set_meta("seconds", repr(seconds))

    def max_pending(self, oracle) -> int:
        """Labels awaited at once while the stream plays on (config ``max_pending``, else
        :data:`DEFAULT_MAX_PENDING` for oracles that answer later, 0 for those that answer on the spot)."""
        value = self.config.get("max_pending")
        if value is not None:
            return int(value)
        return DEFAULT_MAX_PENDING if getattr(oracle, "name", "") in ("web", "file") else 0

    def _play(self, oracle, progress, stop_at) -> PlayOutcome:
        """Play :class:`budgetsft.game.Game` (the one round loop) with the ledger as its label source."""
        ledger = self.ledger
        stream = self.stream()
        horizon = len(stream)
        state = self._restore()
        ledger.set_meta("status", "playing")
        labels = _LedgerLabels(self, oracle)
        share = float(self.config.get("audit", 0.0) or 0.0)
        audit = audit_rounds(share, state.budget.total, horizon, int(self.config.get("seed", 0))) if share else None
        game = Game(state.learner, state.gate, state.budget, state.follower, horizon=horizon, labels=labels,
                    max_pending=self.max_pending(oracle), position=state.position, awaited=state.awaited,
                    unlabelled_ok=True, audit=audit)
        if game.awaited:  # labels still awaited when the game was saved: ask again (a person may have quit)
            labels.request([(aw.round, aw.info) for aw in game.awaited])
        buffered: list[Record] = []
        last = {"ckpt": state.position}

        def boundary(position: int) -> None:
            state.position = position
            state.awaited = game.awaited
            if progress is not None:
                progress(position)
            stop = labels.stop_requested or (stop_at is not None and position >= stop_at)
            if stop or position - last["ckpt"] >= self.checkpoint_every:
                self._checkpoint(state, buffered)
                last["ckpt"] = position
            if stop:
                raise _Stopped(position)

        game.on_boundary = boundary
        try:
            for rec in game.rounds(stream):
                buffered.append(rec)
        except _Stopped as stop:
            ledger.set_meta("status", "stopped")
            return PlayOutcome("stopped", stop.position, len(ledger.pending()))
        state.position, state.awaited = game.position, game.awaited
        self._checkpoint(state, buffered)
        if game.status == "waiting":
            ledger.set_meta("status", "waiting")
            return PlayOutcome("waiting", game.position, len(ledger.pending()))
        self._check_books(state.budget)
        ledger.set_meta("status", "finished")
        return PlayOutcome("finished", game.position)

    def _check_books(self, budget: Budget) -> None:
        """The game's budget and the ledger must agree on what was spent."""
        spent = self.ledger.spent()
        if abs(spent - budget.spent) > 1e-9 * max(1.0, spent) or budget.spent > budget.total + 1e-12:
            raise LedgerError(f"{self.ledger.path}: the game spent {budget.spent} but the ledger holds {spent} "
                              f"(budget {budget.total}).")

    # ---------------------------------------------------------------- results
    def records(self) -> list[Record]:
        return self.ledger.records()

    def summary(self) -> dict:
        """The summary ``run`` prints for the same config, from the stored records (timings: 0)."""
        from budgetsft.experiment import run_summary

        state = self._restore()
        records = self.records()
        played = list(itertools.islice(iter(self.stream()), len(records)))
        seconds = float(self.ledger.meta("seconds", "0"))
        if any(r.gold == UNLABELLED for r in records):
            return self._unlabelled_summary(records, played, state, seconds)
        return run_summary(self.config, records, played, state.budget, state.learner, self.test_rounds(), seconds)

    def _unlabelled_summary(self, records, played, state, seconds: float) -> dict:
        """A finished stream whose unbought rounds have no gold: what can be known, and nothing else.

        No mistakes, hinge loss or regret over the stream (they need every gold); held-out accuracy only
        from an evaluation file (config ``eval``).
        """
        from budgetsft.experiment import held_out_accuracy
        from budgetsft.refit import refit_accuracy

        cfg = self.config
        bought = [dataclasses.replace(rnd, gold=rec.gold) for rec, rnd in zip(records, played, strict=True)
                  if rec.queried]
        test = self.eval_rounds() if cfg.get("eval") else None
        nan = math.nan
        summary = {key: nan for key in ("mistakes", "hinge_loss", "pseudo_regret", "stackelberg_regret",
                                        "regret_queried", "regret_unqueried", "pseudo_regret_queried",
                                        "pseudo_regret_unqueried")}
        summary.update(
            gate=cfg["gate"]["name"], beta=cfg["gate"].get("beta"), budget=state.budget.total,
            budget_unit=state.budget.unit, learner=cfg["learner"]["name"], seed=cfg.get("seed", 0),
            rounds=len(records), labels_bought=len(bought), spent=state.budget.spent, comparator="none",
            mistakes_on_bought_rounds=int(sum(r.mistake for r in records if r.queried)),
            test_accuracy=held_out_accuracy(state.learner, test) if test else nan,
            refit_accuracy=refit_accuracy(bought, test, seed=int(cfg.get("seed", 0))) if test else nan,
            seconds=seconds, unlabelled=True,
            note="an unlabelled stream: only the bought rounds have gold; held-out accuracy needs an evaluation "
                 "file (--eval)")
        data = cfg["data"] if isinstance(cfg["data"], dict) else {"name": cfg["data"]}
        summary["data"] = data["name"]
        return summary

    def progress_report(self) -> dict:
        """Spend, budget left, labels by annotator, and the regret of the rounds played so far.

        Only numbers that can be known: on an unlabelled stream the mistakes and hinge loss of rounds
        nobody labelled are unknown (None), and the mistakes on bought rounds (the prediction before the
        label arrived) are reported apart, for what they are. A pool session reports
        :func:`budgetsft.sessions.pool.pool_report`.
        """
        if self.config.get("mode") == "pool":
            from budgetsft.sessions.pool import pool_report

            return pool_report(self)
        led = self.ledger
        records = self.records()
        unlabelled = any(r.gold == UNLABELLED for r in records)
        regrets = [r.regret for r in records if r.regret == r.regret]
        report = {
            "path": str(led.path),
            "status": self.status,
            "rounds_played": len(records),
            "horizon": self.horizon(),
            "budget": _amount(led.budget_total),
            "unit": led.budget_unit,
            "spent": _amount(led.spent()),
            "remaining": _amount(led.remaining()),
            "labels_bought": len(led.answers()),
            "pending": len(led.pending()),
            "by_annotator": led.labels_by_annotator(),
            "mistakes": None if unlabelled else int(sum(r.mistake for r in records)),
            "hinge_loss": None if unlabelled else float(sum(r.hinge_loss for r in records)),
            "pseudo_regret": float(sum(regrets)) if regrets else float("nan"),
        }
        audit = stream_audit(led)
        if audit is not None:
            report["audit"] = audit
        if unlabelled:
            bought = [r for r in records if r.queried]
            report["mistakes_on_bought_rounds"] = {
                "n": len(bought), "mistakes": int(sum(r.mistake for r in bought)),
                "note": "the prediction before the label arrived, on the rounds the gate bought: biased towards "
                        "hard items, not an error rate of the model; the other rounds have no gold"}
        return report

    def export_labels(self) -> list[dict]:
        """The bought labelled set, one canonical example per answer (SPEC §8 JSONL lines)."""
        self._loaded()  # changed data is refused even when nothing was bought yet
        out = []
        for ans in self.ledger.answers():
            item = self.describe(ans.round)
            out.append({"id": item["id"], "prompt": item["prompt"], "candidates": item["candidates"],
                        "answer": ans.label, "annotator": ans.annotator, "cost": ans.cost, "round": ans.round})
        return out
