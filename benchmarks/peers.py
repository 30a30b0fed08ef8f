"""Side by side with the tools a user would pick instead (issue 4): same streams, same budgets.

Usage::

    python benchmarks/peers.py                 # full run (part of `make bench`)
    python benchmarks/peers.py --quick         # 1 seed, small streams, seconds to a minute
    python benchmarks/peers.py --settings bbc-news --seeds 0,1,2

Settings: the low-noise and the noisy synthetic streams (``configs/synthetic_*.yaml``),
``bbc-news`` and ``sarcasm`` with the features a user gets by default (``auto``: ``block`` on
these fixed label sets). Budgets β ∈ {0.05, 0.1, 0.2}.

Methods (all see the same :class:`~budgetsft.base.Round` streams and test rounds):

* budgetsft at its defaults (logistic learner, data-driven radius, budget-calibrated LLF;
  the synthetic settings take the learner of their config file) with the gates ``llf`` (stream mode),
  ``llf-window`` (window mode, W = 50), ``random``, ``first``, ``margin``, ``bbq``
  and ``full`` (β = 1);
* ``vw-active``: Vowpal Wabbit ``--active --simulation`` on the candidate-features
  formulation: every candidate a of a round is one binary example
  (φ(x, a), +1 if a is gold else -1), the prediction is the argmax of VW's scores,
  and a round counts as bought when VW queries any of its candidates. Mellowness is
  tuned on seed 0 (log-scale bisection) to buy ≈ B labels; there is no hard cap;
* ``vw-cs_active``: ``--cs_active K --simulation --adax --max_labels B`` (the hard-cap
  variant) on the per-example vector, costs 0 for the gold and 1 otherwise;
* ``river-entropy``: ``river.active.EntropySampler`` around
  ``river.linear_model.SoftmaxRegression`` (SGD step 1 / E‖x‖²) on the per-example vector, discount
  tuned on seed 0 to buy ≈ B labels; no hard cap;
* ``modal-pool``: modAL ``ActiveLearner`` with ``uncertainty_sampling`` in 10
  batches around scikit-learn's ``LogisticRegression`` on the train split as a pool,
  exactly B labels; no online mistakes (pool-based);
* ``skal-pal``, ``skal-varunc``, ``skal-split``: scikit-activeml's stream strategies
  ``StreamProbabilisticAL`` (budget manager ``BalancedIncrementalQuantileFilter``),
  ``VariableUncertainty`` (``VariableUncertaintyBudgetManager``) and ``Split``
  (``SplitBudgetManager``), each manager built with ``budget=β``, around the classifier
  of scikit-activeml's stream tutorial, ``ParzenWindowClassifier`` (RBF kernel, the
  library's "mean" bandwidth), on the per-example vector. Prequential: predict, count
  the mistake, ``query``, ``update`` the strategy, refit the classifier on every bought
  label (all of them: the tutorial's sliding window of 1,000 rounds is for drift). The
  budget managers only hold β as a windowed rate (uncapped, they bought up to 10 % more
  than B on the 5,000-round low-noise stream), so the harness holds B as a hard cap:
  once B labels are bought it turns further queries down, and tells the strategy's
  ``update`` that nothing was queried.

The per-example vector of the multiclass peers: for the synthetic streams the K
candidate rows flattened (K·d); for the encoder streams e(x), recovered exactly from
φ(x, a) = [√h·e(x)⊙e(a), e(a), 1] (the candidate set is fixed, so e(x) is what
φ adds per example; coordinate j is read from the candidate of largest |e(a)_j|).

Every method returns the indices of the rounds it bought. The ``refit`` column is one
downstream trainer for every bought set: :func:`budgetsft.refit.refit_accuracy`, a
conditional-logit head refit on exactly the bought rounds (C by cross-validation on
them alone) and scored on the test rounds. It always refits on budgetsft's rounds of
the setting, on ``block`` features where the setting has them (bbc-news) whatever
features the method itself used, so that label sets are compared, not learners.

Columns: labels bought (mean and max over seeds), whether the method holds B as a
hard cap, online mistakes (prediction before the label, every round), held-out
accuracy of the method's own model, refit accuracy, wall seconds (mean per run; the
refit is not timed) and peak memory (tracemalloc peak of one run at β = 0.1, seed 0:
Python heap including numpy buffers; it does not see VW's C++ heap).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import tempfile
import time
import tracemalloc
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from label_efficiency import labels_to_reach  # a sibling script: this folder is on sys.path
from threadpoolctl import threadpool_limits

from budgetsft.base import Round
from budgetsft.config import load_config, merge
from budgetsft.experiment import run
from budgetsft.refit import refit_accuracy

ROOT = Path(__file__).resolve().parents[1]
SYNTHETIC = {"low-noise": "configs/synthetic_low_noise.yaml", "noisy": "configs/synthetic_noisy.yaml"}
REAL = {"bbc-news": "auto", "sarcasm": "auto"}  # the user's default: `block` on a fixed label set
SETTINGS = [*SYNTHETIC, *REAL]
BETAS = [0.05, 0.1, 0.2]
EXTRA_RANDOM = [0.3, 0.5]  # random's curve is extended to read off label savings
BSFT = ["llf", "llf-window", "random", "first", "margin", "bbq", "full"]
# budgetsft again on `block` features (SPEC §6): e(x) in the block of each label, i.e. one linear model per
# class over e(x), the hypothesis class the multiclass peers use; only on settings with a fixed label set.
BSFT_BLOCK = ["llf-block", "random-block", "full-block"]
BLOCK_SETTINGS: set[str] = set()  # the default features are already `block` on bbc-news and sarcasm
SKAL = ["skal-pal", "skal-varunc", "skal-split"]  # scikit-activeml stream strategies
PEERS = ["vw-active", "vw-cs_active", "river-entropy", "modal-pool", *SKAL]
METHODS = BSFT + BSFT_BLOCK + PEERS
# skal-*: the cap is the harness's (their budget managers hold β only as a windowed rate), see run_skal
HARD_CAP = {"llf": True, "llf-window": True, "random": True, "first": True, "margin": True, "bbq": True,
            "full": True, "llf-block": True, "random-block": True, "full-block": True,
            "vw-active": False, "vw-cs_active": False, "river-entropy": False, "modal-pool": True,
            "skal-pal": True, "skal-varunc": True, "skal-split": True}


def is_full(method: str) -> bool:
    return method in ("full", "full-block")
WINDOW = 50
LEARNER: str | None = None  # --learner: the budgetsft learner of every budgetsft method (None: the defaults)
TUNE_STEPS = 10


# --------------------------------------------------------------------------- streams
@dataclass
class Setting:
    """One setting at one seed: rounds, per-example vectors, and how the budgetsft learner is configured."""

    name: str
    seed: int
    train: list[Round]
    test: list[Round]
    K: int
    X_train: np.ndarray  # (T, p) per-example vector of the multiclass peers
    X_test: np.ndarray
    y_train: np.ndarray
    y_test: np.ndarray
    base: dict
    vector: str
    lines: dict = field(default_factory=dict)  # VW text of each candidate row, cached per round
    block_train: list[Round] | None = None  # the same rounds on `block` features (BLOCK_SETTINGS only)
    block_test: list[Round] | None = None

    def budget(self, beta: float) -> int:
        return len(self.train) if beta >= 1 else int(math.floor(beta * len(self.train) + 1e-9))

    def refit_rounds(self) -> tuple[list[Round], list[Round]]:
        """Train and test rounds that every method's bought set is refit on (``block`` where there are)."""
        if self.block_train is not None:
            return self.block_train, self.block_test
        return self.train, self.test


