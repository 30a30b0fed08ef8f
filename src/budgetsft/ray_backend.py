"""Sweeps and featurisation on Ray (optional extra ``budgetsft[ray]``).

The local process is the default backend (:func:`budgetsft.experiment.sweep`,
:func:`budgetsft.features.featurize`); this module runs the same work as Ray
tasks and actors, either on an embedded single-machine instance (``address=None``)
or on an existing cluster (``address="HEAD:6379"``).

* :func:`sweep_ray` -- one Ray task per (gate, β, seed) cell. Results are the
  summaries of :func:`budgetsft.experiment.run`, identical to the local backend
  except for the ``"seconds"`` timing key, returned in the same (gate, β, seed)
  order; ``on_result`` sees them as they finish. A cell that raises does not sink
  the sweep: it comes back as ``{"gate", "beta", "seed", "error"}``.
* :func:`featurize_ray` -- a pool of Ray actors, each holding one featuriser (so
  each loads its model once), computes the examples missing from the disk
  cache; the driver writes every array into the same cache layout as
  :func:`budgetsft.features.featurize`, so a later local call computes nothing.

Ray is imported inside the functions only: importing this module (and the
numpy core) never needs it.

Examples
--------
>>> from budgetsft.ray_backend import sweep_ray                              # doctest: +SKIP
>>> rows = sweep_ray({"env": {"rounds": 300}}, ["llf", "random"], [0.1], [0, 1])  # doctest: +SKIP
>>> [r["gate"] for r in rows]                                                # doctest: +SKIP
['llf', 'llf', 'random', 'random']
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from budgetsft._validation import check_int
from budgetsft.config import validate_config
from budgetsft.exceptions import ConfigError, DataError
from budgetsft.experiment import sweep_cells

__all__ = ["sweep_ray", "featurize_ray"]

logger = logging.getLogger("budgetsft.ray")

_INSTALL_HINT = "install budgetsft[ray] (pip install 'budgetsft[ray]')"


def _import_ray():
    try:
        import ray
    except ImportError as exc:
        raise ConfigError(
            f"The Ray backend needs the optional dependency 'ray': {_INSTALL_HINT}."
        ) from exc
    return ray


@contextlib.contextmanager
def _session(address: str | None, num_cpus: int | None, owner: str) -> Iterator[Any]:
    """Yield the ``ray`` module connected to a cluster; shut down only an instance started here.

    An already initialised Ray (e.g. a caller's ``ray.init``) is reused as is.
    ``address=None`` starts a fresh local instance (``address="local"``, so a
    stray ``RAY_ADDRESS`` or a cluster started earlier on this machine is not
    joined by surprise); any other address joins that cluster.
    """
    if num_cpus is not None:
        num_cpus = check_int(owner, "num_cpus", num_cpus, low=1)
    ray = _import_ray()
    started = False
    if not ray.is_initialized():
        # Offline machines: no usage-stats prompt (an explicit setting wins).
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        common = {"logging_level": logging.WARNING, "include_dashboard": False}
        if address is None:
            ray.init(address="local", num_cpus=num_cpus, **common)
        else:
            if num_cpus is not None:
                logger.warning("ray: num_cpus=%d ignored when joining the cluster at %s",
                               num_cpus, address)
            ray.init(address=address, **common)
        started = True
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def _error_text(ray, exc: BaseException) -> str:
    """``"<exception type>: <message>"`` of the exception raised inside a task."""
    cause = getattr(exc, "cause", None) if isinstance(exc, ray.exceptions.RayTaskError) else None
    if isinstance(cause, BaseException):
        exc = cause
    return f"{type(exc).__name__}: {exc}"


def _cancel(ray, refs) -> None:
    for ref in refs:
        try:
            ray.cancel(ref, force=True)
        except Exception:  # already finished or lost: nothing left to cancel
            pass


# --------------------------------------------------------------------------- sweeps


def _run_cell(cfg: dict, streams: tuple | None = None) -> dict:
    """Body of one sweep task: play the cell's game and return its summary."""
    from budgetsft.experiment import run

    # Fault injection for the tests of failure handling: every validation happens on the
    # driver, so no real configuration fails inside a task.
    if os.environ.get("BUDGETSFT_FAIL_GATE") == cfg["gate"]["name"]:
        raise RuntimeError(f"injected failure in a {cfg['gate']['name']} cell")

    stream, test = streams if streams is not None else (None, None)
    return run(cfg, stream=stream, test=test).summary


def _load_streams(cfg: dict) -> tuple[list, list]:
    from budgetsft.experiment import real_streams

    real = real_streams(cfg)
    return real.train, real.test


def sweep_ray(
    base: dict | None,
    gates: Sequence[str],
    betas: Sequence[float],
    seeds: Sequence[int],
    *,
    address: str | None = None,
    num_cpus: int | None = None,
    gate_options: dict[str, dict] | None = None,
    on_result: Callable[[dict], None] | None = None,
    on_error: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Run every (gate, β, seed) cell of :func:`budgetsft.experiment.sweep` as a Ray task.

    Parameters
    ----------
    base, gates, betas, seeds, gate_options
        As in :func:`budgetsft.experiment.sweep`: ``full`` runs once per seed at
        β = 1, and every cell is validated before any task is submitted (a bad
        config raises :class:`ConfigError` here, as locally).
    address : str, optional
        A running cluster to join (``"HEAD:6379"``, ``"auto"``). None starts an
        embedded local instance for the duration of the call. An already
        initialised Ray is reused and left running.
    num_cpus : int, optional
        CPUs of the embedded instance (default: all of the machine); one cell
        uses one CPU.
    on_result : callable, optional
        Called with each successful summary, in completion order.
    on_error : callable, optional
        Called with the result dict of each failed cell, in completion order.

    Returns
    -------
    list of dict
        In (gate, β, seed) order. A summary equal to the local backend's except
        for ``"seconds"``; for a cell whose task raised,
        ``{"gate", "beta", "seed", "error": "<exception type>: <message>"}``.

    Notes
    -----
    Configs with a ``data`` section load their streams once per seed in the
    driver (features from the driver's disk cache, exactly as the local sweep
    does) and put them in the Ray object store with ``ray.put``; every cell of
    that seed reads them from there, so worker nodes need neither the data nor
    the feature cache. Warm a cold cache in parallel with :func:`featurize_ray`.

    Ctrl-C (or an exception in a callback) cancels every outstanding task
    (``ray.cancel(force=True)``), shuts down an instance started here, and re-raises.
    """
    cells = sweep_cells(base, gates, betas, seeds, gate_options)
    for cfg in cells:
        validate_config(cfg)
    out: list[dict | None] = [None] * len(cells)
    with _session(address, num_cpus, "sweep_ray") as ray:
        task = ray.remote(num_cpus=1)(_run_cell)
        streams: dict[int, Any] = {}  # seed -> ObjectRef of (train, test)
        pending: dict[Any, int] = {}
        try:
            for i, cfg in enumerate(cells):
                if cfg.get("data"):
                    if cfg["seed"] not in streams:
                        streams[cfg["seed"]] = ray.put(_load_streams(cfg))
                    ref = task.remote(cfg, streams[cfg["seed"]])
                else:
                    ref = task.remote(cfg)
                pending[ref] = i
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    i = pending.pop(ref)
                    try:
                        summary = ray.get(ref)
                    except ray.exceptions.RayError as exc:
                        cfg = cells[i]
                        err = {
                            "gate": cfg["gate"]["name"],
                            "beta": cfg["gate"].get("beta"),
                            "seed": cfg.get("seed", 0),
                            "error": _error_text(ray, exc),
                        }
                        out[i] = err
                        if on_error is not None:
                            on_error(err)
                        else:
                            logger.warning("sweep: cell %s beta=%s seed=%s failed: %s",
                                           err["gate"], err["beta"], err["seed"], err["error"])
                        continue
                    out[i] = summary
                    if on_result is not None:
                        on_result(summary)
        except BaseException:  # Ctrl-C or a raising callback: leave nothing running behind
            _cancel(ray, pending)
            raise
    return out  # type: ignore[return-value]


# --------------------------------------------------------------------------- featurisation


class _FeaturizerWorker:
    """Body of one featurisation actor: one featuriser, its model loaded on first use."""

    def __init__(self, kind: str, options: dict, n_threads: int | None) -> None:
        if n_threads is not None:
            # Several actors share a machine: one BLAS/torch thread each avoids oversubscription.
            try:
                import torch

                torch.set_num_threads(n_threads)
            except ImportError:
                pass
        from budgetsft.features.base import make_featurizer
        from budgetsft.features.cache import takes_progress

        self._featurizer = make_featurizer(kind, **options)
        self._kwargs = {"progress": False} if takes_progress(self._featurizer) else {}

    def transform_many(self, examples) -> list[np.ndarray]:
        arrays = self._featurizer.transform_many(examples, **self._kwargs)
        return [np.asarray(a, dtype=np.float64) for a in arrays]


def _node_cpus(ray) -> list[int]:
    return [int(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")]


def featurize_ray(
    examples: Sequence,
    kind: str,
    *,
    options: dict | None = None,
    cache_dir: str | os.PathLike | None = None,
    address: str | None = None,
    num_cpus: int | None = None,
    batch_size: int = 64,
    num_actors: int | None = None,
    progress: bool = True,
):
    """Fill the disk feature cache in parallel with Ray actors; features of every example.

    Parameters
    ----------
    examples : sequence of Example, length n
    kind : {"encoder", "causal", "block"}
        Featuriser name, as in :func:`budgetsft.features.make_featurizer`.
    options : dict, optional
        Featuriser options (the cache key is computed from the same featuriser
        the local path would build, so both share one cache folder).
    cache_dir : path-like, optional
        Root of the budgetsft cache, as in :func:`budgetsft.features.featurize`.
        The driver reads and writes it; actors only compute.
    address, num_cpus
        As in :func:`sweep_ray`.
    batch_size : int, default=64
        Examples per actor call; each finished batch is written to the cache at
        once, so an interrupted run keeps its work.
    num_actors : int, optional
        Actors (model copies). Default: the cluster's CPUs, at most one per batch.
        With several actors each uses one torch thread; a single actor uses all
        the CPUs of the largest node.
    progress : bool, default=True
        One tqdm bar (stderr) over the computed examples.

    Returns
    -------
    FeatureResult
        As :func:`budgetsft.features.featurize` returns: ``features`` in input
        order, ``n_cached``, ``n_computed``, ``n_repaired``, ``key``, ``path``.

    Raises
    ------
    DataError
        When the featuriser returns an array of the wrong shape or with
        non-finite values (that batch is not cached).
    """
    from budgetsft.features.base import check_examples, featurizer_key, make_featurizer
    from budgetsft.features.cache import FeatureResult, lookup, open_cache

    t0 = time.perf_counter()
    batch_size = check_int("featurize_ray", "batch_size", batch_size, low=1)
    if num_actors is not None:
        num_actors = check_int("featurize_ray", "num_actors", num_actors, low=1)
    options = dict(options or {})
    examples = check_examples(examples, "featurize_ray")
    featurizer = make_featurizer(kind, **options)  # for the key and dim only: no weights are loaded
    key = featurizer_key(featurizer)
    dim = int(featurizer.dim)
    cache = open_cache(featurizer, cache_dir)
    # Cache lookup, exactly as the local path does: identical texts share one entry.
    out, todo, n_cached, n_repaired = lookup(examples, cache)

    firsts = [positions[0] for positions in todo.values()]
    if firsts:
        batches = [firsts[s : s + batch_size] for s in range(0, len(firsts), batch_size)]
        with _session(address, num_cpus, "featurize_ray") as ray:
            cpus = _node_cpus(ray) or [1]
            n_act = min(num_actors or max(1, sum(cpus)), len(batches))
            threads = 1 if n_act > 1 else max(cpus)
            actor_cls = ray.remote(num_cpus=threads)(_FeaturizerWorker)
            actors = [actor_cls.remote(kind, options, threads) for _ in range(n_act)]
            try:
                _compute(ray, actors, batches, examples, todo, out, cache, dim, progress,
                         featurizer.name)
            finally:
                # Also on Ctrl-C: killing an actor drops its queued batches
                # (ray.cancel(force=True) is for tasks, not actor methods).
                for a in actors:
                    ray.kill(a)
    n_computed = len(examples) - n_cached
    logger.info("features (ray): %d cached, %d computed (%s)", n_cached, n_computed, key)
    return FeatureResult(
        features=out,  # type: ignore[arg-type]
        n_cached=n_cached,
        n_computed=n_computed,
        n_repaired=n_repaired,
        key=key,
        path=cache.root,
        seconds=time.perf_counter() - t0,
    )


def _compute(ray, actors, batches, examples, todo, out, cache, dim, progress, name) -> None:
    """Feed batches to the actors (two in flight each) and write each result as it lands."""
    from tqdm.auto import tqdm

    from budgetsft.features.cache import check_array, check_count, store

    queue = deque(range(len(batches)))
    pending: dict[Any, tuple[int, Any]] = {}  # ref -> (batch index, actor)

    def submit(actor) -> None:
        if queue:
            b = queue.popleft()
            pending[actor.transform_many.remote([examples[i] for i in batches[b]])] = (b, actor)

    bar = tqdm(total=sum(map(len, batches)), desc=f"features[{name}] ray", unit="ex",
               file=sys.stderr, disable=not progress)
    try:
        for _ in range(2):
            for actor in actors:
                submit(actor)
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                b, actor = pending.pop(ref)
                try:
                    arrays = ray.get(ref)
                except ray.exceptions.RayTaskError as exc:
                    raise DataError(
                        f"features: a Ray featurisation actor failed: {_error_text(ray, exc)}"
                    ) from exc
                chunk = [examples[i] for i in batches[b]]
                owner = f"featuriser {name!r}"
                check_count(chunk, arrays, owner)
                # the whole batch is checked before any of it is cached
                checked = [check_array(ex, arr, dim, owner) for ex, arr in zip(chunk, arrays, strict=True)]
                for ex, arr in zip(chunk, checked, strict=True):
                    store(ex, arr, todo, out, cache)
                bar.update(len(chunk))
                submit(actor)
    finally:
        bar.close()
