"""Real data sets as game streams: load, featurise (disk-cached), split into rounds.

Only this module and ``budgetsft.features`` / ``budgetsft.adapt`` touch the
language-model stack; the numpy core stays torch-free.
"""

from __future__ import annotations

import functools
import operator
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from budgetsft.base import Round
from budgetsft.data import Dataset, Example, load_dataset
from budgetsft.exceptions import DataError

__all__ = ["RealStreams", "CompactRounds", "configured_features", "load_streams", "resolve_features", "to_rounds"]


@dataclass
class RealStreams:
    """Train rounds (the stream) and test rounds (held-out evaluation) of one data set."""

    dataset: Dataset
    train: Sequence[Round]  # a list, or CompactRounds over block features
    test: Sequence[Round]
    featurizer: str
    dim: int
    n_cached: int
    n_computed: int


class CompactRounds(Sequence):
    """Rounds over features held compactly, each Round built when it is read.

    Parameters
    ----------
    features : sequence of ndarray of shape (K_i, d), with ``stack_rows()``
        A compact pool, such as :class:`~budgetsft.features.block.BlockFeatures`:
        ``features[i]`` expands example i's features into a new float64 array.
    gold : sequence of int or None
    cost : sequence of float
    ids : sequence of str or None

    Notes
    -----
    ``rounds[i]`` is a new ``Round`` whose features equal, bit for bit, those of
    the list of rounds :func:`to_rounds` builds from the expanded features; only
    the rounds a caller holds on to are expanded, so a 100k-item pool of block
    features takes 154 MB instead of 7.7 GB. It reads as a list of Round: len,
    index, slices (CompactRounds), iteration, ``+`` (a list). ``features`` is
    the compact pool itself, which :func:`budgetsft.gates.llf.pick_pool_batch` and
    :func:`budgetsft.gates.select_pool` read in chunks without expanding it whole.

    Examples
    --------
    >>> import numpy as np
    >>> from budgetsft.features.block import BlockFeatures
    >>> feats = BlockFeatures(np.ones((2, 3), np.float32), np.array([0, 1, 1, 0]), np.array([0, 2, 4]), 2)
    >>> rounds = CompactRounds(feats, gold=[1, None], cost=[1.0, 2.0], ids=["a", "b"])
    >>> len(rounds), rounds[1].id, rounds[1].features.shape, rounds[1].features.dtype
    (2, 'b', (2, 8), dtype('float64'))
    """

    def __init__(self, features, gold: Sequence[int | None], cost: Sequence[float],
                 ids: Sequence[str | None]) -> None:
        self.features = features
        self.gold = gold
        self.cost = cost
        self.ids = ids

    def __len__(self) -> int:
        return len(self.gold)

    def __getitem__(self, i):
        if isinstance(i, slice):
            a, b, step = i.indices(len(self))
            if step != 1:
                return [self[j] for j in range(a, b, step)]
            return CompactRounds(self.features[a:b], self.gold[a:b], self.cost[a:b], self.ids[a:b])
        i = operator.index(i)
        if not -len(self) <= i < len(self):
            raise IndexError(f"round {i} out of range for {len(self)} rounds")
        i %= len(self)
        return Round(features=self.features[i], gold=self.gold[i], cost=self.cost[i], id=self.ids[i])

    def __iter__(self) -> Iterator[Round]:
        return (self[i] for i in range(len(self)))

    def __add__(self, other) -> list[Round]:
        return [*self, *other]

    def __radd__(self, other) -> list[Round]:
        return [*other, *self]

    def __repr__(self) -> str:
        return f"CompactRounds({len(self)} rounds over {self.features!r})"


def to_rounds(examples: list[Example], features, *, unlabelled_ok: bool = False) -> Sequence[Round]:
    """Pair each example with its (K, d) features; an example without an answer has gold None.

    Without ``unlabelled_ok`` every example must be labelled: a simulation reads every gold.
    Returns a list of Round, or :class:`CompactRounds` when ``features`` is a compact pool
    (it has ``stack_rows``, as :func:`~budgetsft.features.featurize` returns block features).
    """
    for ex in examples:
        if ex.answer is None and not unlabelled_ok:
            raise DataError(f"example {ex.id!r} has no answer: a simulation (the dataset oracle, sweep, adapt "
                            f"without --labels) needs gold labels. To label an unlabelled pool, let a person "
                            f"answer: `budgetsft select`, or --session with --oracle web, file or terminal.")
    gold = [None if ex.answer is None else int(ex.answer) for ex in examples]
    cost = [1.0 if ex.cost is None else float(ex.cost) for ex in examples]
    ids = [ex.id for ex in examples]
    if callable(getattr(features, "stack_rows", None)):
        if len(features) != len(examples):
            raise ValueError(f"to_rounds: {len(examples)} examples for {len(features)} feature arrays")
        return CompactRounds(features, gold, cost, ids)
    return [Round(features=X, gold=g, cost=c, id=i) for X, g, c, i in zip(features, gold, cost, ids, strict=True)]


