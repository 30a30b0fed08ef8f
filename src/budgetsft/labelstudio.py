"""Label Studio round trip: a session's queries out as Label Studio tasks, its JSON export back as paid labels.

Teams that pay experts often label in `Label Studio <https://labelstud.io>`_.
:func:`export_tasks` turns a session's pending and bought queries into Label
Studio tasks and :func:`label_config` gives the matching labeling config; the
team imports both into a project, labels there, and exports the project with
Label Studio's *Export → JSON*. :func:`import_export` reads that file back and
commits the labels to the ledger, charging each at its annotator's price.

A task's ``data`` holds what the annotator sees and what brings the label home:

=============  ===============================================================
key            value
=============  ===============================================================
prompt         the prompt (the ``<Text>`` of the config)
options        ``[{"value": choice}, ...]``: the candidates, as Label Studio's
               per-task dynamic choices (``<Choices value="$options">``)
candidates     the candidates, as the session has them
query_id       the ledger's query id
round          the round of the stream that asked
example_id     the example's id
session        a digest of the session's config: an export of another
               session is refused
status         ``pending`` or ``answered`` (a bought label, shown as a
               Label Studio prediction)
=============  ===============================================================

A choice is the candidate's text; when two candidates of a query are equal
(or one is blank) every choice of that query is numbered, ``"0: text"``, so
that a choice always names one candidate.

The import is all or nothing: every task is checked first, and any bad one
(unknown query, wrong session, a choice that is not a candidate, a label that
contradicts the ledger's, an annotator with no price) is reported by its
Label Studio task id with nothing written. A query is paid once: a label the
ledger already holds is a duplicate and charges nothing, so importing the
same export twice is a no-op. An export whose new labels would exceed the
budget left is refused whole.

Label Studio itself is not needed here: these are plain JSON and XML files
(``pip install 'budgetsft[labelstudio]'`` installs the server and its SDK).

Examples
--------
>>> choice_values(["yes", "no"])
['yes', 'no']
>>> choice_values(["same", "same", ""])
['0: same', '1: same', '2: ']
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from budgetsft._validation import is_int
from budgetsft.exceptions import BudgetExhaustedError, ConfigError, DataError
from budgetsft.sessions.ledger import Ledger, Query

__all__ = ["CONTROL", "OBJECT", "label_config", "choice_values", "session_key", "export_tasks", "write_tasks",
           "config_path_for", "read_annotators", "import_export", "import_tasks", "import_message",
           "LabelStudioExport"]

CONTROL = "label"  # the <Choices> tag: an annotation result's "from_name"
OBJECT = "prompt"  # the <Text> tag: an annotation result's "to_name"
MODEL_VERSION = "budgetsft-ledger"  # the "prediction" that shows a bought label


# Bad tasks listed in an error message; the rest are counted (an export of 300k foreign tasks is one line).
MAX_LISTED = 20


def label_config() -> str:
    """The labeling config of a budgetsft project: the prompt, and one required choice among its candidates.

    The candidates differ from task to task, so the choices are dynamic: Label
    Studio builds them from each task's ``data.options``.
    """
    return (
        "<View>\n"
        f'  <Text name="{OBJECT}" value="${OBJECT}"/>\n'
        f'  <Choices name="{CONTROL}" toName="{OBJECT}" value="$options" choice="single-radio" required="true"\n'
        '           requiredMessage="Choose the candidate that is correct."/>\n'
        "</View>\n"
    )


def choice_values(candidates: Sequence[str]) -> list[str]:
    """The choice of each candidate: its text, or ``"i: text"`` for all when two are equal or one is blank."""
    texts = [str(c) for c in candidates]
    if len(set(texts)) == len(texts) and all(t.strip() for t in texts):
        return texts
    return [f"{i}: {t}" for i, t in enumerate(texts)]


def session_key(ledger: Ledger) -> str:
    """A short digest of a session's stored config: tasks carry it, and an import checks it.

    The gate's ``schedule`` is left out: a session stores the LLF spending rule it plays since the dual price
    became the default, and a ledger made before was given its rule on opening, so tasks exported before
    that keep their key.
    """
    cfg = json.loads(ledger.meta("config"))
    if isinstance(cfg.get("gate"), dict) and "schedule" in cfg["gate"]:
        cfg = {**cfg, "gate": {k: v for k, v in cfg["gate"].items() if k != "schedule"}}
    return hashlib.sha256(json.dumps(cfg, sort_keys=True).encode("utf-8")).hexdigest()[:16]


def _result(choice: str) -> list[dict]:
    return [{"from_name": CONTROL, "to_name": OBJECT, "type": "choices", "value": {"choices": [choice]}}]


def export_tasks(session, queries: Sequence[Query] | None = None, *, mark_ledger: bool = True) -> list[dict]:
    """The session's pending (largest latency first) then bought (by round) queries as Label Studio tasks.

    Parameters
    ----------
    session : Session
    queries : sequence of Query, optional
        Only these queries (``budgetsft select --format label-studio``: the batch just picked).
    mark_ledger : bool, default=True
        Give each task the ledger's id (``data.ledger``), so that an export is taken back only by the
        ledger file it came from, not by another one made with the same config (the sync, which knows
        which tasks it pushed to its project, leaves it out).

    Returns
    -------
    list of dict
        One task per query: ``{"data": {...}}``, plus ``"predictions"`` (the
        bought label) for a query already answered. Skipped queries take no
        answer and are left out.
    """
    ledger = session.ledger
    key = session_key(ledger)
    answers = {a.query_id: a for a in ledger.answers()}
    if queries is None:
        queries = ledger.pending() + ledger.queries(("answered",))
    tasks = []
    for q in queries:
        item = session.describe(q.round)
        choices = choice_values(item["candidates"])
        task: dict = {"data": {
            OBJECT: item["prompt"],
            "options": [{"value": c} for c in choices],
            "candidates": list(item["candidates"]),
            "query_id": q.id,
            "round": q.round,
            "example_id": item["id"],
            "session": key,
            "status": q.status,
        }}
        if mark_ledger:
            task["data"]["ledger"] = ledger.meta("ledger_id")
        ans = answers.get(q.id)
        if ans is not None:
            task["predictions"] = [{"model_version": MODEL_VERSION, "score": 1.0, "result": _result(
                choices[ans.label])}]
        tasks.append(task)
    return tasks


def config_path_for(dest: str | Path) -> Path:
    """Where the labeling config goes beside a tasks file: ``tasks.json`` -> ``tasks.label_config.xml``."""
    dest = Path(dest)
    return dest.with_name(dest.stem + ".label_config.xml")


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:  # written whole, then renamed into place: a failure never leaves half a file
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@dataclass(frozen=True)
class LabelStudioExport:
    """What :func:`write_tasks` wrote: the tasks file, the config beside it, and how many tasks of each kind."""

    tasks_path: Path
    config_path: Path
    pending: int
    answered: int


def write_tasks(session, dest: str | Path, *, force: bool = False,
                queries: Sequence[Query] | None = None) -> LabelStudioExport:
    """Write :func:`export_tasks` to ``dest`` (a JSON list) and :func:`label_config` beside it.

    Refuses to overwrite either file unless ``force``.
    """
    dest = Path(dest)
    config = config_path_for(dest)
    for path in (dest, config):
        if path.exists() and not force:
            raise ConfigError(f"{path}: file exists; pass --force to overwrite it.")
        if path.exists() and not path.is_file():
            raise ConfigError(f"{path}: not a regular file.")
    if not dest.parent.is_dir():
        raise ConfigError(f"{dest}: folder {dest.parent} does not exist.")
    tasks = export_tasks(session, queries)
    _write_atomic(dest, json.dumps(tasks, indent=1, ensure_ascii=False) + "\n")
    _write_atomic(config, label_config())
    pending = sum(1 for t in tasks if t["data"]["status"] == "pending")
    return LabelStudioExport(dest, config, pending, len(tasks) - pending)


# ---------------------------------------------------------------- import
def _check_price(owner: str, cost) -> float:
    if isinstance(cost, bool) or not isinstance(cost, int | float) or not math.isfinite(cost) or cost <= 0:
        raise ConfigError(f"The 'cost' of {owner} must be a finite number > 0. Got {cost!r}.")
    return float(cost)


def read_annotators(source: str | Path | Mapping) -> dict[str, tuple[str, float | None]]:
    """Read a map from Label Studio annotators to ledger annotators (JSON or YAML file, or a mapping).

    Keys are Label Studio user ids or emails; each value is a ledger
    annotator's name (charged at that annotator's price) or
    ``{"name": NAME, "cost": PRICE}``::

        {"1": "ana", "bo@example.org": {"name": "bo", "cost": 2.5}}

    Returns
    -------
    dict
        ``key -> (name, cost or None)``; emails are lower-cased.
    """
    where = "the annotators map"
    if not isinstance(source, Mapping):
        import yaml

        path = Path(source)
        where = str(path)
        try:
            source = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the annotators map ({exc.strerror or exc}).") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid JSON or YAML ({str(exc).splitlines()[0]}).") from None
        if not isinstance(source, Mapping):
            raise ConfigError(f"{path}: the annotators map must be an object "
                              f'{{"<Label Studio user id or email>": "<ledger annotator>"}}.')
    out: dict[str, tuple[str, float | None]] = {}
    for key, value in source.items():
        if isinstance(key, bool) or not isinstance(key, str | int) or not str(key).strip():
            raise ConfigError(f"{where}: a key must be a Label Studio user id or email. Got {key!r}.")
        norm = _norm_user(key)
        if isinstance(value, str) and value:
            out[norm] = (value, None)
        elif isinstance(value, Mapping) and isinstance(value.get("name"), str) and value["name"] and (
                set(value) <= {"name", "cost"}):
            cost = value.get("cost")
            out[norm] = (value["name"], None if cost is None else _check_price(f"{key!r} in {where}", cost))
        else:
            raise ConfigError(f"{where}: the annotator of {key!r} must be a ledger annotator's name or "
                              f'{{"name": NAME, "cost": PRICE}}. Got {value!r}.')
    return out


def _norm_user(key) -> str:
    text = str(key).strip()
    return text.lower() if "@" in text else text


def _user_keys(completed_by) -> tuple[list[str], str]:
    """The keys an annotation's author may be mapped by (email first, then id), and how to name them."""
    if isinstance(completed_by, Mapping):
        uid, email = completed_by.get("id"), completed_by.get("email")
        keys = [_norm_user(email)] if isinstance(email, str) and email.strip() else []
        if isinstance(uid, int) and not isinstance(uid, bool):
            keys.append(str(uid))
        shown = f"{uid} ({email})" if email and uid is not None else str(email or uid)
        return keys, shown
    if isinstance(completed_by, int) and not isinstance(completed_by, bool):
        return [str(completed_by)], str(completed_by)
    if isinstance(completed_by, str) and completed_by.strip():
        return [_norm_user(completed_by)], completed_by
    return [], repr(completed_by)


