"""Oracles: where a session's labels come from, behind one interface.

An oracle gets the queries the gate has just made (largest latency first) and
writes whatever answers it has into the ledger with
:meth:`Ledger.record_answer`; the session then reads them back. An oracle that
cannot answer now (a file, people on a web page) writes nothing and the
session checkpoints and waits; ``budgetsft resume`` picks up once the answers
are in.

==========  =======================================================  ==========
name        labels from                                              waits?
==========  =======================================================  ==========
dataset     the gold labels of the data (simulation)                 no
file        answers imported from JSONL (pending queries written)    yes
terminal    a person at an interactive prompt                        no
web         annotators on ``budgetsft annotate``'s page or JSON API  yes
==========  =======================================================  ==========
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Protocol, TextIO

from budgetsft.exceptions import BudgetExhaustedError, ConfigError, DataError
from budgetsft.sessions.ledger import Ledger, LedgerError, Query
from budgetsft.sessions.session import Session, StopSession

__all__ = ["Oracle", "DatasetOracle", "FileOracle", "TerminalOracle", "WebOracle", "make_oracle", "ORACLES",
           "import_answers", "MAX_ANSWER_LINE"]

# An answer line is a few dozen bytes; anything this long is not one.
MAX_ANSWER_LINE = 64 * 1024


def _check_price(owner: str, cost) -> float:
    """An annotator's price per label: a finite number > 0 (checked where it enters)."""
    if isinstance(cost, bool) or not isinstance(cost, int | float) or not math.isfinite(cost) or cost <= 0:
        raise ConfigError(f"The 'cost' parameter of {owner} must be a finite number > 0. Got {cost!r}.")
    return float(cost)


class Oracle(Protocol):
    """Answers queries by writing them to the session's ledger."""

    immediate: bool  # True when every query is answered (or skipped) before request returns

    def request(self, session: Session, queries: list[Query], context: dict) -> None:
        """Answer (some of) ``queries``; ``context[q.round]`` is (round, features, QueryInfo)."""


class DatasetOracle:
    """The data's own gold label, at the round's nominal cost (a simulated annotator called ``dataset``)."""

    immediate = True
    name = "dataset"

    def request(self, session: Session, queries: list[Query], context: dict) -> None:
        for q in queries:
            rnd = context[q.round][0]
            if rnd.gold is None:
                raise DataError(f"{session.ledger.path}: round {q.round} (example {q.example_id!r}) has no answer "
                                f"in the data, so the dataset oracle cannot label it; let a person answer "
                                f"(`budgetsft resume {session.ledger.path} --oracle web`, or file/terminal).")
            session.ledger.record_answer(q.id, int(rnd.gold), self.name, q.cost, n_candidates=rnd.n_candidates)


class WebOracle:
    """Leaves queries pending for ``budgetsft annotate``: its page and JSON API answer them."""

    immediate = False
    name = "web"

    def request(self, session: Session, queries: list[Query], context: dict) -> None:
        return None


class FileOracle:
    """Writes pending queries to a JSONL file for people or another tool to answer.

    Each line of the queries file is ``{"query_id", "round", "id", "prompt",
    "candidates", "latency"}``; answers come back through
    :func:`import_answers` (``budgetsft session import``) as lines
    ``{"query_id": 3, "label": 1, "annotator": "ann"}``.
    """

    immediate = False
    name = "file"

    def __init__(self, path: str | Path | None = None) -> None:
        if path is not None and not isinstance(path, str | os.PathLike):
            raise ConfigError(f"The 'path' parameter of FileOracle must be a path. Got {path!r}.")
        self.path = None if path is None else Path(path)

    def queries_path(self, session: Session) -> Path:
        """Where the queries go: inside the session's folder (a stored spec cannot point anywhere else)."""
        folder = Path(os.path.realpath(session.ledger.path)).parent
        if self.path is None:
            return session.ledger.path.with_suffix(".queries.jsonl")
        path = self.path if self.path.is_absolute() else session.ledger.path.parent / self.path
        real = Path(os.path.realpath(path))
        if real.parent != folder and folder not in real.parents:
            raise LedgerError(f"{session.ledger.path}: the file oracle's queries path {self.path} is outside the "
                              f"session's folder {folder}; move it there (or beneath it).")
        return real

    def request(self, session: Session, queries: list[Query], context: dict) -> None:
        path = self.queries_path(session)
        lines = []
        for q in session.ledger.pending():
            item = session.describe(q.round)
            lines.append(json.dumps({"query_id": q.id, "round": q.round, "id": item["id"], "prompt": item["prompt"],
                                     "candidates": item["candidates"], "latency": q.latency}))
        # A fresh temporary file (never an existing path or link), then an atomic rename over the target.
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write("".join(line + "\n" for line in lines))
            os.replace(tmp, path)  # atomic: a reader never sees half a file
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise


