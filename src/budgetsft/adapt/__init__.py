"""Budgeted adaptation of the LLM itself (SPEC §7).

LoRA fine-tuning of a causal LM on the labels a gate bought, evaluation by
candidate log-likelihood, and the report that compares label sets.
Importing this package imports torch; peft is imported when first used.

* :mod:`~budgetsft.adapt.pipeline`: ``budgetsft adapt`` (select, fine-tune,
  compare over seeds; ``--labels FILE``);
* :mod:`~budgetsft.adapt.engine`: the fast path it uses (adapters in the top
  layers over a frozen prefix computed once, candidates packed after a shared
  prompt);
* :mod:`~budgetsft.adapt.lora`, :mod:`~budgetsft.adapt.evaluate`: the generic
  path, any causal LM, a fixed number of steps;
* :mod:`~budgetsft.adapt.stats`, :mod:`~budgetsft.adapt.report`: paired
  bootstrap intervals and the report;
* :mod:`~budgetsft.adapt.handback`: :func:`load_adapted`, a run's model (LoRA
  or head) as one callable :class:`AdaptedModel`
  (:func:`budgetsft.adapt.lora.load_adapted` loads raw adapters as a (model, tokenizer) pair).

Examples
--------
>>> from budgetsft.adapt import load_adapted  # doctest: +SKIP
>>> model = load_adapted("runs/adapt-bbc")  # doctest: +SKIP
>>> model([{"prompt": "Shares fell.", "candidates": ["business", "sport"]}])  # doctest: +SKIP
>>> from budgetsft.adapt import finetune_lora, accuracy  # doctest: +SKIP
>>> peft_model, history = finetune_lora(model, tok, bought, max_steps=100)  # doctest: +SKIP
>>> accuracy(peft_model, tok, test)  # doctest: +SKIP
"""

from budgetsft.adapt.engine import PrefixCache, encode, score_packed, train_lora
from budgetsft.adapt.evaluate import accuracy, predict, score_candidates
from budgetsft.adapt.handback import MODEL_CARD, AdaptedModel, load_adapted, save_head, write_model_card
from budgetsft.adapt.lora import (
    ANSWER_TEMPLATE,
    IGNORE_INDEX,
    PROMPT_TEMPLATE,
    answer_token_logprobs,
    finetune_lora,
    format_example,
    load_adapters,
    make_batch,
    save_adapters,
)
from budgetsft.adapt.report import compare_adaptations, rebuild_report, seed_report, write_report, write_seed_report
from budgetsft.adapt.stats import PairedBootstrap

__all__ = [
    "ANSWER_TEMPLATE",
    "AdaptedModel",
    "IGNORE_INDEX",
    "MODEL_CARD",
    "PROMPT_TEMPLATE",
    "PairedBootstrap",
    "PrefixCache",
    "accuracy",
    "answer_token_logprobs",
    "compare_adaptations",
    "encode",
    "finetune_lora",
    "format_example",
    "load_adapted",
    "load_adapters",
    "make_batch",
    "predict",
    "rebuild_report",
    "save_adapters",
    "save_head",
    "score_candidates",
    "score_packed",
    "seed_report",
    "train_lora",
    "write_model_card",
    "write_report",
    "write_seed_report",
]
