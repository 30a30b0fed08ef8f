"""The Featurizer role and its registry (SPEC §6, STYLE.md habits 1 and 10).

A featuriser turns canonical examples (prompt + K candidates) into one matrix
φ(x, a) of shape (K, dim) per example. Implementations live in
``encoder.py``, ``causal.py``, ``block.py`` and ``grad.py``, which import this module;
they are picked by short registered names with :func:`make_featurizer`,
which imports the one it builds (this module imports none of them).

This module imports neither torch nor transformers.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import os
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from budgetsft.data.schema import Example
from budgetsft.exceptions import ConfigError, DataError

__all__ = [
    "Featurizer",
    "FEATURIZERS",
    "make_featurizer",
    "featurizer_key",
    "example_key",
    "check_examples",
]


@runtime_checkable
class Featurizer(Protocol):
    """Text -> candidate features φ(x, a).

    Attributes
    ----------
    name : str
        Registered short name (``"encoder"``, ``"causal"``, ``"block"``, ``"grad"``).
    dim : int
        d, the number of feature columns.

    Notes
    -----
    A featuriser may also have ``pack(features) -> 1-D ndarray`` and
    ``unpack(packed, n_rows) -> features``, inverse bit for bit: the disk cache
    then stores the packed form (``block`` stores e(x) instead of K·L·(h+1)
    numbers; see :mod:`budgetsft.features.cache`). With
    ``collect(packed_entries, n_rows) -> Sequence[ndarray]`` as well, it can
    hold many examples in that form, expanded when read
    (what :func:`~budgetsft.features.featurize` returns for it).
    """

    name: str
    dim: int

    def settings(self) -> dict:
        """Everything that changes the output (model, pooling, max_length, dtype, ...).

        JSON-serialisable; part of the disk-cache key.
        """

    def transform_many(self, examples: Sequence[Example]) -> list[np.ndarray]:
        """One float64 ndarray of shape (K_i, dim) per example, all finite."""


# Registered names -> "module:Class", imported on first use: this module imports no concrete featuriser (they
# import it, for check_examples), and building one by name is what first pulls in its module.
FEATURIZERS: dict[str, str] = {
    "encoder": "budgetsft.features.encoder:EncoderFeaturizer",
    "causal": "budgetsft.features.causal:CausalFeaturizer",
    "block": "budgetsft.features.block:BlockFeaturizer",
    "grad": "budgetsft.features.grad:GradFeaturizer",
}


def check_model_args(owner: str, model: Any, tokenizer: Any) -> None:
    """A featuriser's in-memory ``model`` and ``tokenizer``: both or neither, and never a name passed as ``model``."""
    if isinstance(model, str | os.PathLike):
        raise ConfigError(
            f"The 'model' parameter of {owner} takes a loaded transformers model; pass a model "
            f"name, directory or hub id as 'model_name'. Got {model!r}."
        )
    if (model is None) != (tokenizer is None):
        raise ConfigError(f"The 'model' and 'tokenizer' parameters of {owner} must be given together.")


def make_featurizer(kind: str, **options: Any) -> Featurizer:
    """Build a featuriser by its registered name.

    Parameters
    ----------
    kind : {"encoder", "causal", "block", "grad"}
    **options
        Passed to the featuriser's constructor (e.g. ``labels=(...)`` for
        ``block``, ``dtype="fp32"`` for ``causal``).

    Returns
    -------
    Featurizer

    Raises
    ------
    ConfigError
        When ``kind`` is not registered, an option is not one of the
        featuriser's parameters, or its value is invalid.

    Examples
    --------
    >>> make_featurizer("ngram")
    Traceback (most recent call last):
    ...
    budgetsft.exceptions.ConfigError: The 'kind' parameter of make_featurizer must be one of 'encoder', 'causal', 'block', 'grad'. Got 'ngram'.
    """  # noqa: E501
    if kind not in FEATURIZERS:
        raise ConfigError(
            "The 'kind' parameter of make_featurizer must be one of "
            + ", ".join(repr(k) for k in FEATURIZERS)
            + f". Got {kind!r}."
        )
    module, _, name = FEATURIZERS[kind].partition(":")
    cls = getattr(importlib.import_module(module), name)
    params = inspect.signature(cls).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        unknown = [key for key in options if key not in params]
        if unknown:  # a typo in a config's `features:` section: say which key, not a TypeError
            raise ConfigError(
                f"The {unknown[0]!r} option of the {kind!r} featuriser is not one of its parameters: "
                + ", ".join(params) + "."
            )
    return cls(**options)


def featurizer_key(featurizer: Featurizer) -> str:
    """A short stable hash of a featuriser's name and settings (the cache folder name).

    Returns
    -------
    str
        ``"<name>-<16 hex digits>"``.
    """
    blob = json.dumps(
        {"name": featurizer.name, "dim": int(featurizer.dim), "settings": featurizer.settings()},
        sort_keys=True,
        default=str,
    )
    return f"{featurizer.name}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def example_key(example: Example) -> str:
    """sha256 of the texts of an example (prompt and candidates, in order).

    The id, answer and cost do not change features, so they are not part of the key.

    Returns
    -------
    str
        64 hex digits.
    """
    blob = json.dumps([example.prompt, list(example.candidates)], ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def check_examples(examples: Sequence[Example], owner: str) -> list[Example]:
    """Check that every item is an Example with a string prompt and >= 2 string candidates."""
    if isinstance(examples, Example):
        raise DataError(f"{owner}.transform_many expects a sequence of Example, got one Example.")
    out = list(examples)
    for i, ex in enumerate(out):
        if not isinstance(ex, Example):
            raise DataError(
                f"{owner}.transform_many: item {i} must be a budgetsft Example. "
                f"Got {type(ex).__name__}."
            )
        if not isinstance(ex.prompt, str):
            raise DataError(f"{owner}: example {ex.id!r} has a non-string prompt.")
        if len(ex.candidates) < 2 or not all(isinstance(c, str) for c in ex.candidates):
            raise DataError(
                f"{owner}: example {ex.id!r} needs K >= 2 string candidates; "
                f"got {ex.candidates!r}."
            )
    return out
