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
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from budgetsft.data.schema import Example
from budgetsft.exceptions import ConfigError, DataError
from budgetsft.features.base import check_examples
from budgetsft.features.encoder import SentenceEncoder

__all__ = ["BlockFeaturizer"]


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


def _expand(emb: np.ndarray, blocks: Sequence[int], n_labels: int) -> np.ndarray:
    """φ of shape (len(blocks), n_labels·(h+1)): ``emb`` (shape (h,)) and a 1 in the block of each row."""
    h = emb.shape[0]
    width = h + 1
    phi = np.zeros((len(blocks), n_labels * width), dtype=np.float64)
    for r, b in enumerate(blocks):
        phi[r, b * width : b * width + h] = emb
        phi[r, b * width + h] = 1.0
    return phi
