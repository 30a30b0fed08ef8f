"""Red-team items on ``--model`` (H2, M3, the offline hub id, adapters' base path, L9 for the featurisers).

A model directory is data: nothing in it runs (``auto_map`` code, a pickle's
``__reduce__``, a chat template reaching for Python internals), and every way
it can be hostile ends in one ``error: ...`` line. Every model is a tiny
random-weight Llama written with ``save_pretrained`` beside a copy of the
packaged SmolLM2 tokenizer; the one hub id is looked up against a closed local
port, never a model hub.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from budgetsft.exceptions import BudgetsftWarning, ConfigError  # noqa: E402
from budgetsft.features import models as models_mod  # noqa: E402
from budgetsft.features.causal import CausalFeaturizer  # noqa: E402
from budgetsft.features.models import (  # noqa: E402
    load_causal_lm,
    load_causal_tokenizer,
    load_encoder,
    model_hidden_size,
    resolve_model,
)

#: Python that leaves a marker file when it runs: the proof that a model's own code ran.
PAYLOAD = "import pathlib\npathlib.Path({marker!r}).write_text('ran')\n"

from _torch_threads import one_thread  # noqa: E402,F401  (autouse: torch on one thread)


def _rows(n: int = 12) -> list[dict]:
    return [{"id": f"q{i}", "prompt": f"Question {i}: is it on or off?", "candidates": ["on", "off"],
             "answer": i % 2} for i in range(n)]


@pytest.fixture(scope="module")
def tokenizer():
    return load_causal_tokenizer()  # the packaged SmolLM2 tokenizer (has a chat template)


def _tiny_llama(path: Path, tokenizer) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                         intermediate_size=32, vocab_size=len(tokenizer), max_position_embeddings=256)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def work(tmp_path, monkeypatch) -> Path:
    """A working folder with a small JSONL data set, a private feature cache and a private modules cache."""
    monkeypatch.setenv("BUDGETSFT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "hf-modules"))  # where remote code would be copied
    (tmp_path / "small.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows()), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _evil(folder: Path, marker: Path) -> Path:
    """A directory whose config names its own classes (auto_map) for an architecture transformers does not know."""
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "evilmodel", "hidden_size": 8,
        "auto_map": {"AutoConfig": "configuration_evil.EvilConfig", "AutoModel": "modeling_evil.EvilModel",
                     "AutoModelForCausalLM": "modeling_evil.EvilModel",
                     "AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]}}))
    for name in ("configuration_evil.py", "modeling_evil.py", "tokenization_evil.py"):
        (folder / name).write_text(PAYLOAD.format(marker=str(marker)))
    return folder


def _cli(*args: str, stdin: str = "", cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "budgetsft", *map(str, args)], input=stdin, capture_output=True,
                          text=True, cwd=cwd, env=dict(os.environ), timeout=300)


def _invoke(*args: str):
    from typer.testing import CliRunner

    from budgetsft.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


# --------------------------------------------------------------------------- H2: no code from a model directory


@pytest.mark.parametrize("features", ["encoder", "causal"])
def test_a_model_directory_with_its_own_code_is_refused_even_when_stdin_says_yes(work, features):
    marker = work / "PWNED"
    _evil(work / "evil", marker)
    proc = _cli("run", "--data", "small.jsonl", "--features", features, "--model", "evil", "--json",
                stdin="y\n", cwd=work)
    assert not marker.exists(), "the model directory's Python code ran"
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "[y/N]" not in proc.stderr + proc.stdout  # nothing asked on stdin
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert str(work / "evil") in line and "own Python code" in line and "trust_remote_code=False" in line
    assert "hf.co" not in line and "trust_remote_code=True" not in line


def test_every_loader_refuses_the_code_and_a_known_architecture_loads_without_it(work, tokenizer):
    marker = work / "PWNED"
    evil = _evil(work / "evil", marker)
    for load in (lambda: load_causal_tokenizer(evil), lambda: load_encoder(evil), lambda: model_hidden_size(evil),
                 lambda: model_hidden_size(evil, "encoder")):
        with pytest.raises(ConfigError, match="own Python code"):
            load()
    # A Llama whose config also names code of its own: transformers' own class is used, the file never runs.
    llama = _tiny_llama(work / "llama", tokenizer)
    config = json.loads((llama / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "configuration_evil.EvilConfig",
                          "AutoModelForCausalLM": "modeling_evil.EvilModel"}
    (llama / "config.json").write_text(json.dumps(config))
    for name in ("configuration_evil.py", "modeling_evil.py"):
        (llama / name).write_text(PAYLOAD.format(marker=str(marker)))
    model, _ = load_causal_lm(llama)
    assert type(model).__name__ == "LlamaForCausalLM" and model_hidden_size(llama) == 16
    assert not marker.exists()


# --------------------------------------------------------------------------- M3: hostile directories that run nothing


class _Reduce:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "ran"))


def test_a_pickled_weights_file_is_refused_without_unpickling_it(work, tokenizer):
    marker = work / "PWNED"
    folder = _tiny_llama(work / "pickled", tokenizer)
    (folder / "model.safetensors").unlink()
    with open(folder / "pytorch_model.bin", "wb") as fh:
        pickle.dump({"model.embed_tokens.weight": _Reduce(marker)}, fh)
    res = _invoke("run", "--data", "small.jsonl", "--features", "causal", "--model", "pickled", "--json")
    assert isinstance(res.exception, ConfigError), res.output
    message = str(res.exception)
    assert "pytorch_model.bin" in message and "weights_only=True" in message and "\n" not in message
    assert not marker.exists()


def test_a_chat_template_that_reaches_for_python_internals_is_a_clear_error(work, tokenizer):
    folder = _tiny_llama(work / "jinja", tokenizer)
    (folder / "chat_template.jinja").write_text("{{ ''.__class__.__mro__[1].__subclasses__() }}")
    res = _invoke("run", "--data", "small.jsonl", "--features", "causal", "--model", "jinja", "--json")
    assert isinstance(res.exception, ConfigError), res.output
    assert "chat template" in str(res.exception) and "sandbox" in str(res.exception)
    with pytest.raises(ConfigError, match="sandbox"):
        load_causal_lm(folder)
    # A template that drops the user's text cannot place the candidate: said, not a ValueError on unpacking.
    (folder / "chat_template.jinja").write_text("{% for m in messages %}<turn>{% endfor %}")
    with pytest.raises(ConfigError, match="exactly once"):
        CausalFeaturizer(folder, progress=False, device="cpu").settings()


@pytest.mark.parametrize("role", ["causal", "encoder"])
def test_a_name_too_long_for_a_path_is_a_short_clear_error(work, role):
    name = "a" * 5000
    with pytest.raises(ConfigError, match="not a usable path") as info:
        resolve_model(name, role)
    assert len(str(info.value)) < 800 and "5,000 characters" in str(info.value)
    features = "causal" if role == "causal" else "encoder"
    res = _invoke("run", "--data", "small.jsonl", "--features", features, "--model", name, "--json")
    assert isinstance(res.exception, ConfigError), res.output


# --------------------------------------------------------------------------- a hub id with no hub


@pytest.fixture
def no_hub(monkeypatch, tmp_path):
    """The hub endpoint is a closed local port, not offline mode; an empty private Hugging Face cache."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-hub"))
    models_mod._hub_source.cache_clear()
    yield tmp_path / "hf-hub"
    models_mod._hub_source.cache_clear()


