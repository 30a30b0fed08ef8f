"""Disk cache of features (SPEC §6: "a second run over the same data recomputes nothing").

Layout::

    <cache_dir>/features/<name>-<settings hash>/
        settings.json                     # what the folder holds (for people)
        <ab>/<sha256 of texts>.npyc       # one entry per example

An entry is ``MAGIC + sha256(payload) + payload`` where ``payload`` is the
``.npy`` serialisation of the float64 array of shape (K, d). The key of an
entry is the sha256 of the example's texts (prompt and candidates, in order),
so ids, answers and costs can change without invalidating features, and
identical examples share one entry. The folder is named by the featuriser's
name and a hash of its :meth:`settings` (model, pooling, max_length, dtype, ...).

A bad entry (unreadable, wrong magic or checksum, wrong shape, NaN/inf) is
reported with a warning, recomputed and rewritten; it never crashes a run.
An entry that cannot be rewritten (a directory in its place, a read-only
folder) is warned about and left out of the cache; the run goes on.
Every write goes to a temporary file in the same folder and is moved into
place with ``os.replace``, so a killed process leaves whole entries or none.

What the cache protects against, and what not: the checksum detects
accidental damage (a truncated or flipped file, a crash mid-write, a disk
error). It is not a signature: anyone who can write the cache folder can
replace an entry by other features with a matching checksum, and the run will
use them. Keep the cache (``$BUDGETSFT_CACHE``, ``~/.cache/budgetsft``) in a
folder only you can write, as you would a virtual environment, or pass
``use_cache=False`` when its contents cannot be trusted.

This module imports neither torch nor transformers.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import json
import logging
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from budgetsft._validation import check_int
from budgetsft.data.schema import Example
from budgetsft.exceptions import DataError
from budgetsft.features.base import Featurizer, check_examples, example_key, featurizer_key

__all__ = ["FeatureResult", "FeatureCache", "featurize"]

logger = logging.getLogger("budgetsft.features")

MAGIC = b"BSFTFEAT1\n"
_DIGEST = 32


@dataclass(frozen=True, eq=False)
class FeatureResult:
    """Features of a list of examples, with cache statistics.

    Attributes
    ----------
    features : list of ndarray of shape (K_i, dim), float64
        In the order of the input examples.
    n_cached : int
        Examples read from the cache.
    n_computed : int
        Examples computed by the featuriser (missing or repaired entries).
    n_repaired : int
        Cache entries that were bad (corrupted, wrong shape, NaN) and were recomputed;
        included in ``n_computed``.
    key : str
        The featuriser key (cache folder name).
    path : Path or None
        The cache folder; None when caching was off.
    seconds : float
        Wall time of the call.
    """

    features: list[np.ndarray]
    n_cached: int
    n_computed: int
    n_repaired: int
    key: str
    path: Path | None
    seconds: float

    def __len__(self) -> int:
        return len(self.features)

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter(self.features)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.features[i]

    @property
    def dim(self) -> int | None:
        return int(self.features[0].shape[1]) if self.features else None


class _BadEntry(Exception):
    pass


class FeatureCache:
    """One featuriser's folder of cached feature arrays.

    Parameters
    ----------
    root : path-like
        ``<cache_dir>/features/<featurizer key>``.
    dim : int
        Expected number of columns of every entry.
    """

    def __init__(self, root: str | os.PathLike, dim: int) -> None:
        self.root = Path(root)
        self.dim = dim

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.npyc"

    def read(self, key: str, n_rows: int) -> np.ndarray | None:
        """The entry's array of shape (n_rows, dim), None when absent.

        Raises
        ------
        _BadEntry
            When the entry exists but cannot be trusted.
        """
        path = self.path(key)
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _BadEntry(f"unreadable ({exc})") from exc
        head = len(MAGIC) + _DIGEST
        if len(blob) < head or not blob.startswith(MAGIC):
            raise _BadEntry("bad header (truncated or not a feature file)")
        payload = blob[head:]
        if hashlib.sha256(payload).digest() != blob[len(MAGIC) : head]:
            raise _BadEntry("checksum mismatch")
        try:
            arr = np.load(io.BytesIO(payload), allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise _BadEntry(f"unloadable array ({exc})") from exc
        if arr.dtype != np.float64 or arr.shape != (n_rows, self.dim):
            raise _BadEntry(
                f"shape {arr.shape} dtype {arr.dtype}, expected ({n_rows}, {self.dim}) float64"
            )
        if not np.all(np.isfinite(arr)):
            raise _BadEntry("non-finite values")
        return arr

    def write(self, key: str, arr: np.ndarray) -> None:
        """Write one entry atomically (temporary file + ``os.replace``)."""
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(arr, dtype=np.float64), allow_pickle=False)
        payload = buf.getvalue()
        path = self.path(key)
        try:
            _atomic_write(path, MAGIC + hashlib.sha256(payload).digest() + payload)
        except OSError as exc:  # e.g. a directory where the entry goes: keep the features, skip caching them
            msg = f"features: cannot write cache entry {path} ({exc}); the features are used but not cached"
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
            logger.warning(msg)


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def open_cache(featurizer: Featurizer, cache_dir: str | os.PathLike | None = None) -> FeatureCache:
    """The featuriser's cache folder, with its ``settings.json`` written on first use."""
    from budgetsft.features.models import default_cache_dir

    key = featurizer_key(featurizer)
    dim = int(featurizer.dim)
    root = default_cache_dir(cache_dir) / "features" / key
    cache = FeatureCache(root, dim)
    settings_file = root / "settings.json"
    if not settings_file.exists():
        meta = {"name": featurizer.name, "dim": dim, "settings": featurizer.settings()}
        _atomic_write(settings_file, json.dumps(meta, indent=2, default=str).encode())
    return cache


