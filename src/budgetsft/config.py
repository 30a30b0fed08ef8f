"""Configs are data (STYLE habit 10): components picked by short registered names.

A run config is a dict (or a YAML file) such as::

    env: {name: synthetic, d: 20, K: 5, rounds: 5000, temperature: 0.05}
    learner: {name: ridge, lam: 1.0, radius: 0.1}
    gate: {name: llf, beta: 0.1}
    follower: {name: best_response}
    seed: 0

``gate.beta`` (or ``gate.budget``) sets the label budget; ``gate.unit``
("labels" or "cost") how it is counted. Every unknown name or key is a
:class:`ConfigError` naming it and listing the valid ones.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from budgetsft.envs import AdversarialContextEnv, DriftingEnv, LinearSoftmaxEnv
from budgetsft.exceptions import ConfigError
from budgetsft.followers import BestResponseFollower, RandomFollower
from budgetsft.gates import BBQGate, CGZGate, FirstGate, FullGate, LLFGate, MarginGate, RandomGate
from budgetsft.learners import AROWLearner, LogisticLearner, OGDLearner, RidgeLearner, SketchLearner

__all__ = [
    "LEARNERS",
    "GATES",
    "FOLLOWERS",
    "ENVS",
    "DEFAULT_CONFIG",
    "build",
    "load_config",
    "merge",
    "validate_config",
]

LEARNERS: dict[str, Callable] = {
    "logistic": LogisticLearner,
    "arow": AROWLearner,
    "ridge": RidgeLearner,
    "ogd": OGDLearner,
    "sketch": SketchLearner,
}
GATES: dict[str, Callable] = {
    "llf": LLFGate,
    "full": FullGate,
    "random": RandomGate,
    "first": FirstGate,
    "margin": MarginGate,
    "bbq": BBQGate,
    "cgz": CGZGate,
}
FOLLOWERS: dict[str, Callable] = {"best_response": BestResponseFollower, "random": RandomFollower}
ENVS: dict[str, Callable] = {
    "synthetic": LinearSoftmaxEnv,
    "drifting": DriftingEnv,
    "adversarial": AdversarialContextEnv,
}
# Featurisers of a `data` run; "auto" is block on a fixed label set, else encoder (realdata.resolve_features).
FEATURES = ("auto", "block", "causal", "encoder", "grad")
# Keys of the gate section that configure the budget, not the gate object.
BUDGET_KEYS = ("beta", "budget", "unit")
# Components that own a random generator receive a seed derived from the run seed.
SEEDED_OFFSET = {"gate": 1, "follower": 2}

DEFAULT_CONFIG: dict[str, Any] = {
    "env": {"name": "synthetic", "d": 20, "K": 5, "rounds": 5000, "temperature": 0.05, "theta_norm": 1.0},
    "learner": {"name": "logistic"},
    "gate": {"name": "llf", "beta": 0.1},
    "follower": {"name": "best_response"},
    "seed": 0,
    "comparator_S": 10.0,
    "comparator": "auto",
    "test_rounds": 2000,
    "refit": True,
}

# `regret_lp: false` is how older configs (and session ledgers) say `comparator: none`.
TOP_LEVEL_KEYS = set(DEFAULT_CONFIG) | {"data", "features", "description", "progress", "regret_lp", "mode", "batch",
                                       "audit", "eval", "max_pending"}


def merge(base: dict, override: dict) -> dict:
    """Deep-merge ``override`` into a copy of ``base``; a new ``name`` replaces the section.

    The two ways of giving a budget exclude each other: an override that sets
    ``budget`` drops the ``beta`` it inherits, and one that sets ``beta`` drops
    an inherited ``budget`` (so ``gate: {name: llf, budget: 5}`` over the
    default β works; both in the same mapping is still an error).
    """
    out = copy.deepcopy(base)
    for one, other in (("budget", "beta"), ("beta", "budget")):
        if one in override and other not in override:
            out.pop(other, None)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            if "name" in value and value["name"] != out[key].get("name"):
                out[key] = copy.deepcopy(value)
            else:
                out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_config(path: str | Path) -> dict:
    """Read a YAML config and merge it over :data:`DEFAULT_CONFIG`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a config must be a mapping of sections; got {type(raw).__name__}.")
    unknown = set(raw) - TOP_LEVEL_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown top-level keys {sorted(unknown)}; valid: {sorted(TOP_LEVEL_KEYS)}.")
    cfg = merge(DEFAULT_CONFIG, raw)
    validate_config(cfg, where=str(path))
    return cfg


def _construct(registry: dict[str, Callable], section: str, spec: dict, extra: dict | None = None,
               where: str = "config"):
    if not isinstance(spec, dict) or "name" not in spec:
        raise ConfigError(f"{where}: section '{section}' must be a mapping with a 'name'. Got {spec!r}.")
    name = spec["name"]
    if name not in registry:
        raise ConfigError(f"{where}: unknown {section} {name!r}; valid: {', '.join(sorted(registry))}.")
    cls = registry[name]
    kwargs = {k: v for k, v in spec.items() if k != "name" and not (section == "gate" and k in BUDGET_KEYS)}
    params = inspect.signature(cls).parameters
    for key in kwargs:
        if key not in params:
            valid = [p for p in params if p not in ("self",)]
            raise ConfigError(
                f"{where}: {section} {name!r} has no parameter {key!r}; valid: {', '.join(valid) or '(none)'}."
            )
    for key, value in (extra or {}).items():
        if key in params and key not in kwargs:
            kwargs[key] = value
    return cls(**kwargs)


