"""The model handed back by `budgetsft adapt`: one callable, LoRA or head (``budgetsft.adapt.handback``).

Real parts throughout: a tiny random-weight Llama trained by ``train_lora`` on a
prefix cache and saved by ``save_adapters``, a head refit on the real ``block``
features of the packaged all-MiniLM-L6-v2, and run folders laid out as adapt
writes them.
"""

from __future__ import annotations

import copy
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("transformers")

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _torch_threads import one_thread  # noqa: E402,F401  (autouse: torch on one thread)
from test_adapt_value import EXAMPLES, LABELS, _llama, tok, work  # noqa: E402,F401  (fixtures)

import budgetsft.adapt  # noqa: E402
from budgetsft.adapt.engine import PrefixCache, encode, score_packed, train_lora  # noqa: E402
from budgetsft.adapt.handback import (  # noqa: E402
    MODEL_CARD,
    AdaptedModel,
    load_adapted,
    save_head,
    write_model_card,
)
from budgetsft.adapt.lora import pad_id, save_adapters  # noqa: E402
from budgetsft.base import Round  # noqa: E402
from budgetsft.exceptions import ConfigError, DataError  # noqa: E402
from budgetsft.features import featurize, make_featurizer  # noqa: E402
from budgetsft.refit import refit  # noqa: E402

TRAIN, TEST = EXAMPLES[:24], EXAMPLES[24:]
MAX_PROMPT_TOKENS, LORA_LAYERS = 16, 2


def _softmax(s):
    s = np.asarray(s, dtype=np.float64)
    q = np.exp(s - s.max())
    return q / q.sum()


def _lora_card(method="llf/distill", seed=0):
    return {"kind": "lora", "method": method, "seed": seed, "labels": list(LABELS),
            "max_prompt_tokens": MAX_PROMPT_TOKENS, "lora_layers": LORA_LAYERS, "model": "./llama"}


@pytest.fixture(scope="module")
def lora(work, tok, tmp_path_factory):  # noqa: F811
    """LoRA on the top 2 of 3 layers, trained from a prefix cache, saved with its card; and that cache."""
    model = _llama(len(tok))
    items = {ex.id: encode(ex, tok, max_prompt_tokens=MAX_PROMPT_TOKENS, labels=LABELS) for ex in EXAMPLES}
    cache = PrefixCache(model, 3 - LORA_LAYERS, dtype="fp32", pad_token_id=pad_id(tok))
    cache.add_many(list(items), list(items.values()))
    trained, _ = train_lora(copy.deepcopy(model), cache, [ex.id for ex in TRAIN], [ex.answer for ex in TRAIN],
                            epochs=2, lr=2e-2, batch_size=8, seed=0, dtype="fp32", progress=False)
    base = str((work / "llama").resolve())  # as load_causal_lm names a model given as ./llama
    trained.base_model.model.name_or_path = base
    trained.peft_config["default"].base_model_name_or_path = base
    folder = save_adapters(trained, tmp_path_factory.mktemp("lora") / "llf-distill")
    write_model_card(folder, _lora_card())
    return trained, cache, folder


@pytest.fixture(scope="module")
def head_parts():
    """The block features of every example and a head refit on those of the train split."""
    fz = make_featurizer("block", labels=LABELS)
    features = featurize(EXAMPLES, fz, use_cache=False, progress=False, compact=False).features
    rounds = [Round(np.asarray(X), ex.answer, id=ex.id) for X, ex in zip(features, EXAMPLES, strict=True)]
    return refit(rounds[:24], seed=0), [np.asarray(X) for X in features[24:]]


def _save_head(folder, head, seed=0):
    return save_head(folder, head, method="llf/head", seed=seed, featurizer="block",
                     options={"labels": list(LABELS)}, labels=list(LABELS))


@pytest.fixture(scope="module")
def run(lora, head_parts, tmp_path_factory):
    """A run folder as adapt writes it: report.json, two seeds, adapters with and without a card, heads."""
    root = tmp_path_factory.mktemp("run")
    report = {"recommended": "llf/distill", "seeds": [0, 1], "model": "./llama",
              "methods": {m: {} for m in ("zero-shot", "llf", "random", "llf/distill", "llf/head")}}
    (root / "report.json").write_text(json.dumps(report))
    _, _, folder = lora
    for seed in (0, 1):
        where = root / f"seed-{seed}"
        shutil.copytree(folder, where / "adapters" / "llf-distill")
        write_model_card(where / "adapters" / "llf-distill", _lora_card(seed=seed))
        shutil.copytree(folder, where / "adapters" / "llf")  # the plain set, saved before model cards
        (where / "adapters" / "llf" / MODEL_CARD).unlink()
        _save_head(where / "heads" / "llf", head_parts[0], seed=seed)
    return root