def lookup(
    examples: Sequence[Example], cache: FeatureCache
) -> tuple[list[np.ndarray | None], dict[str, list[int]], int, int]:
    """Read what the cache holds; bad entries are warned about and scheduled for recomputation.

    Returns
    -------
    out : list
        The cached array of each example, None where it must be computed.
    todo : dict
        Entry key -> positions of the examples that share it (identical texts share one entry).
    n_cached, n_repaired : int
    """
    out: list[np.ndarray | None] = [None] * len(examples)
    todo: dict[str, list[int]] = {}
    n_cached = n_repaired = 0
    for i, ex in enumerate(examples):
        k = example_key(ex)
        if k in todo:
            todo[k].append(i)
            continue
        try:
            arr = cache.read(k, len(ex.candidates))
        except _BadEntry as exc:
            msg = f"features: bad cache entry for example {ex.id!r} ({exc}); recomputing"
            warnings.warn(msg, RuntimeWarning, stacklevel=3)
            logger.warning(msg)
            n_repaired += 1
            arr = None
        if arr is None:
            todo.setdefault(k, []).append(i)
        else:
            out[i] = arr
            n_cached += 1
    return out, todo, n_cached, n_repaired


def check_count(chunk: Sequence[Example], arrays: Sequence, owner: str) -> None:
    """One array per example of a computed chunk, else DataError naming ``owner``."""
    if len(arrays) != len(chunk):
        raise DataError(f"features: {owner}.transform_many returned {len(arrays)} arrays for {len(chunk)} examples.")


def check_array(ex: Example, arr, dim: int, owner: str) -> np.ndarray:
    """``arr`` as float64 after checking it is finite and of shape (K, dim), else DataError naming the example."""
    arr = np.asarray(arr, dtype=np.float64)
    if arr.shape != (len(ex.candidates), dim) or not np.all(np.isfinite(arr)):
        raise DataError(
            f"features: {owner} returned an array of shape {arr.shape} "
            f"(finite: {bool(np.all(np.isfinite(arr)))}) for example {ex.id!r}; "
            f"expected ({len(ex.candidates)}, {dim}), all finite."
        )
    return arr


