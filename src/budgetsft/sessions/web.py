"""The annotation web app behind ``budgetsft annotate``: a page for people and a JSON API for scripts.

Annotators see a session's pending queries, largest latency first, and answer
them; every answer goes through :meth:`Ledger.record_answer`, so the ledger's
rules hold whatever the clients do: an item is handed to one annotator at a
time (a lease that expires after ``lease_ttl`` seconds), a query is paid at
most once (a second answer is reported as a duplicate and charged nothing),
and the money spent never exceeds the budget, each annotator being charged
their own price per label (an expert may cost more than a crowd worker).

A background thread (the *driver*) plays the session with a
:class:`~budgetsft.sessions.oracles.WebOracle`: when the game waits for labels it
sleeps until the answers are in, then plays on, which makes the next queries
pending. The app and the driver each open their own SQLite connections; the
ledger's ``BEGIN IMMEDIATE`` transactions serialise the writers.

==========================  ======  =================================================
route                       method  what
==========================  ======  =================================================
``/``                       GET     the annotation page (a login form without a token)
``/login``, ``/logout``     POST    set / clear the token cookie (HttpOnly, SameSite=Strict)
``/api/next``               GET     lease the next item: prompt, candidates, budget
``/api/answer``             POST    ``{"query_id": int, "label": int}``
``/api/skip``               POST    ``{"query_id": int}``: pass it on to the others
``/api/status``             GET     spend, budget left, pending, labels by annotator
==========================  ======  =================================================

Skipping (the page's skip button, key ``s``) charges nothing: the item is
never handed to that annotator again and goes to the others; once every active
annotator has skipped it, its round goes unlabelled (counted as unqueried).

The API takes the token as ``Authorization: Bearer <token>``; the page uses
the cookie the login form sets. Every refusal is JSON ``{"error": "..."}`` and
charges nothing.

The page is package data in ``static/``: ``annotate.html`` and ``login.html``,
with ``annotate.css`` and ``annotate.js`` inlined in each response under a
fresh CSP nonce (so the policy allows no other script or style).

Cross-origin requests are refused: ``POST /api/answer`` and ``/api/skip`` take only
``Content-Type: application/json`` (415 otherwise), and a request
authenticated by the cookie must come from the server's own origin (its
``Origin``, or ``Sec-Fetch-Site: same-origin``, must match; 403 otherwise), so
a page on another port of the same host cannot answer as the logged-in
annotator. A ledger that is busy (another writer held its lock past
``busy_timeout``) or read-only gives 503 with a message, never a bare 500.

Examples
--------
>>> from budgetsft.sessions.web import create_app, serve
>>> app = create_app("session.db")            # doctest: +SKIP
>>> serve("session.db", port=8000)            # doctest: +SKIP
"""

from __future__ import annotations

import functools
import html
import json
import logging
import math
import re
import secrets
import threading
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from urllib.parse import parse_qs

from budgetsft._validation import check_float, check_int
from budgetsft.exceptions import BudgetExhaustedError, ConfigError
from budgetsft.sessions.ledger import (
    Annotator,
    AnnotatorRevokedError,
    Ledger,
    LedgerBusyError,
    LedgerError,
    LedgerReadOnlyError,
)

try:
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
    from starlette.routing import Route
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError("budgetsft.sessions.web needs Starlette and uvicorn: pip install 'budgetsft[web]'.") from exc

__all__ = ["create_app", "serve", "SessionDriver", "COOKIE"]

logger = logging.getLogger("budgetsft.sessions.web")

COOKIE = "budgetsft_token"
# A body larger than max_body is refused; we read (and drop) at most this much of it so that the client,
# still sending, gets the 413 instead of a reset connection. Beyond it the connection is simply closed.
_DRAIN_LIMIT = 4 << 20


class _Refusal(Exception):
    """A request refused with an HTTP status and a message for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _Interrupted(Exception):
    """Raised from the driver's progress callback to leave a game being played (the ledger resumes it)."""


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _jsonable(obj):
    """Replace NaN and infinities (which JSON cannot carry) by null."""
    if isinstance(obj, float):
        return _finite(obj)
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    return obj