def ex_from_block(rounds: Sequence[Round]) -> np.ndarray:
    """e(x) of each round from block features (candidate 0's row holds [e(x), 1] in its label's block)."""
    X0 = np.asarray(rounds[0].features)
    L = X0.shape[0]
    h = X0.shape[1] // L - 1
    out = np.empty((len(rounds), h))
    for t, r in enumerate(rounds):
        blocks = np.asarray(r.features[0], dtype=np.float64).reshape(-1, h + 1)
        out[t] = blocks[int(np.argmax(blocks[:, h]))][:h]  # the block whose bias is 1
    return out


def recover_ex(rounds: Sequence[Round]) -> np.ndarray:
    """e(x) of each round from encoder features φ(x, a) = [√h·e(x)⊙e(a), e(a), 1], shape (T, h)."""
    X0 = np.asarray(rounds[0].features)
    h = (X0.shape[1] - 1) // 2
    out = np.empty((len(rounds), h))
    for t, r in enumerate(rounds):
        X = np.asarray(r.features, dtype=np.float64)
        ea = X[:, h:2 * h]
        pick = np.argmax(np.abs(ea), axis=0)
        cols = np.arange(h)
        out[t] = X[pick, cols] / (math.sqrt(h) * ea[pick, cols])
    return out


def flatten(rounds: Sequence[Round]) -> np.ndarray:
    return np.stack([np.asarray(r.features, dtype=np.float64).ravel() for r in rounds])


def load_setting(name: str, seed: int, *, rounds: int | None = None, max_examples: int | None = None,
                 n_test: int = 2000) -> Setting:
    """Train/test rounds of ``name`` at ``seed`` (``rounds`` shortens synthetic streams)."""
    if name in SYNTHETIC:
        cfg = load_config(ROOT / SYNTHETIC[name])
        env_spec = dict(cfg["env"], seed=seed)
        if rounds:
            env_spec["rounds"] = rounds
        from budgetsft.config import ENVS

        spec = {k: v for k, v in env_spec.items() if k != "name"}
        env = ENVS[env_spec["name"]](**spec)
        train, test = list(env), env.test_rounds(n_test)
        base = {"learner": dict(cfg["learner"]), "regret_lp": False}
        Xtr, Xte, vector = flatten(train), flatten(test), f"flattened candidates (K·d = {flatten(test[:1]).shape[1]})"
    else:
        from budgetsft.realdata import load_streams

        s = load_streams(name, REAL[name], seed=seed, max_examples=max_examples, progress=False)
        train, test = s.train, s.test
        if rounds:
            train = train[:rounds]
        base = {"regret_lp": False}  # budgetsft's defaults: the learner, radius and gate a user gets
        if s.featurizer == "block":
            Xtr, Xte = ex_from_block(train), ex_from_block(test)
            vector = f"e(x) read off the block features (h = {Xtr.shape[1]})"
        else:
            Xtr, Xte = recover_ex(train), recover_ex(test)
            vector = f"e(x) recovered from φ (h = {Xtr.shape[1]})"
        if name in BLOCK_SETTINGS:
            b = load_streams(name, "block", seed=seed, max_examples=max_examples, progress=False)
            block_train, block_test = (b.train[:rounds] if rounds else b.train), b.test
            assert [r.id for r in block_train] == [r.id for r in train], "block and encoder streams differ"
            assert [r.id for r in block_test] == [r.id for r in test], "block and encoder test splits differ"
    K = int(np.asarray(train[0].features).shape[0])
    ytr = np.array([r.gold for r in train])
    yte = np.array([r.gold for r in test])
    st = Setting(name, seed, train, test, K, Xtr, Xte, ytr, yte, base, vector)
    if name in REAL and name in BLOCK_SETTINGS:
        st.block_train, st.block_test = block_train, block_test
    return st