@dataclass
class _Label:
    """One usable annotation: its task, the label, who gave it (as Label Studio names them), and when."""

    task: str
    where: str
    annotation: str
    label: int
    completed_by: object
    order: tuple


def _load_export(path: Path) -> list:
    if not path.is_file():
        raise DataError(f"{path}: no such Label Studio export.")
    try:
        tasks = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not valid UTF-8 ({exc.reason}).") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno}).") from None
    except (ValueError, RecursionError) as exc:
        raise DataError(f"{path}: not usable JSON ({type(exc).__name__}: {str(exc)[:80]}).") from None
    if not isinstance(tasks, list):
        raise DataError(f"{path}: a Label Studio JSON export is a list of tasks. Got a {type(tasks).__name__} "
                        f"(is this Label Studio's 'JSON' export, not 'JSON-MIN' or 'CSV'?).")
    return tasks


def import_export(ledger: Ledger, path: str | Path, *, annotators: str | Path | Mapping | None = None) -> dict:
    """Commit the labels of a Label Studio JSON export to the ledger: all or nothing, each query paid once.

    Reads the file and hands its tasks to :func:`import_tasks`, which does the same with tasks in memory.

    Parameters
    ----------
    ledger : Ledger
    path : str or Path
        Label Studio's *Export → JSON* of a project made from
        :func:`write_tasks`' files.
    annotators : path or mapping, optional
        :func:`read_annotators`' map. A Label Studio annotator it does not
        name is looked up among the ledger's live annotators by email, then by
        user id (``budgetsft annotate DB --add-annotator ana@example.org
        --cost 2``), and charged at that annotator's price.

    Returns
    -------
    dict
        ``added`` (labels charged), ``duplicates`` (labels the ledger already
        held: nothing charged), ``extra`` (further agreeing annotations of a
        query: one label per query is bought), ``cancelled`` (skipped in Label
        Studio), ``unlabelled`` (tasks without annotations), ``charged`` (the
        budget this import used, in ``unit``), ``spent`` and ``budget`` (the
        ledger's, after it), ``pending`` (queries still pending) and ``tasks``.

    Raises
    ------
    DataError
        Listing every bad task by its Label Studio id; nothing is written.
    BudgetExhaustedError
        When the new labels do not fit the budget left; nothing is written.
    """
    path = Path(path)
    return _import_tasks(ledger, _load_export(path), annotators, str(path), {"file": str(path)},
                         "keep fewer labels in the export (Label Studio can export selected tasks) and import again")


