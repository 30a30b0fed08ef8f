"""What the labels bought are worth downstream (issue 12): the fast adaptation path, the report, --labels.

Every causal LM here is a tiny random-weight Llama (hidden size 32) saved with
the packaged SmolLM2 tokenizer; the gates' features are the real ``block``
features of the packaged all-MiniLM-L6-v2 (what ``budgetsft run`` uses on a
fixed label set). Nothing reaches for a model hub.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("transformers")

from budgetsft.adapt.engine import (  # noqa: E402
    PrefixCache,
    check_decoder,
    encode,
    packed_batch,
    score_packed,
    train_lora,
)
from budgetsft.adapt.lora import load_adapted, save_adapters  # noqa: E402
from budgetsft.adapt.pipeline import read_labels  # noqa: E402
from budgetsft.adapt.report import seed_report  # noqa: E402
from budgetsft.adapt.stats import PairedBootstrap  # noqa: E402
from budgetsft.data import Example, write_jsonl  # noqa: E402
from budgetsft.exceptions import DataError  # noqa: E402
from budgetsft.features.models import load_causal_tokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LABELS = ("business", "sports", "science")
WORDS = {
    "business": ["shares", "bank", "market", "profit", "merger", "loss", "retailer", "oil"],
    "sports": ["striker", "team", "final", "coach", "match", "title", "club", "sprint"],
    "science": ["telescope", "vaccine", "cells", "element", "probe", "fossil", "genome", "quantum"],
}
EXAMPLES = [
    Example(f"{label}-{i}-{j}", f"The {words[i]} story of day {j}.", LABELS, answer=LABELS.index(label))
    for j in range(2) for label, words in WORDS.items() for i in range(8)
]  # 48 examples: 38 train, 10 test


from _tiny_llama import tiny_llama  # noqa: E402
from _torch_threads import one_thread  # noqa: E402,F401  (autouse: torch on one thread)


@pytest.fixture(scope="module")
def tok():
    return load_causal_tokenizer()


def _llama(vocab_size: int, layers: int = 3, seed: int = 0):
    return tiny_llama(vocab_size, layers=layers, seed=seed)


@pytest.fixture(scope="module")
def work(tmp_path_factory, tok) -> Path:
    """A folder with ``llama/`` (tiny model + SmolLM2 tokenizer) and ``topics.jsonl``."""
    root = tmp_path_factory.mktemp("work")
    model = _llama(len(tok))
    model.save_pretrained(root / "llama")
    tok.save_pretrained(root / "llama")
    write_jsonl(EXAMPLES, root / "topics.jsonl")
    return root


@pytest.fixture(scope="module")
def env(work, tmp_path_factory) -> dict:
    """Environment of the CLI runs: a shared feature cache, and the working folder as current directory."""
    return {**os.environ, "BUDGETSFT_CACHE": str(tmp_path_factory.mktemp("cache")), "OMP_NUM_THREADS": "1",
            "PYTHONWARNINGS": "default"}


def _cli(args, env, cwd, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "budgetsft", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


# --------------------------------------------------------------------------- the packed, prefix-cached path


def _naive_scores(model, items) -> list[list[float]]:
    """Mean log-prob of each answer, one separate prompt + answer sequence at a time."""
    out = []
    with torch.no_grad():
        for e in items:
            row = []
            for a in e.answers:
                logits = model(input_ids=torch.tensor([list(e.prompt) + list(a)])).logits[0].float()
                lp = torch.log_softmax(logits[len(e.prompt) - 1 : -1], dim=-1)
                row.append(float(lp.gather(-1, torch.tensor(a)[:, None]).mean()))
            out.append(row)
    return out


def test_encode_keeps_the_head_of_the_text_and_the_instruction(tok):
    ex = Example("x", "Title line\n\n" + " ".join(["word"] * 200), LABELS, answer=0)
    enc = encode(ex, tok, max_prompt_tokens=8, labels=LABELS)
    text = tok.decode(list(enc.prompt))
    assert "Answer with one of: business, sports, science." in text
    assert "Title line" in text and text.count("word") < 8
    assert all(a[-1] == tok.eos_token_id for a in enc.answers)
    # per-item candidates (no fixed label set): the end of the text is kept, no instruction
    tail = encode(Example("y", " ".join(["word"] * 200) + " final question?", ("a", "b")), tok, max_prompt_tokens=8)
    assert "final question?" in tok.decode(list(tail.prompt)) and "Classify" not in tok.decode(list(tail.prompt))


@pytest.mark.parametrize("split", [0, 1, 3])
def test_packed_prefix_scores_equal_separate_sequences(tok, split):
    model = _llama(len(tok))
    items = [encode(ex, tok, max_prompt_tokens=6, labels=LABELS) for ex in EXAMPLES[:7]]
    keys = [ex.id for ex in EXAMPLES[:7]]
    cache = PrefixCache(model, split, dtype="fp32", batch_size=3, pad_token_id=tok.pad_token_id)
    cache.add_many(keys, items)
    packed = score_packed(model, cache, keys, batch_size=2, dtype="fp32", progress=False)
    np.testing.assert_allclose(np.array(packed), np.array(_naive_scores(model, items)), atol=1e-5)
    assert check_decoder(model, tok, items[0]) < 1e-5
    bf16 = PrefixCache(model, split, dtype="bf16", pad_token_id=tok.pad_token_id)
    bf16.add_many(keys, items)
    close = score_packed(model, bf16, keys, dtype="bf16", progress=False)
    np.testing.assert_allclose(np.array(close), np.array(packed), atol=0.1)


def test_packed_mask_isolates_candidates():
    from budgetsft.adapt.engine import Encoded

    batch = packed_batch([Encoded((5, 6), ((7, 8), (9,)))], pad_token_id=0)
    m = batch.mask[0, 0]
    assert batch.input_ids.tolist() == [[5, 6, 7, 8, 9]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 2]]  # answer 1 restarts after the prompt
    assert m[4].tolist() == [True, True, False, False, True]  # answer 1 sees the prompt and itself only
    assert m[3].tolist() == [True, True, True, True, False]
    assert batch.predictors.tolist() == [1, 2, 1] and batch.targets.tolist() == [7, 8, 9]


def test_top_layer_lora_learns_is_seeded_and_reloads_onto_the_full_model(tok, work, tmp_path, monkeypatch):
    import dataclasses

    model = _llama(len(tok))
    fixed = [dataclasses.replace(ex, answer=2) for ex in EXAMPLES]  # the answer is always "science"
    train, test = fixed[:24], fixed[24:]
    items = {ex.id: encode(ex, tok, max_prompt_tokens=16, labels=LABELS) for ex in fixed}
    cache = PrefixCache(model, 2, dtype="fp32", pad_token_id=tok.pad_token_id)
    cache.add_many(list(items), list(items.values()))
    keys, gold = [ex.id for ex in train], [ex.answer for ex in train]
    kw = dict(epochs=4, lr=2e-2, batch_size=8, seed=3, dtype="fp32", progress=False)
    a, history = train_lora(copy.deepcopy(model), cache, keys, gold, **kw)
    b, again = train_lora(copy.deepcopy(model), cache, keys, gold, **kw)
    assert len(history) == 12 and history == again  # 4 epochs of 3 steps, bit for bit
    assert np.mean(history[-3:]) < 0.7 * np.mean(history[:3])
    assert all("layers.2." in n for n, p in a.named_parameters() if p.requires_grad)  # only above the split
    test_keys = [ex.id for ex in test]

    def acc(m):
        scores = score_packed(m, cache, test_keys, dtype="fp32", progress=False)
        return np.mean([np.argmax(s) == ex.answer for s, ex in zip(scores, test, strict=True)])

    assert acc(model) < 0.5 and acc(a) == 1.0
    monkeypatch.chdir(work)
    base = str((work / "llama").resolve())  # as load_causal_lm names a model given as ./llama
    a.base_model.model.name_or_path = base
    a.peft_config["default"].base_model_name_or_path = base
    out = save_adapters(a, tmp_path / "adapters")
    reloaded, _ = load_adapted(out)
    test_items = [items[k] for k in test_keys]
    np.testing.assert_allclose(np.array(_naive_scores(reloaded, test_items)),
                               np.array(score_packed(a, cache, test_keys, dtype="fp32", progress=False)), atol=1e-4)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_the_last_layer_at_the_answer_positions_equals_the_whole_pass(tok, attn):
    from budgetsft.features.decoder import Decoder

    model = _llama(len(tok))
    model.config._attn_implementation = attn
    items = [encode(ex, tok, max_prompt_tokens=6, labels=LABELS) for ex in EXAMPLES[:5]]
    batch = packed_batch(items, pad_token_id=tok.pad_token_id)
    dec = Decoder(model)
    with torch.no_grad():
        x = dec.embed(batch.input_ids)
        for start in (0, 1, 2):  # the last layer alone, or below it too
            whole = dec.run(x, batch.position_ids, batch.mask, start, dec.n_layers)
            at = dec.run(x, batch.position_ids, batch.mask, start, dec.n_layers, at=(batch.rows, batch.predictors))
            assert at.shape == (len(batch.rows), whole.shape[-1])
            np.testing.assert_allclose(at.numpy(), whole[batch.rows, batch.predictors].numpy(), atol=1e-5)
            np.testing.assert_allclose(dec.logprobs(at, batch).numpy(), dec.logprobs(whole, batch).numpy(),
                                       atol=1e-5)
        assert torch.equal(dec.run(x, batch.position_ids, batch.mask, 3, 3, at=(batch.rows, batch.predictors)),
                           x[batch.rows, batch.predictors])  # no layer to run: the states as they are


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_a_shared_instruction_read_once_gives_what_every_row_reading_it_gives(tok, attn):
    from budgetsft.features.decoder import Decoder

    model = _llama(len(tok))
    model.config._attn_implementation = attn
    items = [encode(ex, tok, max_prompt_tokens=6, labels=LABELS) for ex in EXAMPLES[:5]]
    keys = [ex.id for ex in EXAMPLES[:5]]
    cache = PrefixCache(model, 1, dtype="fp32", pad_token_id=tok.pad_token_id)
    cache.add_many(keys, items)
    shared = cache.shared_prefix(keys)
    n = 0
    while all(e.prompt[n] == items[0].prompt[n] for e in items):
        n += 1
    assert 10 < shared == n <= min(len(e.prompt) for e in items) - 1  # the chat header and the instruction
    assert cache.shared_prefix(keys[:1]) == 0
    dec = Decoder(model)
    with torch.no_grad():
        for hidden, batch, mask in (  # scoring (packed, a mask) and training (gold answers, causal)
            (*cache.packed_batch(keys, torch.device("cpu")), True),
            (*cache.gold_batch(keys, [0, 1, 2, 0, 1], torch.device("cpu")), False),
        ):
            m = batch.mask if mask else None
            whole = dec.run(hidden, batch.position_ids, m, 1, dec.n_layers)
            once = dec.run(hidden, batch.position_ids, m, 1, dec.n_layers, shared=shared)
            np.testing.assert_allclose(once.numpy(), whole.numpy(), atol=1e-5)
            at = (batch.rows, batch.predictors)
            np.testing.assert_allclose(dec.run(hidden, batch.position_ids, m, 1, dec.n_layers, at=at, shared=shared)
                                       .numpy(), whole[at].numpy(), atol=1e-5)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_the_frozen_prefix_reads_the_shared_instruction_once_and_gives_every_rows_states(tok, attn, monkeypatch):
    import budgetsft.adapt.engine as engine

    model = _llama(len(tok))
    model.config._attn_implementation = attn
    items = [encode(ex, tok, max_prompt_tokens=6, labels=LABELS) for ex in EXAMPLES[:7]]
    keys = [ex.id for ex in EXAMPLES[:7]]
    seen = []
    common = engine._common_prefix
    monkeypatch.setattr(engine, "_common_prefix", lambda prompts: seen.append(common(prompts)) or seen[-1])
    once = PrefixCache(model, 2, dtype="fp32", batch_size=3, pad_token_id=tok.pad_token_id)
    once.add_many(keys, items)
    # batches of 3, 3 and 1: the first two read the chat header and instruction once, a row alone reads it itself
    assert len(seen) == 3 and min(seen[:2]) > 10 and seen[2] == 0
    monkeypatch.setattr(engine, "_common_prefix", lambda prompts: 0)
    rows = PrefixCache(model, 2, dtype="fp32", batch_size=3, pad_token_id=tok.pad_token_id)
    rows.add_many(keys, items)
    for k in keys:
        assert once.states_[k].shape == rows.states_[k].shape
        np.testing.assert_allclose(once.states_[k].numpy(), rows.states_[k].numpy(), atol=1e-5)


def test_frozen_weights_held_in_bf16_train_the_same_bits_and_come_back_in_fp32(tok, monkeypatch):
    import contextlib

    import budgetsft.adapt.engine as engine
    from budgetsft.features.decoder import Decoder, frozen_in_autocast_dtype

    model = _llama(len(tok))
    items = {ex.id: encode(ex, tok, max_prompt_tokens=8, labels=LABELS) for ex in EXAMPLES[:16]}
    cache = PrefixCache(model, 1, dtype="bf16", pad_token_id=tok.pad_token_id)
    cache.add_many(list(items), list(items.values()))
    keys, gold = list(items), [ex.answer for ex in EXAMPLES[:16]]
    kw = dict(epochs=2, lr=2e-2, batch_size=4, seed=1, dtype="bf16", progress=False)
    held, history = train_lora(copy.deepcopy(model), cache, keys, gold, **kw)
    monkeypatch.setattr(engine, "frozen_in_autocast_dtype", lambda *a, **k: contextlib.nullcontext())
    cast, again = train_lora(copy.deepcopy(model), cache, keys, gold, **kw)
    assert history == again  # the held copies are the casts autocast makes: the same losses, bit for bit
    scores = [score_packed(m, cache, keys, dtype="bf16", progress=False) for m in (held, cast)]
    assert all(np.array_equal(a, b) for a, b in zip(*scores, strict=True))
    assert {p.dtype for p in held.parameters()} == {torch.float32}  # the weights are float32 again

    model.requires_grad_(False)  # frozen, as adapt's base model is
    dec = Decoder(model)
    with pytest.raises(RuntimeError, match="boom"), frozen_in_autocast_dtype(dec, 0, dec.n_layers, "bf16"):
        assert dec.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16 and dec.head_weight is not None
        assert dec.layers[0].input_layernorm.weight.dtype == torch.float32  # norms are left alone
        assert model.model.embed_tokens.weight.dtype == torch.float32  # the tied head's copy is apart
        raise RuntimeError("boom")
    assert {p.dtype for p in model.parameters()} == {torch.float32} and dec.head_weight is None
    with frozen_in_autocast_dtype(dec, 0, dec.n_layers, "fp32"):
        assert dec.layers[0].mlp.up_proj.weight.dtype == torch.float32  # no autocast: nothing held


# --------------------------------------------------------------------------- the report's arithmetic


def test_bootstrap_intervals_on_a_hand_computed_case():
    # 2 seeds x 4 test items; a is right on 3 + 2 items, b on 2 + 2.
    a = [[1, 1, 1, 0], [1, 0, 1, 0]]
    b = [[1, 0, 1, 0], [0, 0, 1, 1]]
    R, seed = 500, 11
    boot = PairedBootstrap([4, 4], n_resamples=R, seed=seed, interval="bootstrap")  # the two-level bootstrap
    assert boot.mean(a) == (3 / 4 + 2 / 4) / 2 == 0.625
    assert boot.paired(a, b)["mean"] == pytest.approx(((3 - 2) / 4 + (2 - 2) / 4) / 2) == 0.125

    # an independent re-implementation of the documented procedure, loop by loop: items within each seed,
    # then (drawn after them) the seed slots
    rng = np.random.default_rng(seed)
    draws = [rng.integers(0, 4, size=(R, 4)) for _ in range(2)]
    slots = rng.integers(0, 2, size=(R, 2))
    acc_a, diff, items_a = [], [], []
    for r in range(R):
        per_a, per_d = [], []
        for s in range(2):
            picked = draws[s][r]
            per_a.append(sum(a[s][i] for i in picked) / 4)
            per_d.append(sum(a[s][i] - b[s][i] for i in picked) / 4)
        acc_a.append(sum(per_a[j] for j in slots[r]) / 2)
        diff.append(sum(per_d[j] for j in slots[r]) / 2)
        items_a.append(sum(per_a) / 2)
    assert boot.interval(a) == pytest.approx(list(np.percentile(acc_a, [2.5, 97.5])), abs=1e-12)
    p = boot.paired(a, b)
    assert p["ci95"] == pytest.approx(list(np.percentile(diff, [2.5, 97.5])), abs=1e-12)
    items_only = PairedBootstrap([4, 4], n_resamples=R, seed=seed, resample_seeds=False)
    assert items_only.seed_indices_ is None
    assert items_only.interval(a) == pytest.approx(list(np.percentile(items_a, [2.5, 97.5])), abs=1e-12)
    assert p["per_seed"] == [0.25, 0.0]
    assert p["within_noise"] == (p["ci95"][0] <= 0 <= p["ci95"][1])
    # identical methods: a degenerate interval at 0, within noise
    same = boot.paired(a, a)
    assert same["mean"] == 0.0 and same["ci95"] == [0.0, 0.0] and same["within_noise"]
    # a method right everywhere: accuracy 1 with a degenerate interval; a clear winner is not noise
    ones = [[1] * 4, [1] * 4]
    zeros = [[0] * 4, [0] * 4]
    assert boot.interval(ones) == [1.0, 1.0]
    assert boot.paired(ones, zeros) == {"mean": 1.0, "ci95": [1.0, 1.0], "per_seed": [1.0, 1.0],
                                        "within_noise": False}


def test_seeds_that_disagree_widen_the_interval_to_noise():
    # a − b is +0.20 at seed 0 and −0.05 at seeds 1 and 2 (400 items each, flipped items only: tight item noise).
    # Items alone call the mean (+0.033) real; counting the seeds (the default seed-level t interval, and the
    # earlier two-level bootstrap) the interval holds 0, as three seeds that disagree should.
    n = 400
    rng = np.random.default_rng(3)
    b = [rng.integers(0, 2, size=n) for _ in range(3)]
    a = []
    for s, shift in enumerate((80, -20, -20)):
        v = b[s].copy()
        idx = np.flatnonzero(v == (0 if shift > 0 else 1))[: abs(shift)]
        v[idx] = 1 - v[idx]
        a.append(v)
    items = PairedBootstrap([n] * 3, n_resamples=2000, resample_seeds=False).paired(a, b)
    both = PairedBootstrap([n] * 3, n_resamples=2000).paired(a, b)
    two_level = PairedBootstrap([n] * 3, n_resamples=2000, interval="bootstrap").paired(a, b)
    assert items["mean"] == both["mean"] == two_level["mean"] == pytest.approx((0.2 - 0.05 - 0.05) / 3)
    assert not items["within_noise"] and both["within_noise"] and two_level["within_noise"]
    assert both["ci95"][1] - both["ci95"][0] > 3 * (items["ci95"][1] - items["ci95"][0])
    # one seed: nothing to resample between seeds; the two agree exactly
    one = [PairedBootstrap([n], n_resamples=500, resample_seeds=r).paired(a[:1], b[:1]) for r in (True, False)]
    assert one[0] == one[1]


def test_seed_report_schema_and_determinism():
    results = [{"seed": s, "test_size": 4, "labels": {"zero-shot": 0, "llf": 2, "random": 2, "all": 8},
                "correct": {"zero-shot": [0, 0, 1, 0], "llf": [1, 1, 1, 0], "random": [1, 0, 1, 0],
                            "all": [1, 1, 1, 1]}} for s in (0, 1)]
    r1 = seed_report(results, gate="llf", baselines=["random", "first", "all"], n_resamples=200)
    r2 = seed_report(results, gate="llf", baselines=["random", "first", "all"], n_resamples=200)
    assert r1 == r2
    assert set(r1["methods"]) == {"zero-shot", "llf", "random", "all"}
    assert set(r1["paired"]) == {"llf-random", "llf-all"}  # no 'first' in the results
    assert r1["methods"]["llf"]["accuracy"] == [0.75, 0.75] and r1["methods"]["llf"]["labels"] == [2, 2]
    assert set(r1["paired"]["llf-random"]) == {"mean", "ci95", "per_seed", "within_noise"}


# --------------------------------------------------------------------------- the command


def test_multi_seed_adapt_writes_the_report_and_buys_what_run_buys(work, env, tmp_path):
    out = tmp_path / "adapt"
    proc = _cli(["adapt", "--data", "topics.jsonl", "--model", "./llama", "--seeds", "0,1", "--beta", "0.2",
                 "--epochs", "1", "--batch-size", "4", "--device", "cpu", "--recipes", "plain", "--audit", "0",
                 "--baselines", "random,first,margin", "--out", out], env, work)
    assert "estimate:" in proc.stderr and "Loading weights" not in proc.stderr
    assert "FutureWarning" not in proc.stderr and "DeprecationWarning" not in proc.stderr
    report = json.loads((out / "report.json").read_text())
    sels = ["llf", "random", "first", "margin", "all"]
    names = ["zero-shot", *(f"{sel}/{r}" for sel in sels for r in ("head", "plain"))]
    assert list(report["methods"]) == names
    for m in report["methods"].values():
        assert len(m["accuracy"]) == 2 and m["ci95"][0] <= m["mean"] <= m["ci95"][1]
        assert m["mean"] == pytest.approx(np.mean(m["accuracy"]))
    assert report["methods"]["llf/plain"]["labels"] == [7, 7] and report["methods"]["all/plain"]["labels"] == [38, 38]
    assert report["methods"]["llf/head"]["labels"] == [7, 7]
    assert set(report["paired"]) == {f"llf/plain-{b}/plain" for b in ("random", "first", "margin", "all")}
    assert report["recommended"] in {"llf/plain", "llf/head"} and report["recommendation"]["folds"] == 3
    for p in report["paired"].values():
        assert set(p) == {"mean", "ci95", "per_seed", "within_noise"}
    md = (out / "report.md").read_text()
    assert "| paired difference |" in md and "accuracy.png" in md and (out / "accuracy.png").is_file()
    assert "within noise" in md or "is better" in md
    # --report-only: the same report again from the saved predictions, nothing trained
    (out / "report.md").unlink()
    again = _cli(["adapt", "--out", out, "--report-only"], env, work)
    assert "rewrote" in again.stdout and "estimate:" not in again.stderr
    assert json.loads((out / "report.json").read_text()) == report and (out / "report.md").read_text() == md
    (out / "seed-1" / "predictions.json").write_text("{")
    bad = _cli(["adapt", "--out", out, "--report-only"], env, work, check=False)
    assert bad.returncode != 0 and "seed-1/predictions.json" in bad.stderr and "Traceback" not in bad.stderr
    # every seed's adapters record the model's absolute path, and reload from it
    for seed in (0, 1):
        for name in (n for n in names if n.endswith("/plain")):
            cfg = json.loads((out / f"seed-{seed}" / "adapters" / name.replace("/", "-") / "adapter_config.json")
                             .read_text())
            assert cfg["base_model_name_or_path"] == str((work / "llama").resolve())
    # the labels are those `budgetsft run` buys with each gate at that seed (adapt skips the widths that first,
    # random and margin never read; run computes them)
    selection = json.loads((out / "seed-1" / "selection.json").read_text())
    for gate in ("llf", "random", "first", "margin"):
        runs = tmp_path / f"run-{gate}"
        _cli(["run", "--data", "topics.jsonl", "--gate", gate, "--beta", "0.2", "--seed", "1", "--no-comparator",
              "--out", runs], env, work)
        import pandas as pd

        records = pd.read_csv(runs / "records.csv")
        assert selection[gate] == [str(i) for i in records.loc[records["queried"].astype(bool), "id"]], gate
    preds = json.loads((out / "seed-0" / "predictions.json").read_text())
    assert len(preds["test_ids"]) == report["test_sizes"][0] == 10


def test_adapt_on_a_session_export_and_on_its_ledger(work, env, tmp_path):
    db, export = tmp_path / "s.db", tmp_path / "bought.jsonl"
    _cli(["run", "--data", "topics.jsonl", "--beta", "0.2", "--seed", "0", "--session", db, "--no-comparator"],
         env, work)
    _cli(["session", "export", db, export], env, work)
    bought = [json.loads(line) for line in export.read_text().splitlines()]
    assert len(bought) == 7
    reports = {}
    for name, source in (("export", export), ("ledger", db)):
        out = tmp_path / name
        _cli(["adapt", "--data", "topics.jsonl", "--labels", source, "--model", "./llama", "--epochs", "1",
              "--device", "cpu", "--out", out], env, work)
        reports[name] = json.loads((out / "report.json").read_text())
        methods = reports[name]["methods"]
        assert list(methods) == ["zero-shot", "labels/plain", "random/plain"]  # random: same size, gold
        assert methods["labels/plain"]["labels"] == methods["random/plain"]["labels"] == [7]
        assert set(reports[name]["paired"]) == {"labels/plain-random/plain", "labels/plain-zero-shot"}
        assert reports[name]["recommended"] == "labels/plain"
        ids = json.loads((out / "seed-0" / "selection.json").read_text())["labels"]
        assert ids == [row["id"] for row in bought]  # trained as bought, not re-selected
    assert reports["export"]["methods"] == reports["ledger"]["methods"]


def test_labels_files_that_are_neither_or_foreign_are_refused(tmp_path):
    junk = tmp_path / "notes.txt"
    junk.write_text("these are not labels\n")
    with pytest.raises(DataError, match="neither a session ledger .* nor a JSONL file"):
        read_labels(junk)
    sqlite = tmp_path / "other.db"
    import sqlite3

    with sqlite3.connect(sqlite) as conn:
        conn.execute("CREATE TABLE t (x INTEGER)")
    with pytest.raises(DataError, match="not a budgetsft session ledger"):
        read_labels(sqlite)
    foreign = write_jsonl([Example("zz-1", "x", LABELS, answer=0)], tmp_path / "foreign.jsonl")
    from budgetsft.adapt.pipeline import _check_against
    from budgetsft.data import Dataset

    ds = Dataset("topics", list(EXAMPLES[:30]), list(EXAMPLES[30:]), labels=LABELS)
    with pytest.raises(DataError, match=r"1 of 1 id\(s\) are not in the data set 'topics', first \['zz-1'\]"):
        _check_against(read_labels(foreign), ds, foreign)
    with pytest.raises(DataError, match="no such file"):
        read_labels(tmp_path / "missing.jsonl")


# --------------------------------------------------------------------------- the featurisation bar


def test_featurisation_is_chunked_so_that_its_bar_moves(tmp_path):
    from budgetsft.features import featurize
    from budgetsft.features.causal import CausalFeaturizer

    tok = load_causal_tokenizer()
    fz = CausalFeaturizer(model=_llama(len(tok), layers=1), tokenizer=tok, device="cpu", progress=False)
    sizes = []
    real = fz.transform_many
    fz.transform_many = lambda chunk, **kw: (sizes.append(len(chunk)), real(chunk, **kw))[1]
    many = [Example(f"m{i}", f"text number {i}", LABELS) for i in range(150)]
    featurize(many, fz, cache_dir=tmp_path, progress=False)
    assert len(sizes) >= 3 and sum(sizes) == 150 and max(sizes) <= 64


# --------------------------------------------------------------------------- the GPU script, on a CPU


def test_gpu_script_parses_and_runs_tiny_on_cpu(tmp_path):
    script = ROOT / "benchmarks" / "gpu_adapt.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    env = {**os.environ, "GPU_ADAPT_TINY": "1", "OUT": str(tmp_path), "GPU_ADAPT_NO_INSTALL": "1",
           "OMP_NUM_THREADS": "1", "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(script)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    tables = (tmp_path / "gpu_adapt.md").read_text()
    for needle in ("featurisation", "LoRA epoch", "learners at d", "examples/s", "smollm2-135m", "4 of 8",
                   "8 of 8", "exact (logistic)", "sketch (rank"):
        assert needle in tables, needle
    assert "error" not in tables


def test_adapt_help_has_examples_and_every_default():
    import typer

    from budgetsft.cli import app

    cmd = typer.main.get_command(app).commands["adapt"]
    assert "Examples:" in cmd.help and "budgetsft adapt --data bbc-news --beta 0.1 --seeds 0,1,2" in cmd.help
    for p in cmd.params:
        if p.param_type_name == "option" and p.default is None and not p.is_flag and not p.required:
            assert "[default: " in p.help, p.name


def test_quiet_hf_silences_library_noise_and_restores_it(recwarn):
    import warnings

    from transformers.utils import logging as hf_logging

    from budgetsft.adapt.engine import quiet_hf

    assert hf_logging.is_progress_bar_enabled()
    with quiet_hf():
        assert not hf_logging.is_progress_bar_enabled()
        warnings.warn_explicit("old API", FutureWarning, "x.py", 1, module="transformers.modeling_utils")
        warnings.warn_explicit("ours", UserWarning, "y.py", 1, module="budgetsft.adapt")
    assert hf_logging.is_progress_bar_enabled()
    assert [str(w.message) for w in recwarn] == ["ours"]


def test_the_selection_screen_refits_what_adapt_trains_on(work, env, monkeypatch, capsys):
    """benchmarks/selection_screen.py's rows are adapt's label sets: llf+audit is llf's less its audit labels."""
    from budgetsft.adapt.pipeline import AUDIT_SHARE, select_labels
    from budgetsft.realdata import load_streams

    if str(ROOT / "benchmarks") not in sys.path:
        sys.path.insert(0, str(ROOT / "benchmarks"))
    import selection_screen

    monkeypatch.setenv("BUDGETSFT_CACHE", env["BUDGETSFT_CACHE"])
    monkeypatch.chdir(work)
    streams = load_streams("topics.jsonl", "auto", seed=1)
    chosen = select_labels(streams, "llf", 0.5, seed=1, baselines=("random",), all_head=False, audit=AUDIT_SHARE)
    held = set(chosen["llf"]["audit_ids"])
    assert held  # β = 0.5 of 38 rounds: an audit share of 0.1 draws some
    assert selection_screen.bought(streams, "llf+audit", 0.5, 1) == [i for i in chosen["llf"]["ids"] if i not in held]
    assert selection_screen.bought(streams, "llf+audit/all", 0.5, 1) == chosen["llf"]["ids"]
    assert selection_screen.bought(streams, "random", 0.5, 1) == chosen["random"]["ids"]
    plain = select_labels(streams, "llf", 0.5, seed=1, baselines=(), all_head=False)
    assert selection_screen.bought(streams, "llf", 0.5, 1) == plain["llf"]["ids"]
    mixed = select_labels(streams, "llf", 0.5, seed=1, baselines=(), all_head=False, audit=0.5)["llf"]
    assert len(mixed["audit_ids"]) > len(held)  # half the budget drawn at random, every label refit
    assert selection_screen.bought(streams, "llf+random=0.5", 0.5, 1) == mixed["ids"]
    # llf+density: the same gate and budget, its latencies weighted; the gate is left as it was afterwards
    from budgetsft.gates.llf import LLFGate

    ask = LLFGate.ask
    dense = selection_screen.bought(streams, "llf+density", 0.5, 1)
    assert LLFGate.ask is ask
    assert len(dense) == len(plain["llf"]["ids"]) and set(dense) <= {r.id for r in streams.train}
    assert selection_screen.bought(streams, "llf", 0.5, 1) == plain["llf"]["ids"]
    acc = selection_screen.main(["--data", "topics.jsonl", "--features", "auto", "--max-examples", "0",
                                 "--seeds", "0,1", "--beta", "0.5", "--rows", "llf,llf+audit,first"])
    table = capsys.readouterr().out
    assert list(acc) == ["llf", "llf+audit", "first", "random"]  # random added: the rows' reference
    for row, values in acc.items():
        assert len(values) == 2 and all(0.0 <= v <= 1.0 for v in values)
        assert f"| {row} | " in table
    assert "| random | 19 |" in table  # β = 0.5 of the 38 train rounds, every seed
    # the second table: each head's most predicted label, its share of the predictions and of the labels
    skew = table.split("The label each head predicts most")[1]
    for row in acc:
        shares = re.findall(r"(\d\.\d\d) \((\d\.\d\d)\)", next(ln for ln in skew.splitlines()
                                                             if ln.startswith(f"| {row} | ")))
        assert len(shares) == 2 and all(1 / 3 <= float(p) <= 1.0 and 0.0 <= float(b) <= 1.0 for p, b in shares)