class SessionDriver:
    """Plays a session in a background thread, waiting for people whenever the game asks for labels.

    Parameters
    ----------
    path : str or Path
        The session file.
    poll : float, default=0.2
        Seconds between checks of the pending queries while waiting (an answer wakes it sooner).
    busy_retry : float, default=2.0
        Seconds before trying again when another process is playing the session.
    """

    def __init__(self, path: str | Path, poll: float = 0.2, busy_retry: float = 2.0) -> None:
        self.path = Path(path)
        self.poll = poll
        self.busy_retry = busy_retry
        self.state = "idle"
        self.error: str | None = None
        self.plays = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="budgetsft-driver", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.warning("the session driver did not stop within %.0f s", timeout)

    def wake(self) -> None:
        """An answer came in: check now whether the game can go on."""
        self._wake.set()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _check_stop(self, t: int) -> None:
        if self._stop.is_set():
            raise _Interrupted(t)

    def _wait_for_answers(self, session) -> None:
        while not self._stop.is_set():
            self._wake.clear()  # cleared before looking, so an answer arriving meanwhile is not missed
            if not session.ledger.pending():
                return
            # Items that no annotator can be paid for any more would wait for ever: skip them (no charge).
            if session.ledger.skip_unaffordable():
                continue
            self._wake.wait(self.poll)

    def _run(self) -> None:
        from budgetsft.sessions.oracles import WebOracle
        from budgetsft.sessions.session import Session, SessionBusyError

        session = None
        try:
            session = Session.open(self.path)
            session.ledger.check_writable()  # a read-only ledger is an error to show, not a session "waiting"
            oracle = WebOracle()
            # A session already waiting on pending queries has nothing to play until they are answered.
            waiting = session.ledger.status == "waiting" and bool(session.ledger.pending())
            while not self._stop.is_set():
                if not waiting:
                    self.state = "playing"
                    t0 = time.perf_counter()
                    try:
                        outcome = session.play(oracle, progress=self._check_stop)
                    except SessionBusyError as exc:
                        # `budgetsft resume` (or another annotate) holds the session: try again shortly.
                        self.state, self.error = "blocked", str(exc)
                        self._stop.wait(self.busy_retry)
                        continue
                    self.error = None
                    self.plays += 1
                    logger.debug("played to round %d in %.3f s: %s, %d pending", outcome.position,
                                 time.perf_counter() - t0, outcome.status, outcome.pending)
                    if outcome.status != "waiting":  # finished, or stopped by someone else
                        self.state = outcome.status
                        return
                self.state = "waiting"
                self._wait_for_answers(session)
                waiting = False
            self.state = "stopped"
        except _Interrupted:
            self.state = "stopped"
        except Exception as exc:  # the app stays up to show the error in /api/status
            logger.exception("the session driver failed")
            self.error = f"{type(exc).__name__}: {exc}"
            self.state = "error"
        finally:
            if session is not None:
                session.close()


