"""Gradient features of the adapted model: a LoRA step, linearised (issue 20; SPEC §10).

For each (prompt x, candidate a) the feature is a random projection of

    g(x, a) = ∇_B s(x, a),    s(x, a) = (1/n) Σ_j log p(a_j | x, a_<j),

the gradient of the candidate's mean token log-likelihood -- the score that
``budgetsft adapt`` trains and evaluates with -- with respect to the LoRA
matrices B of adapt's recipe: adapters of rank ``lora_r`` and scale
``lora_alpha / lora_r`` in every linear layer (q, k, v, o, gate, up, down) of
the top ``lora_layers`` decoder layers, at their initialisation.

Why these features
------------------
A small LoRA step δ changes a candidate's score by ⟨∇_δ s(x, a), δ⟩ to first
order. A linear head θ over g(x, a) is then exactly the linearised fine-tuned
model, and the confidence widths of LLF in this space measure what a LoRA step
does not yet know (the gradient-feature view of LESS and BADGE; SPEC §10:
"selection transfers when it uses the successor's own gradients").

Why only B
----------
PEFT initialises A at random (Kaiming uniform) and B = 0, so at the
initialisation the adapter adds nothing and ∇_A s = (α/r) Bᵀ(...) = 0
exactly: the whole gradient lives in B. With B = 0 the gradient with respect
to B of a linear layer y = W x + (α/r) B A x is (α/r) Σ_t (∂s/∂y_t)(A x_t)ᵀ
(shape out × r), so it depends on A: the adapters are attached exactly as
:func:`budgetsft.adapt.engine.train_lora` attaches them with the same
``seed`` (``torch.manual_seed(seed)`` in a forked RNG, then
``peft.get_peft_model``), so with the same seed the features are the
gradient at the very adapter that adapt's run starts from. The vector is
the B matrices, flattened row-major, in the model's module order (layers
bottom to top, then q, k, v, o, gate, up, down as PEFT visits them): 332k
numbers for SmolLM2-135M (4 layers, r = 16).

Projection
----------
``dim`` columns: φ = R g with R of shape (dim, P) Rademacher, entries
±1/√dim, so E⟨Rg, Rh⟩ = ⟨g, h⟩ and inner products are kept up to a
Johnson–Lindenstrauss error of order ‖g‖‖h‖/√dim (LESS, Xia et al. 2024,
projects the same way). R is never held whole: it is generated in chunks of
rows of P (about 4M entries, 16 MB, each), chunk j from
``numpy.random.default_rng([seed, j])``, on the CPU whatever the device, so
the same seed gives the same R on every machine. Cost is linear in ``dim``
(P·dim multiply-adds per candidate, R regenerated once per buffer of
candidates); nothing is quadratic in ``dim``. The default ``dim = 512`` is the
size of the causal features (578) so the default full-covariance learners
(O(d²) per update) run as fast on them; use ``--learner sketch`` with
``dim`` in the thousands (LESS used 8192) for a smaller JL error.

Computation
-----------
The text format and truncation are adapt's (:func:`budgetsft.adapt.engine.encode`:
the label instruction when ``labels`` is given, the text cut to
``max_prompt_tokens`` tokens, the answer followed by EOS), and so is the
layer-by-layer path (adapt's ``Decoder`` and ``PrefixCache``). Features sit
below adapt in the import layers (tests/test_layers.py), so this module holds
its own short copy of that format and path; tests/test_features_grad.py pins
it to adapt's (same token ids, same adapters, gradients equal to those of the
model's own forward), and the path is checked once per model against the
model's own forward, as adapt checks its own.

The decoder layers below the adapters get no gradient: they run once per
example under ``no_grad`` on the packed sequence prompt + every candidate
(each candidate attends to the prompt and to itself, its positions continue
after the prompt: the prompt is read once, shared by the K candidates). The
top layers then run with autograd on one row per candidate (the prompt's
states followed by that candidate's), ``batch_size`` rows per pass; one
backward of the sum of the rows' scores gives every row's own gradient,
because rows do not interact: a hook on each ``lora_B`` layer keeps its input
A x (rows, T, r) and, in the backward, the gradient at its output G, and row
b's gradient is Σ_t G[b, t] ⊗ (A x)[b, t] (the per-example trick of Opacus /
BackPACK). Per example this costs one bottom forward and K top
forward/backward passes over prompt + candidate.

``warmup``: 0 only (the gradient at the initialisation). A warm-up on the
first labels would train the adapters on labels the gate has not bought yet;
it is not implemented.

Examples
--------
>>> from budgetsft.data.schema import Example
>>> f = GradFeaturizer(dim=256, progress=False)                      # doctest: +SKIP
>>> ex = Example("q1", "Capital of France?", ("Paris", "Rome", "Oslo"))
>>> f.transform_many([ex])[0].shape                                  # doctest: +SKIP
(3, 256)
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from budgetsft._validation import check_choice, check_float, check_int
from budgetsft.data.schema import Example
from budgetsft.exceptions import ConfigError, DataError
from budgetsft.features.base import check_examples, check_model_args

__all__ = ["GradFeaturizer", "Encoded", "LORA_TARGETS", "encode_adapt"]

#: Linear layers of a Llama-style decoder layer that get adapters (adapt's ``LORA_TARGETS``).
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# adapt's text format without a chat template (budgetsft.adapt.lora's PROMPT_TEMPLATE, ANSWER_TEMPLATE)
_PROMPT_TEMPLATE = "Question: {prompt}\nAnswer:"
_ANSWER_TEMPLATE = " {candidate}"

#: Entries of one chunk of the projection (rows of P × dim), 16 MB in float32.
_CHUNK_ENTRIES = 1 << 22
#: Most bytes of per-candidate gradients held before they are projected (R is regenerated once per flush).
_BUFFER_BYTES = 256 << 20


# --------------------------------------------------------------------------- adapt's format and decoder path
# Features sit below adapt in the import layers: these are short copies of budgetsft.adapt.engine's
# encode / Decoder / packed prefix, pinned to it by tests/test_features_grad.py.


@dataclass(frozen=True)
class Encoded:
    """Token ids of one example in adapt's format: the prompt and one answer per candidate."""

    prompt: tuple[int, ...]
    answers: tuple[tuple[int, ...], ...]


