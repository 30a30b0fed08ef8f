"""The distill recipe (issue 20, item 3): LoRA on the bought gold labels plus the refit head's labels for the rest.

Real parts throughout: the refit head, a tiny random-weight Llama trained by ``train_lora``, the CLI.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("transformers")

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _torch_threads import one_thread  # noqa: E402,F401  (autouse: torch on one thread)
from test_adapt_value import EXAMPLES, _cli, _llama, env, tok, work  # noqa: E402,F401  (fixtures)

from budgetsft.adapt.engine import PrefixCache, encode, train_lora  # noqa: E402
from budgetsft.adapt.lora import pad_id  # noqa: E402
from budgetsft.adapt.pipeline import distill_set, lopsided_note, run_adapt  # noqa: E402
from budgetsft.base import Round  # noqa: E402
from budgetsft.data import Example  # noqa: E402
from budgetsft.exceptions import ConfigError, DataError  # noqa: E402
from budgetsft.refit import RefitHead, refit  # noqa: E402


def _pool(n: int = 60, d: int = 6, K: int = 3, seed: int = 0):
    """n rounds whose gold is the argmax of a fixed θ over K candidates, with their Examples."""
    rng = np.random.default_rng(seed)
    theta = rng.normal(size=d)
    rounds, examples = [], {}
    for i in range(n):
        X = rng.normal(size=(K, d))
        gold = int(np.argmax(X @ theta))
        rounds.append(Round(X, gold, id=f"x{i}"))
        examples[f"x{i}"] = Example(f"x{i}", f"item {i}", ("a", "b", "c"), answer=gold)
    return rounds, examples


def test_distill_set_keeps_gold_and_labels_the_rest_with_the_heads_answers():
    rounds, by_id = _pool()
    bought = [r.id for r in rounds[:20]]
    out = distill_set(rounds, rounds[40:], by_id, bought, seed=0, weight=0.5)
    assert out["ids"] == [r.id for r in rounds]
    head = refit(rounds[:20], seed=0)
    for r, ex, w in zip(rounds, out["examples"], out["weights"], strict=True):
        if r.id in bought:  # gold, full weight, no pseudo-label
            assert ex.answer == r.gold and w == 1.0 and r.id not in out["pseudo"]
            continue
        s = r.features @ head.coef_
        q = np.exp(s - s.max()) / np.exp(s - s.max()).sum()
        assert ex.answer == int(np.argmax(s)) and out["pseudo"][r.id] == [ex.answer, w]
        assert w == pytest.approx(0.5 * q.max()) and 0.5 / 3 <= w <= 0.5
        assert ex.prompt == by_id[r.id].prompt  # only the answer changes
    # the head is the one refit on the bought labels: its accuracy on the held-out rounds is reported
    assert out["head_accuracy"] == pytest.approx(head.accuracy(rounds[40:]))
    # the pseudo-labels are mostly right on this separable pool, and not copied from the gold
    pseudo_right = np.mean([out["pseudo"][r.id][0] == r.gold for r in rounds[20:]])
    assert 0.6 < pseudo_right


def test_distill_set_says_how_lopsided_its_head_is():
    rounds, by_id = _pool()
    bought = [r.id for r in rounds[:20]]
    out = distill_set(rounds, [], by_id, bought, seed=0)
    gold = np.bincount([r.gold for r in rounds[:20]], minlength=3) / 20
    given = np.bincount([out["pseudo"][r.id][0] for r in rounds[20:]], minlength=3) / 40
    assert out["shares"]["gold"] == pytest.approx(gold) and out["shares"]["pseudo"] == pytest.approx(given)
    top = int(np.argmax(given))
    assert lopsided_note(out, ("a", "b", "c")) == (f"the head gives {'abc'[top]!r} to {given[top]:.0%} of the items "
                                                    f"it labels ({gold[top]:.0%} of its own labels)")
    # a head that gives one label to everything: every unbought item, whatever its own labels' shares
    skewed = [Round(np.hstack([r.features, np.eye(3)]), r.gold, id=r.id) for r in rounds]
    head = RefitHead()
    head.coef_ = np.r_[np.zeros(rounds[0].features.shape[1]), 0.0, 100.0, 0.0]  # candidate 1, whatever the item
    one = distill_set(skewed, [], by_id, bought, seed=0, head=head)
    assert one["shares"]["pseudo"] == [0.0, 1.0, 0.0]
    assert lopsided_note(one, ("a", "b", "c")).startswith("the head gives 'b' to 100% of the items it labels (")
    # per-item candidates (no fixed label set) and a set with nothing left to label say nothing
    assert lopsided_note(out, None) is None
    assert lopsided_note(distill_set(rounds, [], by_id, [r.id for r in rounds], seed=0), ("a", "b", "c")) is None


def test_distill_set_rejects_a_bad_weight_and_an_empty_selection():
    rounds, by_id = _pool(n=10)
    with pytest.raises(ConfigError, match="weight"):
        distill_set(rounds, [], by_id, [rounds[0].id], weight=1.5)
    with pytest.raises(DataError, match="at least one bought label"):
        distill_set(rounds, [], by_id, [])


@pytest.fixture(scope="module")
def cached(tok):  # noqa: F811
    """A tiny Llama and the prefix cache of the first 12 examples."""
    model = _llama(len(tok))
    cache = PrefixCache(model, 1, dtype="fp32", batch_size=8, pad_token_id=pad_id(tok))
    items = EXAMPLES[:12]
    cache.add_many([e.id for e in items], [encode(e, tok, max_prompt_tokens=16) for e in items])
    return model, cache, items


def _train(cached, **kw):
    import copy

    model, cache, items = cached
    _, history = train_lora(copy.deepcopy(model), cache, [e.id for e in items], [e.answer for e in items],
                            epochs=1, batch_size=4, dtype="fp32", progress=False, seed=0, **kw)
    return history


def test_unit_weights_are_the_plain_loss_and_weights_change_it(cached):
    plain = _train(cached)
    assert _train(cached, weights=[1.0] * 12) == plain  # bit for bit
    half = _train(cached, weights=[0.5] * 12)
    assert half[0] == pytest.approx(plain[0] / 2, rel=1e-5)  # the first step's loss, before any update
    assert _train(cached, weights=[1.0] * 6 + [0.0] * 6) != plain


@pytest.mark.parametrize("weights", [[1.0] * 11, [1.2] + [1.0] * 11, [float("nan")] * 12, [-0.1] + [1.0] * 11])
def test_bad_weights_are_refused_naming_the_parameter(cached, weights):
    with pytest.raises(ConfigError, match="'weights'"):
        _train(cached, weights=weights)


def test_adapt_with_the_distill_recipe_trains_and_compares_both_recipes(work, env, tmp_path):  # noqa: F811
    out = tmp_path / "adapt"
    proc = _cli(["adapt", "--data", "topics.jsonl", "--model", "./llama", "--seeds", "0,1", "--beta", "0.2",
                 "--baselines", "random", "--recipes", "plain,distill", "--no-all", "--epochs", "1", "--batch-size",
                 "4", "--device", "cpu", "--audit", "0", "--out", out], env, work)
    # before LoRA trains on a head's labels, adapt says how lopsided that head is
    for seed in (0, 1):
        for sel in ("llf", "random"):
            assert re.search(rf"seed {seed}: {sel}/distill: the head gives '\w+' to \d+% of the items it labels "
                             r"\(\d+% of its own labels\)", proc.stdout + proc.stderr), (seed, sel)
    report = json.loads((out / "report.json").read_text())
    assert list(report["methods"]) == ["zero-shot", "llf/head", "llf/plain", "llf/distill", "random/head",
                                       "random/plain", "random/distill"]
    assert report["methods"]["llf/plain"]["labels"] == [7, 7] and report["methods"]["llf/head"]["labels"] == [7, 7]
    assert report["methods"]["llf/distill"]["labels"] == [7, 7]  # the gold labels; the other 31 are the head's
    assert report["recipes"] == ["plain", "distill"] and report["distill"]["weight"] == 1.0
    pairs = [(c["a"], c["b"]) for c in report["comparisons"]]
    rec = report["recommended"]
    assert pairs[0] == (rec, "random/plain")  # the recommended model against random/plain comes first
    assert set(pairs) >= {("llf/plain", "random/plain"), ("llf/distill", "random/distill"),
                          ("llf/distill", "random/plain"), ("llf/head", "random/head"), ("llf/head", "random/plain"),
                          ("random/distill", "random/plain"), ("llf/distill", "llf/plain")}
    # the recommendation: 3-fold CV of the gate's three models on its 7 bought labels, every seed
    cv = report["recommendation"]["cv"]
    assert set(cv) == {"llf/head", "llf/plain", "llf/distill"} and report["recommendation"]["folds"] == 3
    for t in cv.values():
        assert len(t["accuracy"]) == 2 and all(0 <= a <= 1 for a in t["accuracy"])
        assert t["mean"] == pytest.approx(np.mean(t["accuracy"]))
    assert report["recommendation"]["validation"] == "cv"
    best = min(t["nll_mean"] for t in cv.values())
    assert cv[rec]["nll_mean"] == best
    assert all(row["recommended"] in cv and set(row["cv"]) == set(cv) for row in report["per_seed"])
    # gold NLL beside accuracy: the mean of -log p(gold) over the test items, a positive number per method
    for name, m in report["methods"].items():
        assert m["nll"]["mean"] > 0 and m["nll"]["ci95"][0] <= m["nll"]["mean"] <= m["nll"]["ci95"][1], name
    for c in report["comparisons"]:
        acc = report["methods"]
        assert c["mean"] == pytest.approx(acc[c["a"]]["mean"] - acc[c["b"]]["mean"])
        assert c["ci95"][0] <= c["mean"] <= c["ci95"][1]
    for seed in (0, 1):
        where = out / f"seed-{seed}"
        assert (where / "adapters" / "llf-distill" / "adapter_config.json").is_file()
        pseudo = json.loads((where / "pseudo" / "llf.json").read_text())
        gold_ids = [json.loads(line)["id"] for line in (where / "labels" / "llf.jsonl").read_text().splitlines()]
        assert len(pseudo) == 31 and not set(pseudo) & set(gold_ids)
        assert all(0 < w <= 1 for _, w in pseudo.values())
        assert not (where / "labels" / "llf-distill.jsonl").exists()  # pseudo-labels never pass for gold
    md = (out / "report.md").read_text()
    assert "| comparison |" in md and "llf/distill − random/distill" in md
    assert f"**Recommended: {rec}**" in md and "| selection | head | plain | distill |" in md
    # the model handed back: load_adapted(run folder) is the recommended model of the first seed, callable
    from budgetsft.adapt import load_adapted

    model = load_adapted(out)
    assert model.method == rec and model.seed == 0
    test_ids = json.loads((out / "seed-0" / "predictions.json").read_text())["test_ids"]
    rows = [json.loads(line) for line in (work / "topics.jsonl").read_text().splitlines()]
    test = [r for r in rows if r["id"] in set(test_ids[:4])]
    probs = model(test)
    assert len(probs) == 4 and all(abs(p.sum() - 1) < 1e-6 for p in probs)
    # the comparisons survive --report-only
    (out / "report.md").unlink()
    _cli(["adapt", "--out", out, "--report-only"], env, work)
    assert json.loads((out / "report.json").read_text())["comparisons"] == report["comparisons"]


def test_adapt_recommends_on_audit_labels_that_no_model_trained_on(work, env, tmp_path):  # noqa: F811
    out = tmp_path / "audit"
    _cli(["adapt", "--data", "topics.jsonl", "--model", "./llama", "--seeds", "0,1", "--beta", "0.3",
          "--baselines", "random", "--no-all", "--epochs", "1", "--batch-size", "4", "--device", "cpu",
          "--audit", "0.5", "--out", out], env, work)
    report = json.loads((out / "report.json").read_text())
    assert report["recipes"] == ["plain", "distill"]  # the default when adapt selects
    rec = report["recommendation"]
    assert rec["validation"] == "audit" and rec["folds"] is None and "audit labels" in rec["rule"]
    budget = report["per_seed"][0]["budget"]
    for i, seed in enumerate((0, 1)):
        where = out / f"seed-{seed}"
        audit = json.loads((where / "audit.json").read_text())
        held = set(audit["ids"])
        assert held and audit["selection"] == "llf" and rec["audit"][i] == len(held)
        assert set(audit["scores"]) == {"llf/head", "llf/plain", "llf/distill"}
        # held out of every model of the gate's selection: no gold label, no pseudo-label
        trained = [json.loads(line)["id"] for line in (where / "labels" / "llf.jsonl").read_text().splitlines()]
        pseudo = json.loads((where / "pseudo" / "llf.json").read_text())
        assert not held & set(trained) and not held & set(pseudo)
        assert [json.loads(line)["id"] for line in
                (where / "labels" / "llf-audit.jsonl").read_text().splitlines()] == audit["ids"]
        # the selection is every label bought, audit ones included: the budget, as random's
        selection = json.loads((where / "selection.json").read_text())
        assert set(selection["llf"]) == held | set(trained) and len(selection["llf"]) == budget
        assert len(selection["random"]) == budget
        # the table of each seed is the models' NLL and accuracy on the audit items, from the saved scores
        from budgetsft.adapt.recommend import held_out_table

        assert report["per_seed"][i]["cv"] == held_out_table(
            {m: [np.array(v) for v in rows] for m, rows in audit["scores"].items()}, audit["gold"])
    for name in ("llf/head", "llf/plain", "llf/distill"):  # compared at the same budget: audit labels count
        assert report["methods"][name]["labels"] == [budget, budget]
    table = rec["cv"]
    assert report["recommended"] == min(table, key=lambda m: (table[m]["nll_mean"], -table[m]["mean"]))
    assert "by its gold NLL on the audit labels" in (out / "report.md").read_text()


def test_distill_needs_plain_and_its_own_selection(work, tmp_path):  # noqa: F811
    with pytest.raises(ConfigError, match="must include 'plain'"):
        run_adapt(str(work / "topics.jsonl"), tmp_path / "a", recipes=("distill",), progress=False)
    with pytest.raises(ConfigError, match="'recipes'"):
        run_adapt(str(work / "topics.jsonl"), tmp_path / "a", recipes=("plain", "soft"), progress=False)
    with pytest.raises(ConfigError, match="drop --labels"):
        run_adapt(str(work / "topics.jsonl"), tmp_path / "a", recipes=("plain", "distill"),
                  labels_file=work / "topics.jsonl", progress=False)


def test_adapt_selects_on_gradient_features_of_the_model_it_tunes(work, env, tmp_path):  # noqa: F811
    """--features grad: the gate's features are the gradients of the tiny Llama's own LoRA; its head is handed back
    as a callable model that featurises new examples the same way."""
    out = tmp_path / "grad"
    _cli(["adapt", "--data", "topics.jsonl", "--model", "./llama", "--features", "grad", "--seeds", "0",
          "--beta", "0.3", "--baselines", "random", "--no-all", "--recipes", "plain", "--audit", "0",
          "--epochs", "1", "--batch-size", "4", "--device", "cpu", "--out", out], env, work)
    report = json.loads((out / "report.json").read_text())
    assert report["per_seed"][0]["features"] == "grad"
    # the gate chose on gradient features: its selection is llf-grad, compared with random's as llf's would be
    assert {"llf-grad/head", "llf-grad/plain", "random/head", "random/plain"} <= set(report["methods"])
    assert not any(m.startswith("llf/") for m in report["methods"])
    assert {(c["a"], c["b"]) for c in report["comparisons"]} >= {("llf-grad/plain", "random/plain"),
                                                                 ("llf-grad/head", "random/head")}
    assert report["recommended"].startswith("llf-grad/")
    card = json.loads((out / "seed-0" / "heads" / "llf-grad" / "budgetsft_model.json").read_text())
    assert card["featurizer"]["name"] == "grad"
    opts = card["featurizer"]["options"]
    assert opts["model_name"] == str((work / "llama").resolve()) and opts["lora_layers"] == 4
    assert opts["labels"] == report["labels"]
    from budgetsft.adapt import load_adapted

    head = load_adapted(out, method="llf-grad/head")
    pred = json.loads((out / "seed-0" / "predictions.json").read_text())
    rows = {json.loads(line)["id"]: json.loads(line) for line in (work / "topics.jsonl").read_text().splitlines()}
    test = [rows[i] for i in pred["test_ids"][:3]]
    probs = head(test)
    # the handed-back head scores new examples as adapt scored the test split (same features, same coefficients)
    saved = [np.exp(np.array(v) - np.max(v)) / np.exp(np.array(v) - np.max(v)).sum()
             for v in pred["scores"]["llf-grad/head"][:3]]
    for p, q in zip(probs, saved, strict=True):
        assert np.allclose(p, q, atol=1e-5)


def _every_other(streams, seed, budget):
    """Another learner's choice, for the test: every other train item from the seed's offset, B of them."""
    ids = [r.id for r in streams.train]
    return ids[seed % 2::2][:budget]


def test_adapt_compares_another_learners_selection_recipe_by_recipe(work, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("BUDGETSFT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "peer"
    report = run_adapt(str(work / "topics.jsonl"), out, model=str(work / "llama"), seeds=(0, 1), beta=0.2,
                       baselines=("random",), include_all=False, epochs=1, batch_size=4, device="cpu", audit=0,
                       selections={"alternate": _every_other}, progress=False)
    assert list(report["methods"]) == ["zero-shot", "llf/head", "llf/plain", "llf/distill", "random/head",
                                       "random/plain", "random/distill", "alternate/head", "alternate/plain",
                                       "alternate/distill"]
    budget = report["per_seed"][0]["budget"]
    assert report["methods"]["alternate/plain"]["labels"] == [budget, budget]
    pairs = {(c["a"], c["b"]) for c in report["comparisons"]}
    assert {("llf/plain", "alternate/plain"), ("llf/distill", "alternate/distill"),
            ("llf/head", "alternate/head")} <= pairs
    for seed in (0, 1):
        where = out / f"seed-{seed}"
        sel = json.loads((where / "selection.json").read_text())
        train = [json.loads(line)["id"] for line in (where / "labels" / "alternate.jsonl").read_text().splitlines()]
        assert sel["alternate"] == train and len(train) == budget
        # the ids the function returned for that seed, in its order: the train split's every other item
        assert train[1] != train[0] and len(set(train)) == budget
        pseudo = json.loads((where / "pseudo" / "alternate.json").read_text())
        assert pseudo and not set(pseudo) & set(train)
        assert (where / "adapters" / "alternate-distill" / "adapter_config.json").is_file()
    assert "alternate/distill" in (out / "report.md").read_text()


@pytest.mark.parametrize(("fn", "match"), [
    (lambda st, seed, b: [r.id for r in st.train][: b + 1], "over the budget B = "),
    (lambda st, seed, b: [st.train[0].id, st.train[0].id], "twice"),
    (lambda st, seed, b: ["no-such-item"], "not in the train split, first 'no-such-item'"),
])
def test_another_selection_over_budget_or_off_the_split_is_refused_naming_it(work, tmp_path, monkeypatch,  # noqa: F811
                                                                              fn, match):
    monkeypatch.setenv("BUDGETSFT_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ConfigError, match=match) as err:
        run_adapt(str(work / "topics.jsonl"), tmp_path / "a", model=str(work / "llama"), seeds=(0,), beta=0.2,
                  baselines=("random",), include_all=False, device="cpu", selections={"peer": fn}, progress=False)
    assert "selection 'peer' at seed 0" in str(err.value)
    assert not (tmp_path / "a").exists()  # refused before anything was trained or written


@pytest.mark.parametrize(("selections", "match"), [
    ({"random": _every_other}, "'random' is taken"),
    ({"a/b": _every_other}, "not a usable name"),
    ({"peer": "ids.txt"}, "must map to a function"),
])
def test_another_selection_needs_a_free_name_and_a_function(work, tmp_path, selections, match):  # noqa: F811
    with pytest.raises(ConfigError, match=match):
        run_adapt(str(work / "topics.jsonl"), tmp_path / "a", selections=selections, progress=False)
    with pytest.raises(ConfigError, match="cannot be combined with labels_file"):
        run_adapt(str(work / "topics.jsonl"), tmp_path / "a", labels_file=work / "topics.jsonl",
                  selections={"peer": _every_other}, progress=False)


def test_distill_lists_each_gold_label_twice_and_passes_twice_over_the_heads_labels():
    from budgetsft.adapt.pipeline import _training_list

    gold = [Example(f"g{i}", "text", ("a", "b"), answer=i % 2) for i in range(3)]
    pseudo = [Example(f"p{i}", "text", ("a", "b"), answer=1) for i in range(4)]
    s = {"examples": gold + pseudo, "weights": [1.0] * 3 + [0.5] * 4, "pseudo": {e.id: [1, 0.5] for e in pseudo}}
    keys, answers, weights, passes = _training_list(s, 3, 2)
    assert keys == ["g0", "g0", "g1", "g1", "g2", "g2", "p0", "p1", "p2", "p3"] and passes == 2
    assert answers == [0, 0, 1, 1, 0, 0, 1, 1, 1, 1] and weights == [1.0] * 6 + [0.5] * 4
    assert _training_list(s, 3, 3) == ([e.id for e in s["examples"]], [e.answer for e in s["examples"]],
                                       s["weights"], 3)  # as many passes as epochs: the plain list
    plain = {"examples": gold}
    assert _training_list(plain, 3, 2)[0] == ["g0", "g1", "g2"] and _training_list(plain, 3, 2)[3] == 3


def test_adapt_distill_defaults_to_two_passes_at_three_epochs(work, tmp_path, monkeypatch):  # noqa: F811
    from budgetsft.adapt.pipeline import _train_work

    monkeypatch.setenv("BUDGETSFT_CACHE", str(tmp_path / "cache"))
    kw = {"model": str(work / "llama"), "seeds": (0,), "beta": 0.2, "baselines": ("random",), "include_all": False,
          "epochs": 3, "batch_size": 4, "device": "cpu", "audit": 0, "cv_folds": 0, "estimate_only": True,
          "progress": False}
    default = run_adapt(str(work / "topics.jsonl"), tmp_path / "a", **kw)["work"]["train"]
    three = run_adapt(str(work / "topics.jsonl"), tmp_path / "b", distill_passes=3, **kw)["work"]["train"]
    # two distill sets (llf's and random's) of B gold labels and n - B of the head's; B = 7, n = 38 here
    n, b = 38, 7
    assert three - default == 2 * (_train_work(n, 3, 4) - _train_work(2 * b + n - b, 2, 4))
    one = run_adapt(str(work / "topics.jsonl"), tmp_path / "c", **{**kw, "epochs": 1})["work"]["train"]
    assert one == run_adapt(str(work / "topics.jsonl"), tmp_path / "d", distill_passes=1,
                            **{**kw, "epochs": 1})["work"]["train"]  # never more passes than --epochs


def test_the_all_set_makes_all_passes_and_nothing_else_does():
    from budgetsft.adapt.pipeline import _training_list

    every = [Example(f"e{i}", "text", ("a", "b"), answer=i % 2) for i in range(5)]
    full = {"examples": every, "full": True}
    assert _training_list(full, 3, 2, 2) == ([e.id for e in every], [e.answer for e in every], None, 2)
    assert _training_list(full, 1, 1, 2)[3] == 1  # never more passes than --epochs
    assert _training_list(full, 3, 2)[3] == 3  # no all_passes: the plain recipe's epochs
    assert _training_list({"examples": every}, 3, 2, 2)[3] == 3  # a bought set keeps --epochs


def test_adapt_all_plain_defaults_to_two_passes_and_refuses_more_than_epochs(work, tmp_path, monkeypatch):  # noqa: F811
    from budgetsft.adapt.pipeline import _train_work

    monkeypatch.setenv("BUDGETSFT_CACHE", str(tmp_path / "cache"))
    kw = {"model": str(work / "llama"), "seeds": (0,), "beta": 0.2, "baselines": ("random",), "recipes": ["plain"],
          "epochs": 3, "batch_size": 4, "device": "cpu", "audit": 0, "cv_folds": 0, "estimate_only": True,
          "progress": False}
    default = run_adapt(str(work / "topics.jsonl"), tmp_path / "a", **kw)
    assert default["before_seconds"] > 0  # selection, features and model, before the estimate's clock
    three = run_adapt(str(work / "topics.jsonl"), tmp_path / "b", all_passes=3, **kw)
    n = 38  # train items of topics.jsonl at seed 0
    assert three["work"]["train"] - default["work"]["train"] == _train_work(n, 3, 4) - _train_work(n, 2, 4)
    without = run_adapt(str(work / "topics.jsonl"), tmp_path / "c", include_all=False, **kw)["work"]["train"]
    assert default["work"]["train"] - without == _train_work(n, 2, 4)
    for bad in (4, 0, -1):
        with pytest.raises(ConfigError, match="all_passes"):
            run_adapt(str(work / "topics.jsonl"), tmp_path / "d", all_passes=bad, **kw)