def test_an_unreachable_hub_fails_a_hub_id_at_once(no_hub, work):
    t0 = time.perf_counter()
    with pytest.raises(ConfigError) as info:
        resolve_model("some-org/some-model", "causal")
    assert time.perf_counter() - t0 < 5.0
    message = str(info.value)
    assert "not reachable" in message and "127.0.0.1:9" in message and "it is could" not in message
    res = _invoke("run", "--data", "small.jsonl", "--features", "encoder", "--model", "some-org/some-model",
                  "--json")
    assert isinstance(res.exception, ConfigError) and "not reachable" in str(res.exception)


def test_an_unreachable_hub_still_loads_a_hub_id_from_the_local_cache(no_hub, work, tokenizer):
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = no_hub / "models--some-org--tiny"
    _tiny_llama(repo / "snapshots" / commit, tokenizer)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    source = resolve_model("some-org/tiny", "causal")
    assert source.kind == "hub" and source.revision == commit
    model, _ = load_causal_lm("some-org/tiny")
    assert model.name_or_path == "some-org/tiny"  # what adapters record: the id, not a cache path


# --------------------------------------------------------------------------- adapters record a base that loads anywhere


def test_adapters_record_an_absolute_base_and_take_a_base_override(work, tokenizer, monkeypatch):
    from budgetsft.adapt import finetune_lora, save_adapters
    from budgetsft.adapt.lora import load_adapted
    from budgetsft.data import Example

    _tiny_llama(work / "tiny-llama", tokenizer)
    model, tok = load_causal_lm("./tiny-llama")
    train = [Example(r["id"], r["prompt"], tuple(r["candidates"]), answer=r["answer"]) for r in _rows(4)]
    peft_model, _ = finetune_lora(model, tok, train, max_steps=1, batch_size=2, dtype="fp32", progress=False)
    out = save_adapters(peft_model, work / "adapters")
    recorded = json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert recorded == str((work / "tiny-llama").resolve())

    elsewhere = work / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    reloaded, _ = load_adapted(out)  # from another folder: the recorded path still points at the model
    assert reloaded.peft_config["default"].base_model_name_or_path == recorded

    shutil.move(str(work / "tiny-llama"), str(work / "moved-llama"))
    with pytest.raises(ConfigError, match=r"base=") as info:
        load_adapted(out)
    assert recorded in str(info.value)
    reloaded, _ = load_adapted(out, base=work / "moved-llama")
    assert reloaded.base_model.model.config.hidden_size == 16


# --------------------------------------------------------------------------- L9: one-line warnings


def test_a_tokenizer_without_eos_warns_as_a_budgetsft_warning(work, tokenizer):
    folder = _tiny_llama(work / "no-eos", tokenizer)
    model, tok = load_causal_lm(folder)
    tok.chat_template = None
    tok.eos_token = None
    f = CausalFeaturizer(model=model, tokenizer=tok, progress=False, device="cpu")
    with pytest.warns(BudgetsftWarning, match="no end-of-turn/EOS token"):
        f.settings()
