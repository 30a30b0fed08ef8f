"""Evaluation of a causal LM by candidate log-likelihood (SPEC §7).

Every candidate of every example is read with the training format
(:func:`budgetsft.adapt.lora.format_example`); its score is the
log-likelihood of its answer tokens given the prompt, summed or averaged
over tokens. The prediction is the highest-scoring candidate.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from budgetsft._validation import check_choice, check_int
from budgetsft.adapt.lora import (
    answer_token_logprobs,
    autocast_context,
    check_examples,
    encode_answer,
    encode_prompt,
    make_batch,
    pad_id,
    torch_device,
    truncate_ids,
)
from budgetsft.data.schema import Example
from budgetsft.exceptions import DataError

__all__ = ["score_candidates", "predict", "accuracy"]


def score_candidates(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    *,
    batch_size: int = 16,
    normalize: str = "mean",
    max_length: int = 512,
    dtype: str = "fp32",
    progress: bool = True,
) -> list[np.ndarray]:
    """Log-likelihood of every candidate given its prompt.

    All (example, candidate) pairs are sorted by length and scored in padded
    batches, so the result does not depend on how the pairs fall into
    batches beyond floating-point noise. The model is put in eval mode for
    the call and restored afterwards.

    Parameters
    ----------
    model : transformers causal LM or peft model
    tokenizer : transformers tokenizer
    examples : sequence of Example
        Labelled or not; each needs at least one candidate.
    batch_size : int, default=16
        Sequences per forward pass.
    normalize : {"mean", "sum"}, default="mean"
        "sum": total log-probability of the answer tokens; "mean": the same
        divided by the number of answer tokens (length-normalised).
    max_length : int, default=512
        Prompts are left-truncated to fit (same rule as training).
    dtype : {"fp32", "bf16"}, default="fp32"
        "bf16" runs the forward pass under bfloat16 autocast (faster on CPUs
        with bf16 units, slightly noisier scores).
    progress : bool, default=True
        tqdm bar over candidates on stderr.

    Returns
    -------
    list of ndarray of shape (K_i,), dtype float64
        One array per example, in input order.

    Examples
    --------
    >>> scores = score_candidates(model, tok, test, normalize="sum")  # doctest: +SKIP
    >>> [s.shape for s in scores[:2]]  # doctest: +SKIP
    [(4,), (4,)]
    """
    owner = "score_candidates"
    batch_size = check_int(owner, "batch_size", batch_size, low=1)
    normalize = check_choice(owner, "normalize", normalize, ("mean", "sum"))
    max_length = check_int(owner, "max_length", max_length, low=2)
    dtype = check_choice(owner, "dtype", dtype, ("fp32", "bf16"))
    examples = list(examples)
    if not examples:
        return []

    from tqdm.auto import tqdm

    # (example index, candidate index, prompt ids, answer ids)
    pairs: list[tuple[int, int, list[int], list[int]]] = []
    for i, ex in enumerate(examples):
        if not isinstance(ex, Example):
            raise DataError(f"{owner} expects budgetsft Example objects; got {type(ex).__name__}.")
        if len(ex.candidates) == 0:
            raise DataError(f"{owner}: example {ex.id!r} has no candidates.")
        prompt_ids = encode_prompt(ex.prompt, tokenizer)
        for k, cand in enumerate(ex.candidates):
            answer_ids = encode_answer(cand, tokenizer)
            if not answer_ids:
                raise DataError(f"Example {ex.id!r}: candidate {k} tokenizes to no tokens.")
            pairs.append((i, k, truncate_ids(prompt_ids, answer_ids, max_length), answer_ids))

    # Longest first: similar lengths share a batch and peak memory shows up at once.
    order = sorted(range(len(pairs)), key=lambda j: -(len(pairs[j][2]) + len(pairs[j][3])))
    totals = np.zeros(len(pairs), dtype=np.float64)
    counts = np.array([len(p[3]) for p in pairs], dtype=np.float64)
    pad = pad_id(tokenizer)
    device = torch_device(model)
    was_training = model.training
    model.eval()
    bar = tqdm(total=len(pairs), desc=owner, unit="cand", disable=not progress, file=sys.stderr)
    try:
        with torch.inference_mode(), autocast_context(device, dtype):
            for start in range(0, len(order), batch_size):
                chunk = order[start : start + batch_size]
                batch = make_batch([(pairs[j][2], pairs[j][3]) for j in chunk], pad_token_id=pad)
                logprobs, rows = answer_token_logprobs(model, batch)
                sums = torch.zeros(len(chunk), dtype=torch.float64, device=logprobs.device)
                sums.index_add_(0, rows, logprobs.double())
                totals[chunk] = sums.cpu().numpy()
                bar.update(len(chunk))
    finally:
        bar.close()
        model.train(was_training)

    if normalize == "mean":
        totals = totals / counts
    out: list[np.ndarray] = [np.empty(len(ex.candidates), dtype=np.float64) for ex in examples]
    for (i, k, _, _), value in zip(pairs, totals, strict=True):
        out[i][k] = value
    return out


def predict(model: Any, tokenizer: Any, examples: Sequence[Example], **kw: Any) -> np.ndarray:
    """Index of the best-scoring candidate of each example (lowest index on ties).

    Keyword arguments go to :func:`score_candidates`. Returns an int ndarray
    of shape (n,).
    """
    scores = score_candidates(model, tokenizer, examples, **kw)
    return np.array([int(np.argmax(s)) for s in scores], dtype=np.int64)


def accuracy(model: Any, tokenizer: Any, examples: Sequence[Example], **kw: Any) -> float:
    """Fraction of labelled examples whose gold candidate scores highest.

    Ties go to the lowest index (``np.argmax``). Keyword arguments go to
    :func:`score_candidates`.

    Examples
    --------
    >>> accuracy(model, tok, test, batch_size=32)  # doctest: +SKIP
    0.41
    """
    examples = check_examples("accuracy", examples, what="evaluate")
    pred = predict(model, tokenizer, examples, **kw)
    gold = np.array([ex.answer for ex in examples], dtype=np.int64)
    return float(np.mean(pred == gold))
