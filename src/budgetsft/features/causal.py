"""Joint causal-LM features (SPEC §6, "joint").

The causal LM (SmolLM2-135M-Instruct by default; any causal LM by
``model_name``: a local directory or a Hugging Face id, loaded with
``AutoModelForCausalLM``) reads prompt and candidate together, and for each
candidate a we keep

* the mean of the last hidden state (after the final norm) over the
  candidate's tokens (h = 576 columns; ``pooling="last"`` keeps the final
  candidate token instead),
* the mean token log-probability of the candidate given the prompt,
  (1/n) Σ_j log p(a_j | x, a_<j),
* a bias column 1.0,

so d = h + 2 (578 for SmolLM2-135M).

Prompt format
-------------
``prompt_format="chat"`` (what ``"auto"`` picks when the tokenizer has a chat
template, as SmolLM2-Instruct does): the tokenizer's chat template with the prompt as
the user message, then the assistant header; the candidate is the assistant
reply **followed by the end-of-turn token** (``<|im_end|>`` for SmolLM2). The
end-of-turn token belongs to the candidate span, so the log-probability also
says whether the reply ends there ("Paris" versus "Paris is ..."), and an
empty candidate still has one token. ``prompt_format="plain"`` (what
``"auto"`` picks for a tokenizer without a chat template, e.g. a base model):
BOS when the tokenizer has one, ``"Question: {prompt}\\nAnswer:"``, then
``" " + candidate`` and the EOS token when the tokenizer has one.

The prompt part is tokenised once per example and each candidate separately,
and the ids are concatenated, so the candidate span is exact. Sequences longer
than ``max_length`` lose prompt tokens from the left (the template header
first stays, the user text is cut), never candidate tokens (unless the
candidate alone is longer than ``max_length - 1``, which is cut with a warning).

Prefix sharing (``prefix_cache=True``, the default): every candidate of an
example shares one prompt, so the model reads the prompt once per example. An
example is one packed sequence, prompt + every candidate, whose 4-D attention
mask lets each candidate see the prompt and itself only, its positions
continuing from the prompt length (adapt's packing,
:func:`budgetsft.features.decoder.packed_batch`); ``batch_size`` examples of
similar length are right-padded into one forward. The log-probability of each
candidate's first token comes from the prompt's last position, the others from
the candidate positions. The prompt is truncated **once per example**, to
``max_length`` minus the longest candidate, so the prefix is the same for all
candidates (the per-sequence path cuts each sequence separately, so a shorter
candidate could keep a few more prompt tokens). Where the truncation is the same
the features equal the per-sequence ones up to float rounding. On a prompt of
P tokens and K candidates of a few tokens this reads about P + K·n tokens
instead of K·(P + n). The model must take ``position_ids`` and a 4-D mask, as
the Llama family does.

Per-sequence path (``prefix_cache=False``): the (example, candidate) sequences
are sorted by length and cut into batches of ``batch_size``, padded on the
right. With right padding a causal model never lets a real token attend to a
pad token, so no attention mask is needed, and outputs at real positions do
not depend on the batch. Both paths compute logits only at the candidate
positions (not for the whole vocabulary at every position).
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from budgetsft._validation import check_choice, check_int
from budgetsft.data.schema import Example
from budgetsft.exceptions import BudgetsftWarning, ConfigError, DataError
from budgetsft.features.base import check_examples, check_model_args

__all__ = ["CausalFeaturizer", "PromptFormat", "SequenceBatch"]

_SENTINEL = "\u2063BUDGETSFT\u2063"


@dataclass(frozen=True)
class PromptFormat:
    """Token ids around the user text and after the candidate.

    Attributes
    ----------
    prefix : tuple of int
        Ids before the prompt text (chat header, system turn, user header).
    suffix : tuple of int
        Ids between the prompt text and the candidate (end of user turn, assistant header).
    terminator : tuple of int
        Ids appended to every candidate (end-of-turn / EOS); part of the candidate span.
    candidate_prefix : str
        Text put before the candidate before tokenising ("" for chat, " " for plain).
    """

    kind: str
    prefix: tuple[int, ...]
    suffix: tuple[int, ...]
    terminator: tuple[int, ...]
    candidate_prefix: str

    @classmethod
    def build(cls, tokenizer: Any, kind: str, name: str = "the tokenizer") -> PromptFormat:
        """Derive the format from a tokenizer (``kind`` is "chat" or "plain").

        ``name`` is what an error calls the model. A chat template that fails
        to render, or that does not write the user's text and the reply once
        each, is a :class:`~budgetsft.exceptions.ConfigError`.
        """
        from budgetsft.features.models import render_chat

        def ids(text: str) -> tuple[int, ...]:
            return tuple(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else ()

        if kind == "chat":
            user = render_chat(tokenizer, [{"role": "user", "content": _SENTINEL}], add_generation_prompt=True,
                               name=name)
            turn = render_chat(tokenizer, [{"role": "user", "content": "x"},
                                           {"role": "assistant", "content": _SENTINEL}],
                               add_generation_prompt=False, name=name)
            if user.count(_SENTINEL) != 1 or turn.count(_SENTINEL) != 1:
                raise ConfigError(
                    f"The chat template of {name} does not write the user message and the assistant reply "
                    "exactly once each, so the candidate's tokens cannot be found; use "
                    "prompt_format='plain' or fix the template."
                )
            before, after = user.split(_SENTINEL)
            tail = ids(turn.split(_SENTINEL)[1])
            # the first token after the reply is the end-of-turn marker (<|im_end|>)
            terminator = tail[:1]
            return cls("chat", ids(before), ids(after), terminator, "")
        eos = tokenizer.eos_token_id
        terminator = (int(eos),) if eos is not None else ()
        bos = tokenizer.bos_token_id
        prefix = ((int(bos),) if bos is not None and bos != eos else ()) + ids("Question: ")
        return cls("plain", prefix, ids("\nAnswer:"), terminator, " ")


@dataclass
class SequenceBatch:
    """One padded batch of (example, candidate) sequences.

    Attributes
    ----------
    rows : ndarray of shape (B,)
        Flat candidate indices (over every candidate of every example).
    input_ids : LongTensor of shape (B, T)
        Right-padded.
    starts, ends : LongTensor of shape (B,)
        The candidate span [start, end) of each sequence (start >= 1).
    """

    rows: np.ndarray
    input_ids: Any
    starts: Any
    ends: Any


class CausalFeaturizer:
    """Joint causal-LM features: pooled hidden state, mean log-prob, bias (SPEC §6).

    Parameters
    ----------
    model_name : str or path-like, default="smollm2-135m-instruct"
        A packaged causal LM (short name), a local model directory or a
        Hugging Face model id, loaded lazily with
        :func:`budgetsft.features.models.load_causal_lm`. Its identity in
        :meth:`settings` is the short name, the hub commit or a hash of the
        directory's files (:func:`~budgetsft.features.models.model_identity`).
    model, tokenizer : optional
        An already-loaded transformers causal LM and its tokenizer (both or
        none), e.g. a fine-tuned model or a tiny test model. Its identity in
        :meth:`settings` is then a hash of its weights.
    device : {"auto", "cpu", "cuda"}, default="auto"
        The model is moved there.
    dtype : {"bf16", "fp32", "auto"}, default="bf16"
        bf16 autocast where supported (falls back to fp32); outputs are float64.
    max_length : int, default=512
        Most tokens per sequence; prompts are truncated from the left.
    batch_size : int, default=16
        Sequences per forward pass (``prefix_cache=False``; with the prefix
        cache each forward reads one prompt, then its K candidates).
    pooling : {"mean", "last"}, default="mean"
        Mean over the candidate tokens, or the last candidate token.
    prompt_format : {"auto", "chat", "plain"}, default="auto"
        "auto" uses "chat" when the tokenizer has a chat template.
    prefix_cache : bool, default=True
        Read each prompt once and share its key/value cache across the
        candidates (one prompt truncation per example, see the module notes);
        False runs every (prompt + candidate) sequence in full.
    progress : bool, default=True
        tqdm bar (stderr) over examples (over sequences with ``prefix_cache=False``).
    cache_dir : path-like, optional
        Root of the budgetsft cache for the converted model.

    Attributes
    ----------
    name : str
        ``"causal"``.
    dim : int
        h + 2 (578 for SmolLM2-135M), h the model's hidden size. Column h is
        the mean log-prob, column h+1 the bias.

    Examples
    --------
    >>> from budgetsft.data.schema import Example
    >>> f = CausalFeaturizer(progress=False)                              # doctest: +SKIP
    >>> ex = Example("q1", "Capital of France?", ("Paris", "Rome", "Oslo"))
    >>> f.transform_many([ex])[0].shape                                    # doctest: +SKIP
    (3, 578)
    """

    name = "causal"

    def __init__(
        self,
        model_name: str = "smollm2-135m-instruct",
        *,
        model: Any = None,
        tokenizer: Any = None,
        device: str = "auto",
        dtype: str = "bf16",
        max_length: int = 512,
        batch_size: int = 16,
        pooling: str = "mean",
        prompt_format: str = "auto",
        prefix_cache: bool = True,
        progress: bool = True,
        cache_dir: Any = None,
    ) -> None:
        owner = type(self).__name__
        check_model_args(owner, model, tokenizer)
        self.model_name = model_name
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.dtype = check_choice(owner, "dtype", dtype, ("bf16", "fp32", "auto"))
        self.max_length = check_int(owner, "max_length", max_length, low=2)
        self.batch_size = check_int(owner, "batch_size", batch_size, low=1)
        self.pooling = check_choice(owner, "pooling", pooling, ("mean", "last"))
        self.prompt_format = check_choice(
            owner, "prompt_format", prompt_format, ("auto", "chat", "plain")
        )
        if not isinstance(prefix_cache, bool):
            raise ConfigError(
                f"The 'prefix_cache' parameter of {owner} must be a bool. Got {prefix_cache!r}."
            )
        self.prefix_cache = prefix_cache
        self.progress = progress
        self.cache_dir = cache_dir
        self._injected = model is not None
        self._setup = False
        self._loaded = False
        self._fingerprint: str | None = None
        self._weights_version: tuple = ()
        self._warned_long = False

    # ------------------------------------------------------------------ loading
    def _ensure_setup(self) -> None:
        """Device, dtype, tokenizer and prompt format: everything but the weights."""
        if self._setup:
            return
        from budgetsft.features.models import load_causal_tokenizer, resolve_device, resolve_dtype

        owner = type(self).__name__
        self.device_ = resolve_device(self.device)
        self.dtype_ = resolve_dtype(owner, self.dtype, self.device_)
        if self.tokenizer is None:
            self.tokenizer = load_causal_tokenizer(self.model_name, cache_dir=self.cache_dir)
        kind = self.prompt_format
        has_template = bool(getattr(self.tokenizer, "chat_template", None))
        if kind == "auto":
            kind = "chat" if has_template else "plain"
        if kind == "chat" and not has_template:
            raise ConfigError(
                f"The 'prompt_format' parameter of {owner} is 'chat' but the tokenizer has no "
                "chat template; use 'plain' or 'auto'."
            )
        what = f"the tokenizer given to {owner}" if self._injected else f"--model {self.model_name!r}"
        self.format_ = PromptFormat.build(self.tokenizer, kind, what)
        if len(self.format_.terminator) == 0:
            warnings.warn(
                f"{owner}: the tokenizer has no end-of-turn/EOS token; an empty candidate "
                "will raise a DataError.",
                BudgetsftWarning,
                stacklevel=3,
            )
        self._setup = True

    def _ensure_loaded(self) -> None:
        if self._loaded:
            return
        from budgetsft.features.models import load_causal_lm

        self._ensure_setup()
        if self.model is None:
            self.model, _ = load_causal_lm(
                self.model_name, device=self.device_, cache_dir=self.cache_dir
            )
        else:
            self.model.to(self.device_)
            self.model.eval()
        self._decoder = self.model.get_decoder()
        self._head = self.model.get_output_embeddings()
        self._loaded = True

    @property
    def dim(self) -> int:
        """h + 2, read from the model config (no weights are loaded)."""
        if self.model is not None:
            return int(self.model.config.hidden_size) + 2
        from budgetsft.features.models import model_hidden_size

        return model_hidden_size(self.model_name, "causal", cache_dir=self.cache_dir) + 2

    def settings(self) -> dict:
        """Model identity, prompt format, truncation, pooling and compute dtype.

        Loads the tokenizer but not the weights of a model given by name, so a
        fully cached :func:`~budgetsft.features.featurize` run never loads the LM.
        """
        from budgetsft.features.models import model_identity

        self._ensure_setup()
        identity = None if self._injected else model_identity(
            self.model_name, "causal", cache_dir=self.cache_dir
        )
        if self._injected:
            from budgetsft.features.models import model_fingerprint, weights_version

            # Re-hash only when the weights changed in place (e.g. fine-tuned since).
            version = weights_version(self.model)
            if self._fingerprint is None or version != self._weights_version:
                self._fingerprint = model_fingerprint(self.model)
                self._weights_version = version
        fmt = self.format_
        out = {
            "model": self._fingerprint if self._injected else identity,
            "prompt_format": fmt.kind,
            "format_ids": [list(fmt.prefix), list(fmt.suffix), list(fmt.terminator)],
            "max_length": self.max_length,
            "truncation": "left",
            "pooling": self.pooling,
            "hidden": "last+final_norm",
            "logprob": "mean",
            "dtype": self.dtype_,
        }
        if self.prefix_cache:
            # One prompt truncation per example: not the per-sequence path's features.
            out["truncation"] = "left, shared by the candidates"
            out["prefix_cache"] = True
            out["prefix_path"] = "packed"  # one masked sequence per example (the earlier build repeated a KV cache)
        return out

    # ------------------------------------------------------------------ tokenise
    def encode_many(self, examples: Sequence[Example]) -> list[tuple[list[int], int, int]]:
        """Token ids and candidate span of every (example, candidate) pair.

        Returns
        -------
        list of (ids, start, end), one per candidate, examples in order
            ``ids[start:end]`` are the candidate's tokens (terminator included).
        """
        self._ensure_setup()
        fmt = self.format_
        return [self._truncate(ex, prompt_ids, cand, len(fmt.prefix), len(fmt.suffix))
                for ex, prompt_ids, cands in self._tokenized(examples) for cand in cands]

    def _tokenized(self, examples: Sequence[Example]) -> Iterator[tuple[Example, list[int], list[list[int]]]]:
        """Each example with its formatted prompt ids and its candidates' ids (terminator included), uncut."""
        self._ensure_setup()
        fmt = self.format_
        tok = self.tokenizer
        prompts = tok([ex.prompt for ex in examples], add_special_tokens=False)["input_ids"]
        flat_cands = [fmt.candidate_prefix + c for ex in examples for c in ex.candidates]
        cand_ids = tok(flat_cands, add_special_tokens=False)["input_ids"] if flat_cands else []
        j = 0
        for ex, p_ids in zip(examples, prompts, strict=True):
            cands = []
            for _ in ex.candidates:
                cand = list(cand_ids[j]) + list(fmt.terminator)
                j += 1
                if not cand:
                    raise DataError(
                        f"{type(self).__name__}: example {ex.id!r} has an empty candidate and "
                        "the tokenizer has no end-of-turn token to score instead."
                    )
                cands.append(cand)
            yield ex, list(fmt.prefix) + list(p_ids) + list(fmt.suffix), cands

    def _truncate(
        self, ex: Example, prompt: list[int], cand: list[int], n_prefix: int, n_suffix: int
    ) -> tuple[list[int], int, int]:
        limit = self.max_length
        if len(prompt) + len(cand) <= limit:
            return prompt + cand, len(prompt), len(prompt) + len(cand)
        cand = self._cut_candidate(ex, cand, stacklevel=5)
        prompt = self._cut_prompt(prompt, limit - len(cand), n_prefix, n_suffix)
        return prompt + cand, len(prompt), len(prompt) + len(cand)

    def _cut_candidate(self, ex: Example, cand: list[int], stacklevel: int = 4) -> list[int]:
        """Cut a candidate longer than ``max_length - 1`` on the right (warned once)."""
        limit = self.max_length
        if len(cand) <= limit - 1:
            return cand
        if not self._warned_long:
            warnings.warn(
                f"{type(self).__name__}: example {ex.id!r} has a candidate of {len(cand)} "
                f"tokens, more than max_length - 1 = {limit - 1}; it is cut on the right "
                "(warned once).",
                BudgetsftWarning,
                stacklevel=stacklevel,
            )
            self._warned_long = True
        return cand[: limit - 1]

    @staticmethod
    def _cut_prompt(prompt: list[int], room: int, n_prefix: int, n_suffix: int) -> list[int]:
        """Keep at most ``room`` prompt tokens: the template, then the end of the user text."""
        if len(prompt) <= room:
            return prompt
        head, body, tail = prompt[:n_prefix], prompt[n_prefix : len(prompt) - n_suffix], prompt[
            len(prompt) - n_suffix :
        ]
        if room >= len(head) + len(tail) + 1:
            keep = room - len(head) - len(tail)
            return head + body[len(body) - keep :] + tail
        # not even the template fits: keep the last tokens before the candidate
        return prompt[len(prompt) - room :]

    def encode_prefix_many(self, examples: Sequence[Example]) -> list[tuple[list[int], list[list[int]]]]:
        """Shared prompt ids and candidate ids of every example (prefix-cache path).

        The prompt is cut once per example, to ``max_length`` minus its longest
        candidate, so every candidate continues the same prefix.

        Returns
        -------
        list of (prompt_ids, [candidate_ids, ...]), one per example
            ``prompt_ids + candidate_ids`` is at most ``max_length`` tokens.
        """
        self._ensure_setup()
        fmt = self.format_
        out: list[tuple[list[int], list[list[int]]]] = []
        for ex, prompt_ids, raw in self._tokenized(examples):
            cands = [self._cut_candidate(ex, cand) for cand in raw]
            room = self.max_length - max(len(c) for c in cands)
            out.append((self._cut_prompt(prompt_ids, room, len(fmt.prefix), len(fmt.suffix)), cands))
        return out

    def batches(self, encoded: Sequence[tuple[list[int], int, int]]) -> list[SequenceBatch]:
        """Length-sorted, right-padded batches of ``batch_size`` sequences.

        Parameters
        ----------
        encoded : output of :meth:`encode_many`

        Returns
        -------
        list of SequenceBatch
        """
        import torch

        self._ensure_setup()
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = self.tokenizer.eos_token_id or 0
        order = np.argsort([-len(e[0]) for e in encoded], kind="stable")
        out = []
        for s in range(0, len(order), self.batch_size):
            rows = order[s : s + self.batch_size]
            width = len(encoded[rows[0]][0])
            ids = np.full((len(rows), width), pad, dtype=np.int64)
            for r, i in enumerate(rows):
                seq = encoded[i][0]
                ids[r, : len(seq)] = seq
            out.append(
                SequenceBatch(
                    rows=rows,
                    input_ids=torch.from_numpy(ids).to(self.device_),
                    starts=torch.tensor([encoded[i][1] for i in rows], device=self.device_),
                    ends=torch.tensor([encoded[i][2] for i in rows], device=self.device_),
                )
            )
        return out

    # ------------------------------------------------------------------ compute
    def forward(self, batch: SequenceBatch) -> Any:
        """Features of one batch: float32 tensor of shape (B, h + 2)."""
        import torch

        from budgetsft.features.models import autocast

        self._ensure_loaded()
        with torch.inference_mode():
            with autocast(self.device_, self.dtype_):
                # Right padding + causal attention: no real token sees a pad, no mask needed.
                hidden = self._decoder(input_ids=batch.input_ids).last_hidden_state
            b, t, h = hidden.shape
            lengths = batch.ends - batch.starts
            # Flat (row, position) of every candidate token.
            seg = torch.repeat_interleave(torch.arange(b, device=hidden.device), lengths)
            offsets = torch.cumsum(lengths, 0) - lengths
            pos = torch.arange(int(lengths.sum()), device=hidden.device) - offsets[seg]
            pos = pos + batch.starts[seg]
            targets = batch.input_ids[seg, pos]
            # Logits only where a candidate token is predicted (position - 1).
            with autocast(self.device_, self.dtype_):
                logits = self._head(hidden[seg, pos - 1])
            logp = torch.log_softmax(logits.float(), dim=-1).gather(1, targets[:, None])[:, 0]
            counts = lengths.to(torch.float32)
            mean_logp = torch.zeros(b, device=hidden.device).index_add_(0, seg, logp) / counts
            if self.pooling == "mean":
                pooled = torch.zeros(b, h, device=hidden.device).index_add_(
                    0, seg, hidden[seg, pos].float()
                ) / counts[:, None]
            else:
                pooled = hidden[torch.arange(b, device=hidden.device), batch.ends - 1].float()
            ones = torch.ones(b, 1, device=hidden.device)
            return torch.cat([pooled, mean_logp[:, None], ones], dim=1)

    def forward_prefix(self, items: Sequence[tuple[list[int], Sequence[list[int]]]]) -> list[Any]:
        """Features of the candidates of several examples, each prompt read once (the prefix-shared path).

        Each example is one packed sequence, prompt + every candidate
        (:func:`budgetsft.features.decoder.packed_batch`): candidate k's tokens
        take positions ``P .. P + n_k - 1`` and attend to the prompt and to
        themselves only (a 4-D mask), so each is read as if it were alone after
        the prompt. The examples are right-padded into one batch.

        Parameters
        ----------
        items : sequence of (prompt ids, [candidate ids, ...])
            As :meth:`encode_prefix_many` returns them (at least one token each).

        Returns
        -------
        list of float32 tensors of shape (K_i, h + 2), one per item
        """
        import torch

        from budgetsft.features.decoder import Encoded, attention_mask, packed_batch, pad_id
        from budgetsft.features.models import autocast

        self._ensure_loaded()
        dev = self.device_
        encoded = [Encoded(tuple(p), tuple(tuple(c) for c in cands)) for p, cands in items]
        batch = packed_batch(encoded, pad_token_id=pad_id(self.tokenizer), device=dev)
        mask = attention_mask(batch.mask, eager=getattr(self.model.config, "_attn_implementation", "sdpa") == "eager")
        # no_grad rather than inference_mode: under no_grad autocast keeps its bf16 copies
        # of the weights until the outermost autocast region ends, so transform_many casts
        # them once per call instead of once per forward pass.
        with torch.no_grad():
            with autocast(dev, self.dtype_):
                hidden = self._decoder(
                    input_ids=batch.input_ids, attention_mask=mask, position_ids=batch.position_ids,
                    use_cache=False,
                ).last_hidden_state
                logits = self._head(hidden[batch.rows, batch.predictors])
            logp = torch.log_softmax(logits.float(), dim=-1).gather(1, batch.targets[:, None])[:, 0]
            n = sum(batch.n_candidates)
            counts = torch.zeros(n, device=dev).index_add_(0, batch.owner, torch.ones_like(logp))
            mean_logp = torch.zeros(n, device=dev).index_add_(0, batch.owner, logp) / counts
            states = hidden[batch.rows, batch.positions].float()
            h = hidden.shape[-1]
            if self.pooling == "mean":
                pooled = torch.zeros(n, h, device=dev).index_add_(0, batch.owner, states) / counts[:, None]
            else:  # the last token of each candidate (a candidate's tokens are consecutive in the flat list)
                pooled = states[torch.cumsum(counts.long(), 0) - 1]
            feats = torch.cat([pooled, mean_logp[:, None], torch.ones(n, 1, device=dev)], dim=1)
        return list(torch.split(feats, batch.n_candidates))

    def transform_many(
        self, examples: Sequence[Example], *, progress: bool | None = None
    ) -> list[np.ndarray]:
        """Joint features of every candidate of every example.

        Parameters
        ----------
        examples : sequence of Example
            K may vary between examples.
        progress : bool, optional
            Overrides the constructor's ``progress`` for this call.

        Returns
        -------
        list of ndarray of shape (K_i, h + 2), float64
            Columns: pooled hidden state (h), mean log-prob, bias 1.0.
        """
        examples = check_examples(examples, type(self).__name__)
        if not examples:
            return []
        self._ensure_loaded()
        show = self.progress if progress is None else progress
        from tqdm.auto import tqdm

        if self.prefix_cache:
            import torch

            from budgetsft.features.models import autocast

            items = self.encode_prefix_many(examples)
            # similar lengths share a batch (little padding); the output keeps the examples' order
            order = sorted(range(len(items)), key=lambda i: -(len(items[i][0]) + sum(map(len, items[i][1]))))
            out: list[np.ndarray | None] = [None] * len(items)
            bar = tqdm(
                total=len(examples), desc="causal", unit="ex", file=sys.stderr,
                disable=not show, leave=False,
            )
            with torch.no_grad(), autocast(self.device_, self.dtype_):
                for s in range(0, len(order), self.batch_size):
                    rows = order[s : s + self.batch_size]
                    for i, feats in zip(rows, self.forward_prefix([items[i] for i in rows]), strict=True):
                        out[i] = feats.cpu().numpy().astype(np.float64)
                    bar.update(len(rows))
            bar.close()
            return out  # type: ignore[return-value]
        encoded = self.encode_many(examples)
        flat = np.empty((len(encoded), self.dim), dtype=np.float64)
        bar = tqdm(
            total=len(encoded), desc="causal", unit="seq", file=sys.stderr,
            disable=not show, leave=False,
        )
        for batch in self.batches(encoded):
            flat[batch.rows] = self.forward(batch).cpu().numpy()
            bar.update(len(batch.rows))
        bar.close()
        out = []
        pos = 0
        for ex in examples:
            k = len(ex.candidates)
            out.append(flat[pos : pos + k].copy())
            pos += k
        return out
