"""Fast LoRA adaptation on short answers: a frozen prefix computed once, candidates packed (SPEC §7).

Two facts make adaptation on a fixed label set cheap enough for a CPU:

1. **Adapters only in the top layers.** LoRA goes into the last ``lora_layers``
   decoder layers. The first ``split = n_layers - lora_layers`` layers are then
   frozen *and* see no adapter, so their output for an example is the same for
   every label set, every epoch and zero-shot. It is computed once per example
   (:class:`PrefixCache`) and every training step and every evaluation runs the
   top layers only. The adapters are ordinary PEFT adapters
   (``layers_to_transform``): loaded onto the full model
   (:func:`budgetsft.adapt.lora.load_adapted`) they give the same scores.
2. **Candidates share their prompt.** An example is one packed sequence,
   ``prompt + answer_0 + answer_1 + ...``, whose attention mask lets each answer
   see the prompt and itself only, with positions that restart after the prompt
   for each answer (:func:`packed_batch`). One forward pass scores every
   candidate, exactly as K separate ``prompt + answer_k`` sequences would.

The text format, packing and decoder path live in
:mod:`budgetsft.features.decoder` (the gradient features read the model the
same way) and are re-exported here. The text format (:func:`encode`): the
instruction (for a fixed label set, the list of labels) is the system turn of the chat template and the example's text,
cut to ``max_prompt_tokens`` tokens, is the user turn; the answer is the
candidate followed by EOS (:func:`budgetsft.adapt.lora.format_example`'s answer).
A text is cut from the end (its first tokens are kept: a BBC article's title and
lede) on a fixed label set, and from the start on per-item candidates (their
question comes last).

The split path drives a Llama-style decoder directly (``model.model.embed_tokens``,
``.layers``, ``.norm``, ``.rotary_emb``, ``model.lm_head``: Llama, SmolLM, Mistral,
Qwen2/3). :func:`check_decoder` compares it once with the model's own forward
and refuses a model where the two disagree.

Examples
--------
>>> enc = [encode(ex, tok, max_prompt_tokens=64, labels=labels) for ex in train]  # doctest: +SKIP
>>> cache = PrefixCache(model, split=24)                                          # doctest: +SKIP
>>> cache.add_many([ex.id for ex in train], enc)                                  # doctest: +SKIP
>>> peft_model, history = train_lora(model, cache, keys, enc, gold, epochs=3)     # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import copy
import math
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from budgetsft._validation import check_choice, check_float, check_int
from budgetsft.adapt.lora import autocast_context
from budgetsft.exceptions import ConfigError
from budgetsft.features.decoder import (
    LORA_TARGETS,
    Decoder,
    Encoded,
    PackedBatch,
    check_decoder,
    encode,
    frozen_in_autocast_dtype,
    label_instruction,
    lora_config,
    packed_batch,
    pad_id,
    train_attention,
)

__all__ = [
    "Encoded",
    "label_instruction",
    "encode",
    "packed_batch",
    "Decoder",
    "check_decoder",
    "PrefixCache",
    "train_lora",
    "warm_up",
    "score_packed",
    "LORA_TARGETS",
    "quiet_hf",
]


# --------------------------------------------------------------------------- #
# The frozen prefix
# --------------------------------------------------------------------------- #


class PrefixCache:
    """Hidden states after the first ``split`` decoder layers, one packed sequence per key.

    Parameters
    ----------
    model : transformers causal LM
        The base model (no adapters in layers below ``split``).
    split : int
        Number of frozen bottom layers, in ``[0, n_layers]``; 0 stores embeddings.
    dtype : {"bf16", "fp32"}, default="bf16"
        Compute dtype (autocast) and storage dtype of the states.
    batch_size : int, default=16
    pad_token_id : int, default=0

    Attributes
    ----------
    states_ : dict of key -> tensor of shape (T_i, h)
    seconds_ : float
        Time spent computing, all calls together.
    """

    def __init__(self, model: Any, split: int, *, dtype: str = "bf16", batch_size: int = 16,
                 pad_token_id: int = 0) -> None:
        self.model = model
        self.split = split
        self.dtype = dtype
        self.batch_size = batch_size
        self.pad_token_id = pad_token_id
        self.states_: dict[str, torch.Tensor] = {}
        self.encoded_: dict[str, Encoded] = {}
        self.seconds_ = 0.0

    def missing(self, keys: Sequence[str]) -> list[str]:
        """Keys (first occurrence order) whose states are not computed yet."""
        return [k for k in dict.fromkeys(keys) if k not in self.states_]

    def add_many(self, keys: Sequence[str], encoded: Sequence[Encoded], *,
                 progress: Callable[[int], None] | None = None) -> int:
        """Compute the states of every key not cached yet; returns how many were computed.

        ``progress`` is called with the number of sequences done after each batch.
        """
        dec = Decoder(self.model)
        check_int("PrefixCache", "split", self.split, low=0)
        if self.split > dec.n_layers:
            raise ConfigError(f"The 'split' parameter of PrefixCache must be at most {dec.n_layers} (the model's "
                              f"layers). Got {self.split}.")
        todo: dict[str, Encoded] = {}
        for k, e in zip(keys, encoded, strict=True):
            if k not in self.states_:
                todo.setdefault(k, e)
        order = sorted(todo, key=lambda k: -todo[k].length)  # similar lengths share a batch
        store = torch.bfloat16 if self.dtype == "bf16" else torch.float32
        t0 = time.perf_counter()
        done = 0
        # the frozen weights held in the compute dtype, the shared instruction read once per batch: what the
        # top layers do when they train and score (same function; in bf16 not the same last bits)
        with (torch.inference_mode(), autocast_context(dec.device, self.dtype),
              frozen_in_autocast_dtype(dec, 0, self.split, self.dtype)):
            for s in range(0, len(order), self.batch_size):
                chunk = order[s : s + self.batch_size]
                batch = packed_batch([todo[k] for k in chunk], pad_token_id=self.pad_token_id, device=dec.device)
                hidden = dec.run(dec.embed(batch.input_ids), batch.position_ids, batch.mask, 0, self.split,
                                 shared=_common_prefix([todo[k].prompt for k in chunk]))
                for r, k in enumerate(chunk):
                    self.states_[k] = hidden[r, : todo[k].length].to(store).clone()
                    self.encoded_[k] = todo[k]
                done += len(chunk)
                if progress is not None:
                    progress(done)
        self.seconds_ += time.perf_counter() - t0
        return len(order)

    def shared_prefix(self, keys: Sequence[str]) -> int:
        """Leading prompt tokens every key shares (adapt's chat header and label instruction): read once.

        At most the shortest prompt's length minus one, so each prompt's last token (which predicts the
        answers' first) stays a row's own; 0 for fewer than two keys.
        """
        return _common_prefix([self.encoded_[k].prompt for k in dict.fromkeys(keys)])

    def gold_batch(self, keys: Sequence[str], answers: Sequence[int], device: torch.device
                   ) -> tuple[torch.Tensor, PackedBatch]:
        """States of prompt + the given answer of each key (the training sequences), right-padded."""
        items = [self.encoded_[k] for k in keys]
        batch = packed_batch(items, pad_token_id=self.pad_token_id, answers=answers, device=device)
        parts = []
        for k, e, a in zip(keys, items, answers, strict=True):
            p = len(e.prompt)
            start = p + sum(len(x) for x in e.answers[:a])
            h = self.states_[k]
            parts.append(torch.cat([h[:p], h[start : start + len(e.answers[a])]]))
        return _pad(parts, batch.input_ids.shape[1], device), batch

    def packed_batch(self, keys: Sequence[str], device: torch.device) -> tuple[torch.Tensor, PackedBatch]:
        """States of the packed sequences (prompt + every answer) of each key, right-padded."""
        batch = packed_batch([self.encoded_[k] for k in keys], pad_token_id=self.pad_token_id, device=device)
        return _pad([self.states_[k] for k in keys], batch.input_ids.shape[1], device), batch


def _common_prefix(prompts: Sequence[Sequence[int]]) -> int:
    """Leading tokens every prompt shares, at most the shortest one's length minus one; 0 for fewer than two."""
    if len(prompts) < 2:
        return 0
    limit = min(len(q) for q in prompts) - 1
    first = prompts[0]
    n = 0
    while n < limit and all(q[n] == first[n] for q in prompts):
        n += 1
    return n


def _pad(parts: Sequence[torch.Tensor], width: int, device: torch.device) -> torch.Tensor:
    out = torch.zeros((len(parts), width, parts[0].shape[-1]), dtype=torch.float32, device=device)
    for r, h in enumerate(parts):
        out[r, : h.shape[0]] = h.float()
    return out


# --------------------------------------------------------------------------- #
# Training and scoring on the top layers
# --------------------------------------------------------------------------- #


def train_lora(
    model: Any,
    cache: PrefixCache,
    keys: Sequence[str],
    answers: Sequence[int],
    *,
    epochs: float = 3,
    lr: float = 3e-3,
    lora_r: int = 16,
    lora_alpha: float = 16,
    batch_size: int = 8,
    seed: int = 0,
    dtype: str = "bf16",
    max_grad_norm: float | None = 1.0,
    progress: bool = True,
    desc: str = "train",
    on_step: Callable[[int, float], None] | None = None,
    weights: Sequence[float] | None = None,
) -> tuple[Any, list[float]]:
    """LoRA on the layers above ``cache.split``, trained from the cached prefix states.

    ``epochs`` passes over the set: consecutive seeded permutations of the set,
    cut into batches of ``min(batch_size, n)`` (a batch may straddle two epochs),
    ``ceil(epochs * n / batch_size)`` steps of AdamW whose learning rate decays
    linearly from ``lr`` to 0; loss: mean negative log-likelihood of the gold answer tokens of the
    batch. Adapters (rank ``lora_r``, scale ``lora_alpha / lora_r``, no dropout)
    go into every linear layer of :data:`LORA_TARGETS` of the top layers. The
    adapter initialisation and the permutations are drawn from ``seed`` in a
    forked torch RNG: same seed, same adapters, bit for bit.

    Parameters
    ----------
    model : transformers causal LM
        Wrapped in place by ``peft.get_peft_model``: pass a fresh copy per set.
    cache : PrefixCache
        Holds every key of ``keys``.
    keys : sequence of str
    answers : sequence of int
        Gold candidate index of each key.
    epochs : float, default=3
        A fractional value trains ``ceil(epochs * n / batch_size)`` steps.
    on_step : callable (step, loss) -> None, optional
        Called after each optimiser step (steps counted from 1).
    weights : sequence of float, optional
        A weight in [0, 1] per key. Each answer token's log-likelihood is
        multiplied by its example's weight before the batch mean, so a weight
        of 1 is a gold label and a pseudo-label of weight 0.3 pulls 0.3 as
        hard. None: every weight is 1, the plain loss.

    Returns
    -------
    peft_model : peft.PeftModel, in eval mode
    history : list of float
        The loss of every step.
    """
    owner = "train_lora"
    epochs = check_float(owner, "epochs", epochs, low=0, low_open=True, high_open=True)
    lr = check_float(owner, "lr", lr, low=0, low_open=True, high_open=True)
    lora_r = check_int(owner, "lora_r", lora_r, low=1)
    batch_size = check_int(owner, "batch_size", batch_size, low=1)
    dtype = check_choice(owner, "dtype", dtype, ("bf16", "fp32"))
    keys = list(keys)
    answers = [int(a) for a in answers]
    if not keys:
        raise ConfigError(f"{owner} got 0 examples: there is nothing to fine-tune on.")
    w_all = None
    if weights is not None:
        w_all = np.asarray(weights, dtype=np.float64)
        if w_all.shape != (len(keys),):
            raise ConfigError(f"The 'weights' parameter of {owner} must hold one weight per key ({len(keys)}); "
                              f"got {w_all.size}.")
        bad = np.flatnonzero(~((w_all >= 0) & (w_all <= 1)))  # NaN fails both
        if len(bad):
            raise ConfigError(f"The 'weights' parameter of {owner} must be in [0, 1]; weight {bad[0]} (key "
                              f"{keys[bad[0]]!r}) is {w_all[bad[0]]}.")

    from peft import get_peft_model
    from tqdm.auto import tqdm

    dec = Decoder(model)
    device = dec.device
    split = cache.split
    config = lora_config(dec, split, r=lora_r, alpha=lora_alpha, owner=owner)
    n = len(keys)
    b = min(batch_size, n)
    steps = max(1, math.ceil(epochs * n / b))
    fork = [device.index or 0] if device.type == "cuda" else []
    history: list[float] = []
    with torch.random.fork_rng(devices=fork):
        torch.manual_seed(seed)
        peft_model = get_peft_model(model, config)
        top = Decoder(peft_model)
        params = [p for p in peft_model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: max(0.0, 1.0 - i / steps))
        generator = torch.Generator().manual_seed(seed)
        order: list[int] = []
        peft_model.train()
        bar = tqdm(total=steps, desc=desc, unit="step", disable=not progress, file=sys.stderr, leave=False)
        held = contextlib.ExitStack()
        try:
            held.enter_context(frozen_in_autocast_dtype(top, split, top.n_layers, dtype))  # no weight cast per step
            for _ in range(steps):
                if len(order) < b:  # a new epoch: a fresh permutation (what is left of the last one goes first)
                    order += torch.randperm(n, generator=generator).tolist()
                idx, order = order[:b], order[b:]
                step_keys = [keys[i] for i in idx]
                hidden, batch = cache.gold_batch(step_keys, [answers[i] for i in idx], device)
                with autocast_context(device, dtype), train_attention(device):
                    # the loss reads the answer tokens alone; the shared instruction is read once per step
                    out = top.run(hidden, batch.position_ids, None, split, top.n_layers,
                                  at=(batch.rows, batch.predictors), shared=cache.shared_prefix(step_keys))
                    lp = top.logprobs(out, batch)
                    if w_all is None:
                        loss = -lp.mean()
                    else:  # each answer token weighted by its example's weight (batch.owner: token -> example)
                        w = torch.as_tensor(w_all[idx], dtype=lp.dtype, device=lp.device)
                        loss = -(lp * w[batch.owner]).mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
                optimizer.step()
                schedule.step()
                history.append(float(loss.item()))
                bar.set_postfix(loss=f"{history[-1]:.3f}")
                bar.update(1)
                if on_step is not None:
                    on_step(len(history), history[-1])
        finally:
            held.close()
            bar.close()
    peft_model.eval()
    return peft_model, history


def warm_up(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Any],
    *,
    labels: Sequence[str] | None = None,
    lora_layers: int = 4,
    max_prompt_tokens: int = 64,
    epochs: float = 3,
    lr: float = 3e-3,
    lora_r: int = 16,
    lora_alpha: float = 16,
    batch_size: int = 8,
    seed: int = 0,
    dtype: str = "bf16",
) -> tuple[dict[str, torch.Tensor], list[float]]:
    """adapt's LoRA trained on a few labelled examples: the weights ``GradFeaturizer(adapters=...)`` takes.

    :func:`train_lora` (same layers, rank, α and ``seed``, so the same initial A as the featuriser's and adapt's)
    on ``examples`` in adapt's format, on a deep copy of ``model`` (left as it is). The examples' labels are
    labels someone paid for: count them against the budget (``benchmarks/grad_warmup.py`` buys them as the
    stream's first rounds).

    Returns
    -------
    adapters : dict of str -> tensor
        Every LoRA weight, keyed as ``peft.get_peft_model_state_dict`` keys it (no adapter name).
    losses : list of float
        The training loss of every step.
    """
    owner = "warm_up"
    examples = list(examples)
    if not examples:
        raise ConfigError(f"{owner} got 0 examples: a warm-up trains on labelled examples.")
    for i, ex in enumerate(examples):
        if getattr(ex, "answer", None) is None:
            raise ConfigError(f"{owner}: example {getattr(ex, 'id', i)!r} (item {i}) has no gold answer; a warm-up "
                              f"trains on labelled examples only.")
    lora_layers = check_int(owner, "lora_layers", lora_layers, low=1)
    base = copy.deepcopy(model).requires_grad_(False)
    base.eval()
    split = max(0, Decoder(base).n_layers - lora_layers)
    encoded = [encode(ex, tokenizer, max_prompt_tokens=max_prompt_tokens, labels=labels) for ex in examples]
    keys = [f"{i}:{ex.id}" for i, ex in enumerate(examples)]
    cache = PrefixCache(base, split, dtype=dtype, pad_token_id=pad_id(tokenizer))
    cache.add_many(keys, encoded)
    trained, losses = train_lora(base, cache, keys, [int(ex.answer) for ex in examples], epochs=epochs, lr=lr,
                                 lora_r=lora_r, lora_alpha=lora_alpha, batch_size=batch_size, seed=seed,
                                 dtype=dtype, progress=False, desc="warm-up")
    from peft import get_peft_model_state_dict

    return {name: w.detach().clone() for name, w in get_peft_model_state_dict(trained).items()}, losses


def score_packed(
    model: Any,
    cache: PrefixCache,
    keys: Sequence[str],
    *,
    batch_size: int = 32,
    normalize: str = "mean",
    dtype: str = "bf16",
    progress: bool = True,
    desc: str = "score",
) -> list[np.ndarray]:
    """Log-likelihood of every candidate of every key, from the cached prefix states.

    Parameters
    ----------
    model : transformers causal LM or peft model
        Its layers below ``cache.split`` must be the ones the cache was built with.
    normalize : {"mean", "sum"}, default="mean"
        Mean (length-normalised) or total log-probability of the answer tokens.

    Returns
    -------
    list of ndarray of shape (K_i,), float64
    """
    owner = "score_packed"
    normalize = check_choice(owner, "normalize", normalize, ("mean", "sum"))
    batch_size = check_int(owner, "batch_size", batch_size, low=1)
    from tqdm.auto import tqdm

    dec = Decoder(model)
    device = dec.device
    keys = list(keys)
    order = sorted(range(len(keys)), key=lambda i: -cache.encoded_[keys[i]].length)
    out: list[np.ndarray | None] = [None] * len(keys)
    was_training = model.training
    model.eval()
    bar = tqdm(total=len(keys), desc=desc, unit="ex", disable=not progress, file=sys.stderr, leave=False)
    try:
        with (torch.inference_mode(), autocast_context(device, dtype),
              frozen_in_autocast_dtype(dec, cache.split, dec.n_layers, dtype)):
            for s in range(0, len(order), batch_size):
                chunk = order[s : s + batch_size]
                chunk_keys = [keys[i] for i in chunk]
                hidden, batch = cache.packed_batch(chunk_keys, device)
                hidden = dec.run(hidden, batch.position_ids, batch.mask, cache.split, dec.n_layers,
                                 at=(batch.rows, batch.predictors), shared=cache.shared_prefix(chunk_keys))
                lp = dec.logprobs(hidden, batch).double()
                n_flat = sum(batch.n_candidates)
                total = torch.zeros(n_flat, dtype=torch.float64, device=device).index_add_(0, batch.owner, lp)
                if normalize == "mean":
                    count = torch.zeros(n_flat, dtype=torch.float64, device=device).index_add_(
                        0, batch.owner, torch.ones_like(lp))
                    total = total / count
                values = total.cpu().numpy()
                pos = 0
                for i, k in zip(chunk, batch.n_candidates, strict=True):
                    out[i] = values[pos : pos + k].copy()
                    pos += k
                bar.update(len(chunk))
    finally:
        bar.close()
        model.train(was_training)
    return out  # type: ignore[return-value]


@contextlib.contextmanager
def quiet_hf():
    """Silence the libraries while models load and adapters are built: no nested bars, no deprecation noise.

    Turns off transformers' "Loading weights" bars and its info logging
    (:func:`budgetsft.features.models.quiet_loading`), and ignores FutureWarning /
    DeprecationWarning raised from transformers, peft and accelerate (e.g. peft
    calling ``is_gradient_checkpointing``), for the duration of the block only;
    budgetsft's own bars and warnings are untouched.
    """
    import warnings

    from budgetsft.features.models import quiet_loading

    with quiet_loading(), warnings.catch_warnings():
        for category in (FutureWarning, DeprecationWarning):
            for module in ("transformers", "peft", "accelerate"):
                warnings.filterwarnings("ignore", category=category, module=rf"{module}(\.|$)")
        yield
