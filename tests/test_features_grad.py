"""Gradient features of the adapted model, ``features: grad`` (issue 20, item 1).

A tiny random-weight Llama (hidden size 32, three layers) with the packaged
SmolLM2 tokenizer, saved to a temporary directory. The reference gradient is
computed naively: the model's own full forward on prompt + candidate, with
autograd through every layer, differentiated with respect to the LoRA B
matrices, then projected with a Rademacher matrix rebuilt here from the
documented stream.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from _tiny_llama import tiny_llama  # noqa: E402
from _torch_threads import one_thread  # noqa: E402,F401  (autouse: torch on one thread)

from budgetsft.config import DEFAULT_CONFIG, merge, validate_config  # noqa: E402
from budgetsft.data import Example, write_jsonl  # noqa: E402
from budgetsft.exceptions import ConfigError  # noqa: E402
from budgetsft.features import FEATURIZERS, featurize, featurizer_key, make_featurizer  # noqa: E402
from budgetsft.features.grad import GradFeaturizer  # noqa: E402
from budgetsft.features.models import directory_fingerprint, load_causal_tokenizer  # noqa: E402

LABELS = ("business", "sports", "science")
EXAMPLES = [
    Example("n1", "Shares of the bank rose after the rate cut.", LABELS, 0),
    Example("n2", "The striker scored twice in the final.", ("sports", "business"), 0),
    Example("n3", "A telescope found water on a distant planet.", ("science", "sports", "business", "art"), 0),
    Example("q1", "What is the capital of France?", ("Paris", "Rome", "Oslo", "Madrid", ""), 0),
    Example("q2", "2 + 2 = ?", ("4", "5"), 0),
]


@pytest.fixture(scope="module")
def tok():
    return load_causal_tokenizer()


@pytest.fixture(scope="module")
def llama(tok, tmp_path_factory):
    """(directory, in-memory model): three layers, so the top-layer adapters sit over a frozen prefix."""
    model = tiny_llama(len(tok))
    path = tmp_path_factory.mktemp("models") / "tiny-llama"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path, model


def _grad(llama, tok, **kw) -> GradFeaturizer:
    opts = {"device": "cpu", "dtype": "fp32", "dim": 64, "lora_layers": 2, "progress": False, **kw}
    return GradFeaturizer(model=llama[1], tokenizer=tok, **opts)


@pytest.fixture(scope="module")
def grad(llama, tok):
    return _grad(llama, tok)


def _rademacher(seed: int, dim: int, n_params: int) -> np.ndarray:
    """R^T of shape (P, dim) from the documented stream: chunk j of 2**22 // dim rows from default_rng([seed, j])."""
    c = max(1, (1 << 22) // dim)
    parts = []
    for j, start in enumerate(range(0, n_params, c)):
        rows = min(c, n_params - start)
        raw = np.random.default_rng([seed, j]).integers(0, 256, size=(c * dim + 7) // 8, dtype=np.uint8)
        bits = np.unpackbits(raw, count=rows * dim).astype(np.float64)
        parts.append(((2 * bits - 1) / np.sqrt(dim)).reshape(rows, dim))
    return np.concatenate(parts)


def _naive_gradients(fz: GradFeaturizer, tok, example: Example) -> np.ndarray:
    """(K, P): the model's own forward on prompt + candidate, autograd through every layer, d mean log p / d B."""
    from budgetsft.adapt.engine import encode

    model = fz.peft_model_
    b_weights = [m.weight for _, m, _, _ in fz._b_layers]
    enc = encode(example, tok, max_prompt_tokens=fz.max_prompt_tokens, labels=fz.labels)
    rows = []
    for answer in enc.answers:
        ids = torch.tensor([list(enc.prompt) + list(answer)])
        with torch.enable_grad():
            logits = model(input_ids=ids).logits[0].float()
            logp = torch.log_softmax(logits[len(enc.prompt) - 1 : -1], dim=-1)
            score = logp.gather(-1, torch.tensor(answer)[:, None]).mean()
            grads = torch.autograd.grad(score, b_weights)
        rows.append(torch.cat([g.reshape(-1) for g in grads]).double().numpy())
    return np.stack(rows)


# --------------------------------------------------------------------------- shape, determinism


def test_registered_and_built_by_name():
    assert FEATURIZERS["grad"] == "budgetsft.features.grad:GradFeaturizer"
    f = make_featurizer("grad", dim=128, seed=3, progress=False)
    assert isinstance(f, GradFeaturizer) and f.dim == 128 and f.model is None  # nothing loaded yet


def test_shape_k_by_dim_finite_float64(grad):
    out = grad.transform_many(EXAMPLES)
    assert len(out) == len(EXAMPLES)
    for ex, arr in zip(EXAMPLES, out, strict=True):
        assert arr.dtype == np.float64 and arr.shape == (len(ex.candidates), 64)
        assert np.all(np.isfinite(arr)) and np.abs(arr).max() > 0
    assert grad.transform_many([]) == []
    # P: B of q,k,v,o,gate,up,down in 2 layers, rank 16: (32 + 16 + 16 + 32 + 64 + 64 + 32) * 16 per layer
    assert grad.n_params_ == 2 * 256 * 16 and grad.split_ == 1


def test_same_seed_same_bits_other_seed_other_features(llama, tok, grad):
    a = grad.transform_many(EXAMPLES)
    b = _grad(llama, tok).transform_many(EXAMPLES)  # a fresh featuriser, same seed
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    c = _grad(llama, tok, seed=1).transform_many(EXAMPLES)
    assert all(not np.allclose(x, z, atol=1e-3) for x, z in zip(a, c, strict=True))


def test_the_model_passed_in_is_left_as_it_was(llama, tok, grad):
    model = llama[1]
    grad.transform_many(EXAMPLES[:1])
    assert not any("lora" in name for name, _ in model.named_modules())
    assert all(p.requires_grad for p in model.parameters())


# --------------------------------------------------------------------------- the gradient itself


@pytest.mark.parametrize("lora_layers", [1, 3])  # a frozen prefix of two layers; none (split 0)
def test_features_are_the_projected_gradient_of_a_naive_full_forward(llama, tok, lora_layers):
    fz = _grad(llama, tok, lora_layers=lora_layers, dim=2048)  # 2048: several projection chunks (2048 rows each)
    feats = fz.transform_many(EXAMPLES[:3])
    grads = fz.gradients_many(EXAMPLES[:3])
    assert fz.split_ == 3 - lora_layers and fz.n_params_ == lora_layers * 256 * 16
    r = _rademacher(fz.seed, fz.dim, fz.n_params_)
    for ex, phi, g in zip(EXAMPLES[:3], feats, grads, strict=True):
        naive = _naive_gradients(fz, tok, ex)
        scale = np.abs(naive).max()
        assert scale > 1e-3  # a real gradient, not zeros on both sides
        np.testing.assert_allclose(g, naive, rtol=0, atol=1e-5 * scale)  # prefix/no-grad path == full autograd
        np.testing.assert_allclose(phi, naive @ r, rtol=0, atol=1e-4 * np.abs(naive @ r).max())


@pytest.mark.parametrize("labels", [None, LABELS])
def test_the_text_format_is_adapts(llama, tok, labels):
    """The features read adapt's format: the format recorded in the cache key is adapt's encode of a probe."""
    from budgetsft.adapt.engine import encode

    fz = _grad(llama, tok, labels=labels, max_prompt_tokens=8)
    probe = encode(Example("probe", "x", ("a", "b")), tok, max_prompt_tokens=8, labels=labels)
    assert fz.settings()["format"] == [list(probe.prompt), [list(a) for a in probe.answers]]
    assert fz._encode([EXAMPLES[0]]) == [encode(EXAMPLES[0], tok, max_prompt_tokens=8, labels=labels)]


def test_gradient_wrt_a_is_zero_at_the_lora_init(grad, tok):
    """Why only B: at B = 0 the whole gradient is w.r.t. B."""
    model = grad.peft_model_
    a_weights = [p for name, p in model.named_parameters() if "lora_A" in name]
    for p in a_weights:
        p.requires_grad_(True)
    try:
        from budgetsft.adapt.engine import encode

        enc = encode(EXAMPLES[0], tok, max_prompt_tokens=64)
        ids = torch.tensor([list(enc.prompt) + list(enc.answers[0])])
        with torch.enable_grad():
            logits = model(input_ids=ids).logits[0].float()
            score = torch.log_softmax(logits[len(enc.prompt) - 1 : -1], -1).gather(
                -1, torch.tensor(enc.answers[0])[:, None]).mean()
            grads = torch.autograd.grad(score, a_weights)
        assert all(float(g.abs().max()) == 0.0 for g in grads)
    finally:
        for p in a_weights:
            p.requires_grad_(False)


def test_adapters_start_where_adapt_train_lora_starts(llama, tok, grad):
    """Same seed, same A: the features linearise the very adapter adapt trains."""
    from budgetsft.adapt.engine import PrefixCache, encode, train_lora

    base = copy.deepcopy(llama[1]).requires_grad_(False)
    enc = [encode(ex, tok, max_prompt_tokens=64) for ex in EXAMPLES[:2]]
    cache = PrefixCache(base, 1, dtype="fp32")
    cache.add_many(["a", "b"], enc)
    trained, _ = train_lora(base, cache, ["a", "b"], [0, 0], epochs=0.5, lr=1e-12, dtype="fp32", seed=0,
                            batch_size=2, progress=False)
    ours = {n: p for n, p in grad.peft_model_.named_parameters() if "lora_A" in n}
    theirs = {n: p for n, p in trained.named_parameters() if "lora_A" in n}
    assert ours.keys() == theirs.keys() and len(ours) == 2 * 7
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], rtol=0, atol=1e-9)