# --------------------------------------------------------------------------- LoRA


def test_a_lora_model_gives_the_softmax_of_adapts_own_scores(lora):
    trained, cache, folder = lora
    model = load_adapted(folder)
    assert isinstance(model, AdaptedModel) and budgetsft.adapt.load_adapted is load_adapted
    assert (model.kind, model.method, model.seed, model.path) == ("lora", "llf/distill", 0, folder)
    assert model.head is None and model.tokenizer is not None and model.model is not None
    scores = score_packed(trained, cache, [ex.id for ex in TEST], dtype="fp32", progress=False)
    expected = [_softmax(s) for s in scores]
    got = model.predict_proba(TEST, dtype="fp32")
    assert len(got) == len(TEST)
    np.testing.assert_allclose(np.array(got), np.array(expected), atol=1e-4)
    assert np.allclose([p.sum() for p in got], 1.0)
    # dicts without ids (positions key the cache), and __call__, are the same model
    as_dicts = [{"prompt": ex.prompt, "candidates": list(ex.candidates)} for ex in TEST]
    np.testing.assert_allclose(np.array(model(as_dicts, dtype="fp32")), np.array(got), atol=1e-6)
    pred = model.predict(TEST, dtype="fp32")
    assert pred.dtype.kind == "i" and pred.tolist() == [int(np.argmax(p)) for p in expected]
    assert repr(model) == f"AdaptedModel(kind='lora', method='llf/distill', seed=0, path={str(folder)!r})"
    assert model.predict_proba([]) == []


def test_lora_examples_are_checked(lora):
    model = load_adapted(lora[2])
    with pytest.raises(DataError, match="Wrap it in a list"):
        model.predict_proba({"prompt": "p", "candidates": ["a", "b"]})
    with pytest.raises(DataError, match="item 1 needs 'candidates'"):
        model.predict_proba([{"prompt": "p", "candidates": ["a", "b"]}, {"prompt": "p", "candidates": ["a"]}])
    with pytest.raises(ConfigError, match="'dtype'"):
        model.predict_proba(TEST, dtype="fp16")


# --------------------------------------------------------------------------- heads


def test_a_head_model_featurises_with_its_card_and_gives_the_heads_softmax(head_parts, tmp_path):
    head, test_features = head_parts
    folder = _save_head(tmp_path / "head", head)
    assert np.load(folder / "coef.npy").dtype == np.float64
    card = json.loads((folder / MODEL_CARD).read_text())
    assert card["kind"] == "head" and card["dim"] == head.coef_.size and card["featurizer"]["name"] == "block"
    model = load_adapted(folder)
    assert (model.kind, model.method, model.model, model.tokenizer) == ("head", "llf/head", None, None)
    got = model.predict_proba(TEST)
    np.testing.assert_allclose(np.array(got), np.array([_softmax(X @ head.coef_) for X in test_features]),
                               atol=1e-12)
    assert model.predict(TEST).tolist() == [int(np.argmax(X @ head.coef_)) for X in test_features]


# --------------------------------------------------------------------------- run folders


def test_a_run_folder_gives_its_recommended_model_and_method_seed_select_others(run, head_parts):
    rec = load_adapted(run)
    assert (rec.kind, rec.method, rec.seed) == ("lora", "llf/distill", 0)
    assert rec.path == run / "seed-0" / "adapters" / "llf-distill"
    head = load_adapted(run, method="llf/head", seed=1)
    assert (head.kind, head.method, head.seed, head.path) == ("head", "llf/head", 1, run / "seed-1" / "heads" / "llf")
    np.testing.assert_allclose(head.head.coef_, head_parts[0].coef_)


def test_a_run_refuses_an_unknown_method_or_seed_naming_the_valid_ones(run):
    with pytest.raises(DataError, match=r"no method 'margin'.*'zero-shot', 'llf', 'random', 'llf/distill'"):
        load_adapted(run, method="margin")
    with pytest.raises(DataError, match="no seed 5 in this run; valid: 0, 1"):
        load_adapted(run, seed=5)
    with pytest.raises(DataError, match="'zero-shot' at seed 0 is the base model itself"):
        load_adapted(run, method="zero-shot")
    with pytest.raises(DataError, match="'random' at seed 0 is no saved model"):
        load_adapted(run, method="random")


