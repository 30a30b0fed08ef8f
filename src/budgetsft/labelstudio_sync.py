"""Live Label Studio: the active-learning loop that Label Studio Community lacks (``budgetsft labelstudio sync``).

Label Studio orders tasks for active learning only in its Enterprise edition.
:func:`sync` closes the loop from budgetsft's side, talking to a project over
Label Studio's REST API; each pass (:func:`sync_once`):

1. reads what the project holds: its tasks with their annotations (one
   *Export → JSON* of the project, the same format ``session import --format
   label-studio`` reads);
2. **pulls**: the annotations of this session's pending queries are charged in
   the ledger, each at its annotator's price, all or nothing
   (:func:`budgetsft.labelstudio.import_tasks`); the ledger stays the truth:
   a query it already holds an answer for (or skipped) is left as it is;
3. **releases**: a query whose task holds only skips (``was_cancelled``
   annotations) or whose task was deleted from the project is skipped in the
   ledger, which frees what it held of the budget;
4. **pushes**: pending queries that the project does not hold yet become tasks
   (``data.query_id`` and ``data.session`` say which query of which session):
   the project is read back on every pass and the ledger remembers what went
   to which project, so no query is pushed twice and a deleted task is not
   pushed again;
5. when nothing is pending any more, a pool session picks its next batch
   (:func:`budgetsft.sessions.pool.select_batch`, conditioned on every label
   so far, never past the budget) and pushes it; a stream session plays on to
   its next queries, as ``budgetsft annotate`` does, and pushes them.

Every step can be interrupted and repeated: a task pushed but not yet
remembered is found in the project on the next pass, a label charged twice is
a duplicate the ledger refuses to charge again, a release is idempotent.

The client speaks HTTP with the standard library (label-studio-sdk pins
numpy below 2.3 through OpenCV, which would downgrade the numerical stack);
it authenticates as the SDK does: a personal access token (a JWT refresh
token) is exchanged for short-lived access tokens, a legacy token is sent as
``Token KEY``.

Examples
--------
>>> client = LabelStudioClient("http://127.0.0.1:8080/", "0123abcd")
>>> client.url
'http://127.0.0.1:8080'
>>> is_budgetsft_config("<View><Text name='prompt' value='$prompt'/></View>")
False
"""

from __future__ import annotations

import base64
import binascii
import http.client
import json
import math
import time
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from budgetsft._validation import is_int
from budgetsft.exceptions import BudgetExhaustedError, BudgetsftError, ConfigError, DataError
from budgetsft.labelstudio import (
    CONTROL,
    OBJECT,
    export_tasks,
    import_tasks,
    label_config,
    read_annotators,
    session_key,
)

__all__ = ["DEFAULT_INTERVAL", "RELEASED_BY", "LabelStudioClient", "LabelStudioError", "SyncPass", "sync_once",
           "sync", "pass_message", "is_budgetsft_config"]

DEFAULT_INTERVAL = 10.0  # seconds between passes
RELEASED_BY = "label-studio"  # who skipped a released query, in the ledger's events
_PUSHED = "labelstudio_pushed"  # meta key prefix: the queries pushed to one project
_REFRESH_MARGIN = 30.0  # seconds before an access token expires that a new one is fetched
_now = time.time  # the clock access tokens expire by (a test sets it to the time of a recording)


