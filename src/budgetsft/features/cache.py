"""Disk cache of features (SPEC §6: "a second run over the same data recomputes nothing").

Layout::

    <cache_dir>/features/<name>-<settings hash>/
        settings.json                     # what the folder holds (for people)
        <ab>/<sha256 of texts>.npyc       # one entry per example

An entry is ``MAGIC + sha256(payload) + payload`` where ``payload`` is the
``.npy`` serialisation of a float32 array: the features of shape (K, d), or,
for a featuriser that has ``pack``/``unpack`` methods, its compact 1-D form
(``block`` stores the prompt's embedding e(x) and the block of each
candidate, h + K numbers instead of K·L·(h + 1)), expanded when read. The key
of an entry is the sha256 of the example's texts (prompt and candidates, in
order), so ids, answers and costs can change without invalidating features,
and identical examples share one entry. The folder is named by the
featuriser's name and a hash of its :meth:`settings` (model, pooling,
max_length, dtype, ...).

Features are returned as float64 arrays of float32 values, whether computed
or read: :func:`featurize` rounds what it computes to float32 before storing
and returning it, so a cold run and a cached run give the same arrays, bit
for bit. Embeddings and hidden states come out of the model in float32, so
``block`` and ``causal`` features are returned exactly as computed; the
Hadamard block of ``encoder`` features is rounded once. Entries written by
earlier versions (``BSFTFEAT1``: float64, expanded) are still read, and
rounded the same way.

A featuriser that can hold many examples compactly (``block``: a
``collect`` method, see :class:`~budgetsft.features.block.BlockFeatures`)
returns them so (``compact=True``, the default): its entries are kept packed
as they are read or computed and expanded only when an example's features are
read, so a large pool is never expanded whole (100k items of five labels:
154 MB instead of 7.7 GB). The values read are the same, bit for bit.

A bad entry (unreadable, wrong magic or checksum, wrong shape, NaN/inf, larger
than its shape allows, a symbolic link, not a regular file) is reported with a
one-line :class:`FeatureCacheWarning`, recomputed and rewritten; it never
crashes a run. Reads are bounded by the size the entry's shape allows and
never follow a symbolic link, so a link to ``/dev/zero`` or a FIFO in place of
an entry is a bad entry, not a hang. An entry that cannot be rewritten (a
directory in its place, a read-only folder) is warned about and left out of
the cache; the run goes on. A cache folder that cannot be used at all (a file
where the folder goes) is warned about once and the run computes without
caching. Every write goes to a temporary file in the same folder and is moved
into place with ``os.replace``, so a killed process leaves whole entries or
none.

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

import errno
import hashlib
import inspect
import io
import json
import logging
import os
import stat
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from budgetsft._validation import check_int
from budgetsft.data.schema import Example
from budgetsft.exceptions import BudgetsftWarning, DataError
from budgetsft.features.base import Featurizer, check_examples, example_key, featurizer_key

__all__ = ["FeatureResult", "FeatureCache", "FeatureCacheWarning", "featurize", "progress_bar", "takes_progress"]

logger = logging.getLogger("budgetsft.features")

MAGIC = b"BSFTFEAT2\n"  # float32 payload: features (K, d) or a featuriser's packed 1-D form
MAGIC_V1 = b"BSFTFEAT1\n"  # earlier versions: float64 features (K, d); still read
_DIGEST = 32
_HEAD = len(MAGIC) + _DIGEST  # both magics have the same length
_NPY_HEADER = 4096  # most bytes an .npy header may take (np.save writes 128 for these arrays)
# Where a file may not be opened without following a link or blocking (a FIFO); 0 where the OS has no such flag.
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)


class FeatureCacheWarning(BudgetsftWarning, RuntimeWarning):
    """A feature-cache entry or folder was bad or could not be written; the features were computed instead."""


@dataclass(frozen=True, eq=False)
class FeatureResult:
    """Features of a list of examples, with cache statistics.

    Attributes
    ----------
    features : sequence of ndarray of shape (K_i, dim), float64
        In the order of the input examples; float32 values (see the module docstring). A list,
        or, for a featuriser that has ``collect`` (``block``), a compact sequence whose items are
        expanded when read (:class:`~budgetsft.features.block.BlockFeatures`), unless
        ``featurize(..., compact=False)``.
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
        The cache folder; None when caching was off or the folder could not be used.
    seconds : float
        Wall time of the call.
    """

    features: Sequence[np.ndarray]
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


def _warn(msg: str) -> None:
    warnings.warn(msg, FeatureCacheWarning, stacklevel=3)


class FeatureCache:
    """One featuriser's folder of cached feature arrays.

    Parameters
    ----------
    root : path-like
        ``<cache_dir>/features/<featurizer key>``.
    dim : int
        Expected number of columns of every entry.
    codec : object with ``pack`` and ``unpack`` methods, optional
        Stores each entry in its compact form: ``pack(features)`` gives a 1-D
        array, ``unpack(packed, n_rows)`` the features back (the featuriser,
        e.g. :class:`~budgetsft.features.block.BlockFeaturizer`). An array that
        does not survive ``unpack(pack(.))`` bit for bit is stored whole.
    """

    def __init__(self, root: str | os.PathLike, dim: int, codec: Any = None) -> None:
        self.root = Path(root)
        self.dim = dim
        self.codec = codec

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.npyc"

    def read(self, key: str, n_rows: int, *, packed: bool = False) -> np.ndarray | None:
        """The entry's array of shape (n_rows, dim), float64 holding float32 values; None when absent.

        With ``packed`` (and a codec), the entry's packed 1-D float32 form instead, after the same
        checks (a whole entry is packed when it survives the codec bit for bit, else returned whole).

        Raises
        ------
        _BadEntry
            When the entry exists but cannot be trusted.
        """
        path = self.path(key)
        # Never more than an old float64 entry of this shape takes: a link to /dev/zero cannot fill memory.
        blob = _read_bounded(path, _HEAD + _NPY_HEADER + n_rows * self.dim * 8)
        if blob is None:
            return None
        magic = blob[: len(MAGIC)]
        if len(blob) < _HEAD or magic not in (MAGIC, MAGIC_V1):
            raise _BadEntry("bad header (truncated or not a feature file)")
        payload = blob[_HEAD:]
        if hashlib.sha256(payload).digest() != blob[len(MAGIC) : _HEAD]:
            raise _BadEntry("checksum mismatch")
        full = (n_rows, self.dim)
        small = None  # the packed form, when the entry holds one
        if magic == MAGIC_V1:
            arr = _load(payload, np.float64, [full])
        else:
            arr = _load(payload, np.float32, [full, None] if self.codec is not None else [full])
            if arr.ndim == 1:
                small = arr
                try:
                    arr = np.asarray(self.codec.unpack(arr, n_rows))
                except (ValueError, IndexError) as exc:
                    raise _BadEntry(f"cannot expand the packed entry ({exc})") from exc
        if arr.shape != full:
            raise _BadEntry(f"shape {arr.shape}, expected {full}")
        if not np.all(np.isfinite(arr)):
            raise _BadEntry("non-finite values")
        if not packed or self.codec is None:
            return _round32(arr)
        if small is not None:  # checked through its expansion, which is dropped
            return small
        arr = _round32(arr)  # a whole entry (e.g. an old float64 one): packed when it survives the codec
        small = _packed(self.codec, arr)
        return arr if small is None else small

    def write(self, key: str, arr: np.ndarray) -> None:
        """Write one entry atomically (temporary file + ``os.replace``), in float32, packed when the codec allows."""
        stored = np.asarray(arr, dtype=np.float32)
        if self.codec is not None:
            packed = _packed(self.codec, arr)
            if packed is not None:
                stored = packed
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(stored), allow_pickle=False)
        payload = buf.getvalue()
        path = self.path(key)
        try:
            if path.parent.is_symlink():  # never write out of the cache
                raise OSError(errno.ELOOP, "the folder is a symbolic link", str(path.parent))
            _atomic_write(path, MAGIC + hashlib.sha256(payload).digest() + payload)
        except OSError as exc:  # e.g. a directory where the entry goes: keep the features, skip caching them
            _warn(f"features: cannot write cache entry {path} ({exc}); the features are used but not cached")


def _packed(codec: Any, arr: np.ndarray) -> np.ndarray | None:
    """``codec.pack(arr)`` in float32 when it expands back to ``arr`` bit for bit, else None (store it whole)."""
    try:
        packed = np.asarray(codec.pack(arr), dtype=np.float32)
        if packed.ndim == 1 and np.array_equal(codec.unpack(packed, len(arr)), arr):
            return packed
    except (ValueError, IndexError):  # not the featuriser's layout
        pass
    return None


def _read_bounded(path: Path, limit: int) -> bytes | None:
    """The bytes of a regular file of at most ``limit`` bytes, None when absent; never follows a final link."""
    if path.parent.is_symlink():  # an <ab> folder linked elsewhere is out of the cache
        raise _BadEntry(f"{path.parent} is a symbolic link")
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP or path.is_symlink():
            raise _BadEntry("a symbolic link, not a cache file") from exc
        raise _BadEntry(f"unreadable ({exc})") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):  # a directory, a FIFO, a device
            raise _BadEntry("not a regular file")
        if info.st_size > limit:
            raise _BadEntry(f"{info.st_size} bytes, more than the {limit} its shape allows")
        with os.fdopen(fd, "rb", closefd=False) as fh:
            blob = fh.read(limit + 1)
    except OSError as exc:
        raise _BadEntry(f"unreadable ({exc})") from exc
    finally:
        os.close(fd)
    if len(blob) > limit:  # grew while being read
        raise _BadEntry(f"more than the {limit} bytes its shape allows")
    return blob


def _load(payload: bytes, dtype: type, shapes: list[tuple[int, int] | None]) -> np.ndarray:
    """The .npy array in ``payload``, after checking from its header that it has ``dtype`` and one of ``shapes``.

    ``None`` in ``shapes`` allows any 1-D array (a packed entry). The header is checked before the
    array is allocated, so a header that claims a huge shape costs nothing.
    """
    fh = io.BytesIO(payload)
    try:
        version = np.lib.format.read_magic(fh)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, found = read_header(fh)
    except (ValueError, OSError, EOFError, SyntaxError) as exc:
        raise _BadEntry(f"unloadable array ({exc})") from exc
    ok_shape = shape in shapes or (None in shapes and len(shape) == 1)
    if found != np.dtype(dtype) or not ok_shape or fortran:
        want = " or ".join("(n,)" if s is None else str(s) for s in shapes)
        raise _BadEntry(f"shape {shape} dtype {found}, expected {want} {np.dtype(dtype)}")
    data = payload[fh.tell() :]
    if len(data) != int(np.prod(shape)) * found.itemsize:
        raise _BadEntry(f"{len(data)} bytes of data for shape {shape}")
    return np.frombuffer(data, dtype=found).reshape(shape)


def _round32(arr: np.ndarray) -> np.ndarray:
    """``arr`` rounded to float32 and held in a new float64 array (what every path returns)."""
    return np.asarray(arr, dtype=np.float32).astype(np.float64)


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


def _not_a_folder(path: Path) -> Path | None:
    """The first of ``path`` and its parents that exists and is not a folder (e.g. a regular file)."""
    for p in [*reversed(path.parents), path]:
        if p.exists() and not p.is_dir():
            return p
    return None


def open_cache(featurizer: Featurizer, cache_dir: str | os.PathLike | None = None) -> FeatureCache:
    """The featuriser's cache folder, with its ``settings.json`` written on first use.

    Raises
    ------
    DataError
        When the folder cannot be made or used (a file in its place or in place of a parent, no permission).
    """
    from budgetsft.features.models import default_cache_dir

    key = featurizer_key(featurizer)
    dim = int(featurizer.dim)
    root = default_cache_dir(cache_dir) / "features" / key
    codec = featurizer if callable(getattr(featurizer, "pack", None)) and callable(
        getattr(featurizer, "unpack", None)) else None
    cache = FeatureCache(root, dim, codec)
    settings_file = root / "settings.json"
    try:
        if not settings_file.exists():
            meta = {"name": featurizer.name, "dim": dim, "settings": featurizer.settings()}
            _atomic_write(settings_file, json.dumps(meta, indent=2, default=str).encode())
    except OSError as exc:
        blocker = _not_a_folder(root)
        why = f"{blocker} is a file, not a folder" if blocker is not None else str(exc)
        raise DataError(f"features: cannot use the feature cache folder {root}: {why}.") from exc
    return cache


def lookup(
    examples: Sequence[Example], cache: FeatureCache, *, packed: bool = False
) -> tuple[list[np.ndarray | None], dict[str, list[int]], int, int]:
    """Read what the cache holds; bad entries are warned about and scheduled for recomputation.

    Returns
    -------
    out : list
        The cached array of each example (packed where ``packed`` and the codec allow:
        :meth:`FeatureCache.read`), None where it must be computed.
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
            arr = cache.read(k, len(ex.candidates), packed=packed)
        except _BadEntry as exc:
            _warn(f"features: bad cache entry for example {ex.id!r} ({exc}); recomputing")
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
    """``arr`` rounded to float32 (held in float64), after checking it is finite and of shape (K, dim).

    The rounding is what the cache stores, so computed and cached features are the same bit for bit.

    Raises
    ------
    DataError
        Naming the example, when the shape is wrong or a value is not finite (in float32).
    """
    arr = np.asarray(arr, dtype=np.float64)
    with np.errstate(over="ignore"):
        rounded = _round32(arr)
    if arr.shape != (len(ex.candidates), dim) or not np.all(np.isfinite(rounded)):
        raise DataError(
            f"features: {owner} returned an array of shape {arr.shape} "
            f"(finite in float32: {bool(np.all(np.isfinite(rounded)))}) for example {ex.id!r}; "
            f"expected ({len(ex.candidates)}, {dim}), all finite."
        )
    return rounded


