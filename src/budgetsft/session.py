"""Sessions: a game played against a ledger, resumable after any interruption.

A session is one run config played round by round with a :class:`Ledger`
beside it. Every label the gate buys goes through the ledger: the query is
written, an oracle is asked, and the answer is committed *before* the learner
learns from it. Every ``checkpoint_every`` rounds (and whenever the session
has to wait for people) the records played so far and the game state (learner,
gate, follower, budget with their random generators, and the stream position)
are checkpointed in the same file.

Resuming loads the newest checkpoint, regenerates the stream up to its
position, and plays on. Rounds after the checkpoint are replayed: the game is
deterministic, so the gate queries the same rounds again, and the answers the
ledger already holds are reused instead of being bought again. The final
records are therefore those of an uninterrupted run with the same seed, with
each label paid once, whatever the point of interruption (``kill -9``
included).
"""

from __future__ import annotations

import dataclasses
import fcntl
import itertools
import os
import pickle
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

from budgetsft.base import QueryInfo, Record, Round
from budgetsft.budget import Budget
from budgetsft.config import DEFAULT_CONFIG, build, merge, validate_config
from budgetsft.exceptions import ConfigError
from budgetsft.game import _check_round, _resolve, commit
from budgetsft.ledger import Ledger, LedgerError, Query

__all__ = ["Session", "PlayOutcome", "StopSession", "SessionBusyError"]

CHECKPOINT_EVERY = 100


@dataclass
class _GameState:
    """What a checkpoint restores (pickled into the ledger)."""

    position: int
    learner: object
    gate: object
    follower: object
    budget: Budget


@dataclass(frozen=True)
class PlayOutcome:
    """How a call to :meth:`Session.play` ended: ``finished``, ``waiting`` (for answers) or ``stopped``."""

    status: str
    position: int
    pending: int = 0


class SessionBusyError(LedgerError):
    """Another process holds the session's player lock (``budgetsft resume`` or ``annotate`` is playing it)."""


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

    @classmethod
    def of(cls, cfg: dict) -> _Streams:
        from budgetsft.experiment import stream_of

        rounds, test, real = stream_of(cfg)
        return cls(rounds, test, None if real is None else list(real.dataset.train))


