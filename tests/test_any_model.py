"""``--model``: any causal LM or encoder, by directory or hub id (issue 11, item 1).

Every model here is a tiny random-weight one written to a temporary directory
with ``save_pretrained``: Llamas (hidden size 32) with a copy of the packaged
SmolLM2 tokenizer, and a BERT (hidden size 32) with a copy of the packaged
all-MiniLM-L6-v2 tokenizer. Nothing reaches for a model hub: the one hub id
used is made up and looked up with ``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from budgetsft.adapt import finetune_lora, format_example, make_batch, save_adapters  # noqa: E402
from budgetsft.adapt.lora import load_adapted  # noqa: E402
from budgetsft.data import Example, write_jsonl  # noqa: E402
from budgetsft.exceptions import ConfigError  # noqa: E402
from budgetsft.features import featurize, featurizer_key  # noqa: E402
from budgetsft.features.causal import CausalFeaturizer  # noqa: E402
from budgetsft.features.encoder import EncoderFeaturizer, SentenceEncoder  # noqa: E402
from budgetsft.features.models import (  # noqa: E402
    directory_fingerprint,
    encoder_path,
    load_causal_lm,
    load_causal_tokenizer,
    load_encoder,
    model_identity,
    resolve_model,
)

LABELS = ("business", "sports", "science")
TOPICS = {
    "business": ["Shares of the bank rose", "The company posted a loss", "Markets fell on rate fears",
                 "The retailer cut jobs", "Oil prices climbed again", "The merger was approved",
                 "Profits beat forecasts", "The startup raised funds"],
    "sports": ["The striker scored twice", "The team won the final", "A new record in the sprint",
               "The coach was sacked", "The match ended in a draw", "She won the open title",
               "The club signed a keeper", "Rain stopped the game"],
    "science": ["A telescope found a planet", "The vaccine trial succeeded", "Cells were grown in a lab",
                "A new element was named", "The probe reached the moon", "Fossils of a bird were found",
                "The genome was sequenced", "A quantum chip was built"],
}
EXAMPLES = [
    Example(f"{label}-{i}", text + ".", LABELS, answer=LABELS.index(label))
    for i in range(8) for label, texts in TOPICS.items() for text in [texts[i]]
]


from _torch_threads import one_thread  # noqa: E402,F401  (autouse: torch on one thread)

# --------------------------------------------------------------------------- tiny models on disk


def _tiny_llama(vocab_size: int, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, vocab_size=vocab_size, max_position_embeddings=512,
        initializer_range=0.2,  # large enough that a few LoRA steps move the logits
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> dict:
    """name -> (directory, in-memory model, tokenizer) for two Llamas, a template-free Llama and a BERT."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    root = tmp_path_factory.mktemp("models")
    smol = load_causal_tokenizer()  # the packaged SmolLM2 tokenizer (has a chat template)
    out = {}
    for name, seed in (("llama-a", 0), ("llama-b", 1)):
        model = _tiny_llama(len(smol), seed)
        model.save_pretrained(root / name)
        smol.save_pretrained(root / name)
        out[name] = (root / name, model, smol)
    # Same weights as llama-a, a tokenizer without a chat template (a base model): plain format.
    plain = AutoTokenizer.from_pretrained(root / "llama-a")
    plain.chat_template = None
    out["llama-a"][1].save_pretrained(root / "llama-plain")
    plain.save_pretrained(root / "llama-plain")
    out["llama-plain"] = (root / "llama-plain", out["llama-a"][1], plain)

    minilm = AutoTokenizer.from_pretrained(encoder_path())
    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                        vocab_size=len(minilm), max_position_embeddings=512)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(2)
        bert = BertModel(config).eval()
    bert.save_pretrained(root / "bert")
    minilm.save_pretrained(root / "bert")
    out["bert"] = (root / "bert", bert, minilm)
    return out


@pytest.fixture(scope="session")
def jsonl(tmp_path_factory) -> Path:
    return write_jsonl(EXAMPLES, tmp_path_factory.mktemp("data") / "topics.jsonl")


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """A fresh feature cache for the test (the packaged models stay where they are)."""
    path = tmp_path / "cache"
    monkeypatch.setenv("BUDGETSFT_CACHE", str(path))
    return path


def _invoke(*args: str):
    from typer.testing import CliRunner

    from budgetsft.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def _settings(cache: Path, kind: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((cache / "features").glob(f"{kind}-*/settings.json"))]


