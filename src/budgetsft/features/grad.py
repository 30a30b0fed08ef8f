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
The text format, truncation, packing, layer-by-layer path and LoRA recipe are
adapt's own, from :mod:`budgetsft.features.decoder` (the label instruction when
``labels`` is given, the text cut to ``max_prompt_tokens`` tokens, the answer
followed by EOS). The path is checked once per model against the model's own
forward (:func:`~budgetsft.features.decoder.check_decoder`), as adapt checks
its own.

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

Warm-up
-------
By default the gradient is taken at the initialisation (B = 0). ``adapters``
takes it elsewhere: LoRA weights for the same adapters (same layers, rank, α),
as ``peft.get_peft_model_state_dict`` gives them, are loaded over the
initialisation before any gradient is taken. :func:`budgetsft.adapt.engine.warm_up`
makes them: adapt's own ``train_lora`` (same seed, so the same initial A) on a
few labelled examples, e.g. the first labels a stream bought. The features are
then ∇_B at the warmed adapters: the linearisation around a model that has
seen a little of the task. B ≠ 0 there, so ∇_A is no longer 0; the features
stay ∇_B (the same P coordinates, the same projection). The warm-up labels
are labels someone paid for: the caller counts them against the budget
(``benchmarks/grad_warmup.py`` buys them as the stream's first rounds).
Measured against the initialisation in benchmarks/RESULTS.md ("Gradient
features after a warm-up"): the warm features are worse, and the
initialisation stays the default of ``features: grad``.

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
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from budgetsft._validation import check_choice, check_float, check_int
from budgetsft.data.schema import Example
from budgetsft.exceptions import ConfigError
from budgetsft.features.base import check_examples, check_model_args
from budgetsft.features.decoder import (
    Decoder,
    Encoded,
    check_decoder,
    encode,
    lora_config,
    packed_batch,
    pad_id,
    train_attention,
)

__all__ = ["GradFeaturizer"]

#: Entries of one chunk of the projection (rows of P × dim), 16 MB in float32.
_CHUNK_ENTRIES = 1 << 22
#: Most bytes of per-candidate gradients held before they are projected (R is regenerated once per flush).
_BUFFER_BYTES = 256 << 20


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
    """Random projection of ∇_B of a candidate's mean log-likelihood, LoRA at its initialisation (or given weights).

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
        Must be 0 (the former spelling of "at the initialisation"); a warm-up is given as ``adapters``.
    adapters : mapping of str to tensor, optional
        LoRA weights to take the gradients at (the module's "Warm-up"), keyed as
        ``peft.get_peft_model_state_dict`` keys adapt's adapters (:func:`budgetsft.adapt.engine.warm_up`
        returns them); every LoRA weight of the featuriser's adapters must be given. None: the initialisation.
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
        adapters: Mapping[str, Any] | None = None,
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
                f"The 'warmup' parameter of {owner} must be 0: a warm-up is given as the 'adapters' it trained "
                f"(budgetsft.adapt.engine.warm_up on labels you bought). Got {warmup!r}."
            )
        self.warmup = warmup
        self.adapters = _check_adapters(owner, adapters)
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
        from peft import get_peft_model

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
            dec = Decoder(base)  # a ConfigError for a model without the Llama layout adapt drives
            self.split_ = max(0, dec.n_layers - self.lora_layers)
            config = lora_config(dec, self.split_, r=self.lora_r, alpha=self.lora_alpha, owner=type(self).__name__)
            # Exactly as adapt's train_lora attaches its adapters: same config, same seed, same A.
            device = torch.device(self.device_)
            fork = [device.index or 0] if device.type == "cuda" else []
            with torch.random.fork_rng(devices=fork):
                torch.manual_seed(self.seed)
                peft_model = get_peft_model(base, config)
            if self.adapters:
                self._load_adapters(peft_model)
        peft_model.eval()
        self.peft_model_ = peft_model
        self.decoder_ = Decoder(peft_model)
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

    def _load_adapters(self, peft_model: Any) -> None:
        """Load ``adapters`` over the initialisation (peft's own state-dict keys); every LoRA weight given, each
        of its shape."""
        import torch
        from peft import get_peft_model_state_dict, set_peft_model_state_dict

        mine = get_peft_model_state_dict(peft_model)
        owner = type(self).__name__
        missing = sorted(set(mine) - set(self.adapters))
        extra = sorted(set(self.adapters) - set(mine))
        if missing or extra:
            raise ConfigError(f"The 'adapters' parameter of {owner} does not match the featuriser's adapters "
                              f"(lora_layers={self.lora_layers}, r={self.lora_r}): missing {missing[:3]}, "
                              f"unexpected {extra[:3]}.")
        given = {name: torch.as_tensor(w) for name, w in self.adapters.items()}
        for name, w in given.items():
            if tuple(w.shape) != tuple(mine[name].shape):
                raise ConfigError(f"The 'adapters' parameter of {owner}: {name} has shape {tuple(w.shape)}, "
                                  f"the adapter's is {tuple(mine[name].shape)}.")
        set_peft_model_state_dict(peft_model, {name: w.to(mine[name].dtype) for name, w in given.items()})

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
        probe = encode(Example("probe", "x", ("a", "b")), self.tokenizer,
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
            **({"adapters": self._adapters_identity()} if self.adapters else {}),
            "projection": "rademacher +-1/sqrt(dim), numpy default_rng([seed, chunk])",
            "chunk_entries": _CHUNK_ENTRIES,
            "seed": self.seed,
            "dtype": self.dtype_,
        }

    def _adapters_identity(self) -> str:
        """A hash of the given adapter weights (names, shapes, float32 bytes)."""
        import hashlib

        import torch

        h = hashlib.sha256()
        for name in sorted(self.adapters):
            w = torch.as_tensor(self.adapters[name]).detach().to("cpu", torch.float32).contiguous()
            h.update(f"{name}:{tuple(w.shape)};".encode())
            h.update(w.numpy().tobytes())
        return h.hexdigest()

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
        return [encode(ex, self.tokenizer, max_prompt_tokens=self.max_prompt_tokens, labels=self.labels)
                for ex in examples]

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
            check_decoder(self.peft_model_, self.tokenizer, encoded[0])
            self._checked = True
        dec = self.decoder_
        device = dec.device
        store = torch.bfloat16 if self.dtype_ == "bf16" else torch.float32  # the prefix states, as adapt keeps them
        params = [m.weight for _, m, _, _ in self._b_layers]
        for group in self._groups(encoded):
            items = [encoded[i] for i in group]
            # The frozen layers: no gradient, each prompt read once for all its candidates.
            batch = packed_batch(items, pad_token_id=pad_id(self.tokenizer), device=device)
            starts = batch.starts
            with torch.no_grad(), _autocast(device, self.dtype_):
                hidden = dec.run(dec.embed(batch.input_ids), batch.position_ids, batch.mask, 0, self.split_)
            states = [hidden[b, : len(e.prompt) + sum(len(a) for a in e.answers)].to(store)
                      for b, e in enumerate(items)]
            hidden, position_ids, rows, preds, targets, n_rows = self._top_rows(items, states, starts)
            self._rows = torch.zeros((n_rows, self.n_params_), dtype=torch.float32, device=device)
            try:
                with torch.enable_grad(), _autocast(device, self.dtype_), train_attention(device):
                    out = dec.run(hidden, position_ids, None, self.split_, dec.n_layers)
                    lp = dec.token_logprobs(out, rows, preds, targets)
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


def _check_adapters(owner: str, adapters: Any) -> dict[str, Any] | None:
    """LoRA weights by name (a mapping of str to tensor or array), or None."""
    if adapters is None:
        return None
    if not isinstance(adapters, Mapping) or not adapters or not all(isinstance(k, str) for k in adapters):
        raise ConfigError(f"The 'adapters' parameter of {owner} must map LoRA weight names to tensors (as "
                          f"budgetsft.adapt.engine.warm_up returns them), or be None. Got {type(adapters).__name__}.")
    return dict(adapters)


def _version(model: Any) -> tuple:
    from budgetsft.features.models import weights_version

    return weights_version(model)


def _einsum_rows(grad: Any, x: Any) -> Any:
    """Σ_t grad[b, t] ⊗ x[b, t] for each row b, in float32: (B, T, out), (B, T, r) -> (B, out, r)."""
    import torch

    return torch.einsum("bto,btr->bor", grad.float(), x.float())
