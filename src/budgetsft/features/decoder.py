"""adapt's text format and the layer-by-layer path of a Llama-style decoder (SPEC §7, §10).

Two parts of budgetsft read a causal LM the same way: ``budgetsft adapt``
(:mod:`budgetsft.adapt.engine`, which fine-tunes LoRA on the top layers over a
frozen prefix) and the gradient featuriser (:mod:`budgetsft.features.grad`,
whose features are the gradient at the very adapters adapt starts from). Both
take their text format, packing, decoder path and LoRA recipe from here, so the
features linearise exactly the model adapt trains. Features sit below adapt in
the import layers: this module is the one copy, adapt imports it.

Text format (:func:`encode`)
    With a fixed label set the instruction "Classify the text. Answer with one
    of: ..." is the system turn of the chat template (folded into the user turn
    for a template without one), the example's text, cut to its first
    ``max_prompt_tokens`` tokens, the user turn. Without labels the text keeps
    its last tokens (a question comes last). The answer is the candidate
    followed by EOS (chat template), or ``" " + candidate``
    (:data:`ANSWER_TEMPLATE`, no template; the prompt is then
    :data:`PROMPT_TEMPLATE`).
Packing (:func:`packed_batch`)
    One sequence per example, ``prompt + answer_0 + answer_1 + ...``, whose mask
    lets each answer see the prompt and itself only, positions restarting after
    the prompt: one forward pass scores every candidate exactly as K separate
    ``prompt + answer_k`` sequences would.
Decoder path (:class:`Decoder`)
    ``model.model.embed_tokens``, ``.layers``, ``.norm``, ``.rotary_emb``,
    ``model.lm_head`` (Llama, SmolLM, Mistral, Qwen2/3), driven layer by layer;
    :func:`check_decoder` compares it once with the model's own forward.
LoRA recipe (:func:`lora_config`)
    Rank ``r``, scale ``alpha / r``, no dropout, in every linear layer of
    :data:`LORA_TARGETS` of the layers above ``split``.

torch is imported inside the functions: importing :mod:`budgetsft.features`
stays cheap.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from budgetsft._validation import check_int
from budgetsft.data.schema import Example
from budgetsft.exceptions import ConfigError, DataError

if TYPE_CHECKING:
    import torch

__all__ = [
    "LORA_TARGETS",
    "PROMPT_TEMPLATE",
    "ANSWER_TEMPLATE",
    "has_chat_template",
    "token_ids",
    "pad_id",
    "encode_answer",
    "Encoded",
    "label_instruction",
    "encode",
    "PackedBatch",
    "packed_batch",
    "attention_mask",
    "Decoder",
    "check_decoder",
    "lora_config",
    "train_attention",
    "frozen_in_autocast_dtype",
]

#: Linear layers of a Llama-style decoder layer that get adapters.
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
#: Prompt text used when the tokenizer has no chat template.
PROMPT_TEMPLATE = "Question: {prompt}\nAnswer:"
#: Answer text used when the tokenizer has no chat template.
ANSWER_TEMPLATE = " {candidate}"


# --------------------------------------------------------------------------- #
# Text -> token ids
# --------------------------------------------------------------------------- #


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def token_ids(encoded: Any) -> list[int]:
    ids = encoded["input_ids"] if not isinstance(encoded, list) else encoded
    return [int(t) for t in ids]


def pad_id(tokenizer: Any) -> int:
    """The tokenizer's pad token, else its EOS, else 0 (padding is never attended to nor scored)."""
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    return 0


def encode_answer(candidate: str, tokenizer: Any) -> list[int]:
    """Token ids of the answer part (never a BOS)."""
    if has_chat_template(tokenizer):
        ids = token_ids(tokenizer(candidate, add_special_tokens=False))
        # The assistant turn ends with the end-of-turn token (<|im_end|> for
        # ChatML templates such as SmolLM2's, which is also their eos token).
        if tokenizer.eos_token_id is not None:
            ids.append(int(tokenizer.eos_token_id))
        return ids
    return token_ids(tokenizer(ANSWER_TEMPLATE.format(candidate=candidate), add_special_tokens=False))