# --------------------------------------------------------------------------- budgetsft
def run_bsft(st: Setting, method: str, beta: float) -> dict:
    block = method.endswith("-block")
    method = method.removesuffix("-block")
    gate = {"name": "llf", "window": WINDOW} if method == "llf-window" else {"name": method}
    b = 1.0 if method == "full" else beta
    cfg = merge(st.base, {"gate": {**gate, "beta": b}, "seed": st.seed})
    if LEARNER:
        cfg = merge(cfg, {"learner": {"name": LEARNER}})
    train, test = (st.block_train, st.block_test) if block else (st.train, st.test)
    res = run(cfg, stream=train, test=test)
    s = res.summary
    assert len(res.rounds) == len(train), "the game did not play the whole stream"
    bought = [i for i, rec in enumerate(res.records) if rec.queried]
    return {"labels": int(s["labels_bought"]), "mistakes": float(s["mistakes"]), "acc": float(s["test_accuracy"]),
            "bought": bought}


# --------------------------------------------------------------------------- Vowpal Wabbit
def _fmt(v: np.ndarray) -> str:
    return " ".join(f"{j}:{x:.7g}" for j, x in enumerate(v.tolist()) if x != 0.0)


def _cand_lines(st: Setting, rounds: Sequence[Round], key: str) -> list[list[str]]:
    if key not in st.lines:
        st.lines[key] = [["|f " + _fmt(np.asarray(row)) for row in np.asarray(r.features, dtype=np.float64)]
                         for r in rounds]
    return st.lines[key]


def _vw(args: str):
    import vowpalwabbit

    return vowpalwabbit.Workspace(args + " --quiet")


def run_vw_active(st: Setting, mellowness: float) -> dict:
    """VW --active --simulation on binary candidate examples; a round is bought if any candidate is queried."""
    vw = _vw(f"--active --simulation --mellowness {mellowness:.6g} --random_seed {st.seed + 1}")
    lines = _cand_lines(st, st.train, "train")
    bought_rounds: list[int] = []
    mistakes = 0
    for t, (r, cand) in enumerate(zip(st.train, lines, strict=True)):
        scores = [vw.predict(c) for c in cand]
        mistakes += int(int(np.argmax(scores)) != r.gold)
        bought = False
        for a, c in enumerate(cand):
            ex = vw.parse(f"{1 if a == r.gold else -1} {c}")
            vw.learn(ex)
            bought |= ex.get_simplelabel_label() < 1e30  # VW marks an unqueried example's label FLT_MAX
            vw.finish_example(ex)
        if bought:
            bought_rounds.append(t)
    test = _cand_lines(st, st.test, "test")
    hits = sum(int(np.argmax([vw.predict(c) for c in cand]) == r.gold) for r, cand in zip(st.test, test, strict=True))
    vw.finish()
    return {"labels": len(bought_rounds), "mistakes": float(mistakes), "acc": hits / len(st.test),
            "bought": bought_rounds}


def run_vw_cs_active(st: Setting, beta: float) -> dict:
    """VW --cs_active with --max_labels B.

    VW's cap counts cost queries (one per class) and stops at B·K of them, so more
    than B examples can be bought. Queries are read from VW's own per-class debug log
    (``--csa_debug``: ``ql=true`` for a queried class); an example is bought when any
    class is queried. Once the cap is reached cs_active returns before predicting
    (it logs nothing more); the saved model is then reloaded test-only and predicts
    the rest of the stream and the test set.
    """
    import vowpalwabbit

    K, B = st.K, st.budget(beta)
    vw = vowpalwabbit.Workspace(f"--cs_active {K} --simulation --adax --csa_debug --max_labels {B} "
                                f"--random_seed {st.seed + 1}", enable_logging=True)  # logs to a buffer, not stderr
    lines = ["|x " + _fmt(v) for v in st.X_train]
    bought: list[int] = []
    mistakes = 0
    seen = 0
    frozen = None
    for t, (y, line) in enumerate(zip(st.y_train, lines, strict=True)):
        pred = int((frozen or vw).predict(line)[0]) - 1
        mistakes += int(pred != y)
        if frozen is not None:
            continue
        vw.learn(" ".join(f"{k + 1}:{0 if k == y else 1}" for k in range(K)) + " " + line)
        log = vw.get_log()
        new = [ln for ln in log[seen:] if " ql=" in ln]
        seen = len(log)
        if any(" ql=true" in ln for ln in new):
            bought.append(t)
        if not new:  # VW's --max_labels cap: the reduction returned without a look at the classes
            frozen = _reload(vw)
    model = frozen or _reload(vw)
    test = ["|x " + _fmt(v) for v in st.X_test]
    hits = sum(int(int(model.predict(line)[0]) - 1 == y) for y, line in zip(st.y_test, test, strict=True))
    return {"labels": len(bought), "mistakes": float(mistakes), "acc": hits / len(st.test), "bought": bought}