def _ids(encoded: Any) -> list[int]:
    ids = encoded["input_ids"] if not isinstance(encoded, list) else encoded
    return [int(t) for t in ids]


def _cut(text: str, tokenizer: Any, max_tokens: int, keep: str) -> str:
    """``text`` cut to its first (``keep="head"``) or last (``"tail"``) ``max_tokens`` tokens."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = enc.get("offset_mapping")
    ids = _ids(enc)
    if len(ids) <= max_tokens:
        return text
    if offsets:  # cut the text itself, so that nothing is decoded and re-encoded
        return text[: offsets[max_tokens - 1][1]] if keep == "head" else text[offsets[len(ids) - max_tokens][0]:]
    part = ids[:max_tokens] if keep == "head" else ids[-max_tokens:]
    return tokenizer.decode(part)


def encode_adapt(example: Example, tokenizer: Any, *, max_prompt_tokens: int = 64,
                 labels: Sequence[str] | None = None) -> Encoded:
    """Token ids of an example's prompt and answers, exactly as :func:`budgetsft.adapt.engine.encode` makes them.

    With ``labels``, the instruction "Classify the text. Answer with one of: ..." is the system turn (folded
    into the user turn for a template without one) and the text keeps its first ``max_prompt_tokens``
    tokens; without, the text keeps its last ones. The answer is the candidate followed by EOS (chat
    template), or ``" " + candidate`` (no template).

    Returns
    -------
    Encoded
    """
    from budgetsft.features.models import render_chat

    instruction = "Classify the text. Answer with one of: " + ", ".join(labels) + "." if labels is not None else None
    text = _cut(example.prompt, tokenizer, max_prompt_tokens, "head" if labels is not None else "tail")
    chat = bool(getattr(tokenizer, "chat_template", None))
    if chat:
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
        prompt = _ids(tokenizer(rendered, add_special_tokens=False))
    else:
        body = f"{instruction}\n\n{text}" if instruction else text
        prompt = _ids(tokenizer(_PROMPT_TEMPLATE.format(prompt=body), add_special_tokens=True))
    answers = []
    for k, cand in enumerate(example.candidates):
        if chat:
            ids = _ids(tokenizer(cand, add_special_tokens=False))
            if tokenizer.eos_token_id is not None:  # the end of the assistant turn
                ids.append(int(tokenizer.eos_token_id))
        else:
            ids = _ids(tokenizer(_ANSWER_TEMPLATE.format(candidate=cand), add_special_tokens=False))
        if not ids:
            raise DataError(f"Example {example.id!r}: candidate {k} tokenizes to no tokens.")
        answers.append(tuple(ids))
    return Encoded(tuple(prompt), tuple(answers))


class _Decoder:
    """The parts of a Llama-style causal LM (bare or wrapped by PEFT), driven layer by layer (adapt's ``Decoder``)."""

    def __init__(self, model: Any) -> None:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        core = getattr(base, "model", None)
        names = ("embed_tokens", "layers", "norm", "rotary_emb")
        if core is None or not all(hasattr(core, n) for n in names) or not hasattr(base, "lm_head"):
            kind = getattr(getattr(base, "config", None), "model_type", type(base).__name__)
            raise ConfigError(
                f"The grad featuriser drives a Llama-style decoder (model.embed_tokens, layers, norm, rotary_emb "
                f"and lm_head: Llama, SmolLM, Mistral, Qwen2), as adapt does; the model {kind!r} does not have "
                "that layout."
            )
        self.embed = core.embed_tokens
        self.layers = core.layers
        self.norm = core.norm
        self.rotary = core.rotary_emb
        self.head = base.lm_head
        self.n_layers = len(core.layers)
        self.eager = getattr(base.config, "_attn_implementation", "sdpa") == "eager"

    @property
    def device(self) -> Any:
        return self.embed.weight.device

    def run(self, hidden: Any, position_ids: Any, mask: Any, start: int, stop: int) -> Any:
        """Hidden states after decoder layers ``[start, stop)``; ``mask`` None is causal attention."""
        import torch

        if start >= stop:
            return hidden
        position_embeddings = self.rotary(hidden, position_ids=position_ids)
        attn = mask
        if self.eager:  # eager attention takes an additive mask, the causal one spelt out
            if mask is None:
                t = hidden.shape[1]
                mask = torch.ones(t, t, dtype=torch.bool, device=hidden.device).tril()[None, None]
                mask = mask.expand(hidden.shape[0], 1, t, t)
            attn = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device).masked_fill(
                ~mask, torch.finfo(torch.float32).min)
        for layer in self.layers[start:stop]:
            out = layer(hidden, attention_mask=attn, position_ids=position_ids,
                        position_embeddings=position_embeddings)
            hidden = out[0] if isinstance(out, tuple) else out
        return hidden

    def logprobs(self, hidden: Any, rows: Any, predictors: Any, targets: Any) -> Any:
        """log p(target | prefix) of each answer token: float32 tensor of shape (N,)."""
        import torch

        logits = self.head(self.norm(hidden[rows, predictors])).float()
        return torch.log_softmax(logits, dim=-1).gather(-1, targets[:, None]).squeeze(-1)