@dataclass(frozen=True)
class Encoded:
    """Token ids of one example: the prompt and one answer per candidate."""

    prompt: tuple[int, ...]
    answers: tuple[tuple[int, ...], ...]

    @property
    def length(self) -> int:
        """Length of the packed sequence (prompt + every answer)."""
        return len(self.prompt) + sum(len(a) for a in self.answers)


def label_instruction(labels: Sequence[str]) -> str:
    """The instruction of a fixed label set: ``"Classify the text. Answer with one of: a, b, c."``"""
    return "Classify the text. Answer with one of: " + ", ".join(labels) + "."


def _cut(text: str, tokenizer: Any, max_tokens: int, keep: str) -> str:
    """``text`` cut to its first (``keep="head"``) or last (``"tail"``) ``max_tokens`` tokens."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = enc.get("offset_mapping")
    ids = token_ids(enc)
    if len(ids) <= max_tokens:
        return text
    if offsets:  # cut the text itself, so that nothing is decoded and re-encoded
        return text[: offsets[max_tokens - 1][1]] if keep == "head" else text[offsets[len(ids) - max_tokens][0]:]
    part = ids[:max_tokens] if keep == "head" else ids[-max_tokens:]
    return tokenizer.decode(part)


def encode(
    example: Example,
    tokenizer: Any,
    *,
    max_prompt_tokens: int = 64,
    labels: Sequence[str] | None = None,
    instruction: str | None = None,
) -> Encoded:
    """Token ids of an example's prompt and of each candidate's answer.

    Parameters
    ----------
    example : Example
    tokenizer : transformers tokenizer
    max_prompt_tokens : int, default=64
        The example's text is cut to this many tokens: its first ones on a fixed
        label set (``labels`` given), its last ones otherwise.
    labels : sequence of str, optional
        The fixed label set; gives the default instruction (:func:`label_instruction`).
    instruction : str, optional
        Overrides the instruction. With a chat template it is the system turn
        (it replaces the template's default system prompt), else the first
        paragraph of ``"Question: {instruction}\\n\\n{text}\\nAnswer:"``.

    Returns
    -------
    Encoded
    """
    from budgetsft.features.models import render_chat

    max_prompt_tokens = check_int("encode", "max_prompt_tokens", max_prompt_tokens, low=1)
    if instruction is None and labels is not None:
        instruction = label_instruction(labels)
    text = _cut(example.prompt, tokenizer, max_prompt_tokens, "head" if labels is not None else "tail")
    if has_chat_template(tokenizer):
        turns = [{"role": "user", "content": text}]
        if instruction:
            turns.insert(0, {"role": "system", "content": instruction})
        try:
            rendered = render_chat(tokenizer, turns, add_generation_prompt=True, system_ok=True)
        except ConfigError:  # the sandbox refused the template: no retry
            raise
        except Exception:  # a template without a system role (e.g. Gemma): fold it into the user turn
            turns = [{"role": "user", "content": f"{instruction}\n\n{text}" if instruction else text}]
            rendered = render_chat(tokenizer, turns, add_generation_prompt=True)
        prompt = token_ids(tokenizer(rendered, add_special_tokens=False))
    else:
        body = f"{instruction}\n\n{text}" if instruction else text
        prompt = token_ids(tokenizer(PROMPT_TEMPLATE.format(prompt=body), add_special_tokens=True))
    answers = []
    for k, cand in enumerate(example.candidates):
        ids = encode_answer(cand, tokenizer)
        if not ids:
            raise DataError(f"Example {example.id!r}: candidate {k} tokenizes to no tokens.")
        answers.append(tuple(ids))
    return Encoded(tuple(prompt), tuple(answers))


# --------------------------------------------------------------------------- #
# Packed batches
# --------------------------------------------------------------------------- #


@dataclass
class PackedBatch:
    """Right-padded packed sequences and where each candidate's tokens are read.

    Attributes
    ----------
    input_ids, position_ids : long tensors of shape (B, T)
    mask : bool tensor of shape (B, 1, T, T)
        ``mask[b, 0, i, j]``: query i may attend to key j.
    rows, predictors, positions, targets : long tensors of shape (N,)
        For the N answer tokens: batch row, position whose logits predict the
        token, the token's own position, and the token id.
    owner : long tensor of shape (N,)
        Flat candidate index (over the batch, in example then candidate order).
    n_candidates : list of int
        K of each example.
    starts : list of list of int
        Where each packed answer starts in its row.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    mask: torch.Tensor | None
    rows: torch.Tensor
    predictors: torch.Tensor
    positions: torch.Tensor
    targets: torch.Tensor
    owner: torch.Tensor
    n_candidates: list[int]
    starts: list[list[int]] = field(default_factory=list)


def packed_batch(
    items: Sequence[Encoded], *, pad_token_id: int = 0, answers: Sequence[int] | None = None,
    device: torch.device | str = "cpu",
) -> PackedBatch:
    """One batch of packed sequences.

    With ``answers`` (one candidate index per item) each sequence is the
    prompt followed by that answer only: the training sequence, plain causal
    attention (``mask`` is None). Without, every answer is packed after the
    prompt: answer k's tokens take positions ``P .. P + len_k - 1`` and attend
    to the prompt and to earlier tokens of answer k only, so each answer is
    scored as if it were alone after the prompt.
    """
    import torch

    seqs, segs, poss = [], [], []
    rows, preds, own, targets, owner = [], [], [], [], []
    n_cands, starts = [], []
    flat = 0
    for b, item in enumerate(items):
        p = len(item.prompt)
        chosen = range(len(item.answers)) if answers is None else [int(answers[b])]
        ids, seg, pos, mine = list(item.prompt), [0] * p, list(range(p)), []
        for j, k in enumerate(chosen):
            ans = item.answers[k]
            start = len(ids)
            mine.append(start)
            ids.extend(ans)
            seg.extend([j + 1] * len(ans))
            pos.extend(range(p, p + len(ans)))
            # token t of the answer is predicted at the position before it (the prompt's last for t = 0)
            preds.extend([p - 1, *range(start, start + len(ans) - 1)])
            own.extend(range(start, start + len(ans)))
            targets.extend(ans)
            rows.extend([b] * len(ans))
            owner.extend([flat + j] * len(ans))
        flat += len(chosen)
        n_cands.append(len(chosen))
        starts.append(mine)
        seqs.append(ids)
        segs.append(seg)
        poss.append(pos)
    width = max(len(s) for s in seqs)
    n = len(seqs)
    input_ids = torch.full((n, width), int(pad_token_id), dtype=torch.long)
    position_ids = torch.zeros((n, width), dtype=torch.long)
    segment = torch.full((n, width), -1, dtype=torch.long)
    for b, (s, g, q) in enumerate(zip(seqs, segs, poss, strict=True)):
        input_ids[b, : len(s)] = torch.tensor(s)
        position_ids[b, : len(s)] = torch.tensor(q)
        segment[b, : len(s)] = torch.tensor(g)
    mask = None
    if answers is None:
        causal = torch.ones(width, width, dtype=torch.bool).tril()
        key = segment[:, None, :]
        same = (segment[:, :, None] == key) | (key == 0)
        mask = causal & same & (key >= 0)
        mask |= torch.eye(width, dtype=torch.bool)  # padding rows attend to themselves (no all-masked row)
        mask = mask[:, None].to(device)
    as_long = lambda x: torch.tensor(x, dtype=torch.long, device=device)  # noqa: E731
    return PackedBatch(
        input_ids=input_ids.to(device), position_ids=position_ids.to(device), mask=mask,
        rows=as_long(rows), predictors=as_long(preds), positions=as_long(own), targets=as_long(targets),
        owner=as_long(owner),
        n_candidates=n_cands, starts=starts,
    )


def attention_mask(mask: torch.Tensor | None, *, eager: bool, dtype: torch.dtype | None = None
                   ) -> torch.Tensor | None:
    """``mask`` (bool, True = attend) as the attention implementation takes it: as it is for sdpa (None is
    plain causal attention), additive (0 or the dtype's lowest value; float32 by default) for eager."""
    import torch

    if mask is None or not eager:
        return mask
    dtype = torch.float32 if dtype is None else dtype
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)


