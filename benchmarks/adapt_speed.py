"""adapt's LoRA training and scoring, before and after the speed-ups of its top-layer path, side by side.

Run:  .venv/bin/python benchmarks/adapt_speed.py [--data bbc-news] [--n 160] [--test 64] [--repeats 3] [--threads 1]
      .venv/bin/python benchmarks/adapt_speed.py --profile before|now [--threads 2]   (torch.profiler's top ops)
      .venv/bin/python benchmarks/adapt_speed.py --agree 200 --threads 2   (one model, shared path on and off)

adapt trains LoRA in SmolLM2-135M's top 4 layers over a frozen prefix computed
once (``PrefixCache``). Three changes make that path faster without changing the
function it computes:

* **last layer at the answers** (``Decoder.run(..., at=...)``): the loss and
  the scores read the top layer's output at the positions that predict an
  answer token only, so the last layer runs its MLP there alone (its attention
  still at every position);
* **the shared instruction read once** (``Decoder.run(..., shared=L)``): the
  chat header and the label instruction open every prompt; the top layers
  read them once per batch and every row attends to their keys and values;
* **frozen weights held in bf16** (``frozen_in_autocast_dtype``): autocast
  casts a float32 weight that takes no gradient afresh at every call; the
  frozen linear weights of the top layers and the head are held as bf16
  copies while a set trains or scores (bit for bit the same results).

On the first ``--n`` training examples of ``--data`` (adapt's format: the label
instruction and the first 64 tokens of the text), one epoch of adapt's recipe
(r = 16, batch 8, AdamW, bf16) and a scoring pass over ``--test`` test examples
run for each of four variants: ``before`` (whole last layer, weights cast at
every call, every row reads its whole prompt), ``held`` (the bf16 copies),
``last layer`` (and the last layer at the answers) and ``now`` (and the shared
instruction read once: what adapt runs).
The variants alternate within each repeat and each keeps its best time. The
table gives examples/s and the speed-up over ``before``; the last columns say
whether the losses and the scores are the same bits as ``before``'s (``held``
must be; the others may differ in the last bits of bf16 products over other
shapes) and the largest score difference. The model loads from the packaged files (offline).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import sys
import time

import numpy as np


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="bbc-news")
    ap.add_argument("--n", type=int, default=160, help="training examples (one epoch)")
    ap.add_argument("--test", type=int, default=64, help="test examples scored")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--agree", type=int, default=None, metavar="N",
                    help="instead: train one model (3 epochs on --n examples) and score N test items with the "
                         "shared-instruction path on and off, in bf16 and in fp32")
    ap.add_argument("--prefix", action="store_true",
                    help="instead: time the frozen prefix (PrefixCache.add_many over the --n + --test examples) "
                         "before (weights cast at every call, every row reads its whole prompt) and now")
    ap.add_argument("--profile", choices=["before", "now"], default=None,
                    help="instead: torch.profiler's table of one epoch of that variant's training (top ops)")
    args = ap.parse_args(argv)

    import torch

    import budgetsft.adapt.engine as engine
    from budgetsft.adapt.pipeline import RECIPE
    from budgetsft.data import load_dataset
    from budgetsft.features.decoder import Decoder, pad_id
    from budgetsft.features.models import load_causal_lm

    torch.set_num_threads(args.threads)
    ds = load_dataset(args.data, seed=0)
    train, test = list(ds.train)[: args.n], list(ds.test)[: args.agree or args.test]
    with engine.quiet_hf():
        base, tok = load_causal_lm(device="cpu")
    base.requires_grad_(False)
    split = base.config.num_hidden_layers - RECIPE["lora_layers"]
    enc = {ex.id: engine.encode(ex, tok, max_prompt_tokens=RECIPE["max_prompt_tokens"], labels=ds.labels)
           for ex in train + test}
    keys, gold, test_keys = [ex.id for ex in train], [ex.answer for ex in train], [ex.id for ex in test]

    run_now, held_now, shared_now = Decoder.run, engine.frozen_in_autocast_dtype, engine._common_prefix

    def whole_last_layer(self, hidden, position_ids, mask, start, stop, *, at=None, shared=0):
        out = run_now(self, hidden, position_ids, mask, start, stop, shared=shared)
        return out if at is None else out[at]

    def cast_every_call(*a, **k):
        return contextlib.nullcontext()

    def every_row(prompts):
        return 0

    variants = {"before": (whole_last_layer, cast_every_call, every_row),
                "held": (whole_last_layer, held_now, every_row),
                "last layer": (run_now, held_now, every_row),
                "now": (run_now, held_now, shared_now)}
    if args.prefix:
        every = list(enc)
        best_p = {"before": np.inf, "held": np.inf, "now": np.inf}
        states: dict[str, dict] = {}
        try:
            for rep in range(args.repeats):
                for name, held, share in (("before", cast_every_call, every_row), ("held", held_now, every_row),
                                          ("now", held_now, shared_now)):
                    engine.frozen_in_autocast_dtype, engine._common_prefix = held, share
                    c = engine.PrefixCache(base, split, dtype="bf16", batch_size=RECIPE["eval_batch_size"],
                                           pad_token_id=pad_id(tok))
                    t = time.perf_counter()
                    c.add_many(every, [enc[k] for k in every])
                    best_p[name] = min(best_p[name], time.perf_counter() - t)
                    states[name] = c.states_
                    print(f"repeat {rep + 1}: prefix {name} {best_p[name]:.2f} s", file=sys.stderr)
        finally:
            engine.frozen_in_autocast_dtype, engine._common_prefix = held_now, shared_now
        diff = {name: max(float((states[name][k].float() - states["before"][k].float()).abs().max()) for k in every)
                for name in best_p}
        scale = max(float(states["before"][k].float().abs().max()) for k in every)
        tokens = sum(len(enc[k].prompt) + sum(len(x) for x in enc[k].answers) for k in every)
        print(f"### adapt's frozen prefix on {args.data}: {len(every)} examples (prompt + K answers, ~"
              f"{tokens / len(every):.0f} tokens each) through the bottom {split} layers, bf16, {args.threads} "
              f"thread(s), best of {args.repeats}; {c.shared_prefix(every)} tokens shared by every prompt\n")
        print("| variant | examples/s | speed-up | max \\|state diff\\| | largest \\|state\\| |")
        print("|---|---:|---:|---:|---:|")
        for name in best_p:
            print(f"| {name} | {len(every) / best_p[name]:.1f} | {best_p['before'] / best_p[name]:.2f}× | "
                  f"{diff[name]:.3g} | {scale:.3g} |")
        return
    # every other mode reads one cache of the whole set, built the way adapt builds it
    cache = engine.PrefixCache(base, split, dtype="bf16", batch_size=RECIPE["eval_batch_size"],
                               pad_token_id=pad_id(tok))
    cache.add_many(list(enc), list(enc.values()))
    if args.agree is not None:
        with engine.quiet_hf():
            model, _ = engine.train_lora(copy.deepcopy(base), cache, keys, gold, epochs=3, lr=RECIPE["lr"],
                                         lora_r=RECIPE["lora_r"], lora_alpha=RECIPE["lora_alpha"],
                                         batch_size=RECIPE["batch_size"], seed=0, dtype="bf16", progress=False)
        c32 = engine.PrefixCache(base, split, dtype="fp32", batch_size=RECIPE["eval_batch_size"],
                                 pad_token_id=pad_id(tok))
        c32.add_many(test_keys, [enc[k] for k in test_keys])
        print(f"### one model (3 epochs on {len(keys)} {args.data} examples) scoring {len(test_keys)} test items "
              f"with the shared instruction read once and by every row\n")
        print("| dtype | max \\|score diff\\| | lowest score | same argmax |")
        print("|---|---:|---:|---:|")
        for dtype, c in (("bf16", cache), ("fp32", c32)):
            try:
                once = engine.score_packed(model, c, test_keys, dtype=dtype, progress=False)
                engine._common_prefix = every_row
                rows = engine.score_packed(model, c, test_keys, dtype=dtype, progress=False)
            finally:
                engine._common_prefix = shared_now
            diff = max(float(np.abs(a - b).max()) for a, b in zip(once, rows, strict=True))
            same = sum(int(np.argmax(a) == np.argmax(b)) for a, b in zip(once, rows, strict=True))
            print(f"| {dtype} | {diff:.2g} | {min(float(a.min()) for a in once):.1f} | {same} of {len(once)} |")
        return
    if args.profile is not None:
        from torch.profiler import ProfilerActivity, profile

        Decoder.run, engine.frozen_in_autocast_dtype, engine._common_prefix = variants[args.profile]
        kw = {"epochs": 1, "lr": RECIPE["lr"], "lora_r": RECIPE["lora_r"], "lora_alpha": RECIPE["lora_alpha"],
              "batch_size": RECIPE["batch_size"], "seed": 0, "dtype": "bf16", "progress": False}
        try:
            with engine.quiet_hf():
                engine.train_lora(copy.deepcopy(base), cache, keys[:16], gold[:16], **kw)  # warm-up
                with profile(activities=[ProfilerActivity.CPU]) as prof:
                    engine.train_lora(copy.deepcopy(base), cache, keys, gold, **kw)
        finally:
            Decoder.run, engine.frozen_in_autocast_dtype, engine._common_prefix = (
                run_now, held_now, shared_now)
        print(f"### one epoch of {len(keys)} {args.data} examples, variant {args.profile!r}, {args.threads} "
              f"thread(s)\n")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
        return
    best = {v: [np.inf, np.inf] for v in variants}
    out: dict[str, tuple[list[float], list[np.ndarray]]] = {}
    kw = {"epochs": 1, "lr": RECIPE["lr"], "lora_r": RECIPE["lora_r"], "lora_alpha": RECIPE["lora_alpha"],
          "batch_size": RECIPE["batch_size"], "seed": 0, "dtype": "bf16", "progress": False}
    try:
        for rep in range(args.repeats):
            for name, (run, held, share) in variants.items():
                Decoder.run, engine.frozen_in_autocast_dtype, engine._common_prefix = run, held, share
                with engine.quiet_hf():
                    t = time.perf_counter()
                    model, history = engine.train_lora(copy.deepcopy(base), cache, keys, gold, **kw)
                    t_train = time.perf_counter() - t
                    t = time.perf_counter()
                    scores = engine.score_packed(model, cache, test_keys, batch_size=RECIPE["eval_batch_size"],
                                                 dtype="bf16", progress=False)
                    t_score = time.perf_counter() - t
                best[name] = [min(best[name][0], t_train), min(best[name][1], t_score)]
                out[name] = (history, scores)
                print(f"repeat {rep + 1}: {name} train {t_train:.2f} s, score {t_score:.2f} s", file=sys.stderr)
    finally:
        Decoder.run, engine.frozen_in_autocast_dtype, engine._common_prefix = run_now, held_now, shared_now

    ref_hist, ref_scores = out["before"]
    prompt = len(cache.encoded_[keys[0]].prompt)
    print(f"### adapt's top-layer path on {args.data}: {len(keys)} examples trained one epoch, {len(test_keys)} "
          f"scored (K = {len(train[0].candidates)}), bf16, {args.threads} thread(s), best of {args.repeats}; "
          f"{cache.shared_prefix(keys)} of a prompt's ~{prompt} tokens shared by every prompt\n")
    print("| variant | train ex/s | speed-up | score ex/s | speed-up | losses = before's | scores = before's "
          "| max \\|score diff\\| | same argmax |")
    print("|---|---:|---:|---:|---:|---|---|---:|---|")
    for name in variants:
        hist, scores = out[name]
        diff = max(float(np.abs(a - b).max()) for a, b in zip(scores, ref_scores, strict=True))
        same = all(np.array_equal(a, b) for a, b in zip(scores, ref_scores, strict=True))
        argmax = np.mean([np.argmax(a) == np.argmax(b) for a, b in zip(scores, ref_scores, strict=True)])
        print(f"| {name} | {len(keys) / best[name][0]:.1f} | {best['before'][0] / best[name][0]:.2f}× | "
              f"{len(test_keys) / best[name][1]:.1f} | {best['before'][1] / best[name][1]:.2f}× | "
              f"{'yes' if hist == ref_hist else 'no'} | {'yes' if same else 'no'} | {diff:.2g} | {argmax:.3f} |")


if __name__ == "__main__":
    main()