def import_answers(ledger: Ledger, path: str | Path, *, default_annotator: str = "file",
                   default_cost: float = 1.0) -> dict:
    """Import answers from JSONL into the ledger; every bad line is reported as ``file:line: reason``.

    Lines are checked first and nothing is written if any is bad; the answers
    are then committed in one transaction, all or none (an import that does
    not fit the budget charges nothing). An answer to a query that already
    has one is counted as a duplicate and not charged again.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such answers file.")
    session = Session(ledger)  # to count each queried round's candidates (its stream is built on first use)
    n_candidates: dict[int, int] = {}
    parsed, errors = [], []
    with path.open("rb") as fh:
        for n, raw in enumerate(fh, start=1):
            if len(raw) > MAX_ANSWER_LINE:
                errors.append(f"{path}:{n}: line of {len(raw)} bytes, longer than the limit of {MAX_ANSWER_LINE}")
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                errors.append(f"{path}:{n}: not valid UTF-8 ({exc.reason})")
                continue
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                errors.append(f"{path}:{n}: not valid JSON ({exc.msg})")
                continue
            except (ValueError, RecursionError) as exc:  # a 5,000-digit number, or nesting too deep
                errors.append(f"{path}:{n}: not usable JSON ({type(exc).__name__}: {str(exc)[:80]})")
                continue
            if not isinstance(obj, dict):
                errors.append(f"{path}:{n}: an answer must be an object with 'query_id' and 'label'")
                continue
            qid, label = obj.get("query_id"), obj.get("label")
            q = ledger.query(qid) if isinstance(qid, int) and not isinstance(qid, bool) else None
            if q is None:
                errors.append(f"{path}:{n}: unknown 'query_id' {qid!r}")
                continue
            if q.status == "skipped":
                errors.append(f"{path}:{n}: query {qid} was skipped; it takes no answer")
                continue
            if q.round not in n_candidates:
                n_candidates[q.round] = len(session.describe(q.round)["candidates"])
            K = n_candidates[q.round]
            if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < K:
                errors.append(f"{path}:{n}: 'label' must be an int in [0, {K - 1}]. Got {label!r}")
                continue
            annotator = obj.get("annotator", default_annotator)
            cost = obj.get("cost", default_cost)
            if not isinstance(annotator, str) or not annotator:
                errors.append(f"{path}:{n}: 'annotator' must be a non-empty string")
                continue
            if isinstance(cost, bool) or not isinstance(cost, int | float) or not math.isfinite(cost) or not cost > 0:
                errors.append(f"{path}:{n}: 'cost' must be a number > 0, finite. Got {cost!r}")
                continue
            parsed.append((q.id, label, annotator, float(cost), K))
    if errors:
        raise DataError("\n".join(errors))
    try:
        added, duplicates = ledger.record_answers(parsed)
    except BudgetExhaustedError as exc:
        raise BudgetExhaustedError(f"{path}: nothing imported: the {len(parsed)} answer(s) would not all fit "
                                   f"the budget ({exc})") from None
    return {"added": added, "duplicates": duplicates, "pending": len(ledger.pending())}


class TerminalOracle:
    """An interactive prompt: the prompt, numbered candidates, and a choice.

    Type a candidate's number or its name to answer, ``s`` to skip (no charge;
    the round counts as unqueried), ``u`` to undo the last answer (it is
    refunded and asked again), ``q`` to quit and save (``budgetsft resume``
    continues). A name is the candidate's text, ignoring case and the spaces
    around it (``finance`` answers ``Finance``); a name that no candidate has,
    or that several have, is not understood and asked again. A number is
    always a candidate's number, and ``s``, ``u`` and ``q`` are always the
    commands, even where a candidate's text is the same.
    """

    immediate = False  # the person may quit: the session checkpoints before asking

    def __init__(self, annotator: str = "terminal", cost: float = 1.0, stdin: TextIO | None = None,
                 stdout: TextIO | None = None) -> None:
        if not isinstance(annotator, str) or not annotator:
            raise ConfigError(f"The 'annotator' parameter of TerminalOracle must be a non-empty string. "
                              f"Got {annotator!r}.")
        self.annotator = annotator
        self.cost = _check_price("TerminalOracle", cost)
        self.stdin = stdin or sys.stdin
        self.stdout = stdout or sys.stdout
        self._last: Query | None = None  # the last query this oracle answered

    def _say(self, text: str) -> None:
        self.stdout.write(text)
        self.stdout.flush()

    def request(self, session: Session, queries: list[Query], context: dict) -> None:
        ledger = session.ledger
        todo = list(queries)
        while todo:
            q = todo[0]
            item = session.describe(q.round)
            K = len(item["candidates"])
            self._say(f"\n[round {q.round}/{session.horizon()} · spent {ledger.spent():g} of "
                      f"{ledger.budget_total:g} {ledger.budget_unit}]\n{item['prompt']}\n")
            for i, cand in enumerate(item["candidates"]):
                self._say(f"  {i}) {cand}\n")
            self._say(f"answer [0-{K - 1}] or a name, s=skip, u=undo last, q=quit and save: ")
            line = self.stdin.readline()
            if line == "":  # end of input: save and stop
                raise StopSession()
            choice = line.strip().lower()
            if choice == "q":
                self._say("saved; continue with `budgetsft resume`.\n")
                raise StopSession()
            if choice == "s":
                ledger.skip(q.id, self.annotator)
                todo.pop(0)
                continue
            if choice == "u":
                last = self._last
                if last is None or ledger.answer_for_round(last.round) is None:
                    self._say("nothing to undo.\n")
                    continue
                ledger.undo_answer(last.id)
                self._last = None
                self._say(f"undone: round {last.round}.\n")
                if any(p.id == last.id for p in queries):
                    todo.insert(0, ledger.query(last.id))
                    continue
                raise StopSession(undo_round=last.round)
            try:
                label = int(choice)
            except ValueError:
                named = _named(line.strip(), item["candidates"])
                if len(named) != 1:
                    why = f"; candidates {', '.join(map(str, named))} have that name, type a number" if named else ""
                    self._say(f"not understood: {line.strip()!r}{why}\n")
                    continue
                label = named[0]
            if not 0 <= label < K:
                self._say(f"no candidate {label}; choose 0-{K - 1}.\n")
                continue
            try:
                ledger.record_answer(q.id, label, self.annotator, self.cost, n_candidates=K)
            except BudgetExhaustedError as exc:
                ledger.skip(q.id, self.annotator)  # this rate no longer fits: nothing is charged
                self._say(f"{exc} Skipped.\n")
                todo.pop(0)
                continue
            self._last = q
            todo.pop(0)


def _named(name: str, candidates: list[str]) -> list[int]:
    """The indices of the candidates whose text is ``name``, ignoring case and surrounding spaces."""
    key = name.strip().casefold()
    return [i for i, cand in enumerate(candidates) if key and cand.strip().casefold() == key]


ORACLES = {"dataset": DatasetOracle, "file": FileOracle, "terminal": TerminalOracle, "web": WebOracle}


# What a stored oracle spec may set: nothing else (a session file is data from someone else).
_SPEC_KEYS = {"dataset": (), "file": ("path",), "terminal": ("annotator", "cost"), "web": ()}


def make_oracle(spec: dict | str | None) -> Oracle:
    """An oracle from its stored spec (``{"name": "file", "path": ...}``) or name."""
    spec = {"name": spec} if isinstance(spec, str) else dict(spec or {"name": "dataset"})
    name = spec.pop("name", "dataset")
    if not isinstance(name, str) or name not in ORACLES:
        raise ConfigError(f"unknown oracle {name!r}; valid: {', '.join(sorted(ORACLES))}.")
    unknown = sorted(set(spec) - set(_SPEC_KEYS[name]))
    if unknown:
        raise ConfigError(f"oracle {name!r} takes no {', '.join(map(repr, unknown))}; valid: "
                          f"{', '.join(_SPEC_KEYS[name]) or '(none)'}.")
    try:
        return ORACLES[name](**spec)
    except TypeError as exc:
        raise ConfigError(f"oracle {name!r}: {exc}") from exc