# --------------------------------------------------------------------------- names that are refused


@pytest.mark.parametrize("role", ["causal", "encoder"])
def test_unknown_names_and_paths_are_refused_naming_the_value(role, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "weights.bin").write_bytes(b"x")
    cases = {
        "my-model": "none of these",
        str(tmp_path / "missing"): "not an existing directory",
        "./missing/dir": "not an existing directory",
        str(tmp_path / "empty"): "has no config.json",
        str(tmp_path / "weights.bin"): "a file, not a model directory",
    }
    for value, why in cases.items():
        with pytest.raises(ConfigError, match="--model") as info:
            resolve_model(value, role)
        assert repr(value) in str(info.value) and why in str(info.value)
    other = "all-minilm-l6-v2" if role == "causal" else "smollm2-135m-instruct"
    with pytest.raises(ConfigError, match="which is a packaged"):
        resolve_model(other, role)


def test_a_hub_id_not_in_the_local_cache_fails_fast_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    name = "nonexistent-org/nonexistent-model"
    for load in (lambda: load_causal_lm(name), lambda: load_encoder(name),
                 lambda: CausalFeaturizer(name, progress=False).dim):
        t0 = time.perf_counter()
        with pytest.raises(ConfigError, match="not available offline") as info:
            load()
        assert time.perf_counter() - t0 < 10.0
        assert repr(name) in str(info.value)
    res = _invoke("featurize", "--data", "bbc-news", "--max-examples", "20", "--features", "encoder",
                  "--model", name)
    assert isinstance(res.exception, ConfigError) and "not available offline" in str(res.exception)


def test_a_directory_without_a_tokenizer_is_a_clear_error(models, tmp_path):
    models["llama-a"][1].save_pretrained(tmp_path / "no-tokenizer")
    with pytest.raises(ConfigError, match="could not be loaded as a causal LM tokenizer"):
        load_causal_lm(tmp_path / "no-tokenizer")


def test_a_name_passed_as_the_loaded_model_is_refused():
    for cls in (CausalFeaturizer, SentenceEncoder):
        with pytest.raises(ConfigError, match="pass a model name, directory or hub id as 'model_name'"):
            cls(model="./my-llama")


# --------------------------------------------------------------------------- featurisers on a directory


def test_causal_features_of_a_directory_match_the_model_saved_there(models):
    path, model, tok = models["llama-a"]
    by_name = CausalFeaturizer(str(path), device="cpu", dtype="fp32", progress=False)
    assert by_name.dim == model.config.hidden_size + 2 == 34
    assert by_name.model is None  # the dimension is read from config.json, no weights loaded
    got = by_name.transform_many(EXAMPLES[:6])
    want = CausalFeaturizer(model=model, tokenizer=tok, device="cpu", dtype="fp32",
                            progress=False).transform_many(EXAMPLES[:6])
    for g, w in zip(got, want, strict=True):
        assert g.shape == (len(LABELS), 34) and np.all(np.isfinite(g))
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
        assert np.all(g[:, 32] < 0) and np.all(g[:, 33] == 1.0)  # mean log-prob, bias
    other = CausalFeaturizer(str(models["llama-b"][0]), device="cpu", dtype="fp32", progress=False)
    assert not np.allclose(other.transform_many(EXAMPLES[:1])[0], got[0], atol=1e-3)


def test_a_tokenizer_without_chat_template_reads_prompt_then_answer(models):
    chat = CausalFeaturizer(str(models["llama-a"][0]), device="cpu", dtype="fp32", progress=False)
    plain = CausalFeaturizer(str(models["llama-plain"][0]), device="cpu", dtype="fp32", progress=False)
    assert chat.settings()["prompt_format"] == "chat"
    assert plain.settings()["prompt_format"] == "plain"
    tok = models["llama-plain"][2]
    ids, start, end = plain.encode_many(EXAMPLES[:1])[0]
    text = tok.decode(ids)
    assert "Question: " + EXAMPLES[0].prompt + "\nAnswer: " + LABELS[0] in text
    assert ids[end - 1] == tok.eos_token_id and end == len(ids)
    assert tok.decode(ids[start:end - 1]).strip() == LABELS[0]
    a, b = chat.transform_many(EXAMPLES[:2]), plain.transform_many(EXAMPLES[:2])
    assert a[0].shape == b[0].shape == (3, 34)
    assert not np.allclose(a[0], b[0], atol=1e-3)  # same weights, other prompt format


