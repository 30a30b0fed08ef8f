#!/usr/bin/env bash
# GPU throughput of budgetsft's adaptation and featurisation path, on random-weight models of real sizes.
#
# Run it on the `device` tool's GPU machine (python3 with torch, transformers, peft, accelerate and
# sentence-transformers; no registry, no model weights), from the repository root:
#
#     bash benchmarks/gpu_adapt.sh                 # writes $OUT/gpu_adapt.md (and .json); ~5 min on one H200
#     GPU_ADAPT_TINY=1 bash benchmarks/gpu_adapt.sh   # tiny configs, CPU is fine: a few seconds (the test runs this)
#
# What it times (every model is LlamaForCausalLM(config) with random bf16 weights built on the device; token
# ids are drawn directly, no tokenizer is downloaded; numbers are throughput only, never label value):
#   1. featurisation: budgetsft's CausalFeaturizer.transform_many (joint features, SPEC §6) and the
#      sentence encoder (all-MiniLM-L6-v2's BertConfig) on synthetic texts, examples/s;
#   2. adaptation (budgetsft.adapt.engine, the path `budgetsft adapt` runs): the frozen prefix pass, one
#      LoRA epoch on the top 4 layers (the recipe's --lora-layers), and packed scoring of 5 candidates,
#      examples/s; for SmolLM2-135M also LoRA on every layer (lora_layers = all);
#   3. the numpy learners at d = 4096: exact (logistic) and sketched (sketch, rank 64), rounds/s of the game
#      loop with the LLF gate at β = 0.1 (CPU: the core is numpy).
# Models: SmolLM2-135M (its LlamaConfig, copied below from the cached config.json), a 1B Llama
# (Llama-3.2-1B's shape) and an 8B Llama (Llama-3.1-8B's shape: hidden 4096, 32 layers, intermediate
# 14336, 32 heads, 8 kv heads; 16 GB of bf16 weights). Each part runs under its own `timeout`, so the
# whole script ends well within 8 minutes even if a part stalls; a part that times out leaves a row
# saying so.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-runs/gpu_adapt}
mkdir -p "$OUT"
export GPU_ADAPT_OUT="$OUT"
TINY=${GPU_ADAPT_TINY:-0}
# worst case (every part hits its limit): 60 + 100 + 160 + 90 s = 6.8 min, plus python start-ups
if [ "$TINY" = "1" ]; then LIMIT_MODEL=60; LIMIT_LEARN=60; else LIMIT_MODEL=100; LIMIT_LEARN=90; fi

if [ "${GPU_ADAPT_NO_INSTALL:-0}" != "1" ]; then
    timeout 60 "$PY" -m pip install --no-deps --no-build-isolation -q -e . || \
        echo "pip install failed; using PYTHONPATH=src"
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
"$PY" - <<'PY'
import json, os, platform, torch
out = os.environ["GPU_ADAPT_OUT"]
info = {"torch": torch.__version__, "cuda": torch.cuda.is_available(), "python": platform.python_version(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu"}
json.dump(info, open(os.path.join(out, "machine.json"), "w"))
print("machine:", info)
PY

run_part() {  # run_part NAME LIMIT: the python part NAME under a timeout; its rows go to $OUT/NAME.jsonl
    local name=$1 limit=$2
    local t0=$SECONDS
    timeout --kill-after=10 "$limit" "$PY" - "$name" <<'PY'
import json, math, os, sys, time, warnings
warnings.filterwarnings("ignore")
import numpy as np
import torch

part = sys.argv[1]
out = os.environ["GPU_ADAPT_OUT"]
tiny = os.environ.get("GPU_ADAPT_TINY", "0") == "1"
dev = "cuda" if torch.cuda.is_available() else "cpu"
rows = open(os.path.join(out, f"{part}.jsonl"), "a")

def emit(**row):
    rows.write(json.dumps(row) + "\n"); rows.flush(); print(row, flush=True)

def sync():
    if dev == "cuda":
        torch.cuda.synchronize()

# SmolLM2-135M-Instruct's config.json (~/.cache/budgetsft/models/smollm2-135m-instruct/config.json)
SMOL = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
            num_key_value_heads=3, head_dim=64, vocab_size=49152, max_position_embeddings=8192,
            rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True, hidden_act="silu")
L1B = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
           num_key_value_heads=8, head_dim=64, vocab_size=128256, max_position_embeddings=8192,
           rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=True, hidden_act="silu")
L8B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
           num_key_value_heads=8, head_dim=128, vocab_size=128256, max_position_embeddings=8192,
           rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=False, hidden_act="silu")
TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=8, num_attention_heads=4,
            num_key_value_heads=2, head_dim=8, vocab_size=1000, max_position_embeddings=512,
            tie_word_embeddings=True, hidden_act="silu")
MODELS = [("smollm2-135m", SMOL), ("llama-1b", L1B), ("llama-8b", L8B)]
if tiny:
    MODELS = [(f"{n} (tiny)", TINY) for n, _ in MODELS[:2]]
SEQ = 32 if tiny else 128  # prompt tokens, as `adapt --max-prompt-tokens 64` gives on bbc-news (≈ 100 with the template)

def build(cfg):
    from transformers import LlamaConfig, LlamaForCausalLM
    config = LlamaConfig(**cfg)  # rope_theta: read by transformers 4.x, turned into rope_parameters by 5.x
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    dtype = torch.bfloat16 if (dev == "cuda" or not tiny) else torch.float32
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(dev):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(old)
    model.eval().requires_grad_(False)
    return model

def word_tokenizer(vocab_size):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    words = ["[PAD]", "[UNK]", "[BOS]", "[EOS]"] + [f"w{i}" for i in range(min(vocab_size, 2000) - 4)]
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="[BOS]", eos_token="[EOS]", pad_token="[PAD]",
                                   unk_token="[UNK]")

def texts(n, length, seed=0):
    rng = np.random.default_rng(seed)
    return [" ".join(f"w{j}" for j in rng.integers(10, 1900, size=length)) for _ in range(n)]

def timed(fn, warm, reps=1):
    warm(); sync()  # a small warm-up (kernels, allocator), then the timed run
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    sync()
    return (time.perf_counter() - t) / reps