def test_a_run_without_a_recommendation_asks_for_a_method(run, tmp_path):
    old = tmp_path / "old-run"
    shutil.copytree(run / "seed-0" / "heads", old / "seed-0" / "heads")
    report = json.loads((run / "report.json").read_text())
    del report["recommended"]
    (old / "report.json").write_text(json.dumps(report))
    with pytest.raises(DataError, match=r"predates recommendations.*method="):
        load_adapted(old)
    assert load_adapted(old, method="llf/head").kind == "head"


def test_a_run_finds_a_model_where_its_report_says_it_saved_it(run, tmp_path):
    moved = tmp_path / "moved-run"
    shutil.copytree(run / "seed-1" / "heads" / "llf", moved / "seed-1" / "elsewhere")
    report = json.loads((run / "report.json").read_text())
    report["per_seed"] = [{"seed": 0, "models": {}}, {"seed": 1, "models": {"llf/head": "seed-1/elsewhere"}}]
    (moved / "report.json").write_text(json.dumps(report))
    assert load_adapted(moved, method="llf/head", seed=1).path == moved / "seed-1" / "elsewhere"


# --------------------------------------------------------------------------- damaged folders


def test_adapters_without_a_card_point_to_the_raw_loader(run):
    folder = run / "seed-0" / "adapters" / "llf"
    for path, kw in ((folder, {}), (run, {"method": "llf"})):
        with pytest.raises(DataError, match=rf"{MODEL_CARD}.*budgetsft\.adapt\.lora\.load_adapted") as info:
            load_adapted(path, **kw)
        assert str(folder) in str(info.value)


@pytest.mark.parametrize("damage, match", [
    (lambda card: "{not json", "not a readable model card"),
    (lambda card: json.dumps({k: v for k, v in card.items() if k != "dim"}), "field.*'dim'"),
    (lambda card: json.dumps({**card, "kind": "svm"}), "field 'kind'"),
    (lambda card: json.dumps({**card, "seed": "zero"}), "field 'seed'"),
    (lambda card: json.dumps({**card, "featurizer": {"name": "ngram"}}), "field 'featurizer'"),
])
def test_a_damaged_card_is_refused_naming_the_file_and_field(head_parts, tmp_path, damage, match):
    folder = _save_head(tmp_path / "head", head_parts[0])
    card = json.loads((folder / MODEL_CARD).read_text())
    (folder / MODEL_CARD).write_text(damage(card))
    with pytest.raises(DataError, match=match) as info:
        load_adapted(folder)
    assert str(folder / MODEL_CARD) in str(info.value)


def test_a_coef_of_the_wrong_length_and_missing_folders_are_refused(head_parts, tmp_path):
    folder = _save_head(tmp_path / "head", head_parts[0])
    np.save(folder / "coef.npy", head_parts[0].coef_[:-1])
    with pytest.raises(DataError, match=r"coef\.npy.*'dim'") as info:
        load_adapted(folder)
    assert str(folder / "coef.npy") in str(info.value)
    with pytest.raises(DataError, match="no such folder"):
        load_adapted(tmp_path / "nowhere")
    with pytest.raises(DataError, match="neither a run folder"):
        load_adapted(tmp_path)


def test_a_model_folder_checks_the_method_and_seed_asked_for(head_parts, tmp_path):
    folder = _save_head(tmp_path / "head", head_parts[0])
    with pytest.raises(DataError, match="has seed 0, not 3"):
        load_adapted(folder, seed=3)
    with pytest.raises(DataError, match="has method 'llf/head', not 'llf'"):
        load_adapted(folder, method="llf")


def test_write_model_card_refuses_a_card_it_could_not_read_back(tmp_path):
    with pytest.raises(ConfigError, match="field 'lora_layers'"):
        write_model_card(tmp_path, {**_lora_card(), "lora_layers": 0})
    with pytest.raises(ConfigError, match="needs the field"):
        write_model_card(tmp_path, {"kind": "head", "method": "llf/head", "seed": 0, "labels": None})
    assert not (tmp_path / MODEL_CARD).exists()
