"""LoRA on every train label (adapt's ``all/plain``) at 2 passes against 3, paired, seed by seed.

Run:  .venv/bin/python benchmarks/all_passes.py [--data sarcasm] [--max-examples 3000] [--seeds 0,1,2]
      [--passes 2,3] [--threads 2]

``all/plain`` is adapt's reference: LoRA with adapt's recipe on every train label of a seed's split. Since
2026-12-06 it makes 2 passes over the set by default (``--all-passes``), as many as a distill set, instead of
the 3 of the other sets. This benchmark trains it at each pass count on the same seed's split, with the same
frozen prefix, LoRA initialisation and example order (adapt's ``train_lora`` at that seed: the first passes'
permutations are the same), and scores every model on the seed's test split as adapt does (mean log-likelihood
of each label, bf16). The table gives test accuracy and gold NLL per seed, and the paired difference of each
pass count against the first with a seed-level t interval (adapt's). The model loads from the packaged files
(offline).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time

import numpy as np


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="sarcasm")
    ap.add_argument("--max-examples", type=int, default=3000)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--passes", default="2,3", help="pass counts, comma-separated; the first is the reference")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    passes = [float(p) for p in args.passes.split(",")]

    import torch

    from budgetsft.adapt.engine import PrefixCache, encode, quiet_hf, score_packed, train_lora
    from budgetsft.adapt.pipeline import RECIPE
    from budgetsft.adapt.recommend import candidate_nll
    from budgetsft.adapt.stats import t_half_width
    from budgetsft.data import load_dataset
    from budgetsft.features.decoder import pad_id
    from budgetsft.features.models import load_causal_lm

    torch.set_num_threads(args.threads)
    with quiet_hf():
        base, tok = load_causal_lm(device="cpu")
    base.requires_grad_(False)
    split = base.config.num_hidden_layers - RECIPE["lora_layers"]
    acc = {p: [] for p in passes}
    nll = {p: [] for p in passes}
    t_all = time.perf_counter()
    for seed in seeds:
        ds = load_dataset(args.data, seed=seed, max_examples=args.max_examples)
        train, test = list(ds.train), list(ds.test)
        enc = {ex.id: encode(ex, tok, max_prompt_tokens=RECIPE["max_prompt_tokens"], labels=ds.labels)
               for ex in train + test}
        cache = PrefixCache(base, split, dtype="bf16", batch_size=RECIPE["eval_batch_size"], pad_token_id=pad_id(tok))
        t = time.perf_counter()
        cache.add_many(list(enc), list(enc.values()))
        print(f"seed {seed}: prefix of {len(enc)} items in {time.perf_counter() - t:.0f} s", file=sys.stderr)
        keys, gold = [ex.id for ex in train], [int(ex.answer) for ex in train]
        test_keys, test_gold = [ex.id for ex in test], [int(ex.answer) for ex in test]
        for p in passes:
            t = time.perf_counter()
            with quiet_hf():
                model, _ = train_lora(copy.deepcopy(base), cache, keys, gold, epochs=p, lr=RECIPE["lr"],
                                      lora_r=RECIPE["lora_r"], lora_alpha=RECIPE["lora_alpha"],
                                      batch_size=RECIPE["batch_size"], seed=seed, dtype="bf16",
                                      desc=f"seed {seed} all/plain, {p:g} passes")
            scores = score_packed(model, cache, test_keys, batch_size=RECIPE["eval_batch_size"], dtype="bf16",
                                  progress=False)
            acc[p].append(float(np.mean([np.argmax(s) == g for s, g in zip(scores, test_gold, strict=True)])))
            nll[p].append(float(np.mean([candidate_nll(s, g) for s, g in zip(scores, test_gold, strict=True)])))
            print(f"seed {seed} all/plain, {p:g} passes: {len(keys)} labels, accuracy {acc[p][-1]:.4f}, NLL "
                  f"{nll[p][-1]:.3f} ({time.perf_counter() - t:.0f} s)", file=sys.stderr)
            del model

    print(f"### all/plain at {', '.join(f'{p:g}' for p in passes)} passes on {args.data}"
          f"{f' ({args.max_examples} examples)' if args.max_examples else ''}, seeds {args.seeds}, "
          f"{len(test_keys)} test items per seed, {args.threads} thread(s), "
          f"{(time.perf_counter() - t_all) / 60:.1f} min\n")
    print("| passes | accuracy per seed | mean | gold NLL | − first row (points) | 95 % CI |")
    print("|---:|---|---:|---:|---:|---|")
    ref = np.array(acc[passes[0]])
    for p in passes:
        d = 100 * (np.array(acc[p]) - ref)
        half = t_half_width(d)
        ci = "" if p == passes[0] else f"[{d.mean() - half:+.2f}, {d.mean() + half:+.2f}]"
        print(f"| {p:g} | {', '.join(f'{a:.4f}' for a in acc[p])} | {np.mean(acc[p]):.4f} | {np.mean(nll[p]):.3f} | "
              f"{'' if p == passes[0] else f'{d.mean():+.2f}'} | {ci} |")


if __name__ == "__main__":
    main()