def _reload(vw):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.vw")
        vw.save(path)
        return _vw(f"-i {path} -t")


# --------------------------------------------------------------------------- river
def run_river(st: Setting, discount: float) -> dict:
    """river EntropySampler(SoftmaxRegression); the harness buys the label while the model knows < 2 classes.

    (EntropySampler never asks before its classifier has seen two classes: the entropy of an
    empty or one-class prediction is 0.)
    """
    from river import active, linear_model, optim

    # SGD step 1 / E||x||^2: river's default 0.01 for the flattened synthetic vectors (||x||^2 ≈ K·d = 100),
    # 1.0 for the unit-norm e(x) (with 0.01 the probabilities stay uniform and the sampler asks for everything)
    lr = 1.0 / float(np.mean(np.sum(st.X_train**2, axis=1)))
    clf = linear_model.SoftmaxRegression(optimizer=optim.SGD(lr))
    model = active.EntropySampler(clf, discount_factor=discount, seed=st.seed + 1)
    bought: list[int] = []
    mistakes = 0
    for t, (x, y) in enumerate(zip(st.X_train, st.y_train, strict=True)):
        xd = dict(enumerate(x.tolist()))
        proba, ask = model.predict_proba_one(xd)
        pred = max(proba, key=proba.get) if proba else -1
        mistakes += int(pred != y)
        if ask or len(proba) < 2:
            model.learn_one(xd, int(y))
            bought.append(t)
    hits = 0
    for x, y in zip(st.X_test, st.y_test, strict=True):
        proba = model.classifier.predict_proba_one(dict(enumerate(x.tolist())))
        hits += int(bool(proba) and max(proba, key=proba.get) == y)
    return {"labels": len(bought), "mistakes": float(mistakes), "acc": hits / len(st.test), "bought": bought}