def test_encoder_features_of_a_bert_directory_are_its_mean_pooled_embeddings(models):
    path, bert, tok = models["bert"]
    f = EncoderFeaturizer(str(path), device="cpu", progress=False)
    h = bert.config.hidden_size
    assert f.dim == 2 * h + 1 == 65
    phi = f.transform_many(EXAMPLES[:4])
    enc = tok(list(LABELS), padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = bert(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).float()
    e_a = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=1).numpy()
    for x in phi:
        assert x.shape == (3, 65) and np.all(np.isfinite(x))
        np.testing.assert_allclose(x[:, h:2 * h], e_a, atol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(x[:, h:2 * h], axis=1), 1.0, atol=1e-6)
    assert not np.allclose(phi[0][:, :h], phi[1][:, :h], atol=1e-4)  # the prompts differ
    # A decoder-only directory works as an encoder too (AutoModel, mean over last hidden states).
    llama = EncoderFeaturizer(str(models["llama-a"][0]), device="cpu", progress=False)
    x = llama.transform_many(EXAMPLES[:1])[0]
    assert llama.dim == 65 and x.shape == (3, 65) and np.all(np.isfinite(x))


# --------------------------------------------------------------------------- cache keys


def test_the_cache_is_keyed_by_the_model_files(models, tmp_path):
    def key(kind, path):
        cls = CausalFeaturizer if kind == "causal" else EncoderFeaturizer
        return featurizer_key(cls(str(path), device="cpu", dtype="fp32", progress=False))

    a, b = models["llama-a"][0], models["llama-b"][0]
    assert model_identity(a) == directory_fingerprint(a) != directory_fingerprint(b)
    assert key("causal", a) != key("causal", b)  # same architecture, other weights
    assert key("causal", a) == key("causal", a)
    copy = tmp_path / "copy-of-a"
    shutil.copytree(a, copy)
    assert key("causal", copy) == key("causal", a)  # the key is the content, not the path
    assert key("encoder", models["bert"][0]) != featurizer_key(EncoderFeaturizer(progress=False))
    assert model_identity("smollm2-135m-instruct") == "smollm2-135m-instruct"  # old caches stay valid

    first = featurize(EXAMPLES, CausalFeaturizer(str(a), device="cpu", dtype="fp32", progress=False),
                      cache_dir=tmp_path / "c", progress=False)
    again = featurize(EXAMPLES, CausalFeaturizer(str(a), device="cpu", dtype="fp32", progress=False),
                      cache_dir=tmp_path / "c", progress=False)
    other = featurize(EXAMPLES, CausalFeaturizer(str(b), device="cpu", dtype="fp32", progress=False),
                      cache_dir=tmp_path / "c", progress=False)
    assert (first.n_computed, again.n_cached, again.n_computed, other.n_computed) == (24, 24, 0, 24)
    assert again.key == first.key != other.key
    for x, y in zip(first.features, again.features, strict=True):
        np.testing.assert_array_equal(x, y)


# --------------------------------------------------------------------------- the command line


def test_run_with_causal_features_of_a_relative_directory(models, jsonl, cache, monkeypatch):
    path = models["llama-a"][0]
    monkeypatch.chdir(path.parent)
    res = _invoke("run", "--data", jsonl, "--features", "causal", "--model", f"./{path.name}", "--json")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["rounds"] == 19 and summary["labels_bought"] >= 1  # 24 examples, 5 held out
    (saved,) = _settings(cache, "causal")
    assert saved["dim"] == 34 and saved["settings"]["model"] == directory_fingerprint(path)


def test_run_with_encoder_and_block_features_of_a_bert_directory(models, jsonl, cache):
    path = models["bert"][0]
    for features in ("encoder", "block"):
        res = _invoke("run", "--data", jsonl, "--features", features, "--model", path, "--json")
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout)["rounds"] == 19
    (enc,), (blk,) = _settings(cache, "encoder"), _settings(cache, "block")
    assert enc["dim"] == 2 * 32 + 1 and blk["dim"] == len(LABELS) * (32 + 1)
    assert enc["settings"]["model"] == blk["settings"]["model"] == directory_fingerprint(path)


