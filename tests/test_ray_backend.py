"""The Ray backend (optional extra ``budgetsft[ray]``) against a real local Ray instance.

The integration tests share one ``ray.init(num_cpus=2)`` (module fixture); the
backend reuses an initialised Ray and leaves it running, and the fixture shuts
it down at the end. About a minute on a busy 2-core machine, most of it Ray
start-up and two actors loading the encoder.
"""

from __future__ import annotations

import math
import subprocess
import sys
import time

import numpy as np
import pytest

from budgetsft.exceptions import ConfigError
from budgetsft.experiment import sweep

ray = pytest.importorskip("ray")

BASE = {"env": {"rounds": 300, "d": 6}, "test_rounds": 50}


def _same(a: dict, b: dict) -> bool:
    """Equal summaries, "seconds" aside (NaN equals NaN)."""
    ka = {k: v for k, v in a.items() if k != "seconds"}
    kb = {k: v for k, v in b.items() if k != "seconds"}
    if ka.keys() != kb.keys():
        return False
    for k, v in ka.items():
        w = kb[k]
        if isinstance(v, float) and isinstance(w, float) and math.isnan(v) and math.isnan(w):
            continue
        if v != w:
            return False
    return True


@pytest.fixture(scope="module")
def ray_local():
    # Tasks of "margin" cells raise (fault injection in ray_backend._run_cell): no real
    # configuration can fail inside a task, since every cell is validated on the driver.
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING",
             runtime_env={"env_vars": {"BUDGETSFT_FAIL_GATE": "margin"}})
    yield ray
    ray.shutdown()


# --------------------------------------------------------------------------- no Ray needed