def _packed(items: Sequence[Encoded], pad: int, device: Any) -> tuple[Any, Any, Any, list[list[int]]]:
    """Each item as one sequence, prompt + every answer; answer k attends to the prompt and to itself only.

    Returns input_ids and position_ids (B, T), the boolean attention mask (B, 1, T, T) and the start of
    each answer in its sequence. Answer k takes positions P .. P + n_k - 1, as if it were alone after the
    prompt (adapt's ``packed_batch``).
    """
    import torch

    width = max(len(e.prompt) + sum(len(a) for a in e.answers) for e in items)
    ids = torch.full((len(items), width), int(pad), dtype=torch.long)
    pos = torch.zeros((len(items), width), dtype=torch.long)
    seg = torch.full((len(items), width), -1, dtype=torch.long)
    starts = []
    for b, e in enumerate(items):
        p = len(e.prompt)
        ids[b, :p] = torch.tensor(e.prompt)
        pos[b, :p] = torch.arange(p)
        seg[b, :p] = 0
        at, mine = p, []
        for k, ans in enumerate(e.answers):
            ids[b, at : at + len(ans)] = torch.tensor(ans)
            pos[b, at : at + len(ans)] = torch.arange(p, p + len(ans))
            seg[b, at : at + len(ans)] = k + 1
            mine.append(at)
            at += len(ans)
        starts.append(mine)
    key = seg[:, None, :]
    mask = torch.ones(width, width, dtype=torch.bool).tril() & ((seg[:, :, None] == key) | (key == 0)) & (key >= 0)
    mask |= torch.eye(width, dtype=torch.bool)  # padding rows attend to themselves (no all-masked row)
    return ids.to(device), pos.to(device), mask[:, None].to(device), starts


def _backward_attention(device: Any) -> contextlib.AbstractContextManager:
    """On a CPU the math attention kernel (its backward is the faster one on short sequences there, as adapt found)."""
    if device.type != "cpu":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.MATH)


