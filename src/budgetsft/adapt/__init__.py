"""Budgeted adaptation of the LLM itself (SPEC §7).

LoRA fine-tuning of a causal LM on the labels a gate bought, evaluation by
candidate log-likelihood, and the report that compares label sets.
Importing this package imports torch; peft is imported when first used.

Examples
--------
>>> from budgetsft.adapt import finetune_lora, accuracy  # doctest: +SKIP
>>> peft_model, history = finetune_lora(model, tok, bought, max_steps=100)  # doctest: +SKIP
>>> accuracy(peft_model, tok, test)  # doctest: +SKIP
"""

from budgetsft.adapt.evaluate import accuracy, predict, score_candidates
from budgetsft.adapt.lora import (
    ANSWER_TEMPLATE,
    IGNORE_INDEX,
    PROMPT_TEMPLATE,
    answer_token_logprobs,
    finetune_lora,
    format_example,
    load_adapted,
    load_adapters,
    make_batch,
    save_adapters,
)
from budgetsft.adapt.report import compare_adaptations, write_report

__all__ = [
    "ANSWER_TEMPLATE",
    "IGNORE_INDEX",
    "PROMPT_TEMPLATE",
    "accuracy",
    "answer_token_logprobs",
    "compare_adaptations",
    "finetune_lora",
    "format_example",
    "load_adapted",
    "load_adapters",
    "make_batch",
    "predict",
    "save_adapters",
    "score_candidates",
    "write_report",
]
