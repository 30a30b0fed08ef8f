"""The canonical JSON Lines format (SPEC §8): strict reading with every problem reported.

One example a line::

    {"id": "q17", "prompt": "...", "candidates": ["...", "..."], "answer": 2, "cost": 1.5}

``answer`` may be missing (or null) for unlabelled pools; ``cost`` is optional. Extra
keys are ignored. Every invalid line is reported as ``"{file}:{line}: {reason}"``;
nothing is silently dropped. A line longer than :data:`MAX_LINE_BYTES` is refused
unread, as are numbers of thousands of digits, nesting too deep for the parser,
and text that is not valid Unicode (a lone surrogate such as ``"\ud800"``).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from budgetsft.data.schema import Example
from budgetsft.exceptions import DataError, DataWarning

__all__ = [
    "MAX_LINE_BYTES",
    "JsonlProblem",
    "JsonlReport",
    "load_jsonl",
    "read_jsonl",
    "validate_record",
    "write_jsonl",
]


# One example is a prompt and a few candidates: a line of 1 MiB is already far more than any data set
# needs, and a 10 MB line costs minutes and gigabytes to featurise.
MAX_LINE_BYTES = 1 << 20


def _unicode_problem(name: str, text: str) -> str | None:
    """A reason if ``text`` holds a lone surrogate (valid JSON, but not text any model can read)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"{name} holds a lone surrogate {text[exc.start]!r} at character {exc.start}"
    return None


@dataclass(frozen=True)
class JsonlProblem:
    """One invalid line of a JSONL file.

    ``str(problem)`` is ``"{file}:{line}: {reason}"``.
    """

    file: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


