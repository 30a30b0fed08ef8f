"""LoRA fine-tuning of a causal LM on bought labels (SPEC §7).

The labels that a gate bought are (prompt, gold answer) pairs. This module
turns each pair into token ids with one fixed format (:func:`format_example`),
wraps the model with PEFT LoRA adapters and trains them with a plain torch
loop whose loss covers the answer tokens only.

The same format and the same token-level log-probabilities
(:func:`answer_token_logprobs`) are used by :mod:`budgetsft.adapt.evaluate`,
so training and evaluation read the model in exactly the same way.
"""

from __future__ import annotations

import contextlib
import json
import pickle
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from budgetsft._validation import check_choice, check_float, check_int, check_seed
from budgetsft.data.schema import Example
from budgetsft.exceptions import ConfigError, DataError
from budgetsft.features.decoder import (
    ANSWER_TEMPLATE,
    PROMPT_TEMPLATE,
    encode_answer,
    has_chat_template,
    pad_id,
    token_ids,
)
from budgetsft.features.models import render_chat

__all__ = [
    "PROMPT_TEMPLATE",
    "ANSWER_TEMPLATE",
    "IGNORE_INDEX",
    "format_example",
    "make_batch",
    "answer_token_logprobs",
    "finetune_lora",
    "save_adapters",
    "load_adapters",
    "load_adapted",
]

#: Label value that the loss ignores (prompt and padding positions).
IGNORE_INDEX = -100


# --------------------------------------------------------------------------- #
# Format
# --------------------------------------------------------------------------- #


def encode_prompt(prompt: str, tokenizer: Any) -> list[int]:
    """Token ids of the prompt part, special tokens included."""
    if has_chat_template(tokenizer):
        text = render_chat(tokenizer, [{"role": "user", "content": prompt}], add_generation_prompt=True)
        # The template already wrote every special token it wants.
        return token_ids(tokenizer(text, add_special_tokens=False))
    return token_ids(tokenizer(PROMPT_TEMPLATE.format(prompt=prompt), add_special_tokens=True))


def truncate_ids(prompt_ids: list[int], answer_ids: list[int], max_length: int) -> list[int]:
    """Left-truncate the prompt so that prompt + answer fits in ``max_length``.

    The answer is always kept whole and at least one prompt token is kept (the
    first answer token needs something to be predicted from).
    """
    keep = max(1, max_length - len(answer_ids))
    return prompt_ids[-keep:] if len(prompt_ids) > keep else prompt_ids


def format_example(
    example: Example, candidate_index: int, tokenizer: Any, *, max_length: int = 512
) -> tuple[list[int], list[int]]:
    """Token ids of (prompt, answer) for one candidate of one example.

    The one format used for both training and evaluation:

    * tokenizer **with** a chat template: the prompt is the template applied
      to a single user turn whose content is ``example.prompt``, with the
      generation prompt added (the assistant header); the answer is the
      candidate text followed by ``tokenizer.eos_token`` (the end of the
      assistant turn for ChatML templates such as SmolLM2's).
    * tokenizer **without** a chat template: the prompt is
      ``"Question: {prompt}\\nAnswer:"`` (with the tokenizer's usual special
      tokens, e.g. BOS) and the answer is ``" {candidate}"`` (no special
      tokens, no EOS).

    Candidates are not listed in the prompt: each is scored as a free
    continuation, so data sets that want the options visible put them in
    ``example.prompt``. If prompt + answer is longer than ``max_length``, the
    prompt is cut from the left; the answer is always kept whole (and one
    prompt token at least), so a sequence is longer than ``max_length`` only
    when the answer alone is.

    Parameters
    ----------
    example : Example
    candidate_index : int
        Which candidate is the answer, in ``[0, K)``.
    tokenizer : transformers tokenizer
    max_length : int, default=512

    Returns
    -------
    prompt_ids : list of int
    answer_ids : list of int, non-empty

    Examples
    --------
    >>> from budgetsft.data.schema import Example
    >>> ex = Example("q1", "2 + 2 =", ("3", "4"), answer=1)
    >>> p, a = format_example(ex, ex.answer, tokenizer)  # doctest: +SKIP
    """
    max_length = check_int("format_example", "max_length", max_length, low=2)
    k = len(example.candidates)
    if isinstance(candidate_index, bool) or not isinstance(candidate_index, int) or not (
        0 <= candidate_index < k
    ):
        raise DataError(
            f"Example {example.id!r}: candidate index {candidate_index!r} is out of range "
            f"for {k} candidates."
        )
    answer_ids = encode_answer(example.candidates[candidate_index], tokenizer)
    if not answer_ids:
        raise DataError(
            f"Example {example.id!r}: candidate {candidate_index} tokenizes to no tokens."
        )
    prompt_ids = truncate_ids(encode_prompt(example.prompt, tokenizer), answer_ids, max_length)
    return prompt_ids, answer_ids