class LabelStudioError(BudgetsftError):
    """Label Studio refused a request or could not be reached.

    ``status`` is the HTTP status (None when no answer came); ``transient`` says
    that trying again later may work (no answer, a timeout, a 5xx or a 429).
    """

    def __init__(self, message: str, *, status: int | None = None, transient: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.transient = transient


def _jwt_claims(token: str) -> dict | None:
    """The claims of a JWT, unverified (the server checks the signature); None when it is not one."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, binascii.Error):
        return None
    return claims if isinstance(claims, dict) else None


class LabelStudioClient:
    """The few endpoints of Label Studio's REST API that the sync uses, over the standard library's HTTP.

    Parameters
    ----------
    url : str
        The server, as a browser opens it: ``http://localhost:8080``.
    api_key : str
        An access token from Label Studio's *Account & Settings*: a personal
        access token (exchanged at ``/api/token/refresh/`` for access tokens of
        a few minutes, renewed as they expire) or a legacy token.
    timeout : float, default=30.0
        Seconds to wait for each answer.

    Examples
    --------
    >>> LabelStudioClient("https://ls.example.org/", "abc").url
    'https://ls.example.org'
    """

    def __init__(self, url: str, api_key: str, *, timeout: float = 30.0) -> None:
        parts = urllib.parse.urlsplit(str(url).strip())
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"The 'url' of Label Studio must be an http(s) address such as "
                              f"http://localhost:8080. Got {url!r}.")
        if not isinstance(api_key, str) or not api_key.strip():
            raise ConfigError("Label Studio needs an API key: set LABEL_STUDIO_API_KEY or pass --api-key (Label "
                              "Studio: Account & Settings -> Personal Access Token).")
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
            raise ConfigError(f"The 'timeout' parameter of LabelStudioClient must be a number > 0. Got {timeout!r}.")
        self.url = urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))
        self.api_key = api_key.strip()
        self.timeout = float(timeout)
        self._access: tuple[str, float] | None = None  # (access token, when to renew it)

    # ---------------------------------------------------------------- transport
    def _refreshable(self) -> bool:
        claims = _jwt_claims(self.api_key)
        return claims is not None and claims.get("token_type") == "refresh"

    def _authorization(self) -> str:
        claims = _jwt_claims(self.api_key)
        if claims is None:
            return f"Token {self.api_key}"
        if claims.get("token_type") != "refresh":
            return f"Bearer {self.api_key}"
        if self._access is None or _now() >= self._access[1]:
            answer = self._send("POST", "/api/token/refresh/", None, {"refresh": self.api_key}, None)
            access = answer.get("access") if isinstance(answer, dict) else None
            if not isinstance(access, str):
                raise LabelStudioError(f"Label Studio at {self.url} gave no access token for the API key.")
            exp = (_jwt_claims(access) or {}).get("exp")
            renew = float(exp) - _REFRESH_MARGIN if isinstance(exp, int | float) else _now() + 60.0
            self._access = (access, renew)
        return f"Bearer {self._access[0]}"

    def _send(self, method: str, path: str, params: Mapping | None, body, auth: str | None):
        url = self.url + path + (("?" + urllib.parse.urlencode(params)) if params else "")
        headers = {"Accept": "application/json"}
        if auth is not None:
            headers["Authorization"] = auth
        data = None
        if body is not None:
            data = json.dumps(body, ensure_ascii=False).encode("utf-8")
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as answer:
                raw = answer.read()
        except urllib.error.HTTPError as exc:
            raise self._refused(method, path, exc) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise LabelStudioError(f"cannot reach Label Studio at {self.url} ({reason}).", transient=True) from None
        if not raw.strip():
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise LabelStudioError(f"{method} {url}: the answer is not JSON; is {self.url} a Label Studio "
                                   f"server?") from None

    def _refused(self, method: str, path: str, exc: urllib.error.HTTPError) -> LabelStudioError:
        try:
            detail = json.loads(exc.read() or b"{}")
        except (ValueError, OSError):
            detail = {}
        said = detail.get("detail") if isinstance(detail, dict) else None
        errors = detail.get("validation_errors") if isinstance(detail, dict) else None
        why = f"{exc.code} {said or exc.reason}" + (f": {json.dumps(errors)[:300]}" if errors else "")
        if exc.code in (401, 403):
            return LabelStudioError(f"Label Studio at {self.url} refused the API key ({why}); give an access token "
                                    f"of a user of this project (Account & Settings) in LABEL_STUDIO_API_KEY or "
                                    f"--api-key.", status=exc.code)
        return LabelStudioError(f"Label Studio at {self.url}: {method} {path} failed ({why}).", status=exc.code,
                                transient=exc.code >= 500 or exc.code == 429)

    def request(self, method: str, path: str, *, params: Mapping | None = None, body=None):
        """Send one request (JSON in, JSON out) to ``path`` (``/api/...``); raises :class:`LabelStudioError`."""
        try:
            return self._send(method, path, params, body, self._authorization())
        except LabelStudioError as exc:
            if exc.status != 401 or not self._refreshable():
                raise
        self._access = None  # the access token expired early (a server restart): fetch a new one, once
        return self._send(method, path, params, body, self._authorization())

    # ---------------------------------------------------------------- endpoints
    def project(self, project: int) -> dict:
        """The project (``GET /api/projects/ID/``): its title, labeling config, ..."""
        try:
            return self.request("GET", f"/api/projects/{int(project)}/")
        except LabelStudioError as exc:
            if exc.status == 404:
                raise LabelStudioError(f"Label Studio at {self.url} has no project {project} that this API key "
                                       f"can see (its id is in the project's address: /projects/ID).",
                                       status=404) from None
            raise

    def set_label_config(self, project: int, config: str) -> dict:
        """Replace the project's labeling config (``PATCH /api/projects/ID/``)."""
        return self.request("PATCH", f"/api/projects/{int(project)}/", body={"label_config": config})

    def tasks(self, project: int) -> list[dict]:
        """Every task of the project with its annotations: the project's *Export → JSON*, all tasks included."""
        tasks = self.request("GET", f"/api/projects/{int(project)}/export",
                             params={"exportType": "JSON", "download_all_tasks": "true"})
        if not isinstance(tasks, list):
            raise LabelStudioError(f"Label Studio at {self.url}: the export of project {project} is not a list of "
                                   f"tasks (got a {type(tasks).__name__}).")
        return tasks

    def import_tasks(self, project: int, tasks: Sequence[dict]) -> int:
        """Create tasks in the project (``POST /api/projects/ID/import``); returns how many it created."""
        answer = self.request("POST", f"/api/projects/{int(project)}/import", body=list(tasks))
        count = answer.get("task_count") if isinstance(answer, dict) else None
        if count != len(tasks):
            raise LabelStudioError(f"Label Studio at {self.url}: project {project} created {count!r} task(s) of the "
                                   f"{len(tasks)} sent.")
        return count

    def user_emails(self) -> dict[int, str]:
        """Label Studio user id -> email (``GET /api/users/``)."""
        users = self.request("GET", "/api/users/")
        return {u["id"]: u["email"] for u in users if isinstance(u, dict) and is_int(u.get("id"))
                and isinstance(u.get("email"), str) and u["email"].strip()} if isinstance(users, list) else {}


def is_budgetsft_config(xml: str) -> bool:
    """Whether a labeling config shows budgetsft tasks: the prompt as ``<Text>`` and the candidates as choices."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return False
    text = any(el.tag == "Text" and el.get("name") == OBJECT and el.get("value") == f"${OBJECT}"
               for el in root.iter())
    choices = any(el.tag == "Choices" and el.get("name") == CONTROL and el.get("toName") == OBJECT
                  and el.get("value") == "$options" for el in root.iter())
    return text and choices


# ---------------------------------------------------------------- one pass
@dataclass(frozen=True)
class SyncPass:
    """What one pass of :func:`sync_once` did, and the books after it.

    ``pushed`` tasks created in Label Studio, ``imported`` labels charged
    (``charged`` of the budget), ``released`` queries skipped in the ledger
    because their task was skipped in Label Studio (``cancelled``) or deleted
    from the project (``deleted``), ``selected`` new queries (the next batch of a
    pool, or a stream played on), ``pending`` queries waiting for a label,
    ``in_project`` this session's queries the project held before the pass pushed,
    ``done``: nothing is pending and nothing more will be asked (``reason``).

    Examples
    --------
    >>> p = SyncPass("pool", 20, 20, 20.0, 0, 0, 0, 20, 20, 20, 40.0, 100.0, "labels", False)
    >>> pass_message(p, 3)
    'pass 3: pushed 20, imported 20, released 0; 40 of 100 labels spent, 20 pending'
    """

    mode: str
    pushed: int
    imported: int
    charged: float
    released: int
    cancelled: int
    deleted: int
    selected: int
    pending: int
    in_project: int
    spent: float
    budget: float
    unit: str
    done: bool
    reason: str | None = None
    configured: bool = False
    notes: tuple[str, ...] = ()

    def to_json(self) -> dict:
        out = asdict(self)
        out["notes"] = list(self.notes)
        return out


def _target(client: LabelStudioClient, project: int, info: dict) -> str:
    """The ledger's key of what went to this project: its id and creation time, whatever address reached it."""
    return f"{_PUSHED}:{int(project)}@{info.get('created_at') or client.url}"


def _pushed(ledger, key: str) -> set[int]:
    return set(json.loads(ledger.meta(key, "[]")))


def _remember(ledger, key: str, ids) -> None:
    known = _pushed(ledger, key)
    if not set(ids) <= known:
        ledger.set_meta(key, json.dumps(sorted(known | set(ids))))


def _push(session, client: LabelStudioClient, project: int, queries, key: str) -> int:
    if not queries:
        return 0
    count = client.import_tasks(project, export_tasks(session, queries, mark_ledger=False))
    _remember(session.ledger, key, [q.id for q in queries])
    return count


def _plain_map(parsed: Mapping[str, tuple[str, float | None]]) -> dict:
    return {k: name if cost is None else {"name": name, "cost": cost} for k, (name, cost) in parsed.items()}


def _with_authors(tasks: list[dict], client: LabelStudioClient, mapping: dict, live: set[str],
                  cost: float | None) -> tuple[list[dict], dict]:
    """Name the authors of the annotations as the ledger can pay them.

    Label Studio names an author by user id. One that neither the map nor the
    ledger knows by id is looked up by email (a ledger annotator named as the
    email); with ``cost``, one known nowhere is paid that price under its email.
    """
    ids = {a["completed_by"] for t in tasks for a in t.get("annotations") or []
           if isinstance(a, dict) and not a.get("was_cancelled") and is_int(a.get("completed_by"))}
    unknown = {i for i in ids if str(i) not in mapping and str(i) not in live}
    if not unknown:
        return tasks, mapping
    emails = client.user_emails()
    mapping = dict(mapping)
    for i in unknown:
        email = emails.get(i, "").lower()
        if cost is not None and email not in mapping and email not in live:
            mapping[email or str(i)] = {"name": email or str(i), "cost": cost}
    out = []
    for t in tasks:
        anns = t.get("annotations")
        if isinstance(anns, list) and any(isinstance(a, dict) and a.get("completed_by") in unknown for a in anns):
            t = {**t, "annotations": [{**a, "completed_by": {"id": a["completed_by"],
                                                             "email": emails.get(a["completed_by"])}}
                                      if isinstance(a, dict) and a.get("completed_by") in unknown else a
                                      for a in anns]}
        out.append(t)
    return out, mapping


def _play_on(session) -> str:
    """Play a stream session on to its next queries: the status it stopped at, or ``busy``."""
    from budgetsft.sessions.oracles import WebOracle
    from budgetsft.sessions.session import SessionBusyError

    if session.finished:
        return "finished"
    try:
        return session.play(WebOracle()).status
    except SessionBusyError:
        return "busy"


def sync_once(session, client: LabelStudioClient, project: int, *, batch: int | None = None,
              annotators: str | Path | Mapping | None = None, cost: float | None = None) -> SyncPass:
    """One pass: read the project, pull and charge its labels, release skipped tasks, push what is pending.

    Parameters
    ----------
    session : Session
        A pool session (``budgetsft select``) or a stream session (``run --session ... --oracle web``).
    client : LabelStudioClient
    project : int
        The Label Studio project's id. An empty project gets budgetsft's labeling config.
    batch : int, optional
        Items a pool session picks when nothing is pending (default: the session's batch).
    annotators : path or mapping, optional
        Label Studio users -> ledger annotators, as :func:`budgetsft.labelstudio.read_annotators`.
    cost : float, optional
        Price per label of Label Studio users that neither ``annotators`` nor
        the ledger names (paid under their email). Without it their labels are
        refused.

    Returns
    -------
    SyncPass

    Raises
    ------
    DataError, BudgetExhaustedError
        A bad annotation, or labels beyond the budget: nothing is charged, released or pushed.
    LabelStudioError
        Label Studio refused a request or could not be reached.
    """
    from budgetsft.sessions.pool import is_pool, select_batch

    ledger = session.ledger
    pool = is_pool(session.config)
    if batch is not None and not pool:
        raise ConfigError(f"{ledger.path}: '--batch' is for pool sessions (`budgetsft select`); this session plays a "
                          f"stream, whose gate decides what to ask.")
    if cost is not None and (isinstance(cost, bool) or not isinstance(cost, int | float) or not math.isfinite(cost)
                             or cost <= 0):
        raise ConfigError(f"The 'cost' of unmapped Label Studio users must be a finite number > 0. Got {cost!r}.")
    mapping = {} if annotators is None else _plain_map(read_annotators(annotators))
    where = f"Label Studio project {int(project)} at {client.url}"
    info = client.project(project)
    tasks = client.tasks(project)
    configured = False
    if not is_budgetsft_config(str(info.get("label_config") or "")):
        if tasks:
            raise LabelStudioError(
                f"{where}: its labeling config does not show budgetsft tasks and it holds {len(tasks)} task(s); use "
                f"an empty project (sync sets its config) or set the config that `budgetsft session export ... "
                f"--format label-studio` writes.")
        client.set_label_config(project, label_config())
        configured = True
    key = session_key(ledger)
    target = _target(client, project, info)
    pushed_before = _pushed(ledger, target)
    held: dict[int, list[dict]] = {}  # query id -> this session's tasks of it in the project
    fresh: list[dict] = []  # the tasks whose annotations this pass may charge
    foreign = 0
    for task in tasks:
        data = task.get("data") if isinstance(task, dict) else None
        if not isinstance(data, dict) or data.get("session") != key:
            foreign += 1
            continue
        q = ledger.query(data["query_id"]) if is_int(data.get("query_id")) else None
        if q is not None:
            held.setdefault(q.id, []).append(task)
        if q is None or q.status == "pending":  # an unknown query is reported by the import, all or nothing
            fresh.append(task)
    live = {a.name for a in ledger.annotators()}
    fresh, mapping = _with_authors(fresh, client, mapping, live, cost)
    res = import_tasks(ledger, fresh, annotators=mapping, source=where,
                       hint="the labels stay in Label Studio: delete there the ones not to buy (or map their "
                            "authors to a lower price) and the next pass tries again")
    cancelled = deleted = 0
    for q in ledger.pending():
        anns = [a for t in held.get(q.id, []) for a in t.get("annotations") or [] if isinstance(a, dict)]
        if q.id in held and anns and all(a.get("was_cancelled") for a in anns):
            ledger.skip(q.id, RELEASED_BY)
            cancelled += 1
        elif q.id not in held and q.id in pushed_before:
            ledger.skip(q.id, RELEASED_BY)
            deleted += 1
    _remember(ledger, target, held)
    pushed = _push(session, client, project, [q for q in ledger.pending() if q.id not in held], target)
    selected, done, reason, notes = 0, False, None, []
    if configured:
        notes.append(f"set project {int(project)}'s labeling config to budgetsft's")
    if foreign:
        notes.append(f"{foreign} task(s) of the project are not this session's: left alone")
    if not ledger.pending():
        before = {q.id for q in ledger.queries()}
        if pool:
            sel = select_batch(session, batch)
            queries = [ledger.query(p.query_id) for p in sel.picks]
            if not queries:
                done, reason = True, sel.reason
        else:
            status = _play_on(session)
            queries = [q for q in ledger.pending() if q.id not in before]
            if status == "busy":
                notes.append("another process is playing the session; its queries are pushed on a later pass")
            elif not queries and status != "waiting":
                done, reason = True, f"the stream is played to its end ({status})"
        selected = len(queries)
        pushed += _push(session, client, project, queries, target)
    return SyncPass("pool" if pool else "stream", pushed, res["added"], res["charged"], cancelled + deleted,
                    cancelled, deleted, selected, len(ledger.pending()), len(held), ledger.spent(),
                    ledger.budget_total, ledger.budget_unit, done, reason, configured, tuple(notes))


def pass_message(p: SyncPass, number: int | None = None) -> str:
    """One line saying what a pass did: ``pass 3: pushed 20, imported 20, released 0; 40 of 100 labels spent``."""
    unit = "labels" if p.unit == "labels" else "cost units"
    released = f"released {p.released}" + (f" ({p.cancelled} skipped, {p.deleted} deleted)" if p.released else "")
    head = f"pass {number}: " if number is not None else ""
    line = (f"{head}pushed {p.pushed}, imported {p.imported}, {released}; {p.spent:g} of {p.budget:g} {unit} spent, "
            f"{p.pending} pending")
    for note in p.notes:
        line += f"; {note}"
    if p.done:
        line += f"; done: {p.reason}"
    return line


def sync(session, client: LabelStudioClient, project: int, *, batch: int | None = None,
         annotators: str | Path | Mapping | None = None, cost: float | None = None,
         interval: float = DEFAULT_INTERVAL, once: bool = False,
         report: Callable[[SyncPass], None] | None = None,
         on_error: Callable[[BudgetsftError], None] | None = None,
         sleep: Callable[[float], None] = time.sleep) -> SyncPass | None:
    """Pass after pass (:func:`sync_once`) every ``interval`` seconds until nothing more will be asked.

    ``once`` makes one pass (for cron). Between passes, a pass that failed on
    something people or time can fix (a bad annotation in Label Studio, labels
    over the budget, the server unreachable) is reported to ``on_error`` (once
    per distinct message) and tried again; any other error ends the loop. An
    interruption (Ctrl-C) loses nothing: every step is committed on its own and
    the next pass picks up where this one stopped. Returns the last pass that
    completed.
    """
    if isinstance(interval, bool) or not isinstance(interval, int | float) or not interval >= 0:
        raise ConfigError(f"The 'interval' parameter of sync must be a number of seconds >= 0. Got {interval!r}.")
    last: SyncPass | None = None
    said = None
    while True:
        try:
            last = sync_once(session, client, project, batch=batch, annotators=annotators, cost=cost)
        except (DataError, BudgetExhaustedError, LabelStudioError) as exc:
            if once or (isinstance(exc, LabelStudioError) and not exc.transient):
                raise
            if on_error is not None and str(exc) != said:
                on_error(exc)
            said = str(exc)
        else:
            said = None
            if report is not None:
                report(last)
            if once or last.done:
                return last
        sleep(interval)