# --------------------------------------------------------------------------- modAL (pool-based)
def run_modal(st: Setting, beta: float, batches: int = 10) -> dict:
    """modAL uncertainty sampling in batches over the train split as a pool; exactly B labels."""
    from modAL.models import ActiveLearner
    from modAL.uncertainty import uncertainty_sampling
    from sklearn.linear_model import LogisticRegression

    B = st.budget(beta)
    rng = np.random.default_rng([st.seed, 7])
    order = rng.permutation(len(st.y_train))
    step = max(1, B // batches)
    n0 = min(B, max(step, 2))
    init = list(order[:n0])
    i = n0
    while len(set(st.y_train[init].tolist())) < 2 and i < len(order) and len(init) < B:
        init.append(order[i])
        i += 1
    labelled = np.asarray(init)

    def fit(idx):  # modAL's teach() calls check_X_y(force_all_finite=...), gone in scikit-learn 1.8: refit instead
        return ActiveLearner(estimator=LogisticRegression(max_iter=300), query_strategy=uncertainty_sampling,
                             X_training=st.X_train[idx], y_training=st.y_train[idx])

    learner = fit(labelled)
    pool = np.setdiff1d(np.arange(len(st.y_train)), labelled)
    labels = len(labelled)
    while labels < B and len(pool):
        n = min(step, B - labels, len(pool))
        idx, _ = learner.query(st.X_train[pool], n_instances=n)
        picked = pool[idx]
        labelled = np.concatenate([labelled, picked])
        learner = fit(labelled)
        pool = np.setdiff1d(pool, picked)
        labels += n
    acc = float(np.mean(learner.predict(st.X_test) == st.y_test))
    return {"labels": labels, "mistakes": math.nan, "acc": acc, "bought": sorted(int(i) for i in labelled)}


# --------------------------------------------------------------------------- scikit-activeml (stream)
def _skal_strategy(method: str, beta: float, seed: int):
    """The scikit-activeml strategy of ``method`` with its own budget manager, built with ``budget=beta``."""
    from skactiveml.stream import Split, StreamProbabilisticAL, VariableUncertainty
    from skactiveml.stream.budgetmanager import (
        BalancedIncrementalQuantileFilter,
        SplitBudgetManager,
        VariableUncertaintyBudgetManager,
    )

    if method == "skal-pal":  # Kottke et al. 2015: McPAL utility, BIQF budget manager
        return StreamProbabilisticAL(budget_manager=BalancedIncrementalQuantileFilter(budget=beta),
                                     random_state=seed)
    if method == "skal-varunc":  # Zliobaite et al. 2014: variable uncertainty threshold
        return VariableUncertainty(budget_manager=VariableUncertaintyBudgetManager(budget=beta), random_state=seed)
    if method == "skal-split":  # Zliobaite et al. 2014: variable uncertainty mixed with random queries
        return Split(budget_manager=SplitBudgetManager(budget=beta, random_state=seed), random_state=seed)
    raise ValueError(method)


def run_skal(st: Setting, method: str, beta: float, max_chunk: int = 256) -> dict:
    """A scikit-activeml stream strategy around ``ParzenWindowClassifier``, prequential, B as a hard cap.

    The classifier is the one of scikit-activeml's stream tutorial, a Parzen window
    (RBF kernel, bandwidth by the library's ``gamma="mean"`` rule on the bought rows),
    refit on all bought labels after each purchase (it only stores them: the refit is
    cheap). ``StreamProbabilisticAL`` reads its class-frequency estimates
    (``predict_freq``), the Žliobaitė strategies its probabilities. Each round:
    predict (argmax of ``predict_proba``, lowest index on ties, the game's rule), count
    the mistake, ``query``, then ``update`` the strategy with what was bought
    (``StreamProbabilisticAL``'s manager also takes the round's utility). The harness
    turns a query down once B labels are bought (``refused`` counts them).

    The rounds are handed to ``query`` a chunk at a time, which is the same protocol as
    one at a time, only faster (the library's validation dominates a one-row call): the
    classifier does not change before the next purchase, and the budget managers'
    ``query`` walks a batch with the state that ``update`` would leave after each
    candidate. The chunk is cut after its first query (the classifier changes there),
    and the rounds up to it go to ``update`` one by one (``VariableUncertaintyBudgetManager``'s
    batch ``update`` is not its sequential one). The chunk doubles after a chunk without a
    query and halves after one, up to ``max_chunk``; ``max_chunk=1`` is the round-by-round
    loop (a test checks that both buy the same rounds).
    """
    from skactiveml.classifier import ParzenWindowClassifier

    B = st.budget(beta)
    seed = st.seed + 1
    qs = _skal_strategy(method, beta, seed)
    classes = np.arange(st.K)

    def fit(idx: list[int]):
        clf = ParzenWindowClassifier(metric="rbf", metric_dict={"gamma": "mean"}, classes=classes,
                                     missing_label=-1, random_state=seed)
        with warnings.catch_warnings():  # the bandwidth rule warns on fewer than 2 distinct rows
            warnings.simplefilter("ignore")
            return clf.fit(st.X_train[idx], st.y_train[idx])

    bought: list[int] = []
    clf = fit(bought)  # no labels yet: uniform probabilities
    mistakes = refused = 0
    T = len(st.y_train)
    t, chunk = 0, 1
    while t < T:
        X = st.X_train[t:t + chunk]
        proba = clf.predict_proba(X)
        queried, utilities = qs.query(candidates=X, clf=clf, return_utilities=True)
        n = int(queried[0]) + 1 if len(queried) else len(X)  # rounds t .. t+n-1 see this classifier
        buy = len(queried) > 0 and len(bought) < B
        refused += int(len(queried) > 0 and not buy)
        mistakes += int(np.sum(np.argmax(proba[:n], axis=1) != st.y_train[t:t + n]))
        for j in range(n):
            extra = {"utilities": utilities[j:j + 1]} if method == "skal-pal" else None
            qs.update(candidates=X[j:j + 1], queried_indices=[0] if buy and j == n - 1 else [],
                      budget_manager_param_dict=extra)
        if buy:
            bought.append(t + n - 1)
            clf = fit(bought)
        t += n
        chunk = max(1, chunk // 2) if len(queried) else min(max_chunk, 2 * chunk)
    acc = float(np.mean(np.argmax(clf.predict_proba(st.X_test), axis=1) == st.y_test))
    return {"labels": len(bought), "mistakes": float(mistakes), "acc": acc, "bought": bought, "refused": refused}


# --------------------------------------------------------------------------- tuning
def tune(fn, st: Setting, target: int, lo: float, hi: float, increasing: bool, steps: int = TUNE_STEPS) -> tuple:
    """Log-scale bisection of a knob so that ``fn(st, knob)`` buys ≈ ``target`` labels (deterministic)."""
    best = None
    a, b = math.log(lo), math.log(hi)
    for _ in range(steps):
        m = (a + b) / 2
        got = fn(st, math.exp(m))["labels"]
        if best is None or abs(got - target) < abs(best[1] - target):
            best = (math.exp(m), got)
        if got == target:
            break
        if (got < target) == increasing:
            a = m
        else:
            b = m
    return best

def tune_knob(st: Setting, method: str, target: int) -> tuple:
    """(knob, labels it buys) of a soft-budget peer (``TUNED``) tuned on ``st`` to buy ≈ ``target`` labels."""
    fn, lo, hi, increasing = TUNED[method]
    return tune(fn, st, target, lo, hi, increasing=increasing)



# --------------------------------------------------------------------------- one setting
def cell(st: Setting, method: str, beta: float, knobs: dict) -> dict:
    if method in BSFT or method in BSFT_BLOCK:
        return run_bsft(st, method, beta)
    if method == "vw-active":
        return run_vw_active(st, knobs[("vw-active", beta)])
    if method == "vw-cs_active":
        return run_vw_cs_active(st, beta)
    if method == "river-entropy":
        return run_river(st, knobs[("river-entropy", beta)])
    if method == "modal-pool":
        return run_modal(st, beta)
    if method in SKAL:
        return run_skal(st, method, beta)
    raise ValueError(method)


def timed(st, method, beta, knobs) -> dict:
    t0 = time.perf_counter()
    out = cell(st, method, beta, knobs)
    out["seconds"] = time.perf_counter() - t0
    return out


def peak_mib(st, method, beta, knobs) -> float:
    tracemalloc.start()
    try:
        cell(st, method, beta, knobs)
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


#: The soft-budget peers, tuned on a seed to buy ≈ B: (run function, search range of the knob, whether the labels
#: bought grow with it). vw-active's knob is the mellowness, river-entropy's the discount.
TUNED = {"vw-active": (run_vw_active, 1e-7, 10.0, True), "river-entropy": (run_river, 0.01, 1e4, False)}


def bench_setting(name: str, seeds: Sequence[int], betas: Sequence[float], methods: Sequence[str], *,
                  rounds: int | None = None, max_examples: int | None = None, n_test: int = 2000,
                  memory: bool = True, log=print) -> dict:
    """Every method × β × seed on one setting; returns raw rows, tuned knobs and setting facts."""
    rows: list[dict] = []
    knobs: dict = {}
    tuned: dict = {}
    facts: dict = {}
    mem: dict = {}
    for seed in seeds:
        st = load_setting(name, seed, rounds=rounds, max_examples=max_examples, n_test=n_test)
        rtrain, rtest = st.refit_rounds()
        refits: dict[tuple[int, ...], float] = {}  # same bought set, same refit (full and full-block, first and bbq)
        facts = {"T": len(st.train), "n_test": len(st.test), "K": st.K,
                 "d": int(np.asarray(st.train[0].features).shape[1]), "vector": st.vector,
                 "refit_d": int(np.asarray(rtrain[0].features).shape[1]),
                 "refit_features": "block" if st.block_train is not None else "the setting's"}
        if seed == seeds[0]:
            for beta in betas:
                B = st.budget(beta)
                for method in TUNED:
                    if method in methods:
                        m, got = tune_knob(st, method, B)
                        knobs[(method, beta)], tuned[(method, beta)] = m, got
        for method in methods:
            if method in BSFT_BLOCK and st.block_train is None:
                continue
            bs = [1.0] if is_full(method) else list(betas) + (EXTRA_RANDOM if method == "random" else [])
            for beta in bs:
                res = timed(st, method, beta, knobs)
                t0 = time.perf_counter()
                key = tuple(res["bought"])
                if key not in refits:
                    refits[key] = refit_accuracy([rtrain[i] for i in key], rtest, seed=seed)
                res["refit"] = refits[key]
                res["refit_seconds"] = time.perf_counter() - t0  # 0 when the same set was refit before
                rows.append({"setting": name, "method": method, "beta": beta, "seed": seed,
                             "budget": st.budget(beta), **res})
                if memory and seed == seeds[0] and (beta == 0.1 or is_full(method)):
                    mem[method] = peak_mib(st, method, beta, knobs)
        log(f"  {name} seed {seed} done")
    return {"setting": name, "rows": rows, "knobs": knobs, "tuned": tuned, "facts": facts, "memory": mem}


# --------------------------------------------------------------------------- tables
def _agg(rows: list[dict], method: str, beta: float, key: str) -> tuple[float, float]:
    v = np.array([r[key] for r in rows if r["method"] == method and r["beta"] == beta], dtype=float)
    if len(v) == 0 or np.all(np.isnan(v)):
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def summary_rows(res: dict, betas: Sequence[float]) -> list[dict]:
    """Mean over seeds per (method, β), in table order."""
    rows = res["rows"]
    out = []
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for method in methods:
        for beta in ([1.0] if is_full(method) else betas):
            sel = [r for r in rows if r["method"] == method and r["beta"] == beta]
            if not sel:
                continue
            labels = [r["labels"] for r in sel]
            B = sel[0]["budget"]
            m, msd = _agg(rows, method, beta, "mistakes")
            a, asd = _agg(rows, method, beta, "acc")
            f, fsd = _agg(rows, method, beta, "refit")
            out.append({
                "method": method, "beta": beta, "budget": B, "labels": float(np.mean(labels)),
                "labels_max": int(max(labels)), "over_budget": int(max(labels)) > B,
                "hard_cap": HARD_CAP[method], "mistakes": m, "mistakes_sd": msd, "acc": a, "acc_sd": asd,
                "refit": f, "refit_sd": fsd,
                "seconds": float(np.mean([r["seconds"] for r in sel])),
                "peak_mib": res["memory"].get(method, math.nan) if (beta == 0.1 or is_full(method)) else math.nan,
            })
    return out


def markdown_table(res: dict, betas: Sequence[float], timing: bool = True) -> str:
    """The setting's table; ``timing=False`` drops the wall-time and memory columns (for determinism checks)."""
    head = "| method | β | B | labels bought (mean / max) | hard cap? | online mistakes | held-out acc. | refit acc. |"
    sep = "|---|---:|---:|---:|---|---:|---:|---:|"
    if timing:
        head += " wall s | peak MiB |"
        sep += "---:|---:|"
    lines = [head, sep]
    for s in summary_rows(res, betas):
        cap = "yes" if s["hard_cap"] else ("**no: over B**" if s["over_budget"] else "no (soft)")
        mis = "n/a (pool)" if math.isnan(s["mistakes"]) else f"{s['mistakes']:.1f} ± {s['mistakes_sd']:.1f}"
        line = (f"| {s['method']} | {s['beta']:g} | {s['budget']} | {s['labels']:.1f} / {s['labels_max']} | {cap} "
                f"| {mis} | {s['acc']:.4f} ± {s['acc_sd']:.4f} | {s['refit']:.4f} ± {s['refit_sd']:.4f} |")
        if timing:
            mem = "" if math.isnan(s["peak_mib"]) else f"{s['peak_mib']:.1f}"
            line += f" {s['seconds']:.2f} | {mem} |"
        lines.append(line)
    return "\n".join(lines)


def knobs_line(res: dict) -> str:
    parts = []
    for (peer, beta), v in sorted(res["knobs"].items()):
        parts.append(f"{peer} β={beta:g}: {'mellowness' if peer == 'vw-active' else 'discount'} {v:.4g} "
                     f"(seed 0 bought {res['tuned'][(peer, beta)]})")
    return "; ".join(parts)


def cap_line(res: dict) -> str:
    """Queries the harness turned down once B was bought (the methods whose cap is the harness's)."""
    parts = []
    for method in SKAL:
        for beta in sorted({r["beta"] for r in res["rows"] if r["method"] == method}):
            n = [r["refused"] for r in res["rows"] if r["method"] == method and r["beta"] == beta]
            parts.append(f"{method} β={beta:g}: {np.mean(n):.1f}")
    return "; ".join(parts)


ONLINE_PEERS = ("vw-cs_active", "river-entropy", *SKAL)  # peers that predict before each label (online mistakes)
REFIT_PEERS = ("vw-cs_active", "river-entropy", "modal-pool", *SKAL)


def overlap(res: dict, a: str, b: str, beta: float) -> float:
    """Mean over seeds of |bought(a) ∩ bought(b)| / B."""
    vals = []
    for seed in sorted({r["seed"] for r in res["rows"]}):
        ra = [r for r in res["rows"] if r["method"] == a and r["beta"] == beta and r["seed"] == seed]
        rb = [r for r in res["rows"] if r["method"] == b and r["beta"] == beta and r["seed"] == seed]
        if ra and rb:
            vals.append(len(set(ra[0]["bought"]) & set(rb[0]["bought"])) / max(ra[0]["budget"], 1))
    return float(np.mean(vals)) if vals else math.nan


def _target(text: str, measured: str, ok: bool, by: str) -> dict:
    return {"target": text, "measured": measured, "ok": bool(ok), "by": by}


def targets(results: dict[str, dict], betas: Sequence[float]) -> list[dict]:
    """The issues' targets (issue 10: LLF that chooses, at the defaults), each with what was measured."""
    out = []
    for name in ("bbc-news", "sarcasm"):
        if name not in results:
            continue
        res = results[name]
        rows = {(s["method"], s["beta"]): s for s in summary_rows(res, betas)}
        for beta in betas:
            llf, first, rnd = rows.get(("llf", beta)), rows.get(("first", beta)), rows.get(("random", beta))
            if not (llf and first and rnd):
                continue
            tag = f"{name} β={beta:g}"
            ov = overlap(res, "llf", "first", beta)
            out.append(_target(f"{tag}: LLF's bought set overlaps first's by ≤ 0.5", f"overlap {ov:.3f}",
                               ov <= 0.5, f"{0.5 - ov:+.3f}"))
            lab = min(r["labels"] / r["budget"] for r in res["rows"] if r["method"] == "llf" and r["beta"] == beta)
            out.append(_target(f"{tag}: LLF buys ≥ 0.98 B on every seed", f"min labels / B {lab:.3f}", lab >= 0.98,
                               f"{lab - 0.98:+.3f}"))
            ratio = llf["mistakes"] / first["mistakes"]
            out.append(_target(f"{tag}: LLF online mistakes ≤ 0.9× first's",
                               f"llf {llf['mistakes']:.1f} ± {llf['mistakes_sd']:.1f} vs first "
                               f"{first['mistakes']:.1f} ± {first['mistakes_sd']:.1f} -> {ratio:.3f}×",
                               ratio <= 0.9, f"{0.9 - ratio:+.3f}"))
            for other, o in (("first", first), ("random", rnd)):
                gain = 100 * (llf["refit"] - o["refit"])
                out.append(_target(f"{tag}: LLF refit accuracy ≥ {other}'s + 1 point",
                                   f"llf {llf['refit']:.4f} vs {other} {o['refit']:.4f} ({gain:+.2f} points)",
                                   gain >= 1.0, f"{gain - 1.0:+.2f} points"))
        llf = rows.get(("llf", 0.1))
        if llf is None:
            continue
        for peer in REFIT_PEERS:
            p = rows.get((peer, 0.1))
            if p is None:
                continue
            over = " (over B)" if p["over_budget"] else ""
            if peer in ONLINE_PEERS:
                d = p["mistakes"] - llf["mistakes"]
                sd = max(llf["mistakes_sd"], p["mistakes_sd"])
                note = "; within one seed sd" if abs(d) < sd else ""
                out.append(_target(f"{name} β=0.1: LLF online mistakes ≤ {peer}'s{over}",
                                   f"llf {llf['mistakes']:.1f} vs {peer} {p['mistakes']:.1f} "
                                   f"({p['labels']:.0f} labels)", d >= 0, f"{d:+.1f} in LLF's favour{note}"))
            d = 100 * (llf["refit"] - p["refit"])
            out.append(_target(f"{name} β=0.1: LLF refit accuracy ≥ {peer}'s{over}",
                               f"llf {llf['refit']:.4f} vs {peer} {p['refit']:.4f}", d >= 0,
                               f"{d:+.2f} points in LLF's favour"))
    if "low-noise" in results and 0.1 in betas:
        res = results["low-noise"]
        rows = {(s["method"], s["beta"]): s for s in summary_rows(res, betas)}
        llf = rows.get(("llf", 0.1))
        if llf and ("full", 1.0) in rows:
            rb = sorted({r["beta"] for r in res["rows"] if r["method"] == "random"})
            lab = [_agg(res["rows"], "random", b, "labels")[0] for b in rb] + [rows[("full", 1.0)]["labels"]]
            acc = [_agg(res["rows"], "random", b, "acc")[0] for b in rb] + [rows[("full", 1.0)]["acc"]]
            need = labels_to_reach(llf["acc"], lab, acc)
            factor = need / llf["labels"] if llf["labels"] else math.nan
            out.append({"target": "low-noise synthetic: ≥ 3× label savings of LLF over random (β = 0.1)",
                        "measured": f"LLF held-out acc. {llf['acc']:.4f} with {llf['labels']:.0f} labels; random "
                                    + ("never reaches it (even at full feedback)" if math.isinf(need)
                                       else f"needs {need:.0f}") + f" -> {factor:.2f}×",
                        "ok": factor >= 3.0, "by": f"{factor - 3.0:+.2f}× against the 3× target"})
    return out


# --------------------------------------------------------------------------- main
def parse(argv: list[str] | None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--betas", default=",".join(str(b) for b in BETAS))
    ap.add_argument("--rounds", type=int, default=None, help="shorten every stream to this many rounds")
    ap.add_argument("--sarcasm-examples", type=int, default=0,
                    help="seeded subset of sarcasm (train 80%%, test 20%%); 0 = all 28k")
    ap.add_argument("--n-test", type=int, default=2000, help="held-out rounds of the synthetic settings")
    ap.add_argument("--no-memory", action="store_true", help="skip the tracemalloc pass")
    ap.add_argument("--learner", default=None,
                    help="budgetsft learner for every budgetsft method (default: the user's default, or the "
                         "synthetic config's)")
    ap.add_argument("--quick", action="store_true",
                    help="seed 0, β = 0.1 (and 0.05), 600 rounds, 400 test rounds, sarcasm 1000 examples")
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds, args.betas, args.rounds, args.n_test = "0", "0.05,0.1", 600, 400
        args.sarcasm_examples = 1000
    return args


def run_all(args, log=print) -> dict:
    global LEARNER
    LEARNER = getattr(args, "learner", None)
    seeds = [int(s) for s in args.seeds.split(",")]
    betas = [float(b) for b in args.betas.split(",")]
    methods = [m for m in args.methods.split(",") if m]
    results = {}
    with threadpool_limits(limits=1, user_api="blas"):
        for name in [s for s in args.settings.split(",") if s]:
            t0 = time.perf_counter()
            mx = (args.sarcasm_examples or None) if name == "sarcasm" else None
            res = bench_setting(name, seeds, betas, methods, rounds=args.rounds, max_examples=mx,
                                n_test=args.n_test, memory=not args.no_memory, log=log)
            res["seconds"] = time.perf_counter() - t0
            res["max_examples"] = mx
            results[name] = res
    return {"results": results, "seeds": seeds, "betas": betas, "methods": methods}


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    print(f"budgetsft vs peers: python {sys.version.split()[0]}, numpy {np.__version__}")
    out = run_all(args, log=lambda m: print(m, file=sys.stderr))
    for name, res in out["results"].items():
        f = res["facts"]
        print(f"\n## {name}: T = {f['T']} train rounds, {f['n_test']} test, K = {f['K']}, d = {f['d']}, "
              f"peers' vector: {f['vector']}; refit on {f['refit_features']} features (d = {f['refit_d']}); "
              f"{res['seconds']:.0f} s")
        print(markdown_table(res, out["betas"]))
        print("tuned: " + knobs_line(res))
        if any(r["method"] in SKAL for r in res["rows"]):
            print("queries refused at B (mean over seeds): " + cap_line(res))
    print()
    for t in targets(out["results"], out["betas"]):
        print(f"target: {t['target']}: {t['measured']} -> {'PASS' if t['ok'] else 'MISS'} ({t['by']})")
    return out


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        main()