@dataclass(frozen=True)
class JsonlReport:
    """Result of :func:`read_jsonl`: the valid examples and every problem found.

    Attributes
    ----------
    path : str
        The file that was read.
    examples : list of Example
        The valid lines, in file order.
    problems : list of JsonlProblem
        One entry per invalid line (several reasons of one line are joined by ``"; "``).
    n_lines : int
        Non-blank lines read.
    lines : list of int
        The line number of each example in ``examples``.
    """

    path: str
    examples: list[Example] = field(default_factory=list)
    problems: list[JsonlProblem] = field(default_factory=list)
    n_lines: int = 0
    lines: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no line was invalid."""
        return not self.problems

    def summary(self) -> str:
        """A message listing every problem, one a line, under a header with the count."""
        n = len(self.problems)
        head = (
            f"{self.path}: {n} of {self.n_lines} non-blank line{'s' if self.n_lines != 1 else ''} "
            f"{'is' if n == 1 else 'are'} invalid:"
        )
        return "\n".join([head, *(f"  {p}" for p in self.problems)])


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def validate_record(record: Any) -> tuple[Example | None, list[str]]:
    """Check one decoded JSON value against the canonical schema.

    Parameters
    ----------
    record : object
        The value decoded from one line.

    Returns
    -------
    example : Example or None
        The example (id normalised to ``str``), or None when invalid.
    reasons : list of str
        Every problem found; empty when valid.

    Examples
    --------
    >>> ex, reasons = validate_record({"id": 3, "prompt": "2+2?", "candidates": ["4", "5"],
    ...                                "answer": 0})
    >>> ex.id, reasons
    ('3', [])
    >>> validate_record({"id": "a", "prompt": "x", "candidates": ["y"]})[1]
    ["'candidates' must be a list of at least 2 strings, got a list of 1"]
    """
    if not isinstance(record, dict):
        return None, [f"expected a JSON object, got {_type_name(record)}"]
    reasons: list[str] = []

    raw_id = record.get("id")
    ex_id: str | None = None
    if "id" not in record or raw_id is None:
        reasons.append("missing 'id'")
    elif isinstance(raw_id, bool) or not isinstance(raw_id, int | str):
        reasons.append(f"'id' must be a string or an integer, got {_type_name(raw_id)}")
    elif isinstance(raw_id, str) and not raw_id.strip():
        reasons.append("'id' must be a non-empty string")
    else:
        ex_id = str(raw_id)
        bad_text = _unicode_problem("'id'", ex_id)
        if bad_text:
            reasons.append(bad_text)
            ex_id = None

    prompt = record.get("prompt")
    if prompt is None or (isinstance(prompt, str) and not prompt.strip()):
        reasons.append("missing or empty 'prompt'")
    elif not isinstance(prompt, str):
        reasons.append(f"'prompt' must be a string, got {_type_name(prompt)}")
    elif _unicode_problem("'prompt'", prompt):
        reasons.append(_unicode_problem("'prompt'", prompt))  # type: ignore[arg-type]

    cands = record.get("candidates")
    cands_ok = False
    if cands is None:
        reasons.append("missing 'candidates'")
    elif not isinstance(cands, list):
        reasons.append(f"'candidates' must be a list of strings, got {_type_name(cands)}")
    elif len(cands) < 2:
        reasons.append(
            f"'candidates' must be a list of at least 2 strings, got a list of {len(cands)}"
        )
    else:
        bad = [
            f"'candidates'[{i}] must be a string, got {_type_name(c)}"
            for i, c in enumerate(cands)
            if not isinstance(c, str)
        ]
        bad += [
            f"'candidates'[{i}] is empty"
            for i, c in enumerate(cands)
            if isinstance(c, str) and not c.strip()
        ]
        bad += [
            p for i, c in enumerate(cands)
            if isinstance(c, str) and (p := _unicode_problem(f"'candidates'[{i}]", c))
        ]
        reasons += bad
        cands_ok = not bad

    answer = record.get("answer")
    if answer is not None:
        if isinstance(answer, bool) or not isinstance(answer, int):
            reasons.append(f"'answer' must be an integer index, got {_type_name(answer)}")
        elif cands_ok and not 0 <= answer < len(cands):  # type: ignore[arg-type]
            k = len(cands)  # type: ignore[arg-type]
            reasons.append(
                f"'answer' {answer} is out of range for {k} candidates (valid: 0..{k - 1})"
            )

    cost = record.get("cost")
    if cost is not None and (
        isinstance(cost, bool)
        or not isinstance(cost, int | float)
        or not math.isfinite(cost)
        or cost < 0
    ):
        reasons.append(f"'cost' must be a finite number >= 0, got {cost!r}")

    if reasons:
        return None, reasons
    assert ex_id is not None and isinstance(prompt, str)  # guaranteed by the checks above
    return (
        Example(
            id=ex_id,
            prompt=prompt,
            candidates=tuple(cands),  # type: ignore[arg-type]
            answer=answer,
            cost=None if cost is None else float(cost),
        ),
        [],
    )


def read_jsonl(path: str | os.PathLike[str], *, max_line_bytes: int = MAX_LINE_BYTES) -> JsonlReport:
    """Read a canonical JSONL file, collecting every problem instead of raising.

    Blank lines are skipped. Lines are numbered from 1 as in an editor.

    Parameters
    ----------
    path : str or path-like
    max_line_bytes : int, default=MAX_LINE_BYTES
        A longer line is a problem ("line of N bytes, longer than the limit"), not parsed.

    Returns
    -------
    JsonlReport
        Valid examples plus one :class:`JsonlProblem` per invalid line.

    Raises
    ------
    DataError
        If the file does not exist or cannot be read.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "d.jsonl"
    >>> _ = p.write_text('{"id": 1, "prompt": "p", "candidates": ["a", "b"], "answer": 1}\\n'
    ...                  '{"id": 1, "prompt": "q", "candidates": ["a", "b"]}\\n')
    >>> rep = read_jsonl(p)
    >>> len(rep.examples), rep.problems[0].reason
    (1, "duplicate id '1' (first seen on line 1)")
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"JSONL file not found: {str(p)!r}")
    if not p.is_file():
        raise DataError(f"Not a file: {str(p)!r}")
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise DataError(f"Cannot read {str(p)!r}: {exc}") from exc

    name = str(p)
    examples: list[Example] = []
    lines: list[int] = []
    problems: list[JsonlProblem] = []
    first_line_of_id: dict[str, int] = {}
    n_lines = 0
    for lineno, bline in enumerate(raw.split(b"\n"), start=1):
        if lineno == 1 and bline.startswith(b"\xef\xbb\xbf"):
            bline = bline[3:]  # UTF-8 byte-order mark
        if len(bline) > max_line_bytes:
            n_lines += 1
            problems.append(JsonlProblem(name, lineno, f"line of {len(bline)} bytes, longer than the limit of "
                                                       f"{max_line_bytes} bytes (budgetsft.data.jsonl.MAX_LINE_BYTES)"))
            continue
        try:
            text = bline.decode("utf-8")
        except UnicodeDecodeError as exc:
            n_lines += 1
            problems.append(JsonlProblem(name, lineno, f"not valid UTF-8 ({exc.reason})"))
            continue
        if not text.strip():
            continue
        n_lines += 1
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            problems.append(
                JsonlProblem(name, lineno, f"invalid JSON ({exc.msg} at column {exc.colno})")
            )
            continue
        except ValueError as exc:  # e.g. an integer of thousands of digits
            problems.append(JsonlProblem(name, lineno, f"unusable JSON ({str(exc)[:120]})"))
            continue
        except RecursionError:
            problems.append(JsonlProblem(name, lineno, "unusable JSON (nested too deeply)"))
            continue
        example, reasons = validate_record(record)
        # Duplicate ids are checked on every line whose id is usable, valid or not,
        # so a file with a duplicate is always flagged.
        if isinstance(record, dict):
            rid = record.get("id")
            if isinstance(rid, int | str) and not isinstance(rid, bool) and str(rid).strip():
                key = str(rid)
                if key in first_line_of_id:
                    reasons.append(
                        f"duplicate id {key!r} (first seen on line {first_line_of_id[key]})"
                    )
                    example = None
                else:
                    first_line_of_id[key] = lineno
        if reasons:
            problems.append(JsonlProblem(name, lineno, "; ".join(reasons)))
        else:
            assert example is not None
            examples.append(example)
            lines.append(lineno)
    return JsonlReport(
        path=name, examples=examples, problems=problems, n_lines=n_lines, lines=lines
    )


