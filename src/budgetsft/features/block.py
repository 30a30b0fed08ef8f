"""Block features for a fixed label set (SPEC §6, "block").

For labels (l_1..l_L), φ(x, a) ∈ R^{L·(h+1)} is zero except the block of
label a, which holds [e(x), 1]: the sentence embedding of the prompt and a
per-label bias. A linear head on these features is a multiclass linear
classifier over e(x) (one weight vector and bias per label), the classic
"multiclass as a linear bandit" construction.
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
        h = self.encoder.dim
        width = h + 1
        out = []
        for i, blocks in enumerate(rows):
            phi = np.zeros((len(blocks), len(self.labels) * width), dtype=np.float64)
            for r, b in enumerate(blocks):
                phi[r, b * width : b * width + h] = emb[i]
                phi[r, b * width + h] = 1.0
            out.append(phi)
        return out