class _Annotate:
    """The app's state: where the ledger is, one connection per worker thread, and the items' text."""

    def __init__(self, path: Path, lease_ttl: float, max_body: int, driver: SessionDriver | None,
                 busy_timeout: float = 30.0) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self.lease_ttl = lease_ttl
        self.max_body = max_body
        self.driver = driver
        self._local = threading.local()
        self._lock = threading.Lock()
        self._ledgers: list[Ledger] = []
        self._session = None
        self._items: dict[int, dict] = {}

    # ---------------------------------------------------------------- resources
    def ledger(self) -> Ledger:
        """This thread's connection (SQLite connections are not shared between threads)."""
        led = getattr(self._local, "ledger", None)
        if led is None:
            led = Ledger.open(self.path, timeout=self.busy_timeout)
            self._local.ledger = led
            with self._lock:
                self._ledgers.append(led)
        return led

    def close(self) -> None:
        with self._lock:
            for led in self._ledgers:
                led.close()
            self._ledgers.clear()
            if self._session is not None:
                self._session.close()
                self._session = None

    def _describer(self):
        # Called with self._lock held: one Session, used only to describe rounds.
        if self._session is None:
            from budgetsft.sessions.session import Session

            self._session = Session.open(self.path)
        return self._session

    def warm(self) -> None:
        """Regenerate the session's stream now rather than on the first request."""
        with self._lock:
            self._describer().stream()

    def horizon(self) -> int:
        with self._lock:
            return self._describer().horizon()

    def item(self, round: int) -> dict:
        """Prompt and candidates of a round (the stream is regenerated once, then cached)."""
        with self._lock:
            if round not in self._items:
                self._items[round] = self._describer().describe(round)
            return self._items[round]

    # ---------------------------------------------------------------- requests
    def annotator(self, request: Request) -> Annotator:
        token = None
        auth = request.headers.get("authorization", "")
        if auth:
            scheme, _, value = auth.partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                raise _Refusal(401, "the Authorization header must be 'Bearer <token>'.")
            token = value.strip()
        else:
            token = request.cookies.get(COOKIE)
            if token:  # the browser attaches the cookie to any same-site request: it must be our own page's
                _check_origin(request, strict=request.method != "GET")
        if not token:
            raise _Refusal(401, "a token is required: send 'Authorization: Bearer <token>' or log in on the page "
                                "(tokens come from `budgetsft annotate FILE --add-annotator NAME`).")
        ann = self.ledger().annotator_by_token(token)
        if ann is None:
            raise _Refusal(401, "unknown token.")
        return ann

    def budget(self, led: Ledger) -> dict:
        return {"spent": led.spent(), "remaining": led.remaining(), "total": led.budget_total,
                "unit": led.budget_unit}

    def next_item(self, ann: Annotator) -> dict:
        led = self.ledger()
        pending = len(led.pending())
        try:
            # With nothing pending, a read answers: no write transaction to contend with the driver's.
            q = led.lease_next(ann, self.lease_ttl) if pending else None
        except BudgetExhaustedError as exc:
            raise _Refusal(409, f"budget exhausted: {exc}") from None
        if q is None:
            if pending and led.passed_all_pending(ann.name):
                reason = "you skipped every pending item; the other annotators will answer them"
            elif pending:
                reason = "every pending item is leased to another annotator"
            elif led.status == "finished":
                reason = "session finished"
            elif self.driver is not None and self.driver.alive:
                reason = "waiting for the session"
            else:
                reason = "nothing pending"
            return {"item": None, "reason": reason, "pending": pending, "budget": self.budget(led),
                    "annotator": ann.name}
        item = self.item(q.round)
        return {"query_id": q.id, "round": q.round, "id": item["id"], "prompt": item["prompt"],
                "candidates": list(item["candidates"]), "latency": _finite(q.latency),
                "lease_expires_in": self.lease_ttl, "pending": pending, "budget": self.budget(led),
                "annotator": ann.name, "cost": ann.cost}

    def answer(self, ann: Annotator, query_id: int, label) -> dict:
        led = self.ledger()
        q = led.query(query_id)
        if q is None:
            raise _Refusal(404, f"unknown item {query_id}.")
        K = len(self.item(q.round)["candidates"])
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < K:
            raise _Refusal(422, f"label must be an int in [0, {K - 1}]. Got {label!r}.")
        if q.status == "skipped":
            raise _Refusal(409, f"item {query_id} was skipped; it takes no answer.")
        holder = led.lease_holder(query_id)
        if holder is not None and holder != ann.name:
            raise _Refusal(403, f"item {query_id} is leased to another annotator.")
        if q.status == "pending" and led.has_passed(query_id, ann.name):
            raise _Refusal(409, f"you skipped item {query_id}; it goes to the other annotators.")
        if q.status == "answered" and led.answer_for_round(q.round).annotator != ann.name:
            # another annotator's answer stands: theirs is not replaced, and nothing is charged
            return {"recorded": False, "duplicate": True, "query_id": query_id, "budget": self.budget(led)}
        if q.status == "answered":  # a correction by the same annotator, or a double submit
            try:
                corrected = led.correct_answer(query_id, label, ann.name, n_candidates=K, token_hash=ann.token_hash)
            except AnnotatorRevokedError:
                raise _Refusal(401, "token revoked or replaced while the request was under way; nothing was "
                                    "recorded.") from None
            except LedgerError as exc:
                raise _Refusal(409, str(exc).split(": ", 1)[-1]) from None
            if corrected and self.driver is not None:
                self.driver.wake()
            out = {"recorded": corrected, "query_id": query_id, "budget": self.budget(led)}
            out["corrected" if corrected else "duplicate"] = True
            return out
        try:
            recorded = led.record_answer(query_id, label, ann.name, ann.cost, n_candidates=K,
                                         token_hash=ann.token_hash)
        except AnnotatorRevokedError:
            raise _Refusal(401, "token revoked or replaced while the request was under way; nothing was "
                                "recorded.") from None
        except BudgetExhaustedError as exc:
            raise _Refusal(409, f"budget exhausted: {exc}") from None
        except (LedgerBusyError, LedgerReadOnlyError) as exc:
            raise _unavailable(exc) from None
        except LedgerError as exc:  # skipped meanwhile
            raise _Refusal(409, str(exc)) from None
        if recorded and self.driver is not None:
            self.driver.wake()
        out = {"recorded": recorded, "query_id": query_id, "budget": self.budget(led)}
        if not recorded:
            out["duplicate"] = True
        return out

    def skip(self, ann: Annotator, query_id: int) -> dict:
        led = self.ledger()
        q = led.query(query_id)
        if q is None:
            raise _Refusal(404, f"unknown item {query_id}.")
        if q.status != "pending":
            raise _Refusal(409, f"item {query_id} is {q.status}; it cannot be skipped.")
        holder = led.lease_holder(query_id)
        if holder is not None and holder != ann.name:
            raise _Refusal(403, f"item {query_id} is leased to another annotator.")
        try:
            dropped = led.pass_query(query_id, ann.name, token_hash=ann.token_hash)
        except AnnotatorRevokedError:
            raise _Refusal(401, "token revoked or replaced while the request was under way; nothing was "
                                "recorded.") from None
        except (LedgerBusyError, LedgerReadOnlyError) as exc:
            raise _unavailable(exc) from None
        except LedgerError as exc:  # answered or skipped meanwhile
            raise _Refusal(409, str(exc)) from None
        if dropped and self.driver is not None:
            self.driver.wake()  # nobody will answer it: the game need not wait for it
        return {"skipped": query_id, "unlabelled": dropped, "budget": self.budget(led)}

    def status(self) -> dict:
        led = self.ledger()
        answers = led.answers()
        records = led.n_records()
        return _jsonable({
            "path": str(self.path),
            "status": led.status,
            "rounds_played": records,
            "horizon": self.horizon(),
            "labels_bought": len(answers),
            "pending": len(led.pending()),
            "budget": self.budget(led),
            "by_annotator": led.labels_by_annotator(),
            "driver": None if self.driver is None else {"state": self.driver.state, "error": self.driver.error,
                                                        "plays": self.driver.plays},
        })


