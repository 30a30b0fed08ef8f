"""Sessions: a game played against a persistent label ledger, with the people who answer it.

=====================  ==============================================================
module                 what
=====================  ==============================================================
``ledger``             :class:`Ledger`, the SQLite file: queries, answers, annotators, spend
``session``            :class:`Session`, a run config played resumably beside a ledger
``oracles``            who answers: a data set's gold labels, a file, a terminal, the web page
``web``                :func:`serve` / :func:`create_app`, the annotation page and its JSON API
``static/``            the page's HTML, CSS and JS (package data, read by ``web``)
=====================  ==============================================================

Arrows point one way: ``web`` -> ``oracles`` -> ``session`` -> ``ledger``. The
package sits above the numpy core (``game``, ``config``) and ``experiment``, and
nothing in the core imports it.

These modules used to live at the top level (``budgetsft.ledger``,
``budgetsft.session``, ``budgetsft.oracles``, ``budgetsft.web``); import them
from here instead, as ``budgetsft.sessions`` or ``budgetsft.sessions.<module>``.
A ledger file holds no module path of these modules, so files written before
the move open unchanged.

Importing this package is cheap: each name is imported on first use, and
:func:`serve` / :func:`create_app` need the ``web`` extra (Starlette, uvicorn)
only then.

Examples
--------
>>> from budgetsft.sessions import Session, make_oracle          # doctest: +SKIP
>>> session = Session.create("session.db", {"env": {"name": "drifting"}})  # doctest: +SKIP
>>> session.play(make_oracle("dataset"))                          # doctest: +SKIP
PlayOutcome(status='finished', position=5000, pending=0)
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from budgetsft.sessions.ledger import (
        SCHEMA_VERSION,
        Annotator,
        AnnotatorRevokedError,
        Answer,
        Ledger,
        LedgerBusyError,
        LedgerError,
        LedgerReadOnlyError,
        Query,
        hash_token,
        record_from_json,
        record_to_json,
    )
    from budgetsft.sessions.oracles import (
        MAX_ANSWER_LINE,
        ORACLES,
        DatasetOracle,
        FileOracle,
        Oracle,
        TerminalOracle,
        WebOracle,
        import_answers,
        make_oracle,
    )
    from budgetsft.sessions.session import (
        CheckpointError,
        DataChangedError,
        PlayOutcome,
        Session,
        SessionBusyError,
        StopSession,
        decode_state,
        encode_state,
        example_digest,
    )
    from budgetsft.sessions.web import COOKIE, SessionDriver, create_app, serve

__all__ = [
    # ledger
    "SCHEMA_VERSION", "Ledger", "LedgerError", "LedgerBusyError", "LedgerReadOnlyError", "Query", "Answer",
    "Annotator", "record_to_json", "record_from_json", "hash_token", "AnnotatorRevokedError",
    # session
    "Session", "PlayOutcome", "StopSession", "SessionBusyError", "CheckpointError", "DataChangedError",
    "encode_state", "decode_state", "example_digest",
    # oracles
    "Oracle", "DatasetOracle", "FileOracle", "TerminalOracle", "WebOracle", "make_oracle", "ORACLES",
    "import_answers", "MAX_ANSWER_LINE",
    # web
    "create_app", "serve", "SessionDriver", "COOKIE",
]

# Where each public name lives (tests/test_layers.py checks this against each module's __all__).
_LAZY = {
    **dict.fromkeys(("SCHEMA_VERSION", "Ledger", "LedgerError", "LedgerBusyError", "LedgerReadOnlyError", "Query",
                     "Answer", "Annotator", "record_to_json", "record_from_json", "hash_token",
                     "AnnotatorRevokedError"),
                    "budgetsft.sessions.ledger"),
    **dict.fromkeys(("Session", "PlayOutcome", "StopSession", "SessionBusyError", "CheckpointError",
                     "DataChangedError", "encode_state", "decode_state", "example_digest"),
                    "budgetsft.sessions.session"),
    **dict.fromkeys(("Oracle", "DatasetOracle", "FileOracle", "TerminalOracle", "WebOracle", "make_oracle",
                     "ORACLES", "import_answers", "MAX_ANSWER_LINE"), "budgetsft.sessions.oracles"),
    **dict.fromkeys(("create_app", "serve", "SessionDriver", "COOKIE"), "budgetsft.sessions.web"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
