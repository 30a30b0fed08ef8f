"""Block features for a fixed label set (SPEC §6, "block").

For labels (l_1..l_L), φ(x, a) ∈ R^{L·(h+1)} is zero except the block of
label a, which holds [e(x), 1]: the sentence embedding of the prompt and a
per-label bias. A linear head on these features is a multiclass linear
classifier over e(x) (one weight vector and bias per label), the classic
"multiclass as a linear bandit" construction.

The disk cache stores the compact form (:meth:`BlockFeaturizer.pack`): e(x)
in float32 and the block of each candidate, h + K numbers instead of
K·L·(h + 1) (388 float32 against 6,160 float64 for four candidates of four
labels), and expands it when read with the same code that builds the
features here, so a cached array equals a computed one bit for bit.

Many examples' features are held the same way by :class:`BlockFeatures`
(what :func:`~budgetsft.features.featurize` returns for it):
e(x_i) in one (n, h) float32 array and the block of each candidate, each
example's (K_i, L·(h + 1)) array expanded when it is read. A 100k-item pool
of five labels then takes 154 MB instead of 7.7 GB of expanded float64.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from budgetsft.data.schema import Example
from budgetsft.exceptions import ConfigError, DataError
from budgetsft.features.base import check_examples
from budgetsft.features.encoder import SentenceEncoder

__all__ = ["BlockFeaturizer", "BlockFeatures"]


class BlockFeaturizer:
    """φ(x, a) = e(x) in the block of label a, plus a one-hot label bias.

    Parameters
    ----------
    labels : sequence of str, length L >= 2
        The fixed label set; every candidate of every example must be one of them
        (in any order, any subset).
    model_name : str, default="all-minilm-l6-v2"
    model, tokenizer : optional
        An already-loaded transformers encoder and tokenizer (both or none).
    device : {"auto", "cpu", "cuda"}, default="cpu"
    dtype : {"fp32", "bf16", "auto"}, default="fp32"
    max_length : int, default=256
    batch_size : int, default=64
    progress : bool, default=True

    Attributes
    ----------
    name : str
        ``"block"``.
    dim : int
        L·(h + 1); block l spans columns [l(h+1), (l+1)(h+1)), its last column the bias.

    Examples
    --------
    >>> from budgetsft.data.schema import Example
    >>> labels = ("business", "sports", "world")
    >>> f = BlockFeaturizer(labels=labels, progress=False)   # doctest: +SKIP
    >>> ex = Example("n1", "Stocks fell sharply.", ("sports", "business"))
    >>> f.transform_many([ex])[0].shape                        # doctest: +SKIP
    (2, 1155)
    """

    name = "block"

    def __init__(
        self,
        labels: Sequence[str] | None = None,
        *,
        model_name: str = "all-minilm-l6-v2",
        model: Any = None,
        tokenizer: Any = None,
        device: str = "cpu",
        dtype: str = "fp32",
        max_length: int = 256,
        batch_size: int = 64,
        progress: bool = True,
    ) -> None:
        owner = type(self).__name__
        if (
            labels is None
            or isinstance(labels, str)
            or len(labels) < 2
            or not all(isinstance(x, str) for x in labels)
            or len(set(labels)) != len(labels)
        ):
            raise ConfigError(
                f"The 'labels' parameter of {owner} must be a sequence of at least two distinct "
                f"strings. Got {labels!r}."
            )
        self.labels = tuple(labels)
        self.model_name = model_name
        self.device = device
        self.dtype = dtype
        self.max_length = max_length
        self.batch_size = batch_size
        self.progress = progress
        self._index = {label: i for i, label in enumerate(self.labels)}
        self.encoder = SentenceEncoder(
            model_name, model=model, tokenizer=tokenizer, device=device, dtype=dtype,
            max_length=max_length, batch_size=batch_size,
        )

    @property
    def dim(self) -> int:
        return len(self.labels) * (self.encoder.dim + 1)

    def settings(self) -> dict:
        """Encoder settings plus the label set (its order fixes the block layout)."""
        return {**self.encoder.settings(), "labels": list(self.labels)}

    def transform_many(
        self, examples: Sequence[Example], *, progress: bool | None = None
    ) -> list[np.ndarray]:
        """Block features of every candidate of every example.

        Parameters
        ----------
        examples : sequence of Example
            Candidates must be labels of the label set; K may vary.
        progress : bool, optional
            Overrides the constructor's ``progress`` for this call.

        Returns
        -------
        list of ndarray of shape (K_i, L·(h+1)), float64

        Raises
        ------
        DataError
            Naming the first example with a candidate outside the label set
            (checked before anything is computed).
        """
        examples = check_examples(examples, type(self).__name__)
        rows = []
        for ex in examples:
            unknown = [c for c in ex.candidates if c not in self._index]
            if unknown:
                raise DataError(
                    f"{type(self).__name__}: example {ex.id!r} has candidate(s) "
                    f"{unknown!r} outside the label set {list(self.labels)!r}."
                )
            rows.append([self._index[c] for c in ex.candidates])
        if not examples:
            return []
        show = self.progress if progress is None else progress
        emb = self.encoder.embed_many([ex.prompt for ex in examples], progress=show)
        return [_expand(emb[i], blocks, len(self.labels)) for i, blocks in enumerate(rows)]

    def pack(self, features: np.ndarray) -> np.ndarray:
        """The compact form of one example's features, which the disk cache stores.

        Parameters
        ----------
        features : ndarray of shape (K, L·(h+1))
            As :meth:`transform_many` returns them.

        Returns
        -------
        ndarray of shape (h + K,), float32
            e(x) (the embedding in the first row's block), then the block of each row.

        Raises
        ------
        ValueError
            When ``features`` is not of shape (K, L·(h+1)).
        """
        features = np.asarray(features)
        n_labels = len(self.labels)
        if features.ndim != 2 or features.shape[1] % n_labels or features.shape[1] < 2 * n_labels:
            raise ValueError(f"features of shape {features.shape} are not {n_labels} blocks")
        width = features.shape[1] // n_labels
        blocks = features.reshape(len(features), n_labels, width)
        rows = np.argmax(blocks[:, :, width - 1], axis=1)  # the bias column of the row's block is 1
        return np.concatenate([blocks[0, rows[0], : width - 1], rows]).astype(np.float32)

    def unpack(self, packed: np.ndarray, n_rows: int) -> np.ndarray:
        """The features of one example from :meth:`pack`'s output (its inverse, bit for bit).

        Parameters
        ----------
        packed : ndarray of shape (h + n_rows,)
        n_rows : int
            K, the number of candidates.

        Returns
        -------
        ndarray of shape (n_rows, L·(h+1)), float64

        Raises
        ------
        ValueError
            When ``packed`` is too short or a block index is not one of the L labels.
        """
        packed = np.asarray(packed)
        h = packed.shape[0] - n_rows
        rows = packed[h:]
        if packed.ndim != 1 or h < 1 or n_rows < 1 or not np.all(np.isin(rows, np.arange(len(self.labels)))):
            raise ValueError(f"a packed entry of shape {packed.shape} does not hold {n_rows} blocks of "
                             f"{len(self.labels)} labels")
        return _expand(packed[:h], rows.astype(np.intp), len(self.labels))

    def collect(self, packed: Sequence[np.ndarray], n_rows: Sequence[int]) -> BlockFeatures:
        """Many examples' features in compact form, from :meth:`pack`'s output of each.

        Parameters
        ----------
        packed : sequence of ndarray of shape (h + K_i,), float32
        n_rows : sequence of int
            K_i, the number of candidates of each example.

        Returns
        -------
        BlockFeatures
            ``out[i]`` equals ``unpack(packed[i], n_rows[i])`` bit for bit.

        Raises
        ------
        ValueError
            When an entry does not hold its K_i blocks of this label set, or the entries' h differ.
        """
        return BlockFeatures.from_packed(packed, n_rows, len(self.labels))


class BlockFeatures(Sequence):
    """Block features of n examples, held compactly and expanded when read.

    Example i's features, of shape (K_i, L·(h+1)), are e(x_i) and a 1 in the block of each candidate,
    zeros elsewhere; they are stored as e(x_i) (one row of an (n, h) float32 array) and the block index
    of each candidate, h + K_i numbers instead of K_i·L·(h+1).

    Parameters
    ----------
    emb : ndarray of shape (n, h), float32
        e(x_i), one row per example.
    blocks : ndarray of shape (N,), int
        The label block of every candidate, example after example (N = Σ K_i).
    starts : ndarray of shape (n + 1,), int
        Example i's candidates are ``blocks[starts[i]:starts[i + 1]]``.
    n_labels : int
        L.

    Notes
    -----
    ``features[i]`` is a new float64 array equal, bit for bit, to what
    :meth:`BlockFeaturizer.unpack` expands from the cache and to what
    :meth:`BlockFeaturizer.transform_many` computes (rounded to float32, as
    :func:`~budgetsft.features.featurize` rounds it). A slice is a
    ``BlockFeatures`` sharing the arrays. :meth:`stack_rows` gives the
    candidates of all examples as rows of an (N, L·(h+1)) matrix that is
    expanded only where it is indexed, which LLF pool selection reads in
    chunks (:func:`budgetsft.gates.llf.pick_pool_batch`).

    Examples
    --------
    >>> import numpy as np
    >>> feats = BlockFeatures(np.ones((2, 3), np.float32), np.array([0, 1, 1, 0]), np.array([0, 2, 4]), 2)
    >>> len(feats), feats.dim, feats[1].shape
    (2, 8, (2, 8))
    >>> feats[1]
    array([[0., 0., 0., 0., 1., 1., 1., 1.],
           [1., 1., 1., 1., 0., 0., 0., 0.]])
    """

    def __init__(self, emb: np.ndarray, blocks: np.ndarray, starts: np.ndarray, n_labels: int) -> None:
        self.emb = emb
        self.blocks = blocks
        self.starts = starts
        self.n_labels = n_labels

    @classmethod
    def from_packed(cls, packed: Sequence[np.ndarray], n_rows: Sequence[int], n_labels: int) -> BlockFeatures:
        """Gather packed entries (e(x) then the K blocks, float32) into one compact store, checking each."""
        n = len(packed)
        sizes = np.fromiter((int(k) for k in n_rows), dtype=np.int64, count=n)
        if len(sizes) != n:
            raise ValueError(f"{n} packed entries for {len(sizes)} row counts")
        starts = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(sizes, out=starts[1:])
        h = int(np.shape(packed[0])[0] - sizes[0]) if n else 0
        emb = np.empty((n, h), dtype=np.float32)
        index = np.empty(int(starts[-1]), dtype=np.float32)  # block indices as packed (float32), checked below
        for i, p in enumerate(packed):
            p = np.asarray(p)
            if p.ndim != 1 or p.shape[0] != h + sizes[i] or sizes[i] < 1:
                raise ValueError(f"packed entry {i} of shape {p.shape} does not hold e(x) of size {h} and "
                                 f"{sizes[i]} blocks")
            emb[i] = p[:h]
            index[starts[i]:starts[i + 1]] = p[h:]
        ok = np.isin(index, np.arange(n_labels))
        if not ok.all():
            row = int(np.argmin(ok))
            raise ValueError(f"packed entry {int(np.searchsorted(starts, row, side='right')) - 1} has block index "
                             f"{index[row]}, not one of the {n_labels} labels")
        blocks = index.astype(np.int8 if n_labels <= 127 else np.int64)
        return cls(emb, blocks, starts, n_labels)

    @property
    def dim(self) -> int:
        """L·(h+1), the number of feature columns."""
        return self.n_labels * (self.emb.shape[1] + 1)

    def __len__(self) -> int:
        return len(self.starts) - 1

    def __getitem__(self, i):
        if isinstance(i, slice):
            a, b, step = i.indices(len(self))
            if step != 1:
                return [self[j] for j in range(a, b, step)]
            b = max(a, b)
            return BlockFeatures(self.emb[a:b], self.blocks[self.starts[a]:self.starts[b]],
                                 self.starts[a:b + 1] - self.starts[a], self.n_labels)
        n = len(self)
        j = operator.index(i)
        if not -n <= j < n:
            raise IndexError(f"example {i!r} out of range for {n} examples")
        j %= n
        return _expand(self.emb[j], self.blocks[self.starts[j]:self.starts[j + 1]].astype(np.intp), self.n_labels)

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self[i] for i in range(len(self)))

    def __repr__(self) -> str:
        return f"BlockFeatures({len(self)} examples, {len(self.blocks)} candidates, d={self.dim})"

    def stack_rows(self) -> tuple[_BlockRows, np.ndarray]:
        """All candidates as rows: ``(X, starts)``, example i's rows being ``X[starts[i]:starts[i + 1]]``.

        X acts as an (N, L·(h+1)) float64 array for reading (``X.shape``, ``X[r]``, ``X[a:b]``,
        ``X[index array]``) and expands only the rows it is asked for.
        """
        return _BlockRows(self), self.starts


class _BlockRows:
    """The candidates of a :class:`BlockFeatures` as rows of an (N, d) float64 matrix, expanded when indexed."""

    ndim = 2
    dtype = np.dtype(np.float64)

    def __init__(self, feats: BlockFeatures) -> None:
        self._f = feats
        self.shape = (len(feats.blocks), feats.dim)
        self._owner = np.repeat(np.arange(len(feats), dtype=np.int64), np.diff(feats.starts))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, slice):
            a, b, step = key.indices(self.shape[0])
            return self._rows(np.arange(a, b, step))
        if isinstance(key, int | np.integer):
            if not -self.shape[0] <= key < self.shape[0]:
                raise IndexError(f"row {key} out of range for {self.shape[0]} rows")
            return self._rows(np.array([key % self.shape[0]]))[0]
        return self._rows(np.asarray(key, dtype=np.int64))

    def _rows(self, rows: np.ndarray) -> np.ndarray:
        """The rows ``rows`` (1-D int array): e(x) of each row's example in the row's block, then a 1 (as _expand)."""
        f = self._f
        h = f.emb.shape[1]
        if rows.ndim != 1:
            raise IndexError(f"rows must be a 1-D index array; got shape {rows.shape}")
        out = np.zeros((len(rows), f.n_labels, h + 1), dtype=np.float64)
        at = np.arange(len(rows))
        blk = f.blocks[rows].astype(np.intp)
        out[at, blk, :h] = f.emb[self._owner[rows]]
        out[at, blk, h] = 1.0
        return out.reshape(len(rows), f.n_labels * (h + 1))


def _expand(emb: np.ndarray, blocks: Sequence[int], n_labels: int) -> np.ndarray:
    """φ of shape (len(blocks), n_labels·(h+1)): ``emb`` (shape (h,)) and a 1 in the block of each row."""
    h = emb.shape[0]
    width = h + 1
    phi = np.zeros((len(blocks), n_labels * width), dtype=np.float64)
    for r, b in enumerate(blocks):
        phi[r, b * width : b * width + h] = emb
        phi[r, b * width + h] = 1.0
    return phi