def make_batch(
    pairs: Sequence[tuple[Sequence[int], Sequence[int]]], *, pad_token_id: int = 0
) -> dict[str, torch.Tensor]:
    """Right-padded batch of (prompt_ids, answer_ids) pairs.

    Parameters
    ----------
    pairs : sequence of (prompt_ids, answer_ids)
    pad_token_id : int, default=0

    Returns
    -------
    dict with ``input_ids``, ``attention_mask`` and ``labels``, each a long
    tensor of shape (B, L). ``labels`` equals ``input_ids`` on answer tokens
    and ``-100`` on prompt and padding tokens, so the loss sees answers only.
    """
    if not pairs:
        raise DataError("make_batch needs at least one (prompt_ids, answer_ids) pair.")
    length = max(len(p) + len(a) for p, a in pairs)
    n = len(pairs)
    input_ids = torch.full((n, length), int(pad_token_id), dtype=torch.long)
    attention_mask = torch.zeros((n, length), dtype=torch.long)
    labels = torch.full((n, length), IGNORE_INDEX, dtype=torch.long)
    for i, (p, a) in enumerate(pairs):
        lp, la = len(p), len(a)
        input_ids[i, : lp + la] = torch.tensor(list(p) + list(a), dtype=torch.long)
        attention_mask[i, : lp + la] = 1
        labels[i, lp : lp + la] = torch.tensor(list(a), dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def torch_device(model: Any) -> torch.device:
    return next(model.parameters()).device


def autocast_context(device: torch.device, dtype: str) -> contextlib.AbstractContextManager:
    if dtype == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def answer_token_logprobs(
    model: Any, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of every answer token of a :func:`make_batch` batch.

    Only the positions that predict answer tokens go through the LM head
    (``logits_to_keep``), and the log-softmax is taken in float32.

    Returns
    -------
    logprobs : float32 tensor of shape (N,)
        ``log p(answer token | everything before it)`` for the N answer tokens.
    rows : long tensor of shape (N,)
        The batch row of each token.
    """
    device = torch_device(model)
    input_ids = batch["input_ids"].to(device)
    attention_mask = batch["attention_mask"].to(device)
    labels = batch["labels"].to(device)
    length = labels.shape[1]
    answer = labels != IGNORE_INDEX
    # First position whose logits predict an answer token, over the whole batch.
    first = int(answer.int().argmax(dim=1).min().item()) - 1
    keep = length - first
    try:
        out = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=keep)
    except TypeError:  # a model without logits_to_keep: keep everything
        out = model(input_ids=input_ids, attention_mask=attention_mask)
    logits = out.logits
    keep = logits.shape[1]
    target = labels[:, length - keep + 1 :]
    mask = target != IGNORE_INDEX
    selected = logits[:, :-1][mask].float()  # (N, V)
    tokens = target[mask]
    logprobs = torch.log_softmax(selected, dim=-1).gather(-1, tokens[:, None]).squeeze(-1)
    rows = mask.nonzero()[:, 0]
    return logprobs, rows


# --------------------------------------------------------------------------- #
# Training
# --------------------------------------------------------------------------- #


def check_examples(owner: str, examples: Sequence[Example], *, what: str) -> list[Example]:
    examples = list(examples)
    if not examples:
        raise ConfigError(
            f"{owner} got 0 examples: there is nothing to {what}. "
            "Pass at least one labelled Example."
        )
    for ex in examples:
        if not isinstance(ex, Example):
            raise DataError(f"{owner} expects budgetsft Example objects; got {type(ex).__name__}.")
        if ex.answer is None:
            raise DataError(f"{owner}: example {ex.id!r} has no answer (it is unlabelled).")
        if not 0 <= ex.answer < len(ex.candidates):
            raise DataError(
                f"{owner}: example {ex.id!r} has answer {ex.answer}, out of range for "
                f"{len(ex.candidates)} candidates."
            )
    return examples


def _default_targets(model: Any) -> list[str] | str:
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    if {"q_proj", "v_proj"} <= names:
        return ["q_proj", "v_proj"]
    return "all-linear"


def _index_stream(n: int, generator: torch.Generator):
    while True:
        yield from torch.randperm(n, generator=generator).tolist()


def finetune_lora(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    *,
    max_steps: int = 100,
    lr: float = 2e-4,
    lora_r: int = 8,
    lora_alpha: float = 16,
    lora_dropout: float = 0.0,
    batch_size: int = 8,
    seed: int = 0,
    target_modules: Sequence[str] | str | None = None,
    max_length: int = 512,
    max_grad_norm: float | None = 1.0,
    dtype: str = "bf16",
    progress: bool = True,
) -> tuple[Any, list[float]]:
    """Fine-tune LoRA adapters on (prompt, gold answer) pairs, loss on answer tokens only.

    The model is wrapped in place by ``peft.get_peft_model`` (its base weights
    stay frozen) and trained with AdamW at a constant learning rate. Each step
    takes ``min(batch_size, n)`` examples from a stream of seeded random
    permutations of the training set; the loss is the mean negative
    log-likelihood of the answer tokens of the batch (format of
    :func:`format_example`). Everything random (adapter initialisation,
    shuffling, dropout) is drawn from ``seed`` inside a forked torch RNG, so
    the same seed on the same base model gives the same adapters, bit for
    bit, and the caller's global RNG is left untouched.

    Parameters
    ----------
    model : transformers causal LM
        Modified in place (LoRA layers are injected); pass a fresh one per run.
    tokenizer : transformers tokenizer
    examples : sequence of Example
        All labelled; at least one.
    max_steps : int, default=100
        Optimiser steps, >= 1.
    lr : float, default=2e-4
    lora_r : int, default=8
    lora_alpha : float, default=16
    lora_dropout : float, default=0.0
    batch_size : int, default=8
    seed : int, default=0
    target_modules : list of str, "all-linear" or None
        None means ``["q_proj", "v_proj"]`` when the model has them (Llama and
        kin), else every linear layer.
    max_length : int, default=512
        Prompts are left-truncated to fit (:func:`format_example`).
    max_grad_norm : float or None, default=1.0
        Gradient-norm clipping; None disables it.
    dtype : {"bf16", "fp32"}, default="bf16"
        "bf16" runs forward and backward under bfloat16 autocast (weights and
        optimiser state stay float32); "fp32" runs in full precision.
    progress : bool, default=True
        Show a tqdm bar with the loss on stderr.

    Returns
    -------
    peft_model : peft.PeftModel
        In eval mode.
    history : list of float, length max_steps
        The training loss of every step.

    Examples
    --------
    >>> peft_model, history = finetune_lora(model, tok, bought, max_steps=50)  # doctest: +SKIP
    >>> save_adapters(peft_model, "runs/llf/adapters")  # doctest: +SKIP
    """
    owner = "finetune_lora"
    max_steps = check_int(owner, "max_steps", max_steps, low=1)
    lr = check_float(owner, "lr", lr, low=0, low_open=True, high_open=True)
    lora_r = check_int(owner, "lora_r", lora_r, low=1)
    lora_alpha = check_float(owner, "lora_alpha", lora_alpha, low=0, low_open=True, high_open=True)
    lora_dropout = check_float(owner, "lora_dropout", lora_dropout, low=0, high=1, high_open=True)
    batch_size = check_int(owner, "batch_size", batch_size, low=1)
    seed = check_seed(owner, seed)
    seed = 0 if seed is None else seed
    max_length = check_int(owner, "max_length", max_length, low=2)
    if max_grad_norm is not None:
        max_grad_norm = check_float(
            owner, "max_grad_norm", max_grad_norm, low=0, low_open=True, high_open=True
        )
    dtype = check_choice(owner, "dtype", dtype, ("bf16", "fp32"))
    if target_modules is not None and not isinstance(target_modules, str):
        target_modules = list(target_modules)
        if not target_modules or not all(isinstance(t, str) for t in target_modules):
            raise ConfigError(
                f"The 'target_modules' parameter of {owner} must be a non-empty list of module "
                f"names, 'all-linear' or None. Got {target_modules!r}."
            )
    examples = check_examples(owner, examples, what="fine-tune on")

    from peft import LoraConfig, get_peft_model
    from tqdm.auto import tqdm

    device = torch_device(model)
    encoded = [format_example(ex, ex.answer, tokenizer, max_length=max_length) for ex in examples]
    pad = pad_id(tokenizer)
    b = min(batch_size, len(encoded))
    history: list[float] = []
    fork_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(seed)
        config = LoraConfig(
            r=lora_r,
            lora_alpha=lora_alpha,
            lora_dropout=lora_dropout,
            target_modules=_default_targets(model) if target_modules is None else target_modules,
            bias="none",
            task_type="CAUSAL_LM",
        )
        peft_model = get_peft_model(model, config)
        params = [p for p in peft_model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        generator = torch.Generator().manual_seed(seed)
        stream = _index_stream(len(encoded), generator)
        peft_model.train()
        bar = tqdm(total=max_steps, desc=owner, disable=not progress, file=sys.stderr)
        try:
            for _ in range(max_steps):
                batch = make_batch([encoded[next(stream)] for _ in range(b)], pad_token_id=pad)
                with autocast_context(device, dtype):
                    logprobs, _ = answer_token_logprobs(peft_model, batch)
                loss = -logprobs.mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
                optimizer.step()
                history.append(float(loss.item()))
                bar.set_postfix(loss=f"{history[-1]:.4f}")
                bar.update(1)
        finally:
            bar.close()
    peft_model.eval()
    return peft_model, history


def save_adapters(peft_model: Any, out_dir: str | Path) -> Path:
    """Write the LoRA adapters (``save_pretrained``: safetensors + config) to ``out_dir``.

    ``adapter_config.json`` records the base model as ``base_model_name_or_path``:
    the base model's ``name_or_path``, which for a model from
    :func:`budgetsft.features.models.load_causal_lm` is a name that loads from
    any folder: the packaged short name or hub id as given
    (``"smollm2-135m-instruct"``, ``"org/name"``), or a directory's absolute
    path (``"./my-llama"`` is recorded as ``"/home/me/my-llama"``), never a
    cache path. :func:`load_adapted` loads it back from that name.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # finetune_lora never resizes the vocabulary, so the embeddings are the base model's;
    # "auto" would ask the hub whether a short name such as "smollm2-135m-instruct" exists.
    peft_model.save_pretrained(str(out), save_embedding_layers=False)
    return out


def load_adapters(base_model: Any, out_dir: str | Path) -> Any:
    """Load adapters saved by :func:`save_adapters` onto a fresh base model (eval mode)."""
    from peft import PeftModel

    path = Path(out_dir)
    if not (path / "adapter_config.json").is_file():
        raise DataError(
            f"{path}: no adapter_config.json; not a directory written by save_adapters."
        )
    try:
        model = PeftModel.from_pretrained(base_model, str(path))
    except pickle.UnpicklingError:
        raise DataError(
            f"{path}: the adapter weights are a pickle that holds more than tensors, so they were not loaded "
            "(safetensors, or torch.load(weights_only=True) only)."
        ) from None
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as exc:
        raise DataError(
            f"{path}: the adapters could not be loaded onto this base model ({type(exc).__name__}: "
            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}); are they from another model?"
        ) from None
    model.eval()
    return model