def load_jsonl(path: str | os.PathLike[str], *, skip_invalid: bool = False) -> list[Example]:
    """Load a canonical JSONL file of examples, validating every line.

    Parameters
    ----------
    path : str or path-like
    skip_invalid : bool, default False
        If False, any invalid line raises :class:`DataError` after the whole file has
        been read, with every problem in the message (and in ``err.problems``).
        If True, invalid lines are skipped and a ``DataWarning`` (a ``UserWarning``) says
        how many; use :func:`read_jsonl` to get the problems as data.

    Returns
    -------
    list of Example
        The valid examples in file order.

    Raises
    ------
    DataError
        Missing file, or invalid lines when ``skip_invalid`` is False.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "d.jsonl"
    >>> _ = p.write_text('{"id": "q1", "prompt": "2+2?", "candidates": ["4", "5"], "answer": 0}\\n')
    >>> load_jsonl(p)[0].candidates
    ('4', '5')
    """
    report = read_jsonl(path)
    if report.problems:
        if not skip_invalid:
            err = DataError(report.summary())
            err.problems = list(report.problems)  # type: ignore[attr-defined]
            raise err
        n = len(report.problems)
        warnings.warn(
            f"{report.path}: skipped {n} invalid line{'s' if n != 1 else ''} of "
            f"{report.n_lines}; first: {report.problems[0]} "
            "(use budgetsft.data.read_jsonl to see them all)",
            DataWarning,
            stacklevel=2,
        )
    return report.examples


def write_jsonl(
    examples: Iterable[Example] | Iterable[Mapping[str, Any]], path: str | os.PathLike[str]
) -> Path:
    """Write examples as canonical JSONL (UTF-8, one object a line, non-ASCII kept).

    Every example is validated first (same rules as :func:`load_jsonl`, ids unique),
    so what is written always loads back; nothing is written if one is invalid.

    Parameters
    ----------
    examples : iterable of Example (or of canonical dicts)
    path : str or path-like
        Parent folders are created.

    Returns
    -------
    pathlib.Path
        The path written.

    Raises
    ------
    DataError
        If an example is invalid or an id repeats.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "out.jsonl"
    >>> _ = write_jsonl([Example("q1", "Café?", ("oui", "non"), answer=0)], p)
    >>> p.read_text(encoding="utf-8").strip()
    '{"id": "q1", "prompt": "Café?", "candidates": ["oui", "non"], "answer": 0}'
    """
    p = Path(path)
    lines: list[str] = []
    seen: dict[str, int] = {}
    problems: list[str] = []
    for i, ex in enumerate(examples):
        record: Any = ex.to_json() if isinstance(ex, Example) else dict(ex)  # type: ignore[call-overload]
        checked, reasons = validate_record(record)
        if checked is not None:
            if checked.id in seen:
                reasons = [f"duplicate id {checked.id!r} (first seen at index {seen[checked.id]})"]
            else:
                seen[checked.id] = i
        if reasons:
            problems.append(f"example {i}: {'; '.join(reasons)}")
            continue
        assert checked is not None
        lines.append(json.dumps(checked.to_json(), ensure_ascii=False))
    if problems:
        raise DataError(
            f"Cannot write {str(p)!r}: {len(problems)} invalid example"
            f"{'s' if len(problems) != 1 else ''}:\n" + "\n".join(f"  {q}" for q in problems)
        )
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "w", encoding="utf-8", newline="\n") as fh:
        for line in lines:
            fh.write(line + "\n")
    return p