def build(cfg: dict, where: str = "config") -> dict:
    """Instantiate env, learner, gate and follower of a run config (no rounds are played)."""
    seed = cfg.get("seed", 0)
    out = {}
    if cfg.get("env") is not None and not cfg.get("data"):
        out["env"] = _construct(ENVS, "env", cfg["env"], {"seed": seed}, where)
    out["learner"] = _construct(LEARNERS, "learner", cfg["learner"], None, where)
    out["gate"] = _construct(GATES, "gate", cfg["gate"], {"seed": seed * 1000 + SEEDED_OFFSET["gate"]}, where)
    out["follower"] = _construct(
        FOLLOWERS, "follower", cfg.get("follower", {"name": "best_response"}),
        {"seed": seed * 1000 + SEEDED_OFFSET["follower"]}, where,
    )
    return out


def validate_config(cfg: dict, where: str = "config") -> None:
    """Build every component and run its parameter checks, before any round is played."""
    from budgetsft.budget import Budget

    # Issue 13: values that would crash building the components (the seed is multiplied, the rounds counted).
    seed = cfg.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ConfigError(f"{where}: 'seed' must be an int in [0, 2**32). Got {seed!r}.")
    env_rounds = (cfg.get("env") or {}).get("rounds") if not cfg.get("data") else None
    if isinstance(env_rounds, int) and not isinstance(env_rounds, bool) and env_rounds > 10**9:
        raise ConfigError(f"{where}: 'env.rounds' must be an int in [1, 10**9]. Got {env_rounds!r}.")
    objs = build(cfg, where)
    for key in ("env", "learner", "gate", "follower"):
        obj = objs.get(key)
        if obj is not None and hasattr(obj, "_validate"):
            obj._validate()
    gate = cfg["gate"]
    if "beta" in gate and "budget" in gate:
        raise ConfigError(f"{where}: give the gate either 'beta' or 'budget', not both.")
    if "budget" in gate:
        Budget(gate["budget"], gate.get("unit", "labels"))
    else:
        rounds = len(objs["env"]) if "env" in objs else 1
        Budget.from_beta(gate.get("beta", 1.0), rounds, unit=gate.get("unit", "labels"))
    if cfg.get("data"):
        data = cfg["data"]
        if not (isinstance(data, str) or (isinstance(data, dict) and "name" in data)):
            raise ConfigError(f"{where}: 'data' must be a data set name or a mapping with a 'name'. Got {data!r}.")
        feats = cfg.get("features") or {"name": "auto"}
        kind = feats if isinstance(feats, str) else feats.get("name", "auto")
        if kind not in FEATURES:
            raise ConfigError(f"{where}: unknown features {kind!r}; valid: {', '.join(FEATURES)}.")
    # Issue 13: run settings are checked here too, with the parameter named.
    test_rounds = cfg.get("test_rounds", 0)
    if isinstance(test_rounds, bool) or not isinstance(test_rounds, int) or test_rounds < 0:
        raise ConfigError(f"{where}: 'test_rounds' must be an int >= 0. Got {test_rounds!r}.")
    # Sessions whose labels come from people (budgetsft select, --oracle web/file/terminal).
    if cfg.get("mode", "stream") not in ("stream", "pool"):
        raise ConfigError(f"{where}: 'mode' must be stream or pool. Got {cfg['mode']!r}.")
    for key, low in (("batch", 1), ("max_pending", 0)):
        value = cfg.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
            raise ConfigError(f"{where}: '{key}' must be an int >= {low}. Got {value!r}.")
    audit = cfg.get("audit", 0.0)
    if isinstance(audit, bool) or not isinstance(audit, int | float) or not 0 <= audit < 1:
        raise ConfigError(f"{where}: 'audit' (the share of the budget spent on uniformly random items) must be a "
                          f"float in [0, 1). Got {audit!r}.")
    if cfg.get("eval") is not None and not isinstance(cfg["eval"], str):
        raise ConfigError(f"{where}: 'eval' must be the path of a labelled JSONL file. Got {cfg['eval']!r}.")
    if isinstance(cfg.get("data"), dict):
        for key in ("allow_unlabelled", "skip_invalid"):
            if key in cfg["data"] and not isinstance(cfg["data"][key], bool):
                raise ConfigError(f"{where}: 'data.{key}' must be true or false. Got {cfg['data'][key]!r}.")
    for key in ("regret_lp", "progress", "refit"):
        if key in cfg and not isinstance(cfg[key], bool):
            raise ConfigError(f"{where}: '{key}' must be true or false. Got {cfg[key]!r}.")
    if cfg.get("comparator", "auto") not in ("auto", "exact", "approx", "none"):
        raise ConfigError(f"{where}: 'comparator' must be auto, exact, approx or none. Got {cfg['comparator']!r}.")
    s_norm = cfg.get("comparator_S", 10.0)
    if isinstance(s_norm, bool) or not isinstance(s_norm, int | float) or not (s_norm > 0 and s_norm < float("inf")):
        raise ConfigError(f"{where}: 'comparator_S' must be a finite number > 0. Got {s_norm!r}.")
