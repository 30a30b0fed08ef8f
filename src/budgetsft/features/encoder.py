"""Sentence-encoder features (SPEC §6, "encoder").

φ(x, a) = concat(√h · e(x) ⊙ e(a), e(a), [1]) where e(·) is the L2-normalised,
mean-pooled sentence embedding of all-MiniLM-L6-v2 (h = 384), so d = 2·384 + 1 = 769.
Any other model named by ``model_name`` (a local directory or a Hugging Face
id, loaded with ``AutoModel``) gives d = 2h + 1 with its own hidden size h:
BERT-like encoders, or a decoder-only model read the same way (mean over
its last hidden states).
The Hadamard block lets a linear head score prompt/candidate agreement
feature by feature (its sum is √h times the cosine similarity), e(a) a
per-candidate prior, and the last column a bias.

Why √h: with unit-norm embeddings, ||e(x) ⊙ e(a)|| is about 1/√h, twenty
times smaller than ||e(a)|| = 1. Unscaled, the widths ||z||_P of the
confidence gates would be dominated by the few e(a) directions that every
label explores, and a gate would turn confident after a couple of labels
while the prompt-dependent block is still unknown. Scaling gives both blocks
unit norm, so one ridge λ and one radius ρ fit both (measured on bbc-news in
``benchmarks/label_efficiency.py``).

Embeddings are computed once per unique text: topic names and MCQ letters
repeat across thousands of examples, so the encoder sees each string once
(and an in-memory memo keeps them across calls).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from budgetsft._validation import check_int
from budgetsft.data.schema import Example
from budgetsft.features.base import check_examples, check_model_args

__all__ = ["SentenceEncoder", "EncoderFeaturizer"]


class SentenceEncoder:
    """Mean-pooled, L2-normalised sentence embeddings with a per-text memo.

    Parameters
    ----------
    model_name : str or path-like, default="all-minilm-l6-v2"
        A packaged encoder (short name), a local model directory or a Hugging
        Face model id (see :func:`budgetsft.features.models.resolve_model`).
        Ignored for loading when ``model`` is given, but kept as a label.
    model, tokenizer : optional
        An already-loaded transformers encoder and its tokenizer (both or none).
    device : {"auto", "cpu", "cuda"}, default="cpu"
    dtype : {"fp32", "bf16", "auto"}, default="fp32"
        Compute dtype (autocast); embeddings are returned in float64 either way.
    max_length : int, default=256
        Longer texts are truncated (all-MiniLM-L6-v2 was trained with 256).
    batch_size : int, default=64
    memo_size : int, default=200_000
        Most texts kept in the in-memory memo (0 disables it).

    Examples
    --------
    >>> enc = SentenceEncoder()                      # doctest: +SKIP
    >>> enc.embed_many(["a cat", "a dog"]).shape     # doctest: +SKIP
    (2, 384)
    """

    def __init__(
        self,
        model_name: str = "all-minilm-l6-v2",
        *,
        model: Any = None,
        tokenizer: Any = None,
        device: str = "cpu",
        dtype: str = "fp32",
        max_length: int = 256,
        batch_size: int = 64,
        memo_size: int = 200_000,
    ) -> None:
        owner = type(self).__name__
        check_model_args(owner, model, tokenizer)
        self.model_name = model_name
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.dtype = dtype
        self.max_length = check_int(owner, "max_length", max_length, low=2)
        self.batch_size = check_int(owner, "batch_size", batch_size, low=1)
        self.memo_size = check_int(owner, "memo_size", memo_size, low=0)
        self._injected = model is not None
        self._setup = False
        self._loaded = False
        self._memo: dict[str, np.ndarray] = {}
        self._fingerprint: str | None = None
        self._weights_version: tuple = ()
        self._memo_version: tuple = ()

    # ------------------------------------------------------------------ loading
    def _ensure_setup(self) -> None:
        if self._setup:
            return
        from budgetsft.features.models import resolve_device, resolve_dtype

        self.device_ = resolve_device(self.device)
        self.dtype_ = resolve_dtype(type(self).__name__, self.dtype, self.device_)
        self._setup = True

    def _ensure_loaded(self) -> None:
        if self._loaded:
            return
        from budgetsft.features.models import load_encoder

        self._ensure_setup()
        if self.model is None:
            self.model, self.tokenizer = load_encoder(self.model_name, device=self.device_)
        else:
            self.model.to(self.device_)
            self.model.eval()
        self._loaded = True

    @property
    def dim(self) -> int:
        """Embedding size h (384 for all-MiniLM-L6-v2), read without loading weights."""
        if self.model is not None:
            return int(self.model.config.hidden_size)
        from budgetsft.features.models import model_hidden_size

        return model_hidden_size(self.model_name, "encoder")

    def settings(self) -> dict:
        """Everything that changes the embeddings (no weights are loaded for a model given by name)."""
        from budgetsft.features.models import model_identity

        self._ensure_setup()
        identity = None if self._injected else model_identity(self.model_name, "encoder")
        if self._injected:
            from budgetsft.features.models import model_fingerprint, weights_version

            # Re-hash only when the weights changed in place (e.g. fine-tuned since).
            version = weights_version(self.model)
            if self._fingerprint is None or version != self._weights_version:
                self._fingerprint = model_fingerprint(self.model)
                self._weights_version = version
        return {
            "model": self._fingerprint if self._injected else identity,
            "pooling": "mean",
            "normalize": "l2",
            "max_length": self.max_length,
            "dtype": self.dtype_,
        }

    # ------------------------------------------------------------------ compute
    def batches(self, texts: Sequence[str]) -> list[tuple[np.ndarray, dict]]:
        """Tokenise ``texts`` into length-sorted, padded batches.

        Returns
        -------
        list of (indices, inputs)
            ``indices``: ndarray of shape (B,), positions in ``texts``;
            ``inputs``: dict of int64 tensors of shape (B, T) on the device.
        """
        import torch

        self._ensure_loaded()
        enc = self.tokenizer(
            list(texts), add_special_tokens=True, truncation=True, max_length=self.max_length
        )
        ids = enc["input_ids"]
        order = np.argsort([-len(x) for x in ids], kind="stable")
        pad = self.tokenizer.pad_token_id or 0
        out = []
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            width = max(len(ids[i]) for i in idx)
            input_ids = torch.full((len(idx), width), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for r, i in enumerate(idx):
                input_ids[r, : len(ids[i])] = torch.tensor(ids[i])
                mask[r, : len(ids[i])] = 1
            inputs = {
                "input_ids": input_ids.to(self.device_),
                "attention_mask": mask.to(self.device_),
            }
            if "token_type_ids" in enc:
                inputs["token_type_ids"] = torch.zeros_like(inputs["input_ids"])
            out.append((idx, inputs))
        return out

    def forward(self, inputs: dict) -> Any:
        """Pooled, normalised embeddings of one batch: float32 tensor of shape (B, h)."""
        import torch

        from budgetsft.features.models import autocast

        with torch.inference_mode(), autocast(self.device_, self.dtype_):
            hidden = self.model(**inputs).last_hidden_state
        hidden = hidden.float()
        mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        return torch.nn.functional.normalize(pooled, p=2.0, dim=1)

    def embed_many(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        """Embeddings e(t) of every text, each unique text computed once.

        Parameters
        ----------
        texts : sequence of str, length n
        progress : bool, default=False
            Show a tqdm bar (stderr) over the unique texts computed.

        Returns
        -------
        ndarray of shape (n, h), float64, rows of unit L2 norm
        """
        self._ensure_loaded()
        if self._injected:
            from budgetsft.features.models import weights_version

            version = weights_version(self.model)
            if version != self._memo_version:  # weights changed in place: memo is stale
                self._memo.clear()
                self._memo_version = version
        texts = list(texts)
        todo = list(dict.fromkeys(t for t in texts if t not in self._memo))
        fresh: dict[str, np.ndarray] = {}
        if todo:
            from tqdm.auto import tqdm

            bar = tqdm(
                total=len(todo), desc="encoder", unit="text", file=sys.stderr,
                disable=not progress, leave=False,
            )
            for idx, inputs in self.batches(todo):
                emb = self.forward(inputs).cpu().numpy()
                for r, i in enumerate(idx):
                    fresh[todo[i]] = emb[r]
                bar.update(len(idx))
            bar.close()
        h = self.dim
        out = np.empty((len(texts), h), dtype=np.float64)
        for j, t in enumerate(texts):
            out[j] = fresh[t] if t in fresh else self._memo[t]
        if self.memo_size:
            if len(self._memo) + len(fresh) > self.memo_size:
                self._memo.clear()
            self._memo.update(fresh)
        return out

    def clear_memo(self) -> None:
        """Forget every memoised embedding."""
        self._memo.clear()


class EncoderFeaturizer:
    """φ(x, a) = concat(√h · e(x) ⊙ e(a), e(a), [1.0]) from a sentence encoder (SPEC §6).

    Parameters
    ----------
    model_name : str or path-like, default="all-minilm-l6-v2"
        A packaged encoder, a local model directory or a Hugging Face model id.
    model, tokenizer : optional
        An already-loaded transformers encoder and tokenizer (both or none).
    device : {"auto", "cpu", "cuda"}, default="cpu"
    dtype : {"fp32", "bf16", "auto"}, default="fp32"
    max_length : int, default=256
    batch_size : int, default=64
    progress : bool, default=True
        tqdm bar on stderr while embedding.

    Attributes
    ----------
    name : str
        ``"encoder"``.
    dim : int
        2h + 1 (769 for all-MiniLM-L6-v2), h the encoder's hidden size.

    Examples
    --------
    >>> from budgetsft.data.schema import Example
    >>> f = EncoderFeaturizer(progress=False)                          # doctest: +SKIP
    >>> ex = Example("q1", "Stocks fell sharply.", ("business", "sports"))
    >>> f.transform_many([ex])[0].shape                                 # doctest: +SKIP
    (2, 769)
    """

    name = "encoder"

    def __init__(
        self,
        model_name: str = "all-minilm-l6-v2",
        *,
        model: Any = None,
        tokenizer: Any = None,
        device: str = "cpu",
        dtype: str = "fp32",
        max_length: int = 256,
        batch_size: int = 64,
        progress: bool = True,
    ) -> None:
        self.model_name = model_name
        self.device = device
        self.dtype = dtype
        self.max_length = max_length
        self.batch_size = batch_size
        self.progress = progress
        self.encoder = SentenceEncoder(
            model_name, model=model, tokenizer=tokenizer, device=device, dtype=dtype,
            max_length=max_length, batch_size=batch_size,
        )

    @property
    def dim(self) -> int:
        return 2 * self.encoder.dim + 1

    def settings(self) -> dict:
        """Encoder settings plus the combination rule."""
        return {**self.encoder.settings(), "combine": "sqrt(h)*prod|cand|bias"}

    def transform_many(
        self, examples: Sequence[Example], *, progress: bool | None = None
    ) -> list[np.ndarray]:
        """Features of every candidate of every example.

        Parameters
        ----------
        examples : sequence of Example
            K may vary between examples.
        progress : bool, optional
            Overrides the constructor's ``progress`` for this call.

        Returns
        -------
        list of ndarray of shape (K_i, 2h + 1), float64
        """
        examples = check_examples(examples, type(self).__name__)
        if not examples:
            return []
        show = self.progress if progress is None else progress
        texts = [ex.prompt for ex in examples]
        for ex in examples:
            texts.extend(ex.candidates)
        emb = self.encoder.embed_many(texts, progress=show)
        h = self.encoder.dim
        out = []
        pos = len(examples)
        for i, ex in enumerate(examples):
            k = len(ex.candidates)
            e_x = emb[i]
            e_a = emb[pos : pos + k]
            pos += k
            phi = np.empty((k, 2 * h + 1), dtype=np.float64)
            phi[:, :h] = np.sqrt(h) * (e_a * e_x)
            phi[:, h : 2 * h] = e_a
            phi[:, 2 * h] = 1.0
            out.append(phi)
        return out