def _autocast(device: Any, dtype: str) -> contextlib.AbstractContextManager:
    from budgetsft.features.models import autocast

    return autocast(str(device), dtype)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No loading bars, info logs or deprecation noise from transformers / peft while the adapters are built."""
    import warnings

    from budgetsft.features.models import quiet_loading

    with quiet_loading(), warnings.catch_warnings():
        for category in (FutureWarning, DeprecationWarning):
            for module in ("transformers", "peft", "accelerate"):
                warnings.filterwarnings("ignore", category=category, module=rf"{module}(\.|$)")
        yield


class GradFeaturizer:
    """Random projection of ∇_B of a candidate's mean log-likelihood, LoRA at its initialisation.

    Parameters
    ----------
    model_name : str or path-like, default="smollm2-135m-instruct"
        A packaged causal LM (short name), a local model directory or a
        Hugging Face model id (:func:`budgetsft.features.models.resolve_model`),
        loaded lazily. Its identity in :meth:`settings` is the short name, the
        hub commit or a hash of the directory's files.
    model, tokenizer : optional
        An already-loaded Llama-style causal LM and its tokenizer (both or
        none). The featuriser attaches its adapters to a deep copy, so the
        model passed is left as it is; its identity in :meth:`settings` is a
        hash of its weights.
    device : {"auto", "cpu", "cuda"}, default="auto"
    dtype : {"bf16", "fp32", "auto"}, default="bf16"
        bf16 autocast where supported (falls back to fp32), as adapt computes;
        gradients are accumulated and projected in float32, returned in float64.
    dim : int, default=512
        Columns of the projection (see the module notes).
    seed : int, default=0
        Seeds the adapters' A (as adapt's ``train_lora`` with this seed) and the projection.
    lora_layers : int, default=4
        Adapters in the top ``lora_layers`` decoder layers (all of them when
        the model has fewer); adapt's recipe.
    lora_r : int, default=16
    lora_alpha : float, default=16
    labels : sequence of str, optional
        The fixed label set of the data: adapt's instruction ("Classify the
        text. Answer with one of: ...") and a text cut from its end. None for
        per-item candidates (the text is cut from its start).
    max_prompt_tokens : int, default=64
        The example's text is cut to this many tokens (adapt's recipe).
    warmup : int, default=0
        Must be 0: the gradient at the LoRA initialisation (see the module notes).
    batch_size : int, default=16
        Candidate rows per top-layer forward/backward.
    progress : bool, default=True
        tqdm bar (stderr) over examples, with ETA; off a terminal, a plain line every ~10 s.
    cache_dir : path-like, optional
        Root of the budgetsft cache for the converted packaged model.

    Attributes
    ----------
    name : str
        ``"grad"``.
    dim : int
        The projection's dimension.
    n_params_ : int
        P, the number of LoRA B entries (after the model is loaded).

    Examples
    --------
    >>> GradFeaturizer(dim=0)
    Traceback (most recent call last):
    ...
    budgetsft.exceptions.ConfigError: The 'dim' parameter of GradFeaturizer must be an int >= 1. Got 0.
    """

    name = "grad"

    def __init__(
        self,
        model_name: str = "smollm2-135m-instruct",
        *,
        model: Any = None,
        tokenizer: Any = None,
        device: str = "auto",
        dtype: str = "bf16",
        dim: int = 512,
        seed: int = 0,
        lora_layers: int = 4,
        lora_r: int = 16,
        lora_alpha: float = 16,
        labels: Sequence[str] | None = None,
        max_prompt_tokens: int = 64,
        warmup: int = 0,
        batch_size: int = 16,
        progress: bool = True,
        cache_dir: Any = None,
    ) -> None:
        owner = type(self).__name__
        check_model_args(owner, model, tokenizer)
        if not isinstance(model_name, str | os.PathLike):
            raise ConfigError(f"The 'model_name' parameter of {owner} must be a model name, directory or hub id. "
                              f"Got {model_name!r}.")
        self.model_name = model_name
        self.model = model
        self.tokenizer = tokenizer
        if not isinstance(device, str):
            raise ConfigError(f"The 'device' parameter of {owner} must be one of 'auto', 'cpu', 'cuda'. "
                              f"Got {device!r}.")
        self.device = device
        self.dtype = check_choice(owner, "dtype", dtype, ("bf16", "fp32", "auto"))
        self.dim = check_int(owner, "dim", dim, low=1)
        self.seed = check_int(owner, "seed", seed, low=0)
        if self.seed >= 2**32:
            raise ConfigError(f"The 'seed' parameter of {owner} must be an int in [0, 2**32). Got {seed!r}.")
        self.lora_layers = check_int(owner, "lora_layers", lora_layers, low=1)
        self.lora_r = check_int(owner, "lora_r", lora_r, low=1)
        self.lora_alpha = check_float(owner, "lora_alpha", lora_alpha, low=0, low_open=True)
        if labels is not None:
            if isinstance(labels, str) or not all(isinstance(x, str) for x in labels) or len(labels) < 2:
                raise ConfigError(f"The 'labels' parameter of {owner} must be a list of at least two label "
                                  f"names, or None. Got {labels!r}.")
            labels = tuple(labels)
        self.labels = labels
        self.max_prompt_tokens = check_int(owner, "max_prompt_tokens", max_prompt_tokens, low=1)
        warmup = check_int(owner, "warmup", warmup, low=0)
        if warmup != 0:
            raise ConfigError(
                f"The 'warmup' parameter of {owner} must be 0 (the gradient at the LoRA initialisation): a "
                f"warm-up on the first labels would use labels the gate has not bought. Got {warmup!r}."
            )
        self.warmup = warmup
        self.batch_size = check_int(owner, "batch_size", batch_size, low=1)
        if not isinstance(progress, bool):
            raise ConfigError(f"The 'progress' parameter of {owner} must be a bool. Got {progress!r}.")
        self.progress = progress
        self.cache_dir = cache_dir
        self._injected = model is not None
        self._setup = False
        self._loaded = False
        self._fingerprint: str | None = None
        self._weights_version: tuple = ()
        self._copied_version: tuple | None = None

    # ------------------------------------------------------------------ loading
    def _ensure_setup(self) -> None:
        """Device, dtype and tokenizer: everything but the weights."""
        if self._setup:
            return
        from budgetsft.features.models import load_causal_tokenizer, resolve_device, resolve_dtype

        self.device_ = resolve_device(self.device)
        self.dtype_ = resolve_dtype(type(self).__name__, self.dtype, self.device_)
        if self.tokenizer is None:
            self.tokenizer = load_causal_tokenizer(self.model_name, cache_dir=self.cache_dir)
        self._setup = True

    def _ensure_loaded(self) -> None:
        """The model with adapt's adapters attached (B = 0), hooks in place; rebuilt if an injected model changed."""
        if self._loaded and (not self._injected or self._copied_version == _version(self.model)):
            return
        import torch
        from peft import LoraConfig, get_peft_model

        from budgetsft.features.models import load_causal_lm

        self._ensure_setup()
        with _quiet():
            if self._injected:
                self._copied_version = _version(self.model)
                base = copy.deepcopy(self.model)
            else:
                base, _ = load_causal_lm(self.model_name, device=self.device_, cache_dir=self.cache_dir)
            base.to(self.device_)
            base.eval()
            base.requires_grad_(False)
            dec = _Decoder(base)  # a ConfigError for a model without the Llama layout adapt drives
            self.split_ = max(0, dec.n_layers - self.lora_layers)
            present = {name.rsplit(".", 1)[-1] for name, _ in dec.layers[self.split_ :].named_modules()}
            targets = [t for t in LORA_TARGETS if t in present]
            if not targets:
                raise ConfigError(f"{type(self).__name__}: the top {self.lora_layers} decoder layers have none of "
                                  f"{list(LORA_TARGETS)}; there is no LoRA to take the gradient of.")
            # Exactly as adapt's train_lora attaches its adapters: same seed, same A.
            device = torch.device(self.device_)
            fork = [device.index or 0] if device.type == "cuda" else []
            with torch.random.fork_rng(devices=fork):
                torch.manual_seed(self.seed)
                config = LoraConfig(
                    r=self.lora_r, lora_alpha=self.lora_alpha, lora_dropout=0.0, target_modules=targets,
                    layers_to_transform=list(range(self.split_, dec.n_layers)), layers_pattern="layers",
                    bias="none", task_type="CAUSAL_LM",
                )
                peft_model = get_peft_model(base, config)
        peft_model.eval()
        self.peft_model_ = peft_model
        self.decoder_ = _Decoder(peft_model)
        self._b_layers: list[tuple[str, Any, int, int]] = []  # (name, lora_B linear, offset, size)
        offset = 0
        for name, module in peft_model.named_modules():
            if isinstance(module, torch.nn.Linear) and ".lora_A." in f".{name}.":
                module.weight.requires_grad_(False)  # zero gradient at B = 0: not computed
            elif isinstance(module, torch.nn.Linear) and ".lora_B." in f".{name}.":
                module.weight.requires_grad_(True)
                size = module.weight.numel()
                self._b_layers.append((name, module, offset, size))
                module.register_forward_hook(self._hook(offset, size))
                offset += size
        self.n_params_ = offset
        self._rows: Any = None  # the (rows, P) buffer the hooks fill during a backward
        self._checked = False
        self._loaded = True

    def _hook(self, offset: int, size: int):
        """Forward hook of one lora_B layer: keep its input, write each row's gradient of its weight in the backward."""

        def forward_hook(module: Any, inputs: tuple, output: Any) -> None:
            if self._rows is None or not output.requires_grad:
                return
            x = inputs[0]

            def backward_hook(grad: Any) -> None:
                # row b: Σ_t grad[b, t] ⊗ x[b, t], shape (out, r): the gradient of row b's score wrt B
                per_row = _einsum_rows(grad, x)
                self._rows[:, offset : offset + size] = per_row.reshape(per_row.shape[0], size)

            output.register_hook(backward_hook)

        return forward_hook

    # ------------------------------------------------------------------ settings
    def settings(self) -> dict:
        """Model identity, text format, truncation, LoRA recipe, projection and seed.

        Loads the tokenizer but not the weights of a model given by name, so a
        fully cached :func:`~budgetsft.features.featurize` run never loads the LM.
        """
        import peft

        from budgetsft.features.models import model_fingerprint, model_identity, weights_version

        self._ensure_setup()
        if self._injected:
            # Re-hash only when the weights changed in place (e.g. fine-tuned since).
            version = weights_version(self.model)
            if self._fingerprint is None or version != self._weights_version:
                self._fingerprint = model_fingerprint(self.model)
                self._weights_version = version
            identity = self._fingerprint
        else:
            identity = model_identity(self.model_name, "causal", cache_dir=self.cache_dir)
        probe = encode_adapt(Example("probe", "x", ("a", "b")), self.tokenizer,
                             max_prompt_tokens=self.max_prompt_tokens, labels=self.labels)
        return {
            "model": identity,
            "format": [list(probe.prompt), [list(a) for a in probe.answers]],  # adapt's template, instruction, EOS
            "labels": list(self.labels) if self.labels is not None else None,
            "max_prompt_tokens": self.max_prompt_tokens,
            "truncation": "head" if self.labels is not None else "tail",
            "score": "mean log-likelihood of the answer tokens",
            "lora": {"layers": self.lora_layers, "r": self.lora_r, "alpha": self.lora_alpha, "dropout": 0.0,
                     "targets": "q,k,v,o,gate,up,down present", "init": "peft default, torch.manual_seed(seed)",
                     "peft": peft.__version__},
            "gradient": "lora_B",
            "warmup": self.warmup,
            "projection": "rademacher +-1/sqrt(dim), numpy default_rng([seed, chunk])",
            "chunk_entries": _CHUNK_ENTRIES,
            "seed": self.seed,
            "dtype": self.dtype_,
        }

    # ------------------------------------------------------------------ projection
    def _chunk_rows(self) -> int:
        return max(1, _CHUNK_ENTRIES // self.dim)

    def projection_chunk(self, j: int) -> np.ndarray:
        """Rows ``[j·c, (j+1)·c)`` of Rᵀ (c = max(1, 2²² // dim)), float32 of shape (≤ c, dim), entries ±1/√dim.

        Needs the model loaded (P is the model's). Chunk j depends on (seed, j, dim) only.
        """
        self._ensure_loaded()
        c = self._chunk_rows()
        start = j * c
        rows = min(c, self.n_params_ - start)
        if rows <= 0:
            raise IndexError(f"chunk {j} is past the {self.n_params_} parameters")
        n = c * self.dim  # every chunk draws the bytes of a full one, so chunk j never depends on P
        raw = np.random.default_rng([self.seed, j]).integers(0, 256, size=(n + 7) // 8, dtype=np.uint8)
        bits = np.unpackbits(raw, count=rows * self.dim)
        signs = bits.astype(np.float32)
        signs *= 2.0
        signs -= 1.0
        signs *= np.float32(1.0 / np.sqrt(self.dim))
        return signs.reshape(rows, self.dim)

    def project(self, grads: Any) -> np.ndarray:
        """R g of each row: ``grads`` of shape (N, P) (ndarray or tensor) -> ndarray (N, dim), float64.

        Accumulates chunk by chunk in float32, R generated on the fly (memory: one chunk).
        """
        import torch

        self._ensure_loaded()
        g = torch.as_tensor(grads, dtype=torch.float32)
        if g.ndim != 2 or g.shape[1] != self.n_params_:
            raise ValueError(f"project: grads must have shape (N, {self.n_params_}); got {tuple(g.shape)}")
        out = torch.zeros((g.shape[0], self.dim), dtype=torch.float32, device=g.device)
        c = self._chunk_rows()
        for j, start in enumerate(range(0, self.n_params_, c)):
            r = torch.from_numpy(self.projection_chunk(j)).to(g.device)
            out.addmm_(g[:, start : start + r.shape[0]], r)
        return out.cpu().numpy().astype(np.float64)

    # ------------------------------------------------------------------ gradients
    def _encode(self, examples: Sequence[Example]) -> list[Encoded]:
        return [encode_adapt(ex, self.tokenizer, max_prompt_tokens=self.max_prompt_tokens, labels=self.labels)
                for ex in examples]

    def _pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(pad if pad is not None else (self.tokenizer.eos_token_id or 0))

    def _check_path(self, item: Encoded, atol: float = 1e-3) -> float:
        """Largest gap between the layer-by-layer packed scores and the model's own forward, in fp32 (once per model).

        A decoder whose layers need more than this path passes them is refused, as adapt's ``check_decoder`` does.
        """
        import torch

        dec = self.decoder_
        with torch.inference_mode():
            ids, pos, mask, starts = _packed([item], self._pad_id(), dec.device)
            hidden = dec.run(dec.embed(ids), pos, mask, 0, dec.n_layers)
            gap = 0.0
            for ans, start in zip(item.answers, starts[0], strict=True):
                n, p = len(ans), len(item.prompt)
                preds = torch.tensor([p - 1, *range(start, start + n - 1)], device=dec.device)
                packed = dec.logprobs(hidden, torch.zeros_like(preds), preds, torch.tensor(ans, device=dec.device))
                full = torch.tensor([list(item.prompt) + list(ans)], device=dec.device)
                logits = self.peft_model_(input_ids=full).logits[0, p - 1 : -1].float()
                ref = torch.log_softmax(logits, dim=-1).gather(-1, torch.tensor(ans, device=dec.device)[:, None])
                gap = max(gap, float((packed - ref[:, 0]).abs().max()))
        if not math.isfinite(gap) or gap > atol:
            raise ConfigError(
                f"{type(self).__name__}: the layer-by-layer path disagrees with the model's own forward by "
                f"{gap:.3g}; this architecture is not supported (as by adapt)."
            )
        return gap

    def _groups(self, encoded: Sequence[Encoded]) -> Iterator[list[int]]:
        """Consecutive examples whose candidates fill about ``batch_size`` rows (at least one example each)."""
        group: list[int] = []
        rows = 0
        for i, e in enumerate(encoded):
            if group and rows + len(e.answers) > self.batch_size:
                yield group
                group, rows = [], 0
            group.append(i)
            rows += len(e.answers)
        if group:
            yield group

    def _top_rows(self, items: Sequence[Encoded], states: Sequence[Any], starts: Sequence[list[int]]
                  ) -> tuple[Any, Any, Any, Any, Any, Any]:
        """One row per candidate: the prompt's states, then that candidate's; right-padded, positions 0..P+n-1.

        Returns hidden (R, T, h) float32, position_ids (R, T), and for the N answer tokens their row,
        the position whose output predicts them, their id, and their row again as the owner (R rows).
        """
        import torch

        dev = self.decoder_.device
        parts, rows, preds, targets = [], [], [], []
        for e, h, mine in zip(items, states, starts, strict=True):
            p = len(e.prompt)
            for ans, start in zip(e.answers, mine, strict=True):
                r = len(parts)
                parts.append(torch.cat([h[:p], h[start : start + len(ans)]]))
                rows.extend([r] * len(ans))
                preds.extend(range(p - 1, p - 1 + len(ans)))  # answer token j is predicted at position p - 1 + j
                targets.extend(ans)
        width = max(len(x) for x in parts)
        hidden = torch.zeros((len(parts), width, parts[0].shape[-1]), dtype=torch.float32, device=dev)
        position_ids = torch.zeros((len(parts), width), dtype=torch.long, device=dev)
        for r, x in enumerate(parts):
            hidden[r, : len(x)] = x.float()
            position_ids[r, : len(x)] = torch.arange(len(x), device=dev)
        as_long = lambda x: torch.tensor(x, dtype=torch.long, device=dev)  # noqa: E731
        return hidden, position_ids, as_long(rows), as_long(preds), as_long(targets), len(parts)

    def _iter_gradients(self, examples: Sequence[Example], bar: Any = None) -> Iterator[Any]:
        """Per-candidate gradients, one float32 tensor of shape (K_i, P) per example, in order."""
        import torch

        self._ensure_loaded()
        encoded = self._encode(examples)
        if not self._checked:  # once: the layer-by-layer path must agree with the model's own forward
            self._check_path(encoded[0])
            self._checked = True
        dec = self.decoder_
        device = dec.device
        store = torch.bfloat16 if self.dtype_ == "bf16" else torch.float32  # the prefix states, as adapt keeps them
        params = [m.weight for _, m, _, _ in self._b_layers]
        for group in self._groups(encoded):
            items = [encoded[i] for i in group]
            # The frozen layers: no gradient, each prompt read once for all its candidates.
            ids, pos, mask, starts = _packed(items, self._pad_id(), device)
            with torch.no_grad(), _autocast(device, self.dtype_):
                hidden = dec.run(dec.embed(ids), pos, mask, 0, self.split_)
            states = [hidden[b, : len(e.prompt) + sum(len(a) for a in e.answers)].to(store)
                      for b, e in enumerate(items)]
            hidden, position_ids, rows, preds, targets, n_rows = self._top_rows(items, states, starts)
            self._rows = torch.zeros((n_rows, self.n_params_), dtype=torch.float32, device=device)
            try:
                with torch.enable_grad(), _autocast(device, self.dtype_), _backward_attention(device):
                    out = dec.run(hidden, position_ids, None, self.split_, dec.n_layers)
                    lp = dec.logprobs(out, rows, preds, targets)
                total = torch.zeros(n_rows, dtype=lp.dtype, device=device).index_add(0, rows, lp)
                count = torch.zeros(n_rows, dtype=lp.dtype, device=device).index_add(0, rows, torch.ones_like(lp))
                # rows do not interact: the gradient of the sum gives each row's own through the hooks
                torch.autograd.grad((total / count).sum(), params)
                grads = self._rows
            finally:
                self._rows = None
            at = 0
            for e in items:
                k = len(e.answers)
                yield grads[at : at + k]
                at += k
                if bar is not None:
                    bar.update(1)

    def gradients_many(self, examples: Sequence[Example]) -> list[np.ndarray]:
        """The unprojected gradients ∇_B s(x, a): one ndarray of shape (K_i, P), float64, per example.

        P·K numbers per example (332k per candidate for SmolLM2-135M): for tests and small models.
        """
        examples = check_examples(examples, type(self).__name__)
        return [g.cpu().numpy().astype(np.float64) for g in self._iter_gradients(examples)]

    def transform_many(self, examples: Sequence[Example], *, progress: bool | None = None) -> list[np.ndarray]:
        """Projected gradient features of every candidate of every example.

        Parameters
        ----------
        examples : sequence of Example
            K may vary between examples.
        progress : bool, optional
            Overrides the constructor's ``progress`` for this call.

        Returns
        -------
        list of ndarray of shape (K_i, dim), float64
        """
        examples = check_examples(examples, type(self).__name__)
        if not examples:
            return []
        self._ensure_loaded()
        show = self.progress if progress is None else progress
        from budgetsft.features.cache import progress_bar

        bar = progress_bar(len(examples), "grad", disable=not show, leave=False)
        limit = max(1, _BUFFER_BYTES // (4 * self.n_params_))  # candidate rows held before a projection
        out: list[np.ndarray] = []
        pending: list[Any] = []
        held = 0

        def flush() -> None:
            import torch

            nonlocal held
            if not pending:
                return
            feats = self.project(torch.cat(pending))
            pos = 0
            for g in pending:
                out.append(feats[pos : pos + len(g)].copy())
                pos += len(g)
            pending.clear()
            held = 0

        try:
            for g in self._iter_gradients(examples, bar):
                pending.append(g)
                held += len(g)
                if held >= limit:
                    flush()
            flush()
        finally:
            bar.close()
        return out


def _version(model: Any) -> tuple:
    from budgetsft.features.models import weights_version

    return weights_version(model)


def _einsum_rows(grad: Any, x: Any) -> Any:
    """Σ_t grad[b, t] ⊗ x[b, t] for each row b, in float32: (B, T, out), (B, T, r) -> (B, out, r)."""
    import torch

    return torch.einsum("bto,btr->bor", grad.float(), x.float())