def test_sweep_featurize_and_a_config_take_the_model(models, jsonl, cache, tmp_path):
    path = models["llama-b"][0]
    res = _invoke("featurize", "--data", jsonl, "--features", "causal", "--model", path, "--device", "cpu")
    assert res.exit_code == 0, res.output
    assert "24 examples, 0 cached, 24 computed" in res.stdout
    res = _invoke("sweep", "--data", jsonl, "--features", "causal", "--model", path, "--device", "cpu",
                  "--gates", "llf,random", "--seeds", "0", "--json")
    assert res.exit_code == 0, res.output
    cells = json.loads(res.stdout.strip().splitlines()[-1])["cells"]
    assert [c["gate"] for c in cells] == ["llf", "random"]
    config = tmp_path / "run.yaml"
    config.write_text(f"data: {{name: {jsonl}}}\nfeatures: {{name: causal, model: {path}, device: cpu}}\n")
    res = _invoke("run", "--config", config, "--json")
    assert res.exit_code == 0, res.output
    assert len(_settings(cache, "causal")) == 1  # featurize, sweep and the config share one cache folder


def test_model_without_data_is_refused(models):
    for command in ("run", "sweep"):
        res = _invoke(command, "--model", models["llama-a"][0])
        assert isinstance(res.exception, ConfigError), res.output
        assert "'--model' needs '--data'" in str(res.exception)


def test_adapt_with_a_local_llama_records_its_absolute_path(models, jsonl, cache, tmp_path, monkeypatch):
    path = models["llama-a"][0]
    monkeypatch.chdir(path.parent)
    out = tmp_path / "adapt"
    res = _invoke("adapt", "--data", jsonl, "--model", f"./{path.name}", "--features", "causal", "--out", out,
                  "--epochs", "1", "--batch-size", "4", "--device", "cpu")
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())
    assert report["model"] == f"./{path.name}"  # the report says what was typed
    (seed,) = report["per_seed"]
    assert seed["chance"] == pytest.approx(1 / 3)  # three labels: a guess is right one time in three
    assert set(seed["models"]) >= {"llf/plain", "all/plain", "llf/head"}
    for name, where in seed["models"].items():  # the adapters, a base that loads from any folder
        card = json.loads((out / where / "budgetsft_model.json").read_text())
        if name.endswith("/head"):  # the head's causal features name the model by its absolute path too
            assert card["featurizer"]["options"]["model_name"] == str(path.resolve())
            continue
        config = json.loads((out / where / "adapter_config.json").read_text())
        assert config["base_model_name_or_path"] == str(path.resolve())
    (saved,) = _settings(cache, "causal")  # the gate's head read the same model
    assert saved["settings"]["model"] == directory_fingerprint(path)


# --------------------------------------------------------------------------- adapters reload


def test_adapters_of_a_relative_path_reload_from_anywhere_with_the_same_logits(models, tmp_path, monkeypatch):
    path = models["llama-a"][0]
    monkeypatch.chdir(path.parent)
    given = f"./{path.name}"
    model, tok = load_causal_lm(given)
    assert model.name_or_path == str(path.resolve())
    train = EXAMPLES[:8]
    peft_model, history = finetune_lora(model, tok, train, max_steps=4, lr=5e-2, batch_size=4, dtype="fp32",
                                        progress=False)
    out = save_adapters(peft_model, tmp_path / "adapters")
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(path.resolve())

    reloaded, tok2 = load_adapted(out)
    assert len(tok2) == len(tok)
    batch = make_batch([format_example(ex, ex.answer, tok) for ex in train], pad_token_id=tok.pad_token_id)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    base, _ = load_causal_lm(given)
    with torch.no_grad():
        trained, again, zero = peft_model(**inputs).logits, reloaded(**inputs).logits, base(**inputs).logits
    torch.testing.assert_close(again, trained, rtol=1e-5, atol=1e-5)
    assert (trained - zero).abs().max() > 1e-2  # the adapters did change the model

    monkeypatch.chdir(tmp_path)  # elsewhere, the recorded path still points at the model
    elsewhere, _ = load_adapted(out)
    with torch.no_grad():
        torch.testing.assert_close(elsewhere(**inputs).logits, trained, rtol=1e-5, atol=1e-5)


def test_adapters_of_the_packaged_model_record_its_short_name(tmp_path):
    from peft import LoraConfig, get_peft_model

    model, _ = load_causal_lm("smollm2-135m-instruct")
    assert model.name_or_path == "smollm2-135m-instruct"
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    out = save_adapters(peft_model, tmp_path / "adapters")
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "smollm2-135m-instruct"
    reloaded, _ = load_adapted(out)
    assert reloaded.peft_config["default"].base_model_name_or_path == "smollm2-135m-instruct"
    assert reloaded.base_model.model.config.hidden_size == 576