def import_tasks(ledger: Ledger, tasks: Sequence, *, annotators: str | Path | Mapping | None = None,
                 source: str = "Label Studio tasks", hint: str | None = None) -> dict:
    """Commit the labels of Label Studio tasks (as its JSON export writes them) to the ledger, all or nothing.

    What :func:`import_export` does with a file, on tasks already in memory
    (``budgetsft labelstudio sync`` reads them from Label Studio's API).

    Parameters
    ----------
    ledger : Ledger
    tasks : sequence of dict
        Label Studio tasks, each with its ``id``, ``data`` (as :func:`export_tasks`
        wrote it) and ``annotations``.
    annotators : path or mapping, optional
        As in :func:`import_export`.
    source : str
        What the tasks are, for the messages (a file's path, a project's URL).
    hint : str, optional
        What to do when the labels do not fit the budget (ends that message).

    Returns
    -------
    dict
        As :func:`import_export`.

    Raises
    ------
    DataError, BudgetExhaustedError
        As :func:`import_export`; nothing is written.
    """
    return _import_tasks(ledger, tasks, annotators, source, {"source": source},
                         hint or "the labels stay where they are; nothing was charged")


def _import_tasks(ledger: Ledger, tasks: Sequence, annotators, path: str, event: dict, hint: str) -> dict:
    from budgetsft.sessions.session import Session

    if isinstance(tasks, str | bytes) or not isinstance(tasks, Sequence):
        raise DataError(f"{path}: Label Studio tasks come as a list. Got a {type(tasks).__name__}.")
    mapping = {} if annotators is None else read_annotators(annotators)
    session = Session(ledger)  # the candidates of each queried round (the stream is rebuilt on first use)
    key = session_key(ledger)
    ledger_id = ledger.meta("ledger_id")
    live = {a.name: a for a in ledger.annotators()}
    revoked = {a.name for a in ledger.annotators(include_revoked=True) if a.revoked is not None}
    described: dict[int, dict] = {}
    errors: list[tuple[int, str]] = []  # (task index, message): reported in the order of the tasks
    labels: dict[int, list[_Label]] = {}  # query id -> its usable annotations
    cancelled = unlabelled = 0

    def bad(index: int, message: str) -> None:
        errors.append((index, message))

    def annotator_of(completed_by, where: str, index: int) -> tuple[str, float] | None:
        keys, shown = _user_keys(completed_by)
        for k in keys:
            if k in mapping:
                name, cost = mapping[k]
                if cost is None:
                    if name not in live:
                        bad(index, f"{where}: Label Studio annotator {shown} maps to {name!r}, which is "
                                      + ("revoked" if name in revoked else "not an annotator")
                                      + " in this ledger; give its price in the map "
                                        f'({{"name": "{name}", "cost": PRICE}}) or add it with `budgetsft '
                                        f"annotate {ledger.path} --add-annotator {name} --cost PRICE`")
                        return None
                    return name, live[name].cost
                if name in revoked and name not in live:
                    bad(index, f"{where}: Label Studio annotator {shown} maps to {name!r}, which is revoked in "
                                  f"this ledger: a revoked annotator is not paid, whatever the map's price")
                    return None
                if name in live and live[name].cost != cost:
                    bad(index, f"{where}: the map prices {name!r} at {cost:g} but the ledger's annotator "
                                  f"{name!r} costs {live[name].cost:g}; give one price")
                    return None
                return name, cost
        for k in keys:
            if k in live:
                return k, live[k].cost
        hint = " (revoked in this ledger)" if any(k in revoked for k in keys) else ""
        k = keys[0] if keys else "ID"
        bad(index, f"{where}: Label Studio annotator {shown}{hint} has no ledger annotator and so no price: "
                      f'map it with --annotators FILE ({{"{k}": "NAME"}} for a ledger annotator, or '
                      f'{{"{k}": {{"name": "NAME", "cost": PRICE}}}})')
        return None

    for index, task in enumerate(tasks):
        tid = task.get("id") if isinstance(task, dict) else None
        tname = f"task {tid}" if is_int(tid) or isinstance(tid, str) else f"task #{index + 1} (no id)"
        where = tname
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
            bad(index, f"{where}: not a Label Studio task (no 'data' object)")
            continue
        data = task["data"]
        qid = data.get("query_id")
        if not is_int(qid):
            bad(index, f"{where}: not a budgetsft task (its data has no integer 'query_id'; got {qid!r})")
            continue
        where = f"{tname} (query {qid})"
        if data.get("session") != key:
            bad(index, f"{where}: exported from another session (session {data.get('session')!r}, this one "
                          f"is {key!r})")
            continue
        if "ledger" in data and data["ledger"] != ledger_id:
            bad(index, f"{where}: exported from another session file (ledger {str(data['ledger'])[:20]!r}; this "
                          f"one is {ledger_id!r}), made with the same config: its query ids are not this "
                          f"ledger's")
            continue
        q = ledger.query(qid)
        if q is None:
            bad(index, f"{where}: unknown query id {qid}")
            continue
        if data.get("round") != q.round:
            bad(index, f"{where}: its round {data.get('round')!r} is not the query's round {q.round}")
            continue
        if q.status == "skipped":
            bad(index, f"{where}: query {qid} was skipped; it takes no answer")
            continue
        if q.round not in described:
            described[q.round] = session.describe(q.round)
        item = described[q.round]
        if data.get("example_id", item["id"]) != item["id"] or (
                "candidates" in data and data["candidates"] != item["candidates"]):
            bad(index, f"{where}: its example changed (the session has {item['id']!r} with candidates "
                          f"{item['candidates']!r} at round {q.round})")
            continue
        choices = choice_values(item["candidates"])
        annotations = task.get("annotations", [])
        if not isinstance(annotations, list):
            bad(index, f"{where}: 'annotations' must be a list")
            continue
        if not annotations:
            unlabelled += 1
        for n, ann in enumerate(annotations):
            aid = ann.get("id") if isinstance(ann, dict) else None
            at = f"{where}, annotation {aid if aid is not None else f'#{n + 1}'}"
            if not isinstance(ann, dict):
                bad(index, f"{at}: not an object")
                continue
            if ann.get("was_cancelled"):
                cancelled += 1  # skipped in Label Studio: the query stays pending
                continue
            result = ann.get("result")
            picked = [r for r in result if isinstance(r, dict) and r.get("type") == "choices"] \
                if isinstance(result, list) else None
            if not picked:
                bad(index, f"{at}: no choice in its result")
                continue
            if len(picked) > 1 or picked[0].get("from_name") != CONTROL or not isinstance(
                    picked[0].get("value"), dict):
                names = sorted({str(r.get("from_name")) for r in picked})
                bad(index, f"{at}: expected one choice of the control {CONTROL!r}; got {len(picked)} from "
                              f"{', '.join(names)} (was the project's labeling config changed?)")
                continue
            chosen = picked[0]["value"].get("choices")
            if not isinstance(chosen, list) or len(chosen) != 1:
                bad(index, f"{at}: expected exactly one choice; got {chosen!r}")
                continue
            if chosen[0] not in choices:
                bad(index, f"{at}: choice {chosen[0]!r} is not among the candidates of query {qid} "
                              f"(round {q.round}): {choices!r}")
                continue
            order = (str(ann.get("created_at") or ""), aid if is_int(aid) else 0, index, n)
            labels.setdefault(qid, []).append(_Label(tname, at, f"annotation {aid if aid is not None else n + 1}",
                                                     choices.index(chosen[0]), ann.get("completed_by"), order))
    items, duplicates, extra = [], 0, 0
    for qid, found in sorted(labels.items()):
        found.sort(key=lambda x: x.order)
        index = found[0].order[2]
        distinct = sorted({x.label for x in found})
        q = ledger.query(qid)
        K = len(described[q.round]["candidates"])
        if len(distinct) > 1:
            shown = choice_values(described[q.round]["candidates"])
            said = "; ".join(f"{x.task}, {x.annotation} by Label Studio user {_user_keys(x.completed_by)[1]}: "
                             f"{shown[x.label]!r}" for x in found)
            bad(index, f"{found[0].task} (query {qid}): its annotations disagree ({said}); the ledger buys one "
                          f"label per query: keep one answer in Label Studio and export again")
            continue
        ans = ledger.answer_for_round(q.round)
        if ans is not None:
            if ans.label != found[0].label:
                bad(index, f"{found[0].task} (query {qid}): the ledger already holds label {ans.label} (by "
                              f"{ans.annotator}) for this query; the export says {found[0].label} "
                              f"({choice_values(described[q.round]['candidates'])[found[0].label]!r})")
                continue
            duplicates += 1
            extra += len(found) - 1
            continue
        first = found[0]  # the earliest annotation is the one bought (and its annotator paid)
        who = annotator_of(first.completed_by, first.where, index)
        if who is None:
            continue
        items.append((qid, first.label, who[0], who[1], K))
        extra += len(found) - 1
    if errors:
        listed = [msg for _, msg in sorted(errors, key=lambda e: e[0])]
        shown = listed[:MAX_LISTED]
        more = f"\n  ... and {len(listed) - len(shown)} more" if len(listed) > len(shown) else ""
        raise DataError(f"{path}: nothing imported: {len(listed)} bad item(s):\n  " + "\n  ".join(shown) + more)
    charge = sum((Fraction(ledger.price(cost)) for _, _, _, cost, _ in items), Fraction(0))
    left = Fraction(ledger.budget_total) - Fraction(ledger.meta("spent"))
    unit = ledger.budget_unit
    words = "cost units" if unit == "cost" else "labels"
    if charge > left:
        raise BudgetExhaustedError(
            f"{path}: nothing imported: its {len(items)} new label(s) would charge {float(charge):g} {words} but "
            f"only {float(left):g} of the budget's {ledger.budget_total:g} {words} remain; {hint}.")
    try:  # one transaction: the ledger checks the budget again, exactly, counting live web leases as reserved
        added, dup = ledger.record_answers(items) if items else (0, 0)
    except BudgetExhaustedError as exc:
        raise BudgetExhaustedError(f"{path}: nothing imported: its {len(items)} new label(s) do not all fit the "
                                   f"budget ({exc})") from None
    duplicates += dup
    if added:
        ledger.log("labelstudio_import", {**event, "added": added, "duplicates": duplicates})
    return {"added": added, "duplicates": duplicates, "extra": extra, "cancelled": cancelled,
            "unlabelled": unlabelled, "charged": float(charge) if added else 0.0, "unit": unit, "tasks": len(tasks),
            "spent": ledger.spent(), "budget": ledger.budget_total, "pending": len(ledger.pending())}


def import_message(res: dict, path: str | Path) -> str:
    """One line saying what :func:`import_export` did (``res``, its result) with the export at ``path``."""
    unit = "cost units" if res["unit"] == "cost" else "labels"
    notes = "".join(f", {n} {what}" for n, what in (
        (res["cancelled"], "skipped in Label Studio"),
        (res["extra"], "further annotation(s) not bought (one label per query)"),
        (res["unlabelled"], "task(s) without annotations")) if n)
    if res["added"]:
        return (f"imported {res['added']} label(s) from {path}, charged {res['charged']:g} {unit} "
                f"({res['budget'] - res['spent']:g} of {res['budget']:g} left); {res['duplicates']} already in the "
                f"ledger{notes}; {res['pending']} still pending")
    if res["duplicates"]:
        return (f"nothing new: all {res['duplicates']} label(s) of {path} are already in the ledger; nothing "
                f"charged{notes}; {res['pending']} still pending")
    return f"no labels in {path}: nothing charged{notes}; {res['pending']} still pending"