if part == "features":
    from budgetsft.data import Example
    from budgetsft.features.causal import CausalFeaturizer
    labels = tuple(f"w{i}" for i in range(5))
    for name, cfg in MODELS:
        try:
            model = build(cfg)
            tok = word_tokenizer(cfg["vocab_size"])
            n = 64 if tiny else 1024
            for bs in ([8] if tiny else [16, 64]):
                fz = CausalFeaturizer(model=model, tokenizer=tok, device=dev, dtype="bf16", batch_size=bs,
                                      max_length=SEQ + 8, progress=False)
                exs = [Example(f"x{i}", t, labels) for i, t in enumerate(texts(n // 4, SEQ))]
                sec = timed(lambda: fz.transform_many(exs), lambda: fz.transform_many(exs[:bs]))
                emit(part="featurisation", model=name, what=f"causal joint features, {len(exs)} examples x 5 "
                     f"candidates, batch {bs} sequences", seq=SEQ, ex_per_s=len(exs) / sec,
                     seq_per_s=5 * len(exs) / sec)
            del model
            if dev == "cuda":
                torch.cuda.empty_cache()
        except Exception as exc:  # one model failing must not hide the others' rows
            emit(part="featurisation", model=name, error=f"{type(exc).__name__}: {exc}"[:300])
    from transformers import BertConfig, BertModel
    from budgetsft.features.encoder import SentenceEncoder
    cfg = BertConfig(hidden_size=32 if tiny else 384, num_hidden_layers=2 if tiny else 6, num_attention_heads=4 if tiny
                     else 12, intermediate_size=64 if tiny else 1536, vocab_size=2000, max_position_embeddings=512)
    bert = BertModel(cfg).to(dev).eval()
    tok = word_tokenizer(2000)
    n = 64 if tiny else 4096
    enc = SentenceEncoder(model=bert, tokenizer=tok, device=dev, dtype="bf16" if dev == "cuda" else "fp32",
                          batch_size=64 if tiny else 256, max_length=256, memo_size=0)
    batch = texts(n, 200, seed=1)
    sec = timed(lambda: enc.embed_many(batch), lambda: enc.embed_many(batch[:64]))
    emit(part="featurisation", model="all-minilm-l6-v2 shape" + (" (tiny)" if tiny else ""),
         what=f"sentence encoder, {n} texts of 200 tokens", seq=200, ex_per_s=n / sec, seq_per_s=n / sec)

if part == "adapt":
    from budgetsft.adapt.engine import Encoded, PrefixCache, score_packed, train_lora
    from budgetsft.adapt.pipeline import RECIPE
    rng = np.random.default_rng(0)
    for name, cfg in MODELS:
        try:
            model = build(cfg)
            n_layers = cfg["num_hidden_layers"]
            n = 64 if tiny else (512 if "8b" not in name else 256)
            items = {f"e{i}": Encoded(tuple(int(t) for t in rng.integers(10, 1000, size=SEQ)),
                                      tuple((10 + k, 20 + k, 3) for k in range(5))) for i in range(n)}
            keys, gold = list(items), [int(g) for g in rng.integers(0, 5, size=n)]
            variants = [RECIPE["lora_layers"]] + ([n_layers] if "135m" in name or tiny else [])
            for lora_layers in variants:
                split = max(0, n_layers - lora_layers)
                bs_eval = 16 if tiny else 64
                cache = PrefixCache(model, split, dtype="bf16", batch_size=bs_eval)
                sync(); t = time.perf_counter(); cache.add_many(keys, list(items.values())); sync()
                prefix = n / (time.perf_counter() - t)
                for bs in ([4] if tiny else [8, 32]):
                    peft_model, _ = train_lora(model, cache, keys[:bs],
                                               gold[:bs], epochs=1, batch_size=bs, dtype="bf16", progress=False)
                    peft_model = peft_model.unload()  # the warm-up run: drop its adapters
                    sync(); t = time.perf_counter()
                    peft_model, hist = train_lora(peft_model, cache, keys, gold, epochs=1, batch_size=bs,
                                                  dtype="bf16", progress=False)
                    sync(); train = n / (time.perf_counter() - t)
                    sync(); t = time.perf_counter()
                    score_packed(peft_model, cache, keys, batch_size=bs_eval, dtype="bf16", progress=False)
                    sync(); score = n / (time.perf_counter() - t)
                    model = peft_model.unload()
                    emit(part="adapt", model=name, lora_layers=f"{n_layers - split} of {n_layers}", batch=bs,
                         seq=SEQ, n=n, prefix_ex_per_s=prefix, train_ex_per_s=train, score_ex_per_s=score,
                         peak_gib=(torch.cuda.max_memory_allocated() / 2**30) if dev == "cuda" else None)
                del cache
            del model
            if dev == "cuda":
                torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()
        except Exception as exc:
            emit(part="adapt", model=name, error=f"{type(exc).__name__}: {exc}"[:300])

if part == "learners":
    from collections import deque
    from threadpoolctl import threadpool_limits
    from budgetsft.budget import Budget
    from budgetsft.envs import LinearSoftmaxEnv
    from budgetsft.game import play
    from budgetsft.gates import LLFGate
    from budgetsft.learners import LogisticLearner, SketchLearner
    d = 64 if tiny else 4096
    rank = 8 if tiny else 64
    for label, make, T in (("exact (logistic)", lambda: LogisticLearner(), 40 if tiny else 150),
                           (f"sketch (rank {rank})", lambda: SketchLearner(rank=rank), 40 if tiny else 1500)):
        rounds = list(LinearSoftmaxEnv(d=d, K=5, rounds=T, seed=0))
        for threads in (1, None):
            with threadpool_limits(limits=threads, user_api="blas"):
                t = time.perf_counter()
                deque(play(rounds, make(), LLFGate(), Budget(math.floor(0.1 * T))), maxlen=0)
                sec = time.perf_counter() - t
            emit(part="learners", learner=label, d=d, rounds=T, blas_threads=threads or "default",
                 rounds_per_s=T / sec)
PY
    local rc=$?
    if [ $rc -ne 0 ]; then
        echo "{\"part\": \"$name\", \"error\": \"exit $rc after $((SECONDS - t0)) s (124: timed out at ${limit} s)\"}" \
            >> "$OUT/$name.jsonl"
    fi
}

rm -f "$OUT"/features.jsonl "$OUT"/adapt.jsonl "$OUT"/learners.jsonl
run_part features "$LIMIT_MODEL"
run_part adapt "$((LIMIT_MODEL + 60))"
run_part learners "$LIMIT_LEARN"

"$PY" - <<'PY'
import json, os
out = os.environ["GPU_ADAPT_OUT"]
machine = json.load(open(os.path.join(out, "machine.json")))
def rows(name):
    p = os.path.join(out, f"{name}.jsonl")
    return [json.loads(l) for l in open(p)] if os.path.exists(p) else []
f = lambda x: "–" if x is None else (f"{x:,.1f}" if isinstance(x, float) else str(x))
md = [f"# budgetsft on {machine['device']} (torch {machine['torch']}, CUDA {machine['cuda']})", "",
      "Random-weight models of real sizes, bf16; throughput only (never label value).", "",
      "## featurisation", "", "| model | what | tokens | examples/s | sequences/s |", "|---|---|---:|---:|---:|"]
for r in rows("features"):
    md.append(f"| {r.get('model', '?')} | {r.get('what', r.get('error'))} | {f(r.get('seq'))} | "
              f"{f(r.get('ex_per_s'))} | {f(r.get('seq_per_s'))} |")
md += ["", "## adaptation: prefix pass, one LoRA epoch, packed scoring (5 candidates)", "",
       "| model | LoRA layers | batch | prompt tokens | examples | prefix examples/s | LoRA epoch examples/s | "
       "scoring examples/s | peak GiB |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
for r in rows("adapt"):
    if "error" in r:
        md.append(f"| {r.get('model', r.get('part'))} | error: {r['error']} | | | | | | | |")
        continue
    md.append(f"| {r['model']} | {r['lora_layers']} | {r['batch']} | {r['seq']} | {r['n']} | "
              f"{f(r['prefix_ex_per_s'])} | {f(r['train_ex_per_s'])} | {f(r['score_ex_per_s'])} | "
              f"{f(r['peak_gib'])} |")
d = rows("learners")[0].get("d", 4096) if rows("learners") else 4096
md += ["", f"## learners at d = {d} (numpy, CPU): the game loop with LLF at β = 0.1", "",
       "| learner | d | rounds | BLAS threads | rounds/s |", "|---|---:|---:|---|---:|"]
for r in rows("learners"):
    if "error" in r:
        md.append(f"| error: {r['error']} | | | | |")
        continue
    md.append(f"| {r['learner']} | {r['d']} | {r['rounds']} | {r['blas_threads']} | {f(r['rounds_per_s'])} |")
text = "\n".join(md) + "\n"
open(os.path.join(out, "gpu_adapt.md"), "w").write(text)
json.dump({"machine": machine, "features": rows("features"), "adapt": rows("adapt"), "learners": rows("learners")},
          open(os.path.join(out, "gpu_adapt.json"), "w"), indent=1)
print(text)
PY