class Session:
    """One session file: its ledger, its config, and the stream it plays.

    Parameters
    ----------
    ledger : Ledger
    checkpoint_every : int, default=100
        Rounds between checkpoints when no one has to be waited for.
    """

    def __init__(self, ledger: Ledger, checkpoint_every: int = CHECKPOINT_EVERY,
                 streams: _Streams | None = None) -> None:
        self.ledger = ledger
        self.config = ledger.config
        self.checkpoint_every = int(checkpoint_every)
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
        if not cfg.get("data") and cfg["env"]["name"] == "adversarial":
            raise ConfigError("sessions cannot resume the 'adversarial' environment: its contexts depend on the "
                              "learner's live state, which a replayed stream cannot reproduce. Use `run` without "
                              "--session.")
        streams = _Streams.of(cfg)
        budget = budget_for(cfg, streams.rounds)
        ledger = Ledger.create(path, cfg, budget_total=budget.total, budget_unit=budget.unit, oracle=oracle)
        return cls(ledger, checkpoint_every, streams)

    @classmethod
    def open(cls, path, checkpoint_every: int = CHECKPOINT_EVERY) -> Session:
        return cls(Ledger.open(path), checkpoint_every)

    def close(self) -> None:
        self.ledger.close()

    # ---------------------------------------------------------------- the stream
    def _loaded(self) -> _Streams:
        if self._streams is None:
            self._streams = _Streams.of(self.config)
        return self._streams

    def stream(self) -> Sequence[Round]:
        """The rounds of the session, regenerated from its config (deterministic in the seed)."""
        return self._loaded().rounds

    def test_rounds(self) -> Sequence[Round] | None:
        return self._loaded().test

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
        state = pickle.loads(blob)
        if state.position != pos:
            raise LedgerError(f"{self.ledger.path}: checkpoint at {pos} holds position {state.position}.")
        return state

    def _checkpoint(self, state: _GameState, buffered: list[Record], gate_override: bytes | None = None) -> None:
        if gate_override is not None:
            state = dataclasses.replace(state, gate=pickle.loads(gate_override))
        self.ledger.save_checkpoint(state.position, pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL), buffered)
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
        with self._player_lock():
            return self._play_locked(oracle, progress, stop_at)

    @contextmanager
    def _player_lock(self):
        """One player per session file at a time (an OS lock: a killed player releases it at once)."""
        lock_path = self.ledger.path.with_name(self.ledger.path.name + ".lock")
        fh = open(lock_path, "a+")  # noqa: SIM115 - held for the whole play
        try:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.seek(0)
                raise SessionBusyError(f"{self.ledger.path}: another process is playing this session "
                                  f"({fh.read().strip() or 'pid unknown'}); wait for it or stop it first.") from None
            fh.seek(0)
            fh.truncate()
            fh.write(f"pid {os.getpid()}")
            fh.flush()
            yield
        finally:
            fh.close()

    def _play_locked(self, oracle, progress, stop_at) -> PlayOutcome:
        t0 = time.perf_counter()
        try:
            with threadpool_limits(limits=1, user_api="blas"):
                while True:
                    try:
                        return self._play(oracle, progress, stop_at)
                    except StopSession as stop:
                        if stop.undo_round is None:
                            self.ledger.set_meta("status", "stopped")
                            return PlayOutcome("stopped", self.ledger.checkpoints()[-1])
                        # Undo: the oracle withdrew an answer; replay from the newest checkpoint before its round
                        # (the ledger's other answers are reused, so nothing else is asked or paid again).
                        before = [p for p in self.ledger.checkpoints() if p < stop.undo_round]
                        self.ledger.rollback_to(before[-1] if before else 0)
        finally:
            seconds = float(self.ledger.meta("seconds", "0")) + time.perf_counter() - t0
            self.ledger.set_meta("seconds", repr(seconds))

    def _play(self, oracle, progress, stop_at) -> PlayOutcome:
        ledger = self.ledger
        stream = self.stream()
        horizon = len(stream)
        state = self._restore()
        pos0 = state.position
        learner, gate, follower, budget = state.learner, state.gate, state.follower, state.budget
        window = int(getattr(gate, "window", 1) or 1)
        ledger.set_meta("status", "playing")
        # Only an oracle that may make us wait or stop needs the gate's state before each decision.
        careful = not getattr(oracle, "immediate", False)
        buffered: list[Record] = []
        group: list[tuple[Round, np.ndarray, QueryInfo]] = []
        last_ckpt = pos0
        rounds = itertools.islice(iter(stream), pos0, None)
        for t, rnd in enumerate(rounds, start=pos0 + 1):
            X, cost = _check_round(rnd, t)
            group.append((rnd, X, commit(learner, X, t, horizon, cost)))
            if window > 1 and len(group) < window and t < horizon:
                continue
            gate_before = pickle.dumps(gate, protocol=pickle.HIGHEST_PROTOCOL) if careful else None
            if window == 1:
                chosen = {0} if gate.ask(group[0][2], budget) else set()
            else:
                chosen = set(gate.select_many([info for _, _, info in group], budget))
            start = t - len(group)  # rounds fully played before this group
            labels = self._labels(group, sorted(chosen), oracle, state, start, gate_before, buffered)
            if labels is None:  # waiting for people: the checkpoint at `start` resumes this group
                return PlayOutcome("waiting", start, len(ledger.pending()))
            for i, (r, x, info) in enumerate(group):
                if i in labels:
                    label, price = labels[i]
                    buffered.append(_resolve(dataclasses.replace(r, gold=label), x, info, True, learner, follower,
                                             budget, price=price))
                else:
                    buffered.append(_resolve(r, x, info, False, learner, follower, budget))
            group = []
            state.position = t
            if progress is not None:
                progress(t)
            if stop_at is not None and t >= stop_at:
                self._checkpoint(state, buffered)
                return PlayOutcome("stopped", t)
            if t - last_ckpt >= self.checkpoint_every:
                self._checkpoint(state, buffered)
                last_ckpt = t
        self._checkpoint(state, buffered)
        self._check_books(budget)
        ledger.set_meta("status", "finished")
        return PlayOutcome("finished", state.position)

    def _labels(self, group, chosen: list[int], oracle, state: _GameState, start: int, gate_before,
                buffered: list[Record]) -> dict[int, tuple[int, float]] | None:
        """Labels of the chosen rounds of a group, from the ledger or the oracle; None to wait."""
        if not chosen:
            return {}
        ledger = self.ledger
        # One transaction for the group's new queries (a window's worth are pending at once).
        stored = ledger.add_queries([(group[i][2].t, group[i][0].id, group[i][2].latency, group[i][2].cost)
                                     for i in chosen])
        queries: dict[int, Query] = {i: stored[group[i][2].t] for i in chosen}
        missing = [queries[i] for i in chosen if queries[i].status == "pending"]
        if missing:
            if gate_before is not None:
                # People may make us wait, quit or undo: first save the game as it was before this decision.
                self._checkpoint(dataclasses.replace(state, position=start), buffered, gate_before)
            context = {q.round: group[i] for i, q in queries.items()}
            oracle.request(self, sorted(missing, key=lambda q: (-q.latency, q.round)), context)
        out: dict[int, tuple[int, float]] = {}
        waiting = False
        for i in chosen:
            q = ledger.query(queries[i].id)
            if q.status == "skipped":
                continue
            ans = ledger.answer_for_round(q.round)
            if ans is None:
                waiting = True
                continue
            out[i] = (int(ans.label), float(ans.cost))
        if waiting:
            if gate_before is None:
                raise LedgerError(f"oracle {type(oracle).__name__} claims to answer at once but left "
                                  f"{sum(1 for i in chosen if i not in out)} query(ies) unanswered.")
            self.ledger.set_meta("status", "waiting")
            return None
        return out

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
        return run_summary(self.config, records, played, state.budget, state.learner, self.test_rounds(), seconds)

    def progress_report(self) -> dict:
        """Spend, budget left, labels by annotator, and the regret of the rounds played so far."""
        led = self.ledger
        records = self.records()
        mistakes = sum(r.mistake for r in records)
        regrets = [r.regret for r in records if r.regret == r.regret]
        return {
            "path": str(led.path),
            "status": led.status,
            "rounds_played": len(records),
            "horizon": self.horizon(),
            "budget": led.budget_total,
            "unit": led.budget_unit,
            "spent": led.spent(),
            "remaining": led.remaining(),
            "labels_bought": len(led.answers()),
            "pending": len(led.pending()),
            "by_annotator": led.labels_by_annotator(),
            "mistakes": int(mistakes),
            "hinge_loss": float(sum(r.hinge_loss for r in records)),
            "pseudo_regret": float(sum(regrets)) if regrets else float("nan"),
        }

    def export_labels(self) -> list[dict]:
        """The bought labelled set, one canonical example per answer (SPEC §8 JSONL lines)."""
        out = []
        for ans in self.ledger.answers():
            item = self.describe(ans.round)
            out.append({"id": item["id"], "prompt": item["prompt"], "candidates": item["candidates"],
                        "answer": ans.label, "annotator": ans.annotator, "cost": ans.cost, "round": ans.round})
        return out