def store(ex: Example, arr: np.ndarray, todo: dict[str, list[int]], out: list[np.ndarray | None],
          cache: FeatureCache | None, *, keep: np.ndarray | None = None) -> None:
    """Place a computed array at every position that shares its entry, and cache it.

    ``keep``: what to place instead of ``arr`` (its packed form), shared by the positions (it is only read).
    """
    k = example_key(ex)
    for j, i in enumerate(todo[k]):
        out[i] = keep if keep is not None else arr if j == 0 else arr.copy()
    if cache is not None:
        cache.write(k, arr)


class _LineWriter:
    """A file for tqdm off a terminal: each refresh becomes one line (tqdm redraws with a carriage return)."""

    def __init__(self, stream) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        line = text.replace("\r", "").strip()
        if line:
            self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(total: int, desc: str, *, unit: str = "ex", disable: bool = False, leave: bool = True) -> Any:
    """A tqdm bar on stderr with rate and ETA; off a terminal, one plain line every ~10 s.

    Off a terminal (a log, ``script``, CI) a redrawn bar is one endless line, so each refresh is written as
    a line of its own (:class:`_LineWriter`), at most every 10 s.
    """
    from tqdm.auto import tqdm

    tty = sys.stderr.isatty()
    return tqdm(
        total=total, desc=desc, unit=unit, file=sys.stderr if tty else _LineWriter(sys.stderr), disable=disable,
        leave=leave, mininterval=0.1 if tty else 10.0, ascii=None if tty else True,
    )


