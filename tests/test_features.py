"""Featurisers and the feature cache (SPEC §6).

Fast tests use a tiny random-weight Llama (hidden size 32) with the real
SmolLM2 tokenizer, and the real all-MiniLM-L6-v2 encoder (small, packaged).
The integration test loads the real SmolLM2-135M-Instruct through
``load_causal_lm`` (the first run converts the packaged GGUF once).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from budgetsft.data.schema import Example  # noqa: E402
from budgetsft.exceptions import ConfigError, DataError  # noqa: E402
from budgetsft.features import (  # noqa: E402
    FEATURIZERS,
    BlockFeaturizer,
    CausalFeaturizer,
    EncoderFeaturizer,
    Featurizer,
    featurize,
    featurizer_key,
    make_featurizer,
)
from budgetsft.features.cache import FeatureCache  # noqa: E402
from budgetsft.features.models import load_causal_tokenizer, resolve_device  # noqa: E402

LABELS = ("business", "sports", "world", "sci/tech")

EXAMPLES = [
    Example("n1", "Stocks fell sharply after the central bank raised rates.", LABELS, 0),
    Example("n2", "The striker scored twice in the cup final.", ("sports", "world"), 0),
    Example(
        "n3",
        "A new telescope finds water on a distant planet.",
        ("world", "sci/tech", "business"),
        1,
    ),
    Example("n4", "Leaders meet to discuss the ceasefire.", ("world", "sports"), 0),
    Example(
        "n5", "Chip maker beats earnings estimates.", ("sci/tech", "business", "sports", "world"), 1
    ),
]

MCQ = [
    Example("q1", "What is the capital of France?", ("Paris", "Rome", "Oslo", "Madrid"), 0),
    Example("q2", "Which gas do plants absorb from the air?", ("Carbon dioxide", "Helium"), 0),
    Example("q3", "2 + 2 = ?", ("4", "5", "22"), 0),
    Example("q4", "Pick the mammal.", ("Whale", "Shark", "Trout", "Eel", ""), 0),
]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def smol_tokenizer():
    return load_causal_tokenizer()


@pytest.fixture(scope="module")
def tiny_llama(smol_tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        vocab_size=len(smol_tokenizer),
        max_position_embeddings=1024,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def causal(tiny_llama, smol_tokenizer):
    return CausalFeaturizer(
        model=tiny_llama, tokenizer=smol_tokenizer, device="cpu", dtype="fp32", progress=False
    )


@pytest.fixture(scope="module")
def encoder():
    return EncoderFeaturizer(device="cpu", progress=False)


@pytest.fixture(scope="module")
def block(encoder):
    # Share the loaded MiniLM with the encoder featuriser.
    return BlockFeaturizer(
        labels=LABELS,
        model=encoder.encoder.model,
        tokenizer=encoder.encoder.tokenizer,
        device="cpu",
        progress=False,
    )


@pytest.fixture(scope="module")
def grad(tiny_llama, smol_tokenizer):
    from budgetsft.features.grad import GradFeaturizer

    return GradFeaturizer(
        model=tiny_llama, tokenizer=smol_tokenizer, device="cpu", dtype="fp32", dim=48, lora_layers=1,
        progress=False,
    )


@pytest.fixture(params=["encoder", "causal", "block", "grad"])
def any_featurizer(request):
    return request.getfixturevalue(request.param)


# --------------------------------------------------------------------------- shared contract


def test_contract_finite_arrays_of_declared_shape(any_featurizer):
    f = any_featurizer
    assert isinstance(f, Featurizer)
    assert f.name in FEATURIZERS
    settings = f.settings()
    assert isinstance(settings, dict) and settings
    out = f.transform_many(EXAMPLES)  # K varies: 4, 2, 3, 2, 4
    assert len(out) == len(EXAMPLES)
    for ex, arr in zip(EXAMPLES, out, strict=True):
        assert isinstance(arr, np.ndarray) and arr.dtype == np.float64
        assert arr.shape == (len(ex.candidates), f.dim)
        assert np.all(np.isfinite(arr))
    assert f.transform_many([]) == []


def test_contract_deterministic_and_input_untouched(any_featurizer):
    before = list(EXAMPLES)
    a = any_featurizer.transform_many(EXAMPLES)
    b = any_featurizer.transform_many(EXAMPLES[::-1])[::-1]
    assert EXAMPLES == before
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-5)


def test_contract_rejects_non_examples(any_featurizer):
    with pytest.raises(DataError, match="Example"):
        any_featurizer.transform_many([{"prompt": "x", "candidates": ["a", "b"]}])


# --------------------------------------------------------------------------- encoder


def test_encoder_layout(encoder):
    assert encoder.dim == 769
    (phi,) = encoder.transform_many([EXAMPLES[0]])
    h = 384
    e_a = phi[:, h : 2 * h]
    np.testing.assert_allclose(np.linalg.norm(e_a, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(phi[:, -1], 1.0)
    # the Hadamard block sums to √h times the cosine similarity of prompt and candidate
    e_x = encoder.encoder.embed_many([EXAMPLES[0].prompt])[0]
    np.testing.assert_allclose(phi[:, :h].sum(1), np.sqrt(h) * (e_a @ e_x), atol=1e-9)
    # the business headline is closer to "business" than to "sports"
    assert phi[0, :h].sum() > phi[1, :h].sum()


def test_encoder_embeds_each_unique_text_once(encoder, monkeypatch):
    enc = encoder.encoder
    enc.clear_memo()
    seen = []
    real_forward = enc.forward

    def counting_forward(inputs):
        seen.append(int(inputs["input_ids"].shape[0]))
        return real_forward(inputs)

    monkeypatch.setattr(enc, "forward", counting_forward)
    encoder.transform_many(EXAMPLES)
    texts = [ex.prompt for ex in EXAMPLES] + [c for ex in EXAMPLES for c in ex.candidates]
    n_unique = len(set(texts))
    assert sum(seen) == n_unique  # 5 prompts + 4 labels, not 5 + 15
    seen.clear()
    encoder.transform_many(EXAMPLES)
    assert sum(seen) == 0  # memoised across calls


# --------------------------------------------------------------------------- block


def test_block_layout(block):
    assert block.dim == len(LABELS) * 385
    ex = EXAMPLES[2]  # ("world", "sci/tech", "business")
    (phi,) = block.transform_many([ex])
    e_x = block.encoder.embed_many([ex.prompt])[0]
    for row, label in zip(phi, ex.candidates, strict=True):
        b = LABELS.index(label)
        blocks = row.reshape(len(LABELS), 385)
        np.testing.assert_allclose(blocks[b, :384], e_x, atol=1e-6)
        assert blocks[b, 384] == 1.0
        others = np.delete(blocks, b, axis=0)
        assert not others.any()


def test_block_unknown_label_names_the_example(block):
    bad = Example("bad-7", "Some text", ("business", "cooking"))
    with pytest.raises(DataError, match=r"bad-7.*cooking"):
        block.transform_many([EXAMPLES[0], bad])


@pytest.mark.parametrize("labels", [None, "business", ("only",), ("a", "a"), ("a", 3)])
def test_block_bad_label_set(labels):
    with pytest.raises(ConfigError, match="labels"):
        BlockFeaturizer(labels=labels)


# --------------------------------------------------------------------------- causal


def test_causal_columns(causal):
    out = causal.transform_many(MCQ)
    assert causal.dim == 32 + 2
    for arr in out:
        assert np.all(arr[:, -2] < 0)  # mean log-prob
        np.testing.assert_array_equal(arr[:, -1], 1.0)
    # the empty candidate (q4) is scored on its end-of-turn token
    assert np.all(np.isfinite(out[3][-1]))


def test_causal_logprob_matches_full_forward(causal, tiny_llama):
    encoded = causal.encode_many(MCQ[:1])
    feats = causal.transform_many(MCQ[:1])[0]
    for r, (ids, start, end) in enumerate(encoded):
        with torch.no_grad():
            out = tiny_llama(torch.tensor([ids]), output_hidden_states=True)
        logp = out.logits[0].log_softmax(-1)
        want = logp[torch.arange(start - 1, end - 1), torch.tensor(ids[start:end])].mean()
        np.testing.assert_allclose(feats[r, -2], want.item(), rtol=1e-5, atol=1e-5)
        pooled = out.hidden_states[-1][0, start:end].mean(0).numpy()
        np.testing.assert_allclose(feats[r, :32], pooled, rtol=1e-4, atol=1e-5)


def test_causal_batching_does_not_change_features(tiny_llama, smol_tokenizer, causal):
    one = CausalFeaturizer(
        model=tiny_llama, tokenizer=smol_tokenizer, device="cpu", dtype="fp32",
        batch_size=1, progress=False,
    )
    for x, y in zip(one.transform_many(MCQ), causal.transform_many(MCQ), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)


def test_causal_truncates_prompt_from_the_left(tiny_llama, smol_tokenizer):
    f = CausalFeaturizer(
        model=tiny_llama, tokenizer=smol_tokenizer, device="cpu", dtype="fp32",
        max_length=48, progress=False,
    )
    long = Example("long", "blah " * 300 + "What is the capital of France?", ("Paris", "Rome"))
    encoded = f.encode_many([long])
    for (ids, start, end), cand in zip(encoded, long.candidates, strict=True):
        assert len(ids) <= 48
        want = smol_tokenizer(cand, add_special_tokens=False)["input_ids"] + list(
            f.format_.terminator
        )
        assert ids[start:end] == want  # candidate kept whole
        assert end == len(ids)
        assert ids[: len(f.format_.prefix)] == list(f.format_.prefix)  # template header kept
        text = smol_tokenizer.decode(ids)
        assert "capital of France?" in text  # the end of the prompt survives
    arr = f.transform_many([long])[0]
    assert arr.shape == (2, f.dim) and np.all(np.isfinite(arr))


def test_causal_plain_format_and_last_pooling(tiny_llama, smol_tokenizer):
    f = CausalFeaturizer(
        model=tiny_llama, tokenizer=smol_tokenizer, device="cpu", dtype="bf16",
        prompt_format="plain", pooling="last", progress=False,
    )
    assert f.settings()["prompt_format"] == "plain"
    ids, start, _ = f.encode_many(MCQ[:1])[0]
    prompt_text = smol_tokenizer.decode(ids[:start])
    assert prompt_text.endswith("Question: What is the capital of France?\nAnswer:")
    for arr, ex in zip(f.transform_many(MCQ), MCQ, strict=True):
        assert arr.shape == (len(ex.candidates), 34) and np.all(np.isfinite(arr))


def _full_forward_features(model, ids, start, end, pooling):
    """Reference features of one sequence: the whole LM on prompt + candidate."""
    with torch.no_grad():
        out = model(torch.tensor([ids]), output_hidden_states=True)
    logp = out.logits[0].log_softmax(-1)
    mean_logp = logp[torch.arange(start - 1, end - 1), torch.tensor(ids[start:end])].mean().item()
    hidden = out.hidden_states[-1][0]
    pooled = hidden[start:end].mean(0) if pooling == "mean" else hidden[end - 1]
    return np.concatenate([pooled.numpy(), [mean_logp, 1.0]])


@pytest.mark.parametrize("pooling", ["mean", "last"])
@pytest.mark.parametrize("prompt_format", ["chat", "plain"])
def test_causal_prefix_cache_matches_per_sequence_path(tiny_llama, smol_tokenizer, pooling, prompt_format):
    options = dict(model=tiny_llama, tokenizer=smol_tokenizer, device="cpu", dtype="fp32",
                   max_length=40, pooling=pooling, prompt_format=prompt_format, progress=False)
    new = CausalFeaturizer(**options)
    old = CausalFeaturizer(**options, prefix_cache=False, batch_size=3)
    long = Example("long", "blah " * 60 + "Which city?", ("Paris", "Rome is the answer here", ""))
    examples = [*MCQ, long]  # K = 4, 2, 3, 5 (one empty candidate), 3
    got = new.transform_many(examples)
    want = old.transform_many(examples)
    encoded = new.encode_prefix_many(examples)
    for arr, ex, w, (prompt, cands) in zip(got, examples, want, encoded, strict=True):
        assert arr.shape == (len(ex.candidates), 34)
        if ex is long:
            # One truncation shared by all candidates: the longest one just fits.
            assert len(prompt) + max(len(c) for c in cands) == 40
            assert prompt[: len(new.format_.prefix)] == list(new.format_.prefix)
            ref = np.stack([
                _full_forward_features(tiny_llama, prompt + c, len(prompt), len(prompt) + len(c), pooling)
                for c in cands
            ])
            np.testing.assert_allclose(arr, ref, rtol=1e-4, atol=1e-4)
            # the per-sequence path keeps more prompt for the shorter candidates
            assert not np.allclose(arr, w, atol=1e-4)
        else:
            np.testing.assert_allclose(arr, w, rtol=1e-4, atol=1e-4)


def test_causal_prefix_cache_is_in_the_settings(tiny_llama, smol_tokenizer):
    options = dict(model=tiny_llama, tokenizer=smol_tokenizer, dtype="fp32")
    new = CausalFeaturizer(**options)
    old = CausalFeaturizer(**options, prefix_cache=False)
    assert new.settings()["prefix_cache"] is True and "prefix_cache" not in old.settings()
    assert featurizer_key(new) != featurizer_key(old)


def test_causal_prefix_cache_cuts_a_too_long_candidate(tiny_llama, smol_tokenizer):
    f = CausalFeaturizer(model=tiny_llama, tokenizer=smol_tokenizer, device="cpu", dtype="bf16",
                         max_length=16, progress=False)
    ex = Example("e", "A question?", ("word " * 40, "short"))
    with pytest.warns(UserWarning, match="cut on the right"):
        arr = f.transform_many([ex])[0]
    assert arr.shape == (2, 34) and np.all(np.isfinite(arr))
    (prompt, cands), = f.encode_prefix_many([ex])
    assert len(prompt) == 1 and len(cands[0]) == 15


@pytest.mark.parametrize(
    "options, match",
    [
        ({"dtype": "fp16"}, "dtype"),
        ({"pooling": "max"}, "pooling"),
        ({"max_length": 1}, "max_length"),
        ({"batch_size": 0}, "batch_size"),
        ({"prompt_format": "xml"}, "prompt_format"),
        ({"prefix_cache": "yes"}, "prefix_cache"),
    ],
)
def test_causal_bad_options(options, match):
    with pytest.raises(ConfigError, match=match):
        CausalFeaturizer(**options)


def test_settings_follow_in_place_weight_changes(smol_tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
        intermediate_size=32, vocab_size=len(smol_tokenizer),
    )
    model = LlamaForCausalLM(config).eval()
    f = CausalFeaturizer(model=model, tokenizer=smol_tokenizer, dtype="fp32")
    before = featurizer_key(f)
    assert featurizer_key(f) == before
    with torch.no_grad():
        model.model.norm.weight.add_(0.5)  # e.g. a fine-tuning step
    assert featurizer_key(f) != before


def test_model_without_tokenizer_is_refused(tiny_llama):
    with pytest.raises(ConfigError, match="together"):
        CausalFeaturizer(model=tiny_llama)


# --------------------------------------------------------------------------- registry, devices


def test_make_featurizer_unknown_kind_lists_valid_ones():
    with pytest.raises(ConfigError, match=r"'encoder', 'causal', 'block'.*'ngram'"):
        make_featurizer("ngram")


def test_make_featurizer_builds_lazily():
    f = make_featurizer("block", labels=LABELS, progress=False)
    assert isinstance(f, BlockFeaturizer) and f.encoder.model is None  # nothing loaded yet
    assert isinstance(make_featurizer("causal", dtype="fp32"), CausalFeaturizer)
    assert isinstance(make_featurizer("encoder"), EncoderFeaturizer)


def test_resolve_device():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="device"):
        resolve_device("tpu")


def test_unknown_packaged_model_names():
    from budgetsft.features.models import causal_lm_path, encoder_path

    with pytest.raises(ConfigError, match="smollm2-135m-instruct"):
        causal_lm_path("gpt-5")
    with pytest.raises(ConfigError, match="all-minilm-l6-v2"):
        encoder_path("bert-huge")


def test_import_features_without_torch():
    code = (
        "import sys, budgetsft.features, budgetsft.features.cache;"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------- disk cache


class NumpyFeaturizer:
    """A torch-free featuriser (hash of the texts) that counts its calls."""

    name = "numpy-test"
    dim = 6

    def __init__(self, nan_for: str | None = None) -> None:
        self.calls = 0
        self.seen = 0
        self.nan_for = nan_for

    def settings(self) -> dict:
        return {"version": 1}

    def transform_many(self, examples):
        self.calls += 1
        self.seen += len(examples)
        out = []
        for ex in examples:
            rows = []
            for c in ex.candidates:
                seed = abs(hash((ex.prompt, c))) % 2**32
                rows.append(np.random.default_rng(seed).normal(size=self.dim))
            arr = np.array(rows)
            if ex.id == self.nan_for:
                arr[0, 0] = np.nan
            out.append(arr)
        return out


def test_cache_hit_is_bit_identical(encoder, tmp_path, caplog):
    first = featurize(EXAMPLES, encoder, cache_dir=tmp_path, progress=False)
    assert (first.n_cached, first.n_computed) == (0, len(EXAMPLES))
    assert first.path is not None and (first.path / "settings.json").is_file()
    with caplog.at_level(logging.INFO, logger="budgetsft.features"):
        second = featurize(EXAMPLES, encoder, cache_dir=tmp_path, progress=False)
    assert (second.n_cached, second.n_computed, second.n_repaired) == (len(EXAMPLES), 0, 0)
    assert f"features: {len(EXAMPLES)} cached, 0 computed" in caplog.text
    for a, b in zip(first.features, second.features, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert a.tobytes() == b.tobytes()
    # a fresh featuriser over cached data never loads the encoder weights
    fresh = EncoderFeaturizer(device="cpu", progress=False)
    third = featurize(EXAMPLES, fresh, cache_dir=tmp_path, progress=False)
    assert third.n_computed == 0 and fresh.encoder.model is None


def test_cache_only_computes_missing_and_duplicates_once(tmp_path):
    f = NumpyFeaturizer()
    featurize(EXAMPLES[:3], f, cache_dir=tmp_path, progress=False)
    assert f.seen == 3
    dup = Example("n1-copy", EXAMPLES[0].prompt, EXAMPLES[0].candidates)
    res = featurize(EXAMPLES + [dup, EXAMPLES[4]], f, cache_dir=tmp_path, progress=False)
    assert f.seen == 3 + 2  # n4 and n5 only; n5's duplicate is computed once
    assert (res.n_cached, res.n_computed) == (4, 3)
    np.testing.assert_array_equal(res[0], res[5])
    assert res[4] is not res[6]


def test_cache_key_follows_settings(tmp_path, tiny_llama, smol_tokenizer):
    a = CausalFeaturizer(model=tiny_llama, tokenizer=smol_tokenizer, dtype="fp32", max_length=64)
    b = CausalFeaturizer(model=tiny_llama, tokenizer=smol_tokenizer, dtype="fp32", max_length=128)
    c = CausalFeaturizer(model=tiny_llama, tokenizer=smol_tokenizer, dtype="fp32", max_length=64)
    assert featurizer_key(a) != featurizer_key(b)
    assert featurizer_key(a) == featurizer_key(c)
    res = featurize(MCQ, a, cache_dir=tmp_path, progress=False)
    assert res.n_computed == len(MCQ)
    assert featurize(MCQ, c, cache_dir=tmp_path, progress=False).n_cached == len(MCQ)
    assert featurize(MCQ, b, cache_dir=tmp_path, progress=False).n_computed == len(MCQ)


def test_corrupted_entries_are_recomputed(tmp_path):
    f = NumpyFeaturizer()
    good = featurize(EXAMPLES, f, cache_dir=tmp_path, progress=False)
    cache = FeatureCache(good.path, f.dim)
    from budgetsft.features import example_key

    paths = [cache.path(example_key(ex)) for ex in EXAMPLES]
    # 1: truncated file
    paths[0].write_bytes(paths[0].read_bytes()[:50])
    # 2: one flipped byte in the payload (checksum mismatch)
    blob = bytearray(paths[1].read_bytes())
    blob[-3] ^= 0xFF
    paths[1].write_bytes(bytes(blob))
    # 3: a valid file holding NaN
    cache.write(example_key(EXAMPLES[2]), np.full((len(EXAMPLES[2].candidates), f.dim), np.nan))
    # 4: a valid file of the wrong shape
    cache.write(example_key(EXAMPLES[3]), np.zeros((7, f.dim)))
    # 5: not a feature file at all
    paths[4].write_bytes(b"hello")
    with pytest.warns(RuntimeWarning, match="bad cache entry"):
        res = featurize(EXAMPLES, f, cache_dir=tmp_path, progress=False)
    assert (res.n_cached, res.n_computed, res.n_repaired) == (0, 5, 5)
    for a, b in zip(good.features, res.features, strict=True):
        np.testing.assert_array_equal(a, b)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = featurize(EXAMPLES, f, cache_dir=tmp_path, progress=False)
    assert (again.n_cached, again.n_computed) == (5, 0)


def test_bad_featurizer_output_is_an_error_and_not_cached(tmp_path):
    f = NumpyFeaturizer(nan_for="n2")
    with pytest.raises(DataError, match="n2"):
        featurize(EXAMPLES, f, cache_dir=tmp_path, progress=False)
    f.nan_for = None
    res = featurize(EXAMPLES, f, cache_dir=tmp_path, progress=False)
    assert res.n_cached == 1  # only n1, written before n2 failed; no NaN ever cached


def test_cache_off_writes_nothing(tmp_path):
    res = featurize(
        EXAMPLES, NumpyFeaturizer(), cache_dir=tmp_path, use_cache=False, progress=False
    )
    assert res.n_computed == len(EXAMPLES) and res.path is None
    assert not any(tmp_path.iterdir())


def test_no_temp_files_left(tmp_path):
    res = featurize(EXAMPLES, NumpyFeaturizer(), cache_dir=tmp_path, progress=False)
    leftovers = [p for p in res.path.rglob("*") if p.name.startswith(".tmp-")]
    assert leftovers == []


# --------------------------------------------------------------------------- integration


@pytest.mark.integration
def test_real_smollm2_scores_mcq(tmp_path):
    from budgetsft.features.models import causal_lm_path, load_causal_lm

    model, tokenizer = load_causal_lm(device="cpu")
    assert (causal_lm_path() / "model.safetensors").is_file()
    assert not model.training
    f = CausalFeaturizer(progress=False, device="cpu")  # loads by name, bf16 where supported
    res = featurize(MCQ, f, cache_dir=tmp_path, progress=False)
    for ex, arr in zip(MCQ, res.features, strict=True):
        assert arr.shape == (len(ex.candidates), 578)
        assert np.all(np.isfinite(arr))
        assert np.all(arr[:, 576] < 0)
        assert np.ptp(arr[:, 576]) > 1e-3  # candidates get different log-probs
    # the converted copy equals the one load_causal_lm returns
    g = CausalFeaturizer(
        model=model, tokenizer=tokenizer, progress=False, device="cpu", dtype=f.dtype
    )
    # the same batch as featurize's (in bf16 the batch's padding changes the last bits)
    for got, want in zip(g.transform_many(MCQ), res.features, strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
    fresh = CausalFeaturizer(progress=False, device="cpu")
    again = featurize(MCQ, fresh, cache_dir=tmp_path, progress=False)
    assert again.n_computed == 0 and fresh.model is None  # cached: the LM is never loaded
    assert os.path.isdir(res.path)