def _own_origin(request: Request) -> str:
    return f"{request.url.scheme}://{request.headers.get('host', '')}".lower()


def _check_origin(request: Request, strict: bool) -> None:
    """Refuse a browser request sent by another origin (another port of the same host is another origin).

    ``strict`` (state-changing requests): the browser must say where the
    request comes from, with ``Origin`` or ``Sec-Fetch-Site``.
    """
    origin = request.headers.get("origin")
    site = request.headers.get("sec-fetch-site")
    if origin is not None and origin.lower() != _own_origin(request):
        raise _Refusal(403, f"cross-origin request refused: Origin {origin!r} is not this server "
                            f"({_own_origin(request)}).")
    if site is not None and site not in ("same-origin", "none"):
        raise _Refusal(403, f"cross-origin request refused (Sec-Fetch-Site: {site}).")
    if strict and origin is None and site is None:
        raise _Refusal(403, "a request authenticated by the cookie must carry an Origin header; scripts send "
                            "'Authorization: Bearer <token>' instead.")


def _unavailable(exc: LedgerError) -> _Refusal:
    """503 for a ledger that is busy or read-only (the client may retry), 500 with the message otherwise."""
    if isinstance(exc, LedgerBusyError | LedgerReadOnlyError):
        return _Refusal(503, f"the ledger is unavailable: {exc}")
    return _Refusal(500, f"the ledger failed: {exc}")


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 past ``limit`` bytes whatever Content-Length claims."""
    declared = request.headers.get("content-length")
    too_big = _Refusal(413, f"request body too large: at most {limit} bytes.")
    if declared is not None and declared.isdigit() and int(declared) > _DRAIN_LIMIT:
        raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > _DRAIN_LIMIT:
            raise too_big
        if size <= limit:
            chunks.append(chunk)
    if size > limit:
        raise too_big
    return b"".join(chunks)


def _error(refusal: _Refusal) -> JSONResponse:
    headers = {"Retry-After": "2"} if refusal.status == 503 else None
    return JSONResponse({"error": refusal.message}, status_code=refusal.status, headers=headers)


def _guarded(exc: Exception) -> JSONResponse:
    """Any failure as a JSON answer with a message (never a traceback to the client)."""
    if isinstance(exc, _Refusal):
        return _error(exc)
    if isinstance(exc, LedgerError):
        return _error(_unavailable(exc))
    logger.exception("request failed")
    return _error(_Refusal(500, f"internal error ({type(exc).__name__}); see the server's log."))


def create_app(path: str | Path, *, lease_ttl: float = 300.0, max_body: int = 16384, driver: bool = True,
               busy_timeout: float = 30.0) -> Starlette:
    """The annotation app for the session file ``path`` (a Starlette ASGI app).

    Parameters
    ----------
    path : str or Path
        An existing session ledger (``budgetsft session``/``run --session``).
    lease_ttl : float, default=300.0
        Seconds an item stays reserved for the annotator who fetched it.
    max_body : int, default=16384
        Largest request body accepted, in bytes (413 beyond).
    driver : bool, default=True
        Play the session in a background thread while the app runs, so that
        answers unblock the game and it makes the next queries pending.
    busy_timeout : float, default=30.0
        Seconds a request waits for another writer's lock on the ledger
        before it is answered 503.
    """
    lease_ttl = check_float("create_app", "lease_ttl", lease_ttl, low=0.0, low_open=True)
    max_body = check_int("create_app", "max_body", max_body, low=64)
    busy_timeout = check_float("create_app", "busy_timeout", busy_timeout, low=0.0, low_open=True)
    path = Path(path)
    Ledger.open(path).close()  # a missing or foreign file fails here, with the ledger's message
    state = _Annotate(path, lease_ttl, max_body, SessionDriver(path) if driver else None, busy_timeout)

    async def api(request: Request, fn) -> Response:
        try:  # one trip to a worker thread: authenticate, then work, on that thread's connection
            return JSONResponse(await run_in_threadpool(lambda: fn(state.annotator(request))))
        except Exception as exc:  # noqa: BLE001 - every failure is answered as JSON with a message
            return _guarded(exc)

    async def api_next(request: Request) -> Response:
        return await api(request, state.next_item)

    async def json_post(request: Request, shape: str, fn) -> Response:
        # Authenticate, then read a JSON object body {"query_id": int, ...} and hand it to fn(ann, qid, obj).
        try:
            ann = await run_in_threadpool(state.annotator, request)
            body = await _read_body(request, state.max_body)
            ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if ctype != "application/json":
                raise _Refusal(415, f"the body must be sent as 'Content-Type: application/json'. Got "
                                    f"{ctype or 'none'!r}.")
            try:
                obj = json.loads(body)
            except (ValueError, UnicodeDecodeError, RecursionError):
                raise _Refusal(400, f"the body must be a JSON object {shape}.") from None
            if not isinstance(obj, dict):
                raise _Refusal(400, f"the body must be a JSON object {shape}.")
            qid = obj.get("query_id")
            if isinstance(qid, bool) or not isinstance(qid, int):
                raise _Refusal(400, f"'query_id' must be an int. Got {qid!r}.")
            return JSONResponse(await run_in_threadpool(fn, ann, qid, obj))
        except Exception as exc:  # noqa: BLE001 - every failure is answered as JSON with a message
            return _guarded(exc)

    def answer(ann: Annotator, qid: int, obj: dict) -> dict:
        if "label" not in obj:
            raise _Refusal(400, "'label' is missing.")
        return state.answer(ann, qid, obj["label"])

    async def api_answer(request: Request) -> Response:
        return await json_post(request, '{"query_id": int, "label": int}', answer)

    async def api_skip(request: Request) -> Response:
        return await json_post(request, '{"query_id": int}', lambda ann, qid, obj: state.skip(ann, qid))

    async def api_status(request: Request) -> Response:
        return await api(request, lambda ann: state.status())

    async def page(request: Request) -> Response:
        try:
            ann = await run_in_threadpool(state.annotator, request)
        except _Refusal as refusal:
            error = refusal.message if request.cookies.get(COOKIE) else None
            return _html(_LOGIN, 200 if error is None else 401, error=error or "")
        except LedgerError as exc:
            refusal = _unavailable(exc)
            return _html(_LOGIN, refusal.status, error=refusal.message)
        return _html(_PAGE, file=path.name, name=ann.name, cost=f"{ann.cost:g}")

    async def login(request: Request) -> Response:
        try:
            _check_origin(request, strict=False)
            body = await _read_body(request, state.max_body)
            token = (parse_qs(body.decode("utf-8", "replace")).get("token") or [""])[0].strip()
            ann = await run_in_threadpool(lambda: state.ledger().annotator_by_token(token))
        except _Refusal as refusal:
            return _html(_LOGIN, refusal.status, error=refusal.message)
        except LedgerError as exc:
            refusal = _unavailable(exc)
            return _html(_LOGIN, refusal.status, error=refusal.message)
        if ann is None:
            return _html(_LOGIN, 401, error="unknown token.")
        resp = RedirectResponse("/", status_code=303)
        resp.set_cookie(COOKIE, token, httponly=True, samesite="strict", path="/")
        return resp

    async def logout(request: Request) -> Response:
        try:
            _check_origin(request, strict=False)
        except _Refusal as refusal:
            return _html(_LOGIN, refusal.status, error=refusal.message)
        resp = RedirectResponse("/", status_code=303)
        resp.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return resp

    @asynccontextmanager
    async def lifespan(app):
        # Regenerate the stream once before serving, so that the first requests do not queue behind it.
        await run_in_threadpool(state.warm)
        if state.driver is not None:
            state.driver.start()
        try:
            yield
        finally:
            if state.driver is not None:
                await run_in_threadpool(state.driver.stop)
            state.close()

    app = Starlette(routes=[
        Route("/", page, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/api/next", api_next, methods=["GET"]),
        Route("/api/answer", api_answer, methods=["POST"]),
        Route("/api/skip", api_skip, methods=["POST"]),
        Route("/api/status", api_status, methods=["GET"]),
    ], lifespan=lifespan)
    app.state.annotate = state
    return app


def serve(path: str | Path, host: str = "127.0.0.1", port: int = 8000, lease_ttl: float = 300.0,
          log_level: str = "warning", max_body: int = 16384, busy_timeout: float = 30.0, stay: bool = False,
          on_finish: Callable[[dict], None] | None = None) -> str:
    """Serve :func:`create_app` with uvicorn (binds to loopback unless told otherwise).

    Until interrupted, or, unless ``stay``, until the session is finished (its driver says so; the budget
    is spent or the stream is over): there is nothing left for anyone to answer. ``on_finish`` gets the
    status then. Returns ``"finished"`` or ``"interrupted"``.
    """
    import uvicorn

    port = check_int("serve", "port", port, low=1)
    if port > 65535:
        raise ConfigError(f"The 'port' parameter of serve must be an int in [1, 65535]. Got {port!r}.")
    app = create_app(path, lease_ttl=lease_ttl, max_body=max_body, busy_timeout=busy_timeout)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level))
    state = app.state.annotate
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.5):
            driver = state.driver
            if driver is not None and driver.state == "finished" and not driver.alive:
                if on_finish is not None:
                    on_finish(state.status())
                if not stay:
                    server.should_exit = True
                return

    watcher = threading.Thread(target=watch, name="budgetsft-finish-watch", daemon=True)
    watcher.start()
    try:
        server.run()
    finally:
        done.set()
    driver = state.driver
    return "finished" if driver is not None and driver.state == "finished" else "interrupted"


# -------------------------------------------------------------------- the page
@functools.cache
def _static(name: str) -> str:
    """A file of the page, read once from ``static/`` (package data, shipped in the wheel)."""
    return resources.files(__package__).joinpath("static").joinpath(name).read_text("utf-8")


_FIELD = re.compile(r"\{(\w+)\}")


def _html(template: str, status: int = 200, **fields: str) -> HTMLResponse:
    """Fill the page ``template`` (a file in ``static/``): {nonce} fresh per response, {style} and {script}
    from ``annotate.css`` and ``annotate.js``, and {fields} HTML-escaped.

    One pass over the template alone, so that nothing filled in (a file name, the CSS, the JS) is read as a
    placeholder in turn.
    """
    nonce = secrets.token_urlsafe(16)
    values = {key: html.escape(value) for key, value in fields.items()}
    values.update(nonce=nonce, style=_static("annotate.css"), script=_static("annotate.js"))
    body = _FIELD.sub(lambda m: values.get(m.group(1), m.group(0)), _static(template))
    resp = HTMLResponse(body, status_code=status)
    resp.headers["Content-Security-Policy"] = (f"default-src 'none'; script-src 'nonce-{nonce}'; "
                                               f"style-src 'nonce-{nonce}'; connect-src 'self'; "
                                               f"form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["Cache-Control"] = "no-store"
    return resp


_LOGIN = "login.html"
_PAGE = "annotate.html"