def test_projection_is_the_documented_rademacher_stream(grad):
    r = _rademacher(grad.seed, grad.dim, grad.n_params_)
    np.testing.assert_array_equal(grad.projection_chunk(0), r.astype(np.float32))
    assert set(np.unique(r)) == {-1 / np.sqrt(64), 1 / np.sqrt(64)}
    g = np.random.default_rng(0).normal(size=(3, grad.n_params_))
    np.testing.assert_allclose(grad.project(g), g @ r, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- warm-up


@pytest.fixture(scope="module")
def warm_state(llama, tok):
    from budgetsft.adapt.engine import warm_up

    return warm_up(llama[1], tok, EXAMPLES[:3], lora_layers=2, lr=3e-2, dtype="fp32")


@pytest.fixture(scope="module")
def warm(llama, tok, warm_state):
    return _grad(llama, tok, adapters=warm_state[0])


def test_warm_up_is_adapt_train_lora_on_the_examples_and_the_featuriser_loads_it(llama, tok, warm, warm_state):
    """The warm-up is adapt's own training (same config, seed, recipe) on the examples, nothing else; the
    featuriser takes the gradient at exactly those weights."""
    from budgetsft.adapt.engine import PrefixCache, encode, train_lora
    from budgetsft.features.decoder import pad_id

    before = [p.detach().clone() for p in llama[1].parameters()]
    base = copy.deepcopy(llama[1]).requires_grad_(False)
    enc = [encode(ex, tok, max_prompt_tokens=64) for ex in EXAMPLES[:3]]
    cache = PrefixCache(base, 1, dtype="fp32", pad_token_id=pad_id(tok))
    cache.add_many(["a", "b", "c"], enc)
    trained, losses = train_lora(base, cache, ["a", "b", "c"], [0, 0, 0], epochs=3, lr=3e-2, dtype="fp32", seed=0,
                                 batch_size=8, progress=False)
    adapters, warm_losses = warm_state
    theirs = {n.replace(".default.", "."): p for n, p in trained.named_parameters() if "lora_" in n}
    warm._ensure_loaded()
    ours = {n.replace(".default.", "."): p for n, p in warm.peft_model_.named_parameters() if "lora_" in n}
    assert adapters.keys() == theirs.keys() == ours.keys() and len(ours) == 2 * 2 * 7
    for name in ours:
        # the module fixture may train on more torch threads than this test: float rounding of the sums only
        scale = float(theirs[name].detach().abs().max())
        torch.testing.assert_close(adapters[name], theirs[name], rtol=0, atol=1e-4 * scale)
        torch.testing.assert_close(ours[name], adapters[name], rtol=0, atol=0)  # loaded exactly
    assert warm_losses == pytest.approx(losses, rel=1e-5)
    assert sum(float(p.abs().sum()) for n, p in adapters.items() if "lora_B" in n) > 1e-3  # away from B = 0
    for p, q in zip(before, llama[1].parameters(), strict=True):  # the model passed in is left as it was
        assert torch.equal(p, q)


def test_warm_features_are_the_projected_gradient_at_the_warm_adapters(tok, warm, grad):
    """B != 0 after the warm-up: the per-row hook gradient still equals full autograd at the warmed model."""
    feats = warm.transform_many(EXAMPLES[3:])
    grads = warm.gradients_many(EXAMPLES[3:])
    r = _rademacher(warm.seed, warm.dim, warm.n_params_)
    for ex, phi, g in zip(EXAMPLES[3:], feats, grads, strict=True):
        naive = _naive_gradients(warm, tok, ex)
        scale = np.abs(naive).max()
        np.testing.assert_allclose(g, naive, rtol=0, atol=1e-5 * scale)
        np.testing.assert_allclose(phi, naive @ r, rtol=0, atol=1e-4 * np.abs(naive @ r).max())
    cold = grad.transform_many(EXAMPLES[3:])
    assert all(np.abs(a - b).max() > 1e-3 * np.abs(b).max() for a, b in zip(feats, cold, strict=True))


def test_adapters_are_in_the_cache_key_and_the_default_key_is_unchanged(llama, tok, grad, warm, warm_state):
    assert "adapters" not in grad.settings() and grad.settings()["warmup"] == 0  # keys of features cached before
    other = {k: v * 2 for k, v in warm_state[0].items()}
    keys = {featurizer_key(grad), featurizer_key(warm), featurizer_key(_grad(llama, tok, adapters=other))}
    assert len(keys) == 3
    assert featurizer_key(_grad(llama, tok, adapters=dict(warm_state[0]))) == featurizer_key(warm)


def test_adapters_that_do_not_fit_are_refused_naming_them(llama, tok, warm_state):
    fewer = dict(list(warm_state[0].items())[1:])
    with pytest.raises(ConfigError, match="'adapters' parameter of GradFeaturizer does not match.*missing"):
        _grad(llama, tok, adapters=fewer).transform_many(EXAMPLES[:1])
    with pytest.raises(ConfigError, match="'adapters' parameter of GradFeaturizer does not match"):
        _grad(llama, tok, adapters=warm_state[0], lora_layers=1).transform_many(EXAMPLES[:1])
    from budgetsft.adapt.engine import warm_up

    with pytest.raises(ConfigError, match="example 'u' \\(item 0\\) has no gold answer"):
        warm_up(llama[1], tok, [Example("u", "no label", ("a", "b"))])


# --------------------------------------------------------------------------- cache, model directory, config


def test_cache_hit_returns_identical_values(grad, tmp_path):
    first = featurize(EXAMPLES, grad, cache_dir=tmp_path, progress=False)
    second = featurize(EXAMPLES, grad, cache_dir=tmp_path, progress=False)
    assert (first.n_computed, second.n_cached, second.n_computed) == (len(EXAMPLES), len(EXAMPLES), 0)
    for a, b in zip(first.features, second.features, strict=True):
        np.testing.assert_array_equal(a, b)
    saved = json.loads((first.path / "settings.json").read_text())
    assert saved["dim"] == 64 and saved["settings"]["seed"] == 0 and saved["settings"]["lora"]["layers"] == 2


def test_cache_key_holds_every_setting(llama, tok, grad):
    base = featurizer_key(grad)
    for change in ({"dim": 32}, {"seed": 1}, {"lora_layers": 1}, {"lora_r": 8}, {"lora_alpha": 32},
                   {"max_prompt_tokens": 16}, {"labels": LABELS}, {"dtype": "bf16"}):
        assert featurizer_key(_grad(llama, tok, **change)) != base, change


def test_a_model_directory_gives_the_features_of_the_model_saved_there(llama, tok, grad):
    path, _ = llama
    by_dir = GradFeaturizer(model_name=path, device="cpu", dtype="fp32", dim=64, lora_layers=2, progress=False)
    assert by_dir.settings()["model"] == directory_fingerprint(path)
    for a, b in zip(by_dir.transform_many(EXAMPLES[:2]), grad.transform_many(EXAMPLES[:2]), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


@pytest.mark.parametrize("option, value, match", [
    ("dim", 0, "'dim' parameter of GradFeaturizer must be an int >= 1"),
    ("dim", "512", "'dim' parameter"),
    ("seed", -1, "'seed' parameter"),
    ("seed", 2**32, "'seed' parameter"),
    ("lora_layers", 0, "'lora_layers' parameter"),
    ("lora_r", 1.5, "'lora_r' parameter"),
    ("lora_alpha", 0, "'lora_alpha' parameter"),
    ("max_prompt_tokens", 0, "'max_prompt_tokens' parameter"),
    ("warmup", 10, "'warmup' parameter of GradFeaturizer must be 0: a warm-up is given as the 'adapters'"),
    ("adapters", [1, 2], "'adapters' parameter of GradFeaturizer must map LoRA weight names to tensors"),
    ("adapters", {}, "'adapters' parameter of GradFeaturizer must map"),
    ("dtype", "fp16", "'dtype' parameter"),
    ("labels", "business", "'labels' parameter"),
    ("batch_size", 0, "'batch_size' parameter"),
    ("dimm", 3, "'dimm' option of the 'grad' featuriser is not one of its parameters"),
])
def test_bad_parameters_are_config_errors_naming_them(option, value, match, data_file):
    with pytest.raises(ConfigError, match=match):
        make_featurizer("grad", **{option: value})
    # A config's `features: {name: grad, ...}` section: refused when the featuriser is built, before any model loads.
    from budgetsft.realdata import load_streams

    with pytest.raises(ConfigError, match=match):
        load_streams(str(data_file), "grad", feature_options={option: value}, progress=False)


def test_grad_is_a_features_name_of_a_config():
    cfg = merge(DEFAULT_CONFIG, {"data": {"name": "bbc-news"}, "features": {"name": "grad", "dim": 4096}})
    validate_config(cfg)
    with pytest.raises(ConfigError, match="unknown features 'gradient'.*grad"):
        validate_config(merge(DEFAULT_CONFIG, {"data": {"name": "bbc-news"}, "features": {"name": "gradient"}}))


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    items = [Example(f"e{i}", f"Item {i}: the {'bank' if i % 2 else 'match'} story.", ("business", "sports"),
                     0 if i % 2 else 1) for i in range(12)]
    return write_jsonl(items, tmp_path_factory.mktemp("data") / "d.jsonl")


def test_run_with_grad_features_of_a_model_directory(llama, data_file, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from budgetsft.cli import app

    monkeypatch.setenv("BUDGETSFT_CACHE", str(tmp_path / "cache"))
    config = tmp_path / "run.yaml"
    config.write_text(f"data: {{name: {data_file}}}\nfeatures: {{name: grad, model: {llama[0]}, dim: 48, "
                      "lora_layers: 1, device: cpu, dtype: fp32}\n")
    res = CliRunner().invoke(app, ["run", "--config", str(config), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["rounds"] == 10  # 12 examples, 2 held out
    (saved,) = [json.loads(p.read_text()) for p in (tmp_path / "cache" / "features").glob("grad-*/settings.json")]
    assert saved["dim"] == 48 and saved["settings"]["model"] == directory_fingerprint(llama[0])