def load_adapted(
    out_dir: str | Path,
    *,
    base: str | Path | None = None,
    device: str = "cpu",
    cache_dir: str | Path | None = None,
) -> tuple[Any, Any]:
    """Load saved adapters onto the base model they record, with its tokenizer (eval mode).

    The base is ``base_model_name_or_path`` of ``adapter_config.json``, resolved
    by :func:`budgetsft.features.models.resolve_model`: a packaged short name
    (``"smollm2-135m-instruct"``), a directory (absolute, as
    :func:`save_adapters` records it; an older relative one is relative to the
    current directory) or a Hugging Face id. ``base`` overrides it, e.g. when
    the base model's directory was moved or copied to another machine.

    Parameters
    ----------
    out_dir : path
        A directory written by :func:`save_adapters` (e.g. ``runs/adapt/adapters/llf``).
    base : str or path, optional
        The base model to load the adapters onto, instead of the recorded one
        (a packaged short name, a directory or a hub id). It must be the same
        model the adapters were trained on.
    device : {"auto", "cpu", "cuda"}, default="cpu"
    cache_dir : path-like, optional
        Root of the budgetsft cache (where the packaged causal LM is converted).

    Returns
    -------
    model : peft.PeftModel
    tokenizer : transformers tokenizer

    Examples
    --------
    >>> model, tok = load_adapted("runs/adapt/adapters/llf")  # doctest: +SKIP
    >>> accuracy(model, tok, test)                            # doctest: +SKIP
    """
    from budgetsft.features.models import load_causal_lm

    path = Path(out_dir)
    config_file = path / "adapter_config.json"
    if not config_file.is_file():
        raise DataError(
            f"{path}: no adapter_config.json; not a directory written by save_adapters."
        )
    if base is not None:
        try:
            model, tokenizer = load_causal_lm(base, device=device, cache_dir=cache_dir)
        except ConfigError as exc:
            raise ConfigError(f"The 'base' parameter of load_adapted ({base!r}): {exc}") from exc
        return load_adapters(model, path), tokenizer
    try:
        recorded = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{config_file}: not a readable adapter config ({type(exc).__name__}: {exc}).") from None
    recorded = recorded.get("base_model_name_or_path") if isinstance(recorded, dict) else None
    if not recorded or not isinstance(recorded, str):
        raise DataError(
            f"{config_file} records no base model ('base_model_name_or_path'); pass it as "
            "load_adapted(..., base=...)."
        )
    try:
        model, tokenizer = load_causal_lm(recorded, device=device, cache_dir=cache_dir)
    except ConfigError as exc:
        raise ConfigError(
            f"The adapters in {path} record the base model {recorded!r}: {exc} If the base model is elsewhere "
            "now, pass it as load_adapted(..., base=...)."
        ) from exc
    return load_adapters(model, path), tokenizer