def store(ex: Example, arr: np.ndarray, todo: dict[str, list[int]], out: list[np.ndarray | None],
          cache: FeatureCache | None) -> None:
    """Place a computed array at every position that shares its entry, and cache it."""
    k = example_key(ex)
    for j, i in enumerate(todo[k]):
        out[i] = arr if j == 0 else arr.copy()
    if cache is not None:
        cache.write(k, arr)


def _takes_progress(featurizer: Featurizer) -> bool:
    try:
        return "progress" in inspect.signature(featurizer.transform_many).parameters
    except (TypeError, ValueError):
        return False


def featurize(
    examples: Sequence[Example],
    featurizer: Featurizer,
    *,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    progress: bool = True,
    chunk_size: int = 64,
) -> FeatureResult:
    """Features of every example, computing only what the disk cache lacks.

    Parameters
    ----------
    examples : sequence of Example, length n
    featurizer : Featurizer
    cache_dir : path-like, optional
        Root of the budgetsft cache (``$BUDGETSFT_CACHE`` or ``~/.cache/budgetsft``
        by default); features live under ``<cache_dir>/features/<key>/``.
    use_cache : bool, default=True
        False computes everything and touches no file.
    progress : bool, default=True
        One tqdm bar (stderr) over the examples that are computed.
    chunk_size : int, default=64
        Examples per call to ``featurizer.transform_many``; each chunk is written
        to the cache as soon as it is computed, so an interrupted run keeps its work,
        and the bar moves once per chunk (a few of the featuriser's batches: small
        enough that the bar of a 200-example run moves, large enough that
        length-sorted batches stay tight).

    Returns
    -------
    FeatureResult
        ``features[i]`` is an ndarray of shape (K_i, featurizer.dim).

    Raises
    ------
    DataError
        When the featuriser returns an array of the wrong shape or with
        non-finite values (nothing is cached then).

    Examples
    --------
    >>> from budgetsft.features import featurize, make_featurizer       # doctest: +SKIP
    >>> res = featurize(examples, make_featurizer("encoder"))           # doctest: +SKIP
    >>> res.n_cached, res.n_computed                                    # doctest: +SKIP
    (0, 1780)
    """
    t0 = time.perf_counter()
    chunk_size = check_int("featurize", "chunk_size", chunk_size, low=1)
    examples = check_examples(examples, "featurize")
    key = featurizer_key(featurizer)
    dim = int(featurizer.dim)
    cache: FeatureCache | None = None
    if use_cache:
        cache = open_cache(featurizer, cache_dir)
        out, todo, n_cached, n_repaired = lookup(examples, cache)
    else:
        out = [None] * len(examples)
        todo = {}
        n_cached = n_repaired = 0
        for i, ex in enumerate(examples):
            todo.setdefault(example_key(ex), []).append(i)

    firsts = [positions[0] for positions in todo.values()]
    if firsts:
        from tqdm.auto import tqdm

        kwargs = {"progress": False} if _takes_progress(featurizer) else {}
        bar = tqdm(
            total=len(firsts), desc=f"features[{featurizer.name}]", unit="ex",
            file=sys.stderr, disable=not progress,
        )
        for s in range(0, len(firsts), chunk_size):
            chunk = [examples[i] for i in firsts[s : s + chunk_size]]
            arrays = featurizer.transform_many(chunk, **kwargs)
            owner = type(featurizer).__name__
            check_count(chunk, arrays, owner)
            for ex, arr in zip(chunk, arrays, strict=True):  # each written as soon as it is checked
                store(ex, check_array(ex, arr, dim, owner), todo, out, cache)
            bar.update(len(chunk))
        bar.close()
    n_computed = len(examples) - n_cached
    logger.info(
        "features: %d cached, %d computed%s (%s)",
        n_cached, n_computed, f", {n_repaired} repaired" if n_repaired else "", key,
    )
    return FeatureResult(
        features=out,  # type: ignore[arg-type]
        n_cached=n_cached,
        n_computed=n_computed,
        n_repaired=n_repaired,
        key=key,
        path=cache.root if cache is not None else None,
        seconds=time.perf_counter() - t0,
    )
