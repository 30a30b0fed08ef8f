"""The model a user gets back from ``budgetsft adapt``: one callable, whatever was trained (SPEC §7).

``adapt`` trains several models per seed: LoRA adapters of the causal LM and
linear heads over the features of a featuriser (:class:`budgetsft.refit.RefitHead`).
Each is saved in its own folder with a model card, ``budgetsft_model.json``
(:func:`write_model_card`), which says how to rebuild it and how to read
examples with it. :func:`load_adapted` turns a run folder (the recommended
model, or any other by ``method=`` and ``seed=``) or a model folder into an
:class:`AdaptedModel`: called on examples, it gives one probability vector over
each example's candidates.

* a LoRA model scores every candidate exactly as ``adapt`` did: the mean
  log-likelihood of the candidate's answer tokens after the prompt
  (:func:`budgetsft.adapt.engine.score_packed`), softmaxed over the candidates;
* a head featurises the examples with the featuriser its card names and gives
  P(a | x) = softmax_a ⟨θ, φ(x, a)⟩ (:meth:`budgetsft.refit.RefitHead.predict_proba`).

Examples
--------
>>> from budgetsft.adapt import load_adapted
>>> model = load_adapted("runs/adapt-bbc")                      # doctest: +SKIP
>>> model                                                       # doctest: +SKIP
AdaptedModel(kind='lora', method='llf/distill', seed=0, path='runs/adapt-bbc/seed-0/adapters/llf-distill')
>>> model([{"prompt": "Shares fell.", "candidates": ["business", "sport"]}])  # doctest: +SKIP
[array([0.83, 0.17])]
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from budgetsft._math import softmax
from budgetsft._validation import check_choice, check_int, is_int
from budgetsft.data.schema import Example
from budgetsft.exceptions import ConfigError, DataError

__all__ = ["MODEL_CARD", "write_model_card", "save_head", "AdaptedModel", "load_adapted"]

#: File name of the model card in a model folder.
MODEL_CARD = "budgetsft_model.json"
#: File name of a head's coefficients (``np.save`` of ``coef_``, float64).
HEAD_COEF = "coef.npy"
KINDS = ("lora", "head")
# Keys every card has, and those of each kind.
_COMMON = ("kind", "method", "seed", "labels")
_KEYS = {"lora": ("max_prompt_tokens", "lora_layers", "model"), "head": ("featurizer", "dim", "C")}


# --------------------------------------------------------------------------- #
# Model cards
# --------------------------------------------------------------------------- #


def card_problem(card: Any) -> str | None:
    """What is wrong with a model card (a sentence naming the field), or None when it is valid."""
    from budgetsft.features.base import FEATURIZERS

    if not isinstance(card, Mapping):
        return f"the card must be a JSON object; it is a {type(card).__name__}"
    kind = card.get("kind")
    if kind not in KINDS:
        return f"field 'kind' must be one of {', '.join(map(repr, KINDS))}; it is {kind!r}"
    missing = [k for k in (*_COMMON, *_KEYS[kind]) if k not in card]
    if missing:
        return f"a {kind} card needs the field(s) {', '.join(map(repr, missing))}"
    labels = card["labels"]
    checks = [
        ("method", isinstance(card["method"], str) and bool(card["method"]), "a non-empty string"),
        ("seed", is_int(card["seed"]), "an int"),
        ("labels", labels is None or (isinstance(labels, list) and all(isinstance(x, str) for x in labels)),
         "a list of strings or null"),
    ]
    if kind == "lora":
        checks += [
            ("max_prompt_tokens", is_int(card["max_prompt_tokens"]) and card["max_prompt_tokens"] >= 1,
             "an int >= 1"),
            ("lora_layers", is_int(card["lora_layers"]) and card["lora_layers"] >= 1, "an int >= 1"),
            ("model", isinstance(card["model"], str) and bool(card["model"]), "a non-empty string"),
        ]
    else:
        fz = card["featurizer"]
        checks += [
            ("featurizer", isinstance(fz, Mapping) and fz.get("name") in FEATURIZERS
             and isinstance(fz.get("options", {}), Mapping),
             f"{{'name': one of {', '.join(map(repr, FEATURIZERS))}, 'options': {{...}}}}"),
            ("dim", is_int(card["dim"]) and card["dim"] >= 1, "an int >= 1"),
            ("C", isinstance(card["C"], int | float) and not isinstance(card["C"], bool) and card["C"] > 0,
             "a number > 0"),
        ]
    for name, ok, expected in checks:
        if not ok:
            return f"field {name!r} must be {expected}; it is {card[name]!r}"
    return None


def write_model_card(directory: str | Path, card: Mapping[str, Any]) -> Path:
    """Write the model card ``budgetsft_model.json`` of a saved model.

    Parameters
    ----------
    directory : path
        The model folder (created if needed).
    card : dict
        ``kind`` (``"lora"`` or ``"head"``), ``method`` (``"llf/distill"``),
        ``seed`` (int) and ``labels`` (the data set's fixed label set, or None
        for per-item candidates); a LoRA card adds ``max_prompt_tokens``,
        ``lora_layers`` and ``model`` (the base causal LM as given to adapt), a
        head card ``featurizer`` (``{"name": "block", "options": {...}}``,
        the constructor options of :func:`budgetsft.features.make_featurizer`),
        ``dim`` and ``C``.

    Returns
    -------
    Path
        The card file.

    Raises
    ------
    ConfigError
        A card that :func:`load_adapted` could not read back (naming the field),
        or one that is not JSON-serialisable.

    Examples
    --------
    >>> import tempfile
    >>> card = {"kind": "lora", "method": "llf/distill", "seed": 0, "labels": ["a", "b"],
    ...         "max_prompt_tokens": 64, "lora_layers": 4, "model": "smollm2-135m-instruct"}
    >>> write_model_card(tempfile.mkdtemp(), card).name
    'budgetsft_model.json'
    """
    card = dict(card) if isinstance(card, Mapping) else card
    if isinstance(card, dict):  # what JSON writes the same way: a tuple of labels, a model given as a path
        if isinstance(card.get("labels"), tuple):
            card["labels"] = list(card["labels"])
        if isinstance(card.get("model"), os.PathLike):
            card["model"] = os.fspath(card["model"])
    problem = card_problem(card)
    if problem is not None:
        raise ConfigError(f"The 'card' parameter of write_model_card is not a valid model card: {problem}.")
    try:
        text = json.dumps(card, indent=1)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"The 'card' parameter of write_model_card must be JSON-serialisable: {exc}.") from None
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    path = out / MODEL_CARD
    path.write_text(text + "\n", encoding="utf-8")
    return path


def save_head(
    directory: str | Path,
    head: Any,
    *,
    method: str,
    seed: int,
    featurizer: str,
    options: Mapping[str, Any],
    labels: Sequence[str] | None,
) -> Path:
    """Save a fitted :class:`budgetsft.refit.RefitHead`: ``coef.npy`` (float64) and its model card.

    Parameters
    ----------
    directory : path
        The model folder (created if needed), e.g. ``<run>/seed-0/heads/llf``.
    head : RefitHead
        Fitted (has ``coef_``, a 1-D vector of length d, and ``C``).
    method : str
        The method's name in the report, e.g. ``"llf/head"``.
    seed : int
    featurizer : {"block", "encoder", "causal"}
        The featuriser whose features the head was fitted on.
    options : dict
        Its constructor options, JSON-serialisable (``{"labels": [...]}`` for ``block``).
    labels : sequence of str or None
        The data set's fixed label set, None for per-item candidates.

    Returns
    -------
    Path
        The model folder.

    Examples
    --------
    >>> import tempfile
    >>> from budgetsft.base import Round
    >>> from budgetsft.refit import RefitHead
    >>> X = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> head = RefitHead(C=10.0).fit([Round(X, 0), Round(X[::-1].copy(), 1)])
    >>> folder = save_head(tempfile.mkdtemp(), head, method="llf/head", seed=0, featurizer="block",
    ...                    options={"labels": ["a", "b"]}, labels=["a", "b"])
    >>> sorted(p.name for p in folder.iterdir())
    ['budgetsft_model.json', 'coef.npy']
    """
    coef = np.asarray(getattr(head, "coef_", None), dtype=np.float64)
    if coef.ndim != 1 or coef.size == 0 or not np.all(np.isfinite(coef)):
        raise ConfigError(f"The 'head' parameter of save_head must be a fitted RefitHead (coef_ a finite 1-D "
                          f"vector); its coef_ has shape {coef.shape}.")
    card = {
        "kind": "head", "method": method, "seed": seed, "labels": None if labels is None else list(labels),
        "featurizer": {"name": featurizer, "options": dict(options)}, "dim": int(coef.size), "C": float(head.C),
    }
    problem = card_problem(card)
    if problem is not None:
        raise ConfigError(f"save_head: {problem}.")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    write_model_card(out, card)  # first: it checks that the options are JSON-serialisable
    np.save(out / HEAD_COEF, coef)
    return out


def read_model_card(directory: Path) -> dict[str, Any]:
    """The model card of a model folder, checked; DataError naming the file and the field when it is damaged."""
    path = directory / MODEL_CARD
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{path}: not a readable model card ({type(exc).__name__}: {exc}).") from None
    problem = card_problem(card)
    if problem is not None:
        raise DataError(f"{path}: damaged model card: {problem}.")
    return card


# --------------------------------------------------------------------------- #
# The model
# --------------------------------------------------------------------------- #


def as_examples(examples: Any, owner: str) -> list[Example]:
    """Examples, or dicts with "prompt" and "candidates" (and an optional "id": "0", "1", ... when absent)."""
    if isinstance(examples, Example | Mapping | str):
        raise DataError(f"{owner} expects a sequence of examples (Example objects or dicts with 'prompt' and "
                        f"'candidates'); got one {type(examples).__name__}. Wrap it in a list.")
    out = []
    for i, ex in enumerate(examples):
        if isinstance(ex, Mapping):
            prompt, candidates = ex.get("prompt"), ex.get("candidates")
            if not isinstance(prompt, str):
                raise DataError(f"{owner}: item {i} needs a string 'prompt'; got {prompt!r}.")
            if isinstance(candidates, str) or not isinstance(candidates, Sequence) or len(candidates) < 2 or not all(
                    isinstance(c, str) for c in candidates):
                raise DataError(f"{owner}: item {i} needs 'candidates', a list of at least two strings; "
                                f"got {candidates!r}.")
            ex = Example(id=str(ex.get("id", i)), prompt=prompt, candidates=tuple(candidates))
        elif not isinstance(ex, Example):
            raise DataError(f"{owner}: item {i} must be a budgetsft Example or a dict with 'prompt' and "
                            f"'candidates'; got {type(ex).__name__}.")
        out.append(ex)
    return out


class AdaptedModel:
    """A model trained by ``budgetsft adapt``, called on new examples: probabilities over their candidates.

    Built by :func:`load_adapted`.

    Parameters
    ----------
    card : dict
        The model card (:func:`write_model_card`).
    path : Path
        The model folder.
    model, tokenizer : optional
        The peft model and its tokenizer (a LoRA model).
    head : RefitHead, optional
        The head (a head model).
    featurizer : Featurizer, optional
        The featuriser the head reads (a head model).

    Attributes
    ----------
    kind : {"lora", "head"}
    method : str
        E.g. ``"llf/distill"``, ``"llf/head"``.
    seed : int

    Examples
    --------
    >>> model = load_adapted("runs/adapt-bbc", method="llf/head")   # doctest: +SKIP
    >>> model.predict([{"prompt": "Shares fell.", "candidates": ["business", "sport"]}])  # doctest: +SKIP
    array([0])
    """

    def __init__(self, card: dict[str, Any], path: Path, *, model: Any = None, tokenizer: Any = None,
                 head: Any = None, featurizer: Any = None) -> None:
        self.card = card
        self.path = path
        self.model = model
        self.tokenizer = tokenizer
        self.head = head
        self.featurizer = featurizer

    @property
    def kind(self) -> str:
        return self.card["kind"]

    @property
    def method(self) -> str:
        return self.card["method"]

    @property
    def seed(self) -> int:
        return self.card["seed"]

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(kind={self.kind!r}, method={self.method!r}, seed={self.seed}, "
                f"path={str(self.path)!r})")

    def __call__(self, examples: Sequence[Example | Mapping[str, Any]], **kwargs: Any) -> list[np.ndarray]:
        """Same as :meth:`predict_proba`."""
        return self.predict_proba(examples, **kwargs)

    def predict_proba(
        self,
        examples: Sequence[Example | Mapping[str, Any]],
        *,
        dtype: str | None = None,
        batch_size: int = 32,
        progress: bool = False,
    ) -> list[np.ndarray]:
        """One probability vector over each example's candidates.

        A LoRA model: the softmax over the candidates of their mean token
        log-likelihood after the prompt, read as ``adapt`` reads it (the prompt
        of :func:`budgetsft.adapt.engine.encode` with the card's label set and
        ``max_prompt_tokens``, the frozen bottom layers, then the adapted top
        ones). A head: softmax_a ⟨θ, φ(x, a)⟩ over the features of the card's
        featuriser. Nothing is kept between calls.

        Parameters
        ----------
        examples : sequence of Example or of dict
            A dict has ``"prompt"`` and ``"candidates"`` (at least two), and an
            optional ``"id"``; its answer, if any, is not read.
        dtype : {"bf16", "fp32"}, optional
            LoRA only: compute dtype. Default "bf16" where it is fast on the
            model's device (:func:`budgetsft.features.models.bf16_supported`), else "fp32".
        batch_size : int, default=32
            LoRA only: examples per forward pass.
        progress : bool, default=False
            Show tqdm bars on stderr.

        Returns
        -------
        list of ndarray of shape (K_i,), float64
            Each sums to 1.
        """
        owner = f"{type(self).__name__}.predict_proba"
        batch_size = check_int(owner, "batch_size", batch_size, low=1)
        if dtype is not None:
            dtype = check_choice(owner, "dtype", dtype, ("bf16", "fp32"))
        examples = as_examples(examples, owner)
        if not examples:
            return []
        if self.kind == "head":
            return self._head_proba(examples, progress)
        return self._lora_proba(examples, dtype, batch_size, progress)

    def predict(self, examples: Sequence[Example | Mapping[str, Any]], **kwargs: Any) -> np.ndarray:
        """Index of the most probable candidate of each example (the lowest on ties).

        Returns
        -------
        ndarray of shape (n,), int
        """
        return np.array([int(np.argmax(p)) for p in self.predict_proba(examples, **kwargs)], dtype=int)

    def _head_proba(self, examples: list[Example], progress: bool) -> list[np.ndarray]:
        from budgetsft.base import Round
        from budgetsft.features.cache import featurize

        # No disk cache: calling a model on examples leaves no files behind.
        result = featurize(examples, self.featurizer, use_cache=False, progress=progress, compact=False)
        return [self.head.predict_proba(Round(features=np.asarray(X, dtype=np.float64), gold=None))
                for X in result.features]

    def _lora_proba(self, examples: list[Example], dtype: str | None, batch_size: int,
                    progress: bool) -> list[np.ndarray]:
        from tqdm.auto import tqdm

        from budgetsft.adapt.engine import PrefixCache, encode, score_packed
        from budgetsft.adapt.lora import pad_id, torch_device
        from budgetsft.features.models import bf16_supported

        if dtype is None:
            dtype = "bf16" if bf16_supported(str(torch_device(self.model))) else "fp32"
        card = self.card
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        split = max(0, int(base.config.num_hidden_layers) - card["lora_layers"])
        encoded = [encode(ex, self.tokenizer, max_prompt_tokens=card["max_prompt_tokens"], labels=card["labels"])
                   for ex in examples]
        keys = [str(i) for i in range(len(examples))]  # by position: ids may repeat or be absent
        cache = PrefixCache(self.model, split, dtype=dtype, batch_size=batch_size,
                            pad_token_id=pad_id(self.tokenizer))
        with tqdm(total=len(keys), desc="prefix", unit="ex", disable=not progress, file=sys.stderr,
                  leave=False) as bar:
            cache.add_many(keys, encoded, progress=lambda n: bar.update(n - bar.n))
        scores = score_packed(self.model, cache, keys, batch_size=batch_size, dtype=dtype, progress=progress)
        return [softmax(s) for s in scores]


# --------------------------------------------------------------------------- #
# Loading
# --------------------------------------------------------------------------- #


def _no_card(folder: Path) -> DataError:
    return DataError(
        f"{folder}: no {MODEL_CARD} (adapters saved by an older budgetsft adapt); "
        f"budgetsft.adapt.lora.load_adapted({str(folder)!r}) loads the raw (peft model, tokenizer) pair."
    )


def _load_head(folder: Path, card: dict[str, Any], device: str, cache_dir: str | Path | None) -> AdaptedModel:
    from budgetsft.features.base import make_featurizer
    from budgetsft.refit import RefitHead

    coef_file = folder / HEAD_COEF
    if not coef_file.is_file():
        raise DataError(f"{coef_file}: no such file; a head folder holds {HEAD_COEF} beside {MODEL_CARD}.")
    try:
        coef = np.load(coef_file, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"{coef_file}: not a readable numpy array ({type(exc).__name__}: {exc}).") from None
    if coef.ndim != 1 or coef.shape[0] != card["dim"] or not np.issubdtype(coef.dtype, np.floating):
        raise DataError(f"{coef_file}: holds an array of shape {coef.shape} ({coef.dtype}); the card "
                        f"{folder / MODEL_CARD} says 'dim' {card['dim']}, so a float vector of that length.")
    if not np.all(np.isfinite(coef)):
        raise DataError(f"{coef_file}: holds non-finite coefficients.")
    head = RefitHead(C=float(card["C"]))
    head.coef_ = coef.astype(np.float64)
    spec = card["featurizer"]
    options = {k: tuple(v) if isinstance(v, list) else v for k, v in dict(spec.get("options", {})).items()}
    options["device"] = device  # where this machine runs it, not where the run did
    if spec["name"] == "causal" and cache_dir is not None:
        options.setdefault("cache_dir", cache_dir)
    try:
        featurizer = make_featurizer(spec["name"], **options)
    except (ConfigError, TypeError) as exc:
        raise DataError(f"{folder / MODEL_CARD}: field 'featurizer' ({spec!r}) does not build a featuriser: "
                        f"{exc}") from None
    if int(featurizer.dim) != card["dim"]:
        raise DataError(f"{folder / MODEL_CARD}: the featuriser {spec['name']!r} gives {featurizer.dim} features, "
                        f"but field 'dim' says {card['dim']}.")
    return AdaptedModel(card, folder, head=head, featurizer=featurizer)


def _load_model(folder: Path, method: str | None, seed: int | None, base: str | Path | None, device: str,
                cache_dir: str | Path | None) -> AdaptedModel:
    card = read_model_card(folder)
    for name, wanted in (("method", method), ("seed", seed)):
        if wanted is not None and wanted != card[name]:
            raise DataError(f"{folder / MODEL_CARD}: the model here has {name} {card[name]!r}, not {wanted!r}; "
                            "a run folder selects among its models by method= and seed=.")
    if card["kind"] == "head":
        return _load_head(folder, card, device, cache_dir)
    from budgetsft.adapt.engine import quiet_hf
    from budgetsft.adapt.lora import load_adapted as load_lora

    with quiet_hf():
        model, tokenizer = load_lora(folder, base=base, device=device, cache_dir=cache_dir)
    return AdaptedModel(card, folder, model=model, tokenizer=tokenizer)


def _model_folder(run: Path, report: Mapping[str, Any], method: str | None, seed: int | None
                  ) -> tuple[Path, str, int]:
    """The model folder, method and seed of ``method`` at ``seed`` in a run folder (checked against the report)."""
    where = run / "report.json"
    methods = report.get("methods")
    seeds = report.get("seeds")
    if not isinstance(methods, Mapping) or not isinstance(seeds, list) or not seeds:
        raise DataError(f"{where}: not a report of budgetsft adapt (no 'methods' and 'seeds').")
    valid = ", ".join(map(repr, methods))
    if method is None:
        method = report.get("recommended")
        if method is None:
            raise DataError(f"{where}: this run predates recommendations (no 'recommended' field); pass "
                            f"load_adapted(..., method=...), one of {valid}.")
        if not isinstance(method, str):
            raise DataError(f"{where}: field 'recommended' must be a method name; it is {method!r}.")
    if method not in methods:
        raise DataError(f"{run}: no method {method!r} in this run; valid: {valid}.")
    if seed is None:
        seed = seeds[0]
    if seed not in seeds:
        raise DataError(f"{run}: no seed {seed!r} in this run; valid: {', '.join(map(str, seeds))}.")
    here = run / f"seed-{seed}"
    folders = [here / "adapters" / method.replace("/", "-")]
    if method.endswith("/head"):
        folders.insert(0, here / "heads" / method[: -len("/head")])
    rows = [r for r in report.get("per_seed", ()) if isinstance(r, Mapping) and r.get("seed") == seed]
    recorded = rows[0].get("models", {}) if rows else {}
    if isinstance(recorded, Mapping) and isinstance(recorded.get(method), str):  # where the run says it saved it
        folders = list(dict.fromkeys([run / recorded[method], *folders]))
    for folder in folders:
        if (folder / MODEL_CARD).is_file():
            return folder, method, seed
    for folder in folders:
        if folder.is_dir():
            raise _no_card(folder)
    if method == "zero-shot":
        raise DataError(f"{run}: method 'zero-shot' at seed {seed} is the base model itself "
                        f"({report.get('model')!r}), not a saved one; budgetsft.features.models.load_causal_lm "
                        "loads it.")
    raise DataError(f"{run}: method {method!r} at seed {seed} is no saved model (looked for "
                    f"{' and '.join(str(f.relative_to(run)) for f in folders)}).")


def load_adapted(
    path: str | Path,
    *,
    method: str | None = None,
    seed: int | None = None,
    base: str | Path | None = None,
    device: str = "cpu",
    cache_dir: str | Path | None = None,
) -> AdaptedModel:
    """Load a model trained by ``budgetsft adapt`` as one callable :class:`AdaptedModel`.

    Parameters
    ----------
    path : path
        A run folder of ``budgetsft adapt`` (it holds ``report.json``): the
        model of ``method`` at ``seed``; or a model folder (it holds
        ``budgetsft_model.json``): that model.
    method : str, optional
        Run folder: the method (a name in ``report.json``'s ``methods``, e.g.
        ``"llf/plain"`` or ``"llf/head"``); default the run's recommended one.
        Model folder: must be the card's, when given.
    seed : int, optional
        Run folder: the seed; default the run's first. Model folder: must be
        the card's, when given.
    base : str or path, optional
        LoRA only: the base model to load the adapters onto instead of the one
        ``adapter_config.json`` records (a base model that moved).
    device : {"auto", "cpu", "cuda"}, default="cpu"
    cache_dir : path-like, optional
        Root of the budgetsft cache (where a packaged causal LM is converted).

    Returns
    -------
    AdaptedModel

    Raises
    ------
    DataError
        A missing folder; a run without that method or seed (naming the valid
        ones), or one that predates recommendations with no ``method``; a
        damaged card (naming the file and the field); a ``coef.npy`` whose
        length is not the card's ``dim``; adapters saved without a card by an
        older ``adapt`` (:func:`budgetsft.adapt.lora.load_adapted` loads those
        as a raw (model, tokenizer) pair).

    Examples
    --------
    >>> model = load_adapted("runs/adapt-bbc")                                  # doctest: +SKIP
    >>> plain = load_adapted("runs/adapt-bbc", method="llf/plain", seed=1)      # doctest: +SKIP
    >>> plain.predict([{"prompt": "Shares fell.", "candidates": ["business", "sport"]}])  # doctest: +SKIP
    array([0])
    """
    if method is not None and not isinstance(method, str):
        raise ConfigError(f"The 'method' parameter of load_adapted must be a method name or None. Got {method!r}.")
    if seed is not None:
        seed = check_int("load_adapted", "seed", seed)
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such folder.")
    if not path.is_dir():
        raise DataError(f"{path}: not a folder; load_adapted takes a run folder of budgetsft adapt (with "
                        f"report.json) or a model folder (with {MODEL_CARD}).")
    if (path / "report.json").is_file():
        try:
            report = json.loads((path / "report.json").read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise DataError(f"{path / 'report.json'}: not readable JSON ({type(exc).__name__}: {exc}).") from None
        if not isinstance(report, Mapping):
            raise DataError(f"{path / 'report.json'}: not a report of budgetsft adapt (not a JSON object).")
        folder, method, seed = _model_folder(path, report, method, seed)
        return _load_model(folder, method, seed, base, device, cache_dir)
    if (path / MODEL_CARD).is_file():
        return _load_model(path, method, seed, base, device, cache_dir)
    if (path / "adapter_config.json").is_file():
        raise _no_card(path)
    raise DataError(f"{path}: neither a run folder of budgetsft adapt (report.json) nor a model folder "
                    f"({MODEL_CARD}).")