def resolve_features(features: str, ds: Dataset) -> str:
    """``"auto"``: ``block`` for a data set with a fixed label set, else ``encoder``.

    On a fixed label set, block features give the head one weight vector per label
    over e(x) (the multiclass peers' hypothesis class); on bbc-news at β = 0.1 LLF made
    103.7 online mistakes on them against 185.7 on the joint encoder features (the
    first build's ``make bench``, 3 seeds). Per-item
    candidates have no label blocks, so they get the joint encoder features.
    """
    if features == "auto":
        return "block" if ds.labels is not None else "encoder"
    return features


def configured_features(cfg: dict) -> str:
    """The featuriser a config with a ``data`` section plays: its ``features`` name, ``auto`` resolved.

    Resolving ``auto`` reads the data set (once per process and data set: the
    result is cached), not its features.
    """
    data = cfg["data"] if isinstance(cfg["data"], dict) else {"name": cfg["data"]}
    feats = cfg.get("features") or "auto"
    kind = feats if isinstance(feats, str) else feats.get("name", "auto")
    if kind != "auto":
        return kind
    return _auto_features(data["name"], data.get("max_examples"), bool(data.get("skip_invalid", False)))


@functools.lru_cache(maxsize=8)
def _auto_features(name: str, max_examples: int | None, skip_invalid: bool) -> str:
    return resolve_features("auto", load_dataset(name, max_examples=max_examples, skip_invalid=skip_invalid))


def load_streams(
    data: str,
    features: str = "auto",
    *,
    seed: int = 0,
    test_fraction: float = 0.2,
    max_examples: int | None = None,
    device: str = "auto",
    cache_dir: str | None = None,
    feature_options: dict | None = None,
    progress: bool = True,
    skip_invalid: bool = False,
    allow_unlabelled: bool = False,
) -> RealStreams:
    """Load data set ``data``, featurise train and test (reusing the disk cache), return rounds.

    ``features="auto"`` (the default) picks the featuriser for the data set
    (:func:`resolve_features`); ``RealStreams.featurizer`` says which was used.

    The split (and so the order of the stream) is seeded by ``seed``;
    features are cached per text, so every seed after the first one hits the
    cache.

    ``allow_unlabelled`` (labels come from a person): examples may lack an
    answer; a data set with any unlabelled example is then played whole, as
    the stream or pool, with no test split (held-out numbers need gold: an
    evaluation file, or the audit share of a session).
    """
    from budgetsft.features import featurize, make_featurizer
    from budgetsft.features.models import resolve_device

    ds = load_dataset(data, seed=seed, test_fraction=test_fraction, max_examples=max_examples,
                      skip_invalid=skip_invalid)
    if allow_unlabelled and test_fraction > 0 and any(e.answer is None for e in (*ds.train, *ds.test)):
        ds = load_dataset(data, seed=seed, test_fraction=0.0, max_examples=max_examples, skip_invalid=skip_invalid)
    if progress and ds.meta.get("n_skipped"):
        print(f"data {data}: {ds.meta['n_skipped']} source item(s) skipped (see `budgetsft data show`)",
              file=sys.stderr)
    features = resolve_features(features, ds)
    opts = dict(feature_options or {})
    if isinstance(opts.get("model"), str):  # a config's `features: {model: ./my-llama}` names the model
        opts["model_name"] = opts.pop("model")
    opts.setdefault("device", resolve_device(device))
    if features == "block":
        if ds.labels is None:
            raise DataError(f"the 'block' featuriser needs a fixed label set; data set {data!r} has none.")
        opts.setdefault("labels", ds.labels)
    if features == "grad" and ds.labels is not None:  # adapt's instruction lists the labels: the same score
        opts.setdefault("labels", ds.labels)
    fz = make_featurizer(features, **opts)
    # compact: block features stay e(x) per example, expanded round by round (CompactRounds)
    res = featurize(list(ds.train) + list(ds.test), fz, cache_dir=cache_dir, progress=progress, compact=True)
    if progress:
        print(f"features ({features}, d={fz.dim}): {res.n_cached} cached, {res.n_computed} computed",
              file=sys.stderr)
    n = len(ds.train)
    return RealStreams(
        dataset=ds,
        train=to_rounds(ds.train, res.features[:n], unlabelled_ok=allow_unlabelled),
        test=to_rounds(ds.test, res.features[n:]),
        featurizer=features,
        dim=int(fz.dim),
        n_cached=res.n_cached,
        n_computed=res.n_computed,
    )
