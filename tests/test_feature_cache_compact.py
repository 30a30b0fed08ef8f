"""The compact, bounded feature cache (SPEC §6): block entries hold e(x) in float32, every entry is float32,
cold and cached runs agree bit for bit, old float64 entries are still read, and a broken cache folder, a
link to /dev/zero or a FIFO in place of an entry is a one-line warning, never a traceback or a hang.

The tests that need no model use a BlockFeaturizer whose encoder is replaced by fixed float32 vectors
(the packaged all-MiniLM-L6-v2 config gives h = 384; no weights are loaded); one test runs the real encoder.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

from budgetsft.data.schema import Example
from budgetsft.exceptions import BudgetsftWarning
from budgetsft.features import FeatureCacheWarning, featurize, featurizer_key
from budgetsft.features.base import example_key
from budgetsft.features.block import BlockFeaturizer
from budgetsft.features.cache import MAGIC_V1, open_cache

LABELS = ("business", "entertainment", "politics", "sport", "tech")


def unit_vectors(texts, progress=False) -> np.ndarray:
    """Deterministic unit float32 vectors of 384 numbers per text, as float64 (what the encoder returns)."""
    rows = []
    for t in texts:
        seed = int.from_bytes(hashlib.sha256(t.encode()).digest()[:4], "little")
        v = np.random.default_rng(seed).normal(size=384).astype(np.float32)
        rows.append(v / np.linalg.norm(v))
    return np.asarray(rows, dtype=np.float64)


class FixedEncoderBlock(BlockFeaturizer):
    """Block features over deterministic unit float32 vectors (what the encoder returns, without the model)."""

    def __init__(self, labels=LABELS) -> None:
        super().__init__(labels=labels, progress=False)
        self.calls = 0

        def embed_many(texts, progress=False):
            self.calls += 1
            return unit_vectors(texts)

        self.encoder.embed_many = embed_many


class WideFeaturizer:
    """A torch-free featuriser with float64 values that float32 cannot hold exactly."""

    name = "wide-test"
    dim = 5

    def settings(self) -> dict:
        return {"v": 1}

    def transform_many(self, examples):
        return [np.full((len(ex.candidates), self.dim), 1.0 / (3 + len(ex.prompt))) for ex in examples]


def _examples(n: int, labels=LABELS) -> list[Example]:
    return [Example(f"t{i}", f"synthetic headline number {i} about {labels[i % len(labels)]}", labels, i % len(labels))
            for i in range(n)]


def _size(folder) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


# ---------------------------------------------------------------- compact block entries


def test_block_cache_of_2000_texts_is_under_5_mb(tmp_path):
    f = FixedEncoderBlock()
    examples = _examples(2000)
    first = featurize(examples, f, cache_dir=tmp_path, progress=False)
    size = _size(first.path)
    assert size <= 5_000_000, size  # 154 MB when the entries were expanded float64 (5 × 1925 × 8 bytes each)
    per_entry = size / 2000
    assert per_entry < 384 * 4 + 5 * 4 + 400  # e(x) in float32, the blocks, headers
    calls = f.calls
    second = featurize(examples, f, cache_dir=tmp_path, progress=False)
    assert (second.n_cached, second.n_computed) == (2000, 0) and f.calls == calls
    for a, b in zip(first.features, second.features, strict=True):
        assert a.dtype == b.dtype == np.float64 and a.tobytes() == b.tobytes()


def test_block_expansion_equals_the_featuriser_bit_for_bit(tmp_path):
    f = FixedEncoderBlock()
    examples = [Example("a", "Stocks fell.", ("tech", "business", "sport")), Example("b", "A goal.", ("sport", "tech"))]
    direct = f.transform_many(examples)
    featurize(examples, f, cache_dir=tmp_path, progress=False)
    cached = featurize(examples, f, cache_dir=tmp_path, progress=False)
    assert cached.n_cached == 2
    for want, got in zip(direct, cached.features, strict=True):
        assert got.tobytes() == want.tobytes()


def test_pack_unpack_round_trip_and_rejects_nonsense():
    f = FixedEncoderBlock()
    (phi,) = f.transform_many([Example("a", "Stocks fell.", ("tech", "business", "sport"))])
    packed = f.pack(phi)
    assert packed.dtype == np.float32 and packed.shape == (384 + 3,)
    assert f.unpack(packed, 3).tobytes() == phi.tobytes()
    with pytest.raises(ValueError):
        f.unpack(packed, 400)  # too short for 400 rows
    bad = packed.copy()
    bad[-1] = 7  # no 8th label
    with pytest.raises(ValueError):
        f.unpack(bad, 3)
    with pytest.raises(ValueError):
        f.pack(np.zeros((2, 7)))  # not five blocks


def test_a_packed_entry_that_does_not_expand_is_recomputed(tmp_path):
    f = FixedEncoderBlock()
    examples = _examples(3)
    good = featurize(examples, f, cache_dir=tmp_path, progress=False)
    cache = open_cache(f, tmp_path)
    payload = io.BytesIO()
    np.save(payload, np.zeros(384 + 5, dtype=np.float32) + 9)  # block index 9 of 5 labels
    body = payload.getvalue()
    from budgetsft.features.cache import MAGIC

    cache.path(example_key(examples[0])).write_bytes(MAGIC + hashlib.sha256(body).digest() + body)
    with pytest.warns(FeatureCacheWarning, match="cannot expand"):
        res = featurize(examples, f, cache_dir=tmp_path, progress=False)
    assert res.n_repaired == 1 and res[0].tobytes() == good[0].tobytes()


# ---------------------------------------------------------------- float32 everywhere, cold == cached


def test_entries_are_float32_and_cold_equals_cached_equals_uncached(tmp_path):
    f = WideFeaturizer()
    examples = _examples(4)
    cold = featurize(examples, f, cache_dir=tmp_path, progress=False)
    entry = open_cache(f, tmp_path).path(example_key(examples[0]))
    assert entry.stat().st_size < 10 + 32 + 128 + 5 * 5 * 8  # (5, 5) float32, not float64
    warm = featurize(examples, f, cache_dir=tmp_path, progress=False)
    off = featurize(examples, f, use_cache=False, progress=False)
    assert warm.n_cached == 4
    for a, b, c in zip(cold.features, warm.features, off.features, strict=True):
        assert a.dtype == np.float64 and a.tobytes() == b.tobytes() == c.tobytes()
        assert np.array_equal(a, a.astype(np.float32))  # float32 values


def test_old_float64_entries_are_still_read(tmp_path):
    f = WideFeaturizer()
    examples = _examples(3)
    want = featurize(examples, f, use_cache=False, progress=False)
    cache = open_cache(f, tmp_path)
    for ex, arr in zip(examples, f.transform_many(examples), strict=True):  # written as version 1 did
        buf = io.BytesIO()
        np.save(buf, arr.astype(np.float64), allow_pickle=False)
        body = buf.getvalue()
        path = cache.path(example_key(ex))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(MAGIC_V1 + hashlib.sha256(body).digest() + body)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = featurize(examples, f, cache_dir=tmp_path, progress=False)
    assert (res.n_cached, res.n_repaired) == (3, 0)
    for a, b in zip(want.features, res.features, strict=True):
        assert a.tobytes() == b.tobytes()


def test_old_expanded_block_entries_are_read_bit_for_bit(tmp_path):
    f = FixedEncoderBlock()
    examples = _examples(5)
    want = f.transform_many(examples)
    cache = open_cache(f, tmp_path)
    for ex, arr in zip(examples, want, strict=True):
        buf = io.BytesIO()
        np.save(buf, arr, allow_pickle=False)
        body = buf.getvalue()
        path = cache.path(example_key(ex))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(MAGIC_V1 + hashlib.sha256(body).digest() + body)
    calls = f.calls
    res = featurize(examples, f, cache_dir=tmp_path, progress=False)
    assert res.n_cached == 5 and f.calls == calls
    for a, b in zip(want, res.features, strict=True):
        assert a.tobytes() == b.tobytes()


# ---------------------------------------------------------------- a broken cache folder


@pytest.mark.parametrize("where", ["root", "features", "key"])
def test_a_file_in_place_of_the_cache_folder_is_one_warning(tmp_path, where):
    f = WideFeaturizer()
    root = tmp_path / "cache"
    blocker = {"root": root, "features": root / "features", "key": root / "features" / featurizer_key(f)}[where]
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("not a folder")
    examples = _examples(3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = featurize(examples, f, cache_dir=root, progress=False)
    assert res.n_computed == 3 and res.path is None
    assert [w.category for w in caught] == [FeatureCacheWarning]
    msg = str(caught[0].message)
    assert f"{blocker} is a file, not a folder" in msg and "not cached" in msg and "\n" not in msg
    assert blocker.read_text() == "not a folder"  # left alone
    for a, b in zip(res.features, featurize(examples, f, use_cache=False, progress=False).features, strict=True):
        assert a.tobytes() == b.tobytes()


def test_cache_warnings_are_budgetsft_warnings():
    # the CLI prints a BudgetsftWarning as one `warning: …` line; existing RuntimeWarning filters still match
    assert issubclass(FeatureCacheWarning, BudgetsftWarning) and issubclass(FeatureCacheWarning, RuntimeWarning)


def test_the_repair_warning_prints_as_one_line_in_the_cli_format(tmp_path, capsys, monkeypatch):
    from budgetsft import cli

    f = WideFeaturizer()
    examples = _examples(2)
    featurize(examples, f, cache_dir=tmp_path, progress=False)
    open_cache(f, tmp_path).path(example_key(examples[1])).write_bytes(b"damaged")
    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        monkeypatch.setattr(warnings, "showwarning", cli._show_warning)  # what the CLI installs
        res = featurize(examples, f, cache_dir=tmp_path, progress=False)
    assert res.n_repaired == 1
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["warning: features: bad cache entry for example 't1' (bad header (truncated or not a "
                     "feature file)); recomputing"]


def test_cache_folder_warning_is_one_line_through_the_cli(tmp_path):
    rows = [{"id": i, "prompt": f"headline {i}", "candidates": ["no", "yes"], "answer": i % 2} for i in range(6)]
    data = tmp_path / "mine.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    cache = tmp_path / "cache"
    cache.write_text("a file where the cache folder goes")
    env = {**os.environ, "BUDGETSFT_CACHE": str(cache)}
    cmd = [sys.executable, "-m", "budgetsft", "featurize", "--data", str(data), "--device", "cpu"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    notes = [line for line in proc.stderr.splitlines() if "cache" in line]
    assert len(notes) == 1 and notes[0].startswith("warning: features: cannot use the feature cache folder")
    assert f"{cache} is a file, not a folder" in notes[0]
    assert "Warning" not in proc.stderr and "Traceback" not in proc.stderr
    assert "6 computed" in proc.stdout


# ---------------------------------------------------------------- bounded reads, no links followed


def _one_entry(tmp_path):
    f = WideFeaturizer()
    examples = _examples(2)
    good = featurize(examples, f, cache_dir=tmp_path, progress=False)
    return f, examples, good, open_cache(f, tmp_path).path(example_key(examples[0]))


def test_a_symlink_entry_is_not_followed(tmp_path):
    f, examples, good, entry = _one_entry(tmp_path / "c")
    outside = tmp_path / "outside.npyc"
    outside.write_bytes(entry.read_bytes())  # a valid entry, but out of the cache
    entry.unlink()
    entry.symlink_to(outside)
    with pytest.warns(FeatureCacheWarning, match="symbolic link"):
        res = featurize(examples, f, cache_dir=tmp_path / "c", progress=False)
    assert (res.n_cached, res.n_repaired) == (1, 1)
    assert not entry.is_symlink() and entry.is_file()  # rewritten in place of the link
    assert res[0].tobytes() == good[0].tobytes()


def test_a_symlinked_entry_folder_is_neither_read_nor_written(tmp_path):
    f, examples, good, entry = _one_entry(tmp_path / "c")
    elsewhere = tmp_path / "elsewhere"
    entry.parent.rename(elsewhere)
    entry.parent.symlink_to(elsewhere)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = featurize(examples, f, cache_dir=tmp_path / "c", progress=False)
    messages = [str(w.message) for w in caught]
    assert res.n_repaired >= 1 and any("symbolic link" in m for m in messages)
    assert any("cannot write cache entry" in m for m in messages)
    assert res[0].tobytes() == good[0].tobytes()


def test_an_entry_larger_than_its_shape_allows_is_not_read(tmp_path):
    f, examples, good, entry = _one_entry(tmp_path)
    entry.write_bytes(entry.read_bytes() + b"\0" * 200_000)
    with pytest.warns(FeatureCacheWarning, match="allows"):
        res = featurize(examples, f, cache_dir=tmp_path, progress=False)
    assert res.n_repaired == 1 and res[0].tobytes() == good[0].tobytes()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/dev/zero, FIFOs and RLIMIT_AS")
@pytest.mark.parametrize("kind", ["dev-zero", "fifo"])
def test_dev_zero_or_fifo_in_place_of_an_entry_is_a_bad_entry(tmp_path, kind):
    # In a child with 1 GiB of address space and a time limit: reading /dev/zero without a bound dies of
    # MemoryError, opening a FIFO without O_NONBLOCK hangs; the bounded, non-following read does neither.
    code = textwrap.dedent(f"""
        import os, resource, sys, warnings
        import numpy as np
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from test_feature_cache_compact import WideFeaturizer, _examples
        from budgetsft.features import featurize
        from budgetsft.features.base import example_key
        from budgetsft.features.cache import open_cache
        f, ex = WideFeaturizer(), _examples(2)
        featurize(ex, f, cache_dir={str(tmp_path)!r}, progress=False)
        entry = open_cache(f, {str(tmp_path)!r}).path(example_key(ex[0]))
        entry.unlink()
        if {kind!r} == "fifo":
            os.mkfifo(entry)
        else:
            entry.symlink_to("/dev/zero")
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            res = featurize(ex, f, cache_dir={str(tmp_path)!r}, progress=False)
        assert res.n_repaired == 1, res
        assert entry.is_file() and not entry.is_symlink()
        print([str(w.message) for w in caught])
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "bad cache entry" in proc.stdout


# ---------------------------------------------------------------- the real encoder


@pytest.mark.integration
def test_real_minilm_block_cache_is_compact_and_exact(tmp_path):
    pytest.importorskip("torch")
    f = BlockFeaturizer(labels=LABELS, device="cpu", progress=False)
    examples = _examples(40)
    direct = f.transform_many(examples)
    cold = featurize(examples, f, cache_dir=tmp_path, progress=False)
    fresh = BlockFeaturizer(labels=LABELS, device="cpu", progress=False)
    warm = featurize(examples, fresh, cache_dir=tmp_path, progress=False)
    assert warm.n_cached == 40 and fresh.encoder.model is None  # never loaded
    assert _size(cold.path) < 40 * 2_000
    for a, b, c in zip(direct, cold.features, warm.features, strict=True):
        assert a.tobytes() == b.tobytes() == c.tobytes()