def test_density_weights_rank_how_typical_an_item_is():
    """benchmarks/selection_screen.py's information density: an item in a tight cluster weighs more than an
    outlier; weights lie in (0, 1]; an item's own copy in the pool is left out of its neighbours."""
    if str(ROOT / "benchmarks") not in sys.path:
        sys.path.insert(0, str(ROOT / "benchmarks"))
    from selection_screen import _densities, density_weights

    rng = np.random.default_rng(0)
    centre = np.ones(8) / np.sqrt(8)
    cluster = centre + 0.05 * rng.normal(size=(30, 8))
    outliers = rng.normal(size=(5, 8))
    pool = np.vstack([cluster, outliers])
    pool /= np.linalg.norm(pool, axis=1, keepdims=True)
    w = density_weights(pool, pool, k=5)
    assert np.all((w > 0) & (w <= 1))
    assert w[:30].min() > w[30:].max()  # every cluster item is more typical than every outlier
    assert density_weights(pool, centre[None, :], k=5)[0] >= np.median(w[:30])
    # an item's own copy in the pool is not its neighbour: the same density as against the pool without it
    for i in (0, 31):
        item = pool[i : i + 1]
        assert _densities(pool, item, 5) == pytest.approx(_densities(np.delete(pool, i, 0), item, 5))


def test_seed_t_half_width_by_hand():
    from budgetsft.adapt.stats import t_half_width

    # sd 1 over 3 seeds: t(0.975, 2) = 4.3027, / sqrt(3)
    assert t_half_width([1.0, 2.0, 3.0]) == pytest.approx(4.302653 / np.sqrt(3), rel=1e-6)
    assert t_half_width([0.5, 0.5, 0.5, 0.5]) == 0.0
    assert np.isnan(t_half_width([0.7]))