def test_core_does_not_import_ray():
    code = (
        "import sys, budgetsft, budgetsft.experiment, budgetsft.config, budgetsft.ray_backend; "
        "sys.exit('ray' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_missing_ray_is_a_config_error(monkeypatch):
    from budgetsft.ray_backend import sweep_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` raise ImportError
    with pytest.raises(ConfigError, match=r"install budgetsft\[ray\]"):
        sweep_ray(BASE, ["llf"], [0.1], [0])


def test_bad_config_fails_before_any_task(monkeypatch):
    from budgetsft.ray_backend import sweep_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # validation comes first: Ray is never reached
    with pytest.raises(ConfigError, match="pacing"):
        sweep_ray(BASE, ["llf"], [0.1], [0], gate_options={"llf": {"pacing": "yes"}})


# --------------------------------------------------------------------------- real Ray


@pytest.mark.integration
def test_sweep_matches_local_backend(ray_local):
    from budgetsft.ray_backend import sweep_ray

    gates, betas, seeds = ["llf", "random", "first", "full"], [0.1], [0, 1]
    local = sweep(BASE, gates, betas, seeds)
    seen: list[dict] = []
    remote = sweep_ray(BASE, gates, betas, seeds, on_result=seen.append)
    assert [(r["gate"], r["beta"], r["seed"]) for r in remote] == [
        (r["gate"], r["beta"], r["seed"]) for r in local
    ]
    assert len(remote) == 8  # 3 gates x 2 seeds, and full once per seed at beta = 1
    for a, b in zip(local, remote, strict=True):
        assert _same(a, b), (a, b)
    assert sorted(map(id, seen)) == sorted(map(id, remote))  # every cell reported once
    assert ray_local.is_initialized()  # the caller's instance is left running


@pytest.mark.integration
def test_failing_cell_is_reported_and_others_complete(ray_local):
    from budgetsft.ray_backend import sweep_ray

    errors: list[dict] = []
    oks: list[dict] = []
    out = sweep_ray(BASE, ["llf", "margin", "first"], [0.1], [0, 1],
                    on_result=oks.append, on_error=errors.append)
    assert [(r["gate"], r["seed"]) for r in out] == [
        ("llf", 0), ("llf", 1), ("margin", 0), ("margin", 1), ("first", 0), ("first", 1)
    ]
    failed = [r for r in out if "error" in r]
    assert [r["gate"] for r in failed] == ["margin", "margin"]
    for r in failed:
        assert set(r) == {"gate", "beta", "seed", "error"}
        assert r["beta"] == 0.1
        assert r["error"] == "RuntimeError: injected failure in a margin cell"
    assert len(errors) == 2 and len(oks) == 4
    local = sweep(BASE, ["llf", "first"], [0.1], [0, 1])
    for a, b in zip(local, [r for r in out if "error" not in r], strict=True):
        assert _same(a, b)


@pytest.mark.integration
def test_interrupt_cancels_outstanding_cells(ray_local):
    from budgetsft.ray_backend import sweep_ray

    def interrupt(summary: dict) -> None:
        raise KeyboardInterrupt

    big = {"env": {"rounds": 3000, "d": 6}, "test_rounds": 50}
    with pytest.raises(KeyboardInterrupt):
        sweep_ray(big, ["llf", "random", "first"], [0.05, 0.1, 0.2], [0, 1, 2, 3],
                  on_result=interrupt)
    assert ray_local.is_initialized()
    # 35 cells were still queued or running: cancelled, both CPUs are free again at once.
    deadline = time.monotonic() + 10.0
    while ray_local.available_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ray_local.available_resources().get("CPU", 0) == 2
    # The instance is still usable after the cancellations.
    assert sweep_ray(BASE, ["first"], [0.1], [0])[0]["gate"] == "first"


@pytest.mark.integration
def test_featurize_ray_fills_the_local_cache(ray_local, tmp_path):
    from budgetsft.data import load_dataset
    from budgetsft.features import featurize, make_featurizer
    from budgetsft.ray_backend import featurize_ray

    ds = load_dataset("bbc-news", max_examples=40)
    examples = list(ds.train) + list(ds.test)
    assert len(examples) == 40
    first = featurize_ray(examples, "encoder", cache_dir=tmp_path, batch_size=8, progress=False)
    assert (first.n_cached, first.n_computed) == (0, 40)
    assert len(first.features) == 40

    encoder = make_featurizer("encoder", progress=False)
    local = featurize(examples, encoder, cache_dir=tmp_path, progress=False)
    assert (local.n_cached, local.n_computed) == (40, 0)
    assert local.key == first.key and local.path == first.path
    for a, b in zip(first.features, local.features, strict=True):
        np.testing.assert_array_equal(a, b)  # the cache round trip is exact

    # Against a fresh local computation (different batching): bit-identical on this
    # machine, asserted to float32 round-off so that other BLAS builds pass too.
    fresh = featurize(examples, make_featurizer("encoder", progress=False), use_cache=False,
                      progress=False)
    for a, b in zip(first.features, fresh.features, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)

    again = featurize_ray(examples, "encoder", cache_dir=tmp_path, progress=False)
    assert (again.n_cached, again.n_computed) == (40, 0)  # nothing submitted to Ray


@pytest.mark.integration
def test_sweep_on_real_data_matches_local_backend(ray_local, tmp_path, monkeypatch):
    from budgetsft.ray_backend import sweep_ray

    # Streams are loaded (and featurised) once per seed by the driver and shipped
    # through the object store: only the driver's cache is used.
    monkeypatch.setenv("BUDGETSFT_CACHE", str(tmp_path))
    base = {"data": {"name": "bbc-news", "max_examples": 40}, "regret_lp": False,
            "features": {"name": "encoder", "device": "cpu", "progress": False}}
    remote = sweep_ray(base, ["llf", "first"], [0.2], [0, 1])
    local = sweep(base, ["llf", "first"], [0.2], [0, 1])
    assert all("error" not in r for r in remote)
    for a, b in zip(local, remote, strict=True):
        assert _same(a, b), (a, b)


@pytest.mark.integration
def test_cli_sweep_json_is_the_same_on_both_backends():
    args = [sys.executable, "-m", "budgetsft", "sweep", "--gates", "llf,random,full", "--betas", "0.1",
            "--seeds", "0,1", "--rounds", "300", "--json"]
    local = subprocess.run(args, capture_output=True, text=True, timeout=300)
    remote = subprocess.run(args + ["--backend", "ray", "--num-cpus", "2"], capture_output=True, text=True,
                            timeout=300)
    assert local.returncode == 0 and remote.returncode == 0, remote.stderr[-2000:]
    assert local.stdout.strip().splitlines()[-1] == remote.stdout.strip().splitlines()[-1]