# --------------------------------------------------------------------------- #
# The decoder, driven layer by layer
# --------------------------------------------------------------------------- #


class _SharedKV:
    """The keys and values of a shared head of the sequence, as a decoder layer's ``cache``.

    While ``filling`` (the head's own pass, one row) each layer's keys and values are kept and attended to as
    they are; afterwards every row of a batch attends to them, expanded to the batch, before its own.
    """

    def __init__(self) -> None:
        self.kv: dict[int, tuple[Any, Any]] = {}
        self.filling = True

    def update(self, key: Any, value: Any, layer_idx: int, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
        import torch

        if self.filling:
            self.kv[layer_idx] = (key, value)
            return key, value
        k, v = self.kv[layer_idx]
        b = key.shape[0]
        return (torch.cat([k.expand(b, -1, -1, -1), key], dim=2), torch.cat([v.expand(b, -1, -1, -1), value], dim=2))


class Decoder:
    """Handles to the parts of a Llama-style causal LM (bare or wrapped by PEFT).

    Parameters
    ----------
    model : transformers causal LM or peft.PeftModel
    """

    def __init__(self, model: Any) -> None:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        core = getattr(base, "model", None)
        names = ("embed_tokens", "layers", "norm", "rotary_emb")
        if core is None or not all(hasattr(core, n) for n in names) or not hasattr(base, "lm_head"):
            kind = getattr(getattr(base, "config", None), "model_type", type(base).__name__)
            raise ConfigError(
                f"adapt and the grad features drive a Llama-style decoder (model.embed_tokens, layers, norm, "
                f"rotary_emb and lm_head: Llama, SmolLM, Mistral, Qwen2); the model {kind!r} does not have "
                "that layout."
            )
        self.model = model
        self.embed = core.embed_tokens
        self.layers = core.layers
        self.norm = core.norm
        self.rotary = core.rotary_emb
        self.head = base.lm_head
        self.n_layers = len(core.layers)
        self.eager = getattr(base.config, "_attn_implementation", "sdpa") == "eager"
        self.head_weight: torch.Tensor | None = None  # a low-precision copy of the head's weight, when held

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    def _mask(self, mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
        return attention_mask(mask, eager=self.eager, dtype=dtype)

    def run(self, hidden: torch.Tensor, position_ids: torch.Tensor, mask: torch.Tensor | None,
            start: int, stop: int, *, at: tuple[torch.Tensor, torch.Tensor] | None = None,
            shared: int = 0) -> torch.Tensor:
        """Hidden states after decoder layers ``[start, stop)``; ``mask`` None is causal attention.

        ``at`` = (rows, positions): only the states at those positions are wanted, shape (N, h). The last layer
        then runs its attention at every position (the keys and values) but its MLP, three quarters of a
        SmolLM2 layer's weights, at those positions only: when a loss or a score reads the answer tokens alone,
        the last layer costs about a third of a full one.

        ``shared`` = L > 0: the first L positions of every row hold the same tokens at positions 0..L-1 (adapt's
        label instruction, the same in every prompt), and every later position attends to all of them. They
        are computed once, from row 0, and every row attends to their keys and values (:class:`_SharedKV`), so
        a batch of B rows reads L + B·(T - L) tokens instead of B·T. ``at`` positions must be ≥ L.
        """
        import torch

        if start >= stop:
            return hidden if at is None else hidden[at]
        b, t = hidden.shape[:2]
        store = None
        if shared > 0:  # the shared positions first, once, their keys and values kept layer by layer
            store = _SharedKV()
            head_pos = position_ids[:1, :shared]
            head = hidden[:1, :shared]
            head_kw = {"attention_mask": self._causal(1, shared, shared, hidden.device),
                       "position_ids": head_pos, "position_embeddings": self.rotary(head, position_ids=head_pos)}
            for layer in self.layers[start:stop]:
                out = layer(head, cache=store, **head_kw)
                head = out[0] if isinstance(out, tuple) else out
            store.filling = False
            if mask is None:  # causal over the rest, every shared position seen
                mask = torch.ones(t - shared, t, dtype=torch.bool, device=hidden.device).tril(shared)
                mask = mask[None, None].expand(b, 1, -1, -1)
            else:
                mask = torch.cat([mask[:, :, shared:, :shared].new_ones((b, 1, t - shared, shared)),
                                  mask[:, :, shared:, shared:]], dim=-1)
            hidden, position_ids = hidden[:, shared:], position_ids[:, shared:]
            if at is not None:
                at = (at[0], at[1] - shared)
        position_embeddings = self.rotary(hidden, position_ids=position_ids)
        attn = self._mask(mask, torch.float32)
        if mask is None and self.eager:  # eager attention needs the causal mask spelt out
            attn = self._causal(b, t, t, hidden.device)
        kw = {"attention_mask": attn, "position_ids": position_ids, "position_embeddings": position_embeddings}
        if store is not None:
            kw["cache"] = store
        last = self.layers[stop - 1]
        split_last = at is not None and all(
            hasattr(last, n) for n in ("input_layernorm", "self_attn", "post_attention_layernorm", "mlp"))
        for layer in self.layers[start : stop - 1 if split_last else stop]:
            out = layer(hidden, **kw)
            hidden = out[0] if isinstance(out, tuple) else out
        if not split_last:
            if at is not None:
                return hidden[at]
            return hidden if store is None else torch.cat([head.expand(b, -1, -1), hidden], dim=1)
        # the decoder layer's own steps (Llama, Mistral, Qwen2/3), the MLP at the wanted positions only
        attended = last.self_attn(hidden_states=last.input_layernorm(hidden), **kw)[0]
        states = (hidden + attended)[at][None]
        return (states + last.mlp(last.post_attention_layernorm(states)))[0]

    def _causal(self, b: int, t: int, s: int, device: Any) -> torch.Tensor | None:
        """Causal attention of t queries over s keys (the last t of them): None for sdpa, spelt out for eager."""
        import torch

        if not self.eager:
            return None
        causal = torch.ones(t, s, dtype=torch.bool, device=device).tril(s - t)[None, None]
        return self._mask(causal.expand(b, 1, t, s), torch.float32)

    def token_logprobs(self, hidden: torch.Tensor, rows: torch.Tensor | None, predictors: torch.Tensor | None,
                       targets: torch.Tensor) -> torch.Tensor:
        """log p(targets[i] | the state at (rows[i], predictors[i])): float32 tensor of shape (N,).

        ``rows`` and ``predictors`` None: ``hidden`` holds those states already, shape (N, h)
        (:meth:`run` with ``at``).
        """
        import torch

        states = self.norm(hidden if rows is None else hidden[rows, predictors])
        if self.head_weight is not None and torch.is_autocast_enabled(states.device.type):
            # the held copy is the cast autocast would make of the head's weight: the same logits, no cast per call
            logits = torch.nn.functional.linear(states, self.head_weight, self.head.bias).float()
        else:
            logits = self.head(states).float()
        return torch.log_softmax(logits, dim=-1).gather(-1, targets[:, None]).squeeze(-1)

    def logprobs(self, hidden: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        """log p(target | prefix) of every answer token of ``batch``: float32 tensor of shape (N,).

        ``hidden``: the states of the whole batch, or those at ``(batch.rows, batch.predictors)`` alone (2-D, as
        :meth:`run` gives them with ``at=(batch.rows, batch.predictors)``).
        """
        if hidden.dim() == 2:
            return self.token_logprobs(hidden, None, None, batch.targets)
        return self.token_logprobs(hidden, batch.rows, batch.predictors, batch.targets)


@contextlib.contextmanager
def frozen_in_autocast_dtype(decoder: Decoder, start: int, stop: int, dtype: str) -> Iterator[None]:
    """Hold the frozen linear weights of layers ``[start, stop)`` and the head's weight in bf16 for the duration.

    Under autocast a linear layer casts its float32 weight to bf16 at every call, and autocast keeps no cast of
    a weight that takes no gradient: a LoRA training step on SmolLM2's top 4 layers on a CPU spent 13 % of
    its time casting frozen weights and the (tied, 28M) head (``benchmarks/adapt_speed.py --profile before``; holding
    them: 1.07x faster training). The copies held here are exactly those casts, so every result is bit
    for bit that of the float32 weights. On exit the float32 weights are back. Weights that take a gradient
    (the adapters), norms and embeddings are left alone; ``dtype`` ``"fp32"`` (no autocast) changes nothing.
    The head is tied to the embeddings on SmolLM2, so its copy is kept apart, on the decoder
    (:attr:`Decoder.head_weight`), and the embeddings keep float32.
    """
    import torch

    if dtype != "bf16":
        yield
        return
    swapped: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
    try:
        for module in decoder.layers[start:stop].modules():
            if isinstance(module, torch.nn.Linear):
                for p in (module.weight, module.bias):
                    if p is not None and not p.requires_grad and p.dtype == torch.float32:
                        swapped.append((p, p.data))
                        p.data = p.data.to(torch.bfloat16)
        w = decoder.head.weight
        decoder.head_weight = None if w.requires_grad else w.detach().to(torch.bfloat16)
        yield
    finally:
        decoder.head_weight = None
        for p, data in swapped:
            p.data = data


def check_decoder(model: Any, tokenizer: Any, item: Encoded, *, atol: float = 1e-3) -> float:
    """Largest gap between the layer-by-layer packed path and the model's own forward, in fp32.

    Scores every candidate of ``item`` both ways; raises :class:`ConfigError` when
    they differ by more than ``atol`` (a decoder whose layers need more than what
    :class:`Decoder` passes them).
    """
    import torch

    dec = Decoder(model)
    device = dec.device
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            batch = packed_batch([item], pad_token_id=pad_id(tokenizer), device=device)
            embedded = dec.embed(batch.input_ids)
            hidden = dec.run(embedded, batch.position_ids, batch.mask, 0, dec.n_layers)
            packed = dec.logprobs(hidden, batch)
            # the path adapt trains and scores on: the last layer's MLP at the answer positions only, the head of
            # the prompt (in a batch: the instruction every prompt shares) read apart and attended to
            at = dec.logprobs(dec.run(embedded, batch.position_ids, batch.mask, 0, dec.n_layers,
                                      at=(batch.rows, batch.predictors), shared=(len(item.prompt) - 1) // 2), batch)
            ref = []
            for ans in item.answers:
                ids = torch.tensor([list(item.prompt) + list(ans)], device=device)
                logits = model(input_ids=ids).logits[0].float()
                lp = torch.log_softmax(logits[len(item.prompt) - 1 : -1], dim=-1)
                ref.append(lp.gather(-1, torch.tensor(ans, device=device)[:, None]).squeeze(-1))
            gap = max(float((packed - torch.cat(ref)).abs().max()), float((at - torch.cat(ref)).abs().max()))
    finally:
        model.train(was_training)
    if not math.isfinite(gap) or gap > atol:
        kind = getattr(getattr(dec.model, "config", None), "model_type", "?")
        raise ConfigError(
            f"adapt's layer-by-layer path disagrees with the model's own forward by {gap:.3g} "
            f"(model type {kind!r}); this architecture is not supported by adapt or the grad features."
        )
    return gap


def lora_config(decoder: Decoder, split: int, *, r: int, alpha: float, owner: str) -> Any:
    """adapt's LoRA: rank ``r``, scale ``alpha / r``, no dropout, in the :data:`LORA_TARGETS` above ``split``.

    Returns a ``peft.LoraConfig``; :class:`ConfigError` naming ``owner`` when no
    layer above ``split`` has one of the targets.
    """
    from peft import LoraConfig

    n = decoder.n_layers
    present = {name.rsplit(".", 1)[-1] for name, _ in decoder.layers[split:].named_modules()} if split < n else set()
    targets = [t for t in LORA_TARGETS if t in present]
    if not targets:
        raise ConfigError(f"{owner}: no decoder layer above the frozen prefix (split {split} of {n}) has one of "
                          f"{list(LORA_TARGETS)}; there must be at least one adapted layer.")
    return LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=targets,
        layers_to_transform=list(range(split, n)), layers_pattern="layers",
        bias="none", task_type="CAUSAL_LM",
    )


def train_attention(device: torch.device) -> contextlib.AbstractContextManager:
    """The attention kernel of a backward through the top layers: on a CPU the math one (its backward is faster
    there than the flash kernel's on short sequences: 16 against 11 examples/s for SmolLM2's top 6 layers);
    elsewhere the default."""
    if device.type != "cpu":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.MATH)