def takes_progress(featurizer: Featurizer) -> bool:
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
    compact: bool = True,
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
        False computes everything and touches no file. A cache folder that cannot
        be used (a file in its place) is warned about and the run goes on as with False.
    progress : bool, default=True
        One tqdm bar (stderr) over the examples that are computed.
    chunk_size : int, default=64
        Examples per call to ``featurizer.transform_many``; each chunk is written
        to the cache as soon as it is computed, so an interrupted run keeps its work,
        and the bar moves once per chunk (a few of the featuriser's batches: small
        enough that the bar of a 200-example run moves, large enough that
        length-sorted batches stay tight).
    compact : bool, default=True
        When the featuriser can hold the features of many examples compactly (it has
        ``pack``, ``unpack`` and ``collect``: ``block``), ``features`` is that compact
        sequence (:class:`~budgetsft.features.block.BlockFeatures`), whose items are
        expanded when read; entries are kept packed as they are read or computed, so
        the features of the whole list are never expanded at once (100k examples of five
        labels: 154 MB instead of 7.7 GB). Otherwise (other featurisers, ``compact=False``,
        or an entry that cannot be packed) a list of expanded arrays.

    Returns
    -------
    FeatureResult
        ``features[i]`` is an ndarray of shape (K_i, featurizer.dim), float64 holding
        float32 values, the same whether computed or read from the cache, and whether
        held expanded or compact (expanded when read).

    Raises
    ------
    DataError
        When the featuriser returns an array of the wrong shape or with
        non-finite values (nothing is cached then).

    Warns
    -----
    FeatureCacheWarning
        One line per bad entry (recomputed), per entry that cannot be written,
        or once for a cache folder that cannot be used (nothing is cached then).

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
        try:
            cache = open_cache(featurizer, cache_dir)
        except DataError as exc:  # e.g. a file where the folder goes: the run goes on, uncached
            _warn(f"{exc} The features are computed but not cached.")
    codec = featurizer if compact and all(callable(getattr(featurizer, m, None))
                                          for m in ("pack", "unpack", "collect")) else None
    if cache is not None:
        out, todo, n_cached, n_repaired = lookup(examples, cache, packed=codec is not None)
    else:
        out = [None] * len(examples)
        todo = {}
        n_cached = n_repaired = 0
        for i, ex in enumerate(examples):
            todo.setdefault(example_key(ex), []).append(i)

    firsts = [positions[0] for positions in todo.values()]
    if firsts:
        kwargs = {"progress": False} if takes_progress(featurizer) else {}
        bar = progress_bar(len(firsts), f"features[{featurizer.name}]", disable=not progress)
        for s in range(0, len(firsts), chunk_size):
            chunk = [examples[i] for i in firsts[s : s + chunk_size]]
            arrays = featurizer.transform_many(chunk, **kwargs)
            owner = type(featurizer).__name__
            check_count(chunk, arrays, owner)
            for ex, arr in zip(chunk, arrays, strict=True):  # each written as soon as it is checked
                arr = check_array(ex, arr, dim, owner)
                store(ex, arr, todo, out, cache, keep=None if codec is None else _packed(codec, arr))
            bar.update(len(chunk))
        bar.close()
    features = out if codec is None else _collect(codec, out, examples)
    n_computed = len(examples) - n_cached
    logger.info(
        "features: %d cached, %d computed%s (%s)",
        n_cached, n_computed, f", {n_repaired} repaired" if n_repaired else "", key,
    )
    return FeatureResult(
        features=features,  # type: ignore[arg-type]
        n_cached=n_cached,
        n_computed=n_computed,
        n_repaired=n_repaired,
        key=key,
        path=cache.root if cache is not None else None,
        seconds=time.perf_counter() - t0,
    )


def _collect(codec: Any, out: list, examples: Sequence[Example]) -> Sequence[np.ndarray]:
    """The featuriser's compact sequence of the entries (all packed), else the list of expanded arrays."""
    n_rows = [len(ex.candidates) for ex in examples]
    if out and all(arr.ndim == 1 for arr in out):
        return codec.collect(out, n_rows)
    return [np.asarray(codec.unpack(arr, k)) if arr.ndim == 1 else arr for arr, k in zip(out, n_rows, strict=True)]
