"""Labelling a real, unlabelled pool: `budgetsft select`, answers in any order, never past the budget (issue 19).

The pools here are JSONL files with no ``answer`` field, featurised by the real all-MiniLM encoder (block
features over 3 fixed candidates); a script plays the annotator, reading the gold from a separate file.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from budgetsft.base import Round
from budgetsft.budget import Budget
from budgetsft.exceptions import BudgetExhaustedError
from budgetsft.gates.llf import pick_pool_batch
from budgetsft.learners import LogisticLearner
from budgetsft.sessions.ledger import Ledger
from budgetsft.sessions.oracles import DatasetOracle
from budgetsft.sessions.pool import pool_config, pool_report, select_batch, wilson_interval
from budgetsft.sessions.session import Session

TOPICS = {"sports": ["match", "goal", "team", "league", "coach", "striker", "season"],
          "finance": ["stock", "market", "bank", "profit", "shares", "bond", "inflation"],
          "science": ["cell", "physics", "lab", "gene", "quantum", "protein", "telescope"]}
LABELS = list(TOPICS)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "budgetsft", *args]


def _write_pool(folder: Path, n: int, seed: int = 0, name: str = "pool") -> tuple[Path, dict[str, int]]:
    """n unlabelled items (3 fixed candidates) and their gold, kept apart as an annotator would know it."""
    rng = np.random.default_rng(seed)
    gold = {}
    lines = []
    for i in range(n):
        t = int(rng.integers(3))
        words = rng.choice(TOPICS[LABELS[t]], size=3, replace=False)
        ident = f"{name}{i}"
        lines.append(json.dumps({"id": ident, "prompt": f"Report {i}: the {words[0]} and the {words[1]}, "
                                 f"with news of the {words[2]}.", "candidates": LABELS}))
        gold[ident] = t
    path = folder / f"{name}.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path, gold


def _answer(path: Path, picks: list[dict], gold: dict[str, int]) -> Path:
    path.write_text("".join(json.dumps({"query_id": p["query_id"], "label": gold[p["id"]], "annotator": "script"})
                            + "\n" for p in picks))
    return path


def _read(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def pool200(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pool")
    return folder, *_write_pool(folder, 200)


def test_the_issue_sequence_through_the_cli(pool200, tmp_path):
    """select 10 → answer 6 → select 10 more while 4 pend → answer all → 5 → answer → nothing; spent 25."""
    _, pool, gold = pool200
    db = tmp_path / "s.db"

    def select(out: str) -> subprocess.CompletedProcess:
        args = ["select", "--session", str(db), "--out", str(tmp_path / out)]
        if not db.exists():
            args += ["--data", str(pool), "--batch", "10", "--budget", "25"]
        return subprocess.run(_cli(*args), capture_output=True, text=True)

    def answer(picks: list[dict], name: str) -> None:
        res = subprocess.run(_cli("session", "import", str(db), str(_answer(tmp_path / name, picks, gold))),
                             capture_output=True, text=True)
        assert res.returncode == 0, res.stderr

    res = select("b1.jsonl")
    assert res.returncode == 0, res.stderr
    b1 = _read(tmp_path / "b1.jsonl")
    assert len(b1) == 10 and all({"query_id", "id", "prompt", "candidates"} <= set(p) for p in b1)
    answer(b1[:6], "a1.jsonl")
    assert select("b2.jsonl").returncode == 0
    b2 = _read(tmp_path / "b2.jsonl")
    assert len(b2) == 10 and not {p["id"] for p in b1} & {p["id"] for p in b2}
    answer(b1[6:], "a1b.jsonl")
    answer(b2, "a2.jsonl")
    assert select("b3.jsonl").returncode == 0
    b3 = _read(tmp_path / "b3.jsonl")
    assert len(b3) == 5
    answer(b3, "a3.jsonl")
    res = select("b4.jsonl")
    assert res.returncode == 0 and "Traceback" not in res.stderr
    assert not (tmp_path / "b4.jsonl").exists()
    assert "nothing written" in res.stderr and "budget is spent" in res.stderr
    show = json.loads(subprocess.run(_cli("session", "show", str(db), "--json"), capture_output=True, text=True,
                                     check=True).stdout)
    assert show["spent"] == 25 and show["pending"] == 0 and show["labels_bought"] == 25
    assert show["status"] == "finished" and "mistakes" not in show  # no accuracy that cannot be estimated
    assert "biased towards hard items" in show["gate_picks_before_label"]["note"]
    ids = [p["id"] for p in b1 + b2 + b3]
    assert len(set(ids)) == 25


def test_pending_picks_hold_the_budget_and_skips_release_it(pool200, tmp_path):
    _, pool, gold = pool200
    cfg = pool_config({"data": str(pool), "gate": {"name": "llf", "budget": 12}})
    sess = Session.create(tmp_path / "p.db", cfg)
    first = select_batch(sess, 8)
    assert len(first.picks) == 8 and first.held == 8
    second = select_batch(sess, 8)  # 8 held: only 4 more fit
    assert len(second.picks) == 4 and "fit the budget" in second.reason
    third = select_batch(sess, 8)
    assert third.picks == [] and "held by 12 pending" in third.reason
    # Answers in any order and any subset; a skipped pick gives its place back.
    picks = first.picks + second.picks
    led = sess.ledger
    led.skip(picks[3].query_id, "ana")
    rows = [(p.query_id, gold[p.id], "ana", 1.0, 3) for p in reversed(picks) if p.query_id != picks[3].query_id]
    led.record_answers(rows[:5])
    again = select_batch(sess, 8)
    assert len(again.picks) == 1  # 12 = 5 answered + 6 pending + this one
    assert led.spent() + led.pending_reserve() == 12
    # The ledger itself refuses picks past the budget, whoever asks.
    with pytest.raises(BudgetExhaustedError):
        led.add_queries([(200, "x", 0.0, 1.0, None, "gate", 0)], budget_check=True)
    sess.close()


def test_the_learner_depends_on_which_labels_arrived_not_when(pool200, tmp_path):
    """Two sessions receive the same answers in different orders: they pick the same next batch."""
    _, pool, gold = pool200
    cfg = pool_config({"data": str(pool), "gate": {"name": "llf", "budget": 30}})
    a = Session.create(tmp_path / "a.db", cfg)
    b = Session.create(tmp_path / "b.db", cfg)
    pa, pb = select_batch(a, 10).picks, select_batch(b, 10).picks
    assert [p.id for p in pa] == [p.id for p in pb]  # same seed, same picks
    rows = [(p.query_id, gold[p.id], "ana", 1.0, 3) for p in pa]
    for r in rows:
        a.ledger.record_answers([r])
    for r in reversed(rows):
        b.ledger.record_answers([r])
    assert [p.id for p in select_batch(a, 10).picks] == [p.id for p in select_batch(b, 10).picks]


def test_cold_start_is_spread_by_the_pools_geometry():
    """With no label, every latency ties: the first pick is the most representative item, not item 0, and
    the batch covers the clusters of the pool."""
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((4, 16))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    owner = np.repeat(np.arange(4), [10, 60, 60, 70])
    emb = centres[owner] + 0.05 * rng.standard_normal((200, 16))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    pool = np.zeros((200, 3, 48))
    for a in range(3):
        pool[:, a, 16 * a:16 * (a + 1)] = emb  # block features: e(x) in the block of candidate a
    picks, lat = pick_pool_batch(LogisticLearner(), pool, 8, available=np.ones(200, bool), budget=Budget(8.0))
    assert picks[0] != 0  # the tie is not broken by the lowest index
    assert owner[picks[0]] != 0  # ... but towards the dense part of the pool (cluster 0 holds 5 %)
    assert len(set(owner[picks])) >= 3
    assert len(lat) == 8 and lat[picks[0]] >= max(lat.values()) - 1e-9


def test_a_pool_simulation_on_labelled_data_spends_the_budget_and_its_audit_covers_the_truth(tmp_path):
    """The dataset oracle answers at once: the whole loop runs; the audit estimate's interval holds the
    refit head's accuracy on a labelled evaluation file of the same distribution."""
    pool, gold = _write_pool(tmp_path, 400, seed=1, name="lab")
    lines = _read(pool)
    for x in lines:
        x["answer"] = gold[x["id"]]
    pool.write_text("".join(json.dumps(x) + "\n" for x in lines))
    ev, ev_gold = _write_pool(tmp_path, 300, seed=2, name="dev")
    ev.write_text("".join(json.dumps({**x, "answer": ev_gold[x["id"]]}) + "\n" for x in _read(ev)))
    cfg = pool_config({"data": str(pool), "gate": {"name": "llf", "budget": 60}, "audit": 0.5, "eval": str(ev)},
                      batch=15)
    sess = Session.create(tmp_path / "sim.db", cfg)
    assert sess.play(DatasetOracle()).status == "finished"
    rep = pool_report(sess)
    assert rep["spent"] == 60 and rep["pending"] == 0
    qs = sess.ledger.queries()
    n_audit = sum(q.purpose == "audit" for q in qs)
    assert 25 <= n_audit <= 35  # half the budget, rounded per batch
    lo, hi = rep["audit"]["ci95"]
    truth = rep["eval"]["accuracy"]
    assert lo - 0.05 <= truth <= hi + 0.05
    assert rep["audit"]["n"] == n_audit


def test_wilson_interval():
    lo, hi = wilson_interval(45, 50)
    assert 0.78 < lo < 0.80 and 0.95 < hi < 0.97
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == pytest.approx(1.0)
    for n in range(1, 60):  # the interval holds k / n, the ends included (no rounding just past it)
        assert all(lo <= k / n <= hi for k in range(n + 1) for lo, hi in [wilson_interval(k, n)])


def test_unlabelled_data_is_refused_where_gold_is_simulated_and_accepted_where_a_person_answers(pool200,
                                                                                               tmp_path):
    _, pool, _ = pool200
    res = subprocess.run(_cli("run", "--data", str(pool), "--json"), capture_output=True, text=True)
    assert res.returncode != 0 and "has no answer" in res.stderr and "Traceback" not in res.stderr
    res = subprocess.run(_cli("run", "--data", str(pool), "--session", str(tmp_path / "w.db"), "--oracle", "web",
                              "--json"), capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["status"] == "waiting" and out["rounds_played"] >= 1 and out["pending"] >= 1
    assert out["mistakes"] is None  # unknown without gold
    with Ledger.open(tmp_path / "w.db") as led:
        assert led.pending()


def test_budget_as_an_amount_on_run(tmp_path):
    res = subprocess.run(_cli("run", "--budget", "30", "--rounds", "2000", "--no-comparator", "--json"),
                         capture_output=True, text=True, check=True)
    out = json.loads(res.stdout)
    assert out["budget"] == 30 and isinstance(out["budget"], int) and out["labels_bought"] <= 30
    res = subprocess.run(_cli("run", "--budget", "30", "--beta", "0.1"), capture_output=True, text=True)
    assert res.returncode != 0 and "not both" in res.stderr


def test_select_refuses_what_it_cannot_do(pool200, tmp_path):
    _, pool, _ = pool200
    res = subprocess.run(_cli("select", "--session", str(tmp_path / "none.db")), capture_output=True, text=True)
    assert res.returncode != 0 and "needs '--data POOL'" in res.stderr
    db = tmp_path / "r.db"
    subprocess.run(_cli("select", "--data", str(pool), "--session", str(db), "--budget", "5", "--batch", "2"),
                   capture_output=True, text=True, check=True)
    res = subprocess.run(_cli("select", "--session", str(db), "--budget", "9"), capture_output=True, text=True)
    assert res.returncode != 0 and "only apply when it is created" in res.stderr
    (tmp_path / "exists.jsonl").write_text("keep\n")
    res = subprocess.run(_cli("select", "--session", str(db), "--out", str(tmp_path / "exists.jsonl")),
                         capture_output=True, text=True)
    assert res.returncode != 0 and "file exists" in res.stderr
    assert (tmp_path / "exists.jsonl").read_text() == "keep\n"


def test_the_web_page_selects_the_next_batch_itself(pool200, tmp_path):
    """A pool session served by `annotate`: 100 labels in batches of 20 with no select call by anyone but the
    page's driver, so no round trip: the annotator just keeps answering."""
    pytest.importorskip("uvicorn")
    import time

    from test_web import client, served

    _, pool, gold = pool200
    path = tmp_path / "web.db"
    sess = Session.create(path, pool_config({"data": str(pool), "gate": {"name": "llf", "budget": 100}}, batch=20))
    token = sess.ledger.add_annotator("ana", 1.0).token
    sess.close()
    answered, waits = 0, 0
    with served(path) as live, client(live, token) as ana:
        deadline = time.monotonic() + 120
        while answered < 100:
            assert time.monotonic() < deadline, f"stuck after {answered} answers"
            item = ana.get("/api/next").json()
            if item.get("item", True) is None:  # the driver is picking the next batch
                waits += 1
                time.sleep(0.05)
                continue
            assert ana.post("/api/answer", json={"query_id": item["query_id"],
                                                 "label": gold[item["id"]]}).json()["recorded"]
            answered += 1
        status = ana.get("/api/status").json()
    with Ledger.open(path) as led:
        assert led.spent() == 100 and not led.pending()
        select_events = led._conn.execute("SELECT COUNT(*) FROM events WHERE kind = 'select'").fetchone()[0]
    assert select_events == 5 and status["labels_bought"] == 100


def test_a_stream_session_with_an_audit_share_estimates_its_accuracy(tmp_path):
    """Audit rounds are a uniform sample bought whatever the gate says; the estimate is the prequential
    accuracy on them, and it agrees with the whole stream's (which a simulation knows) within its interval."""
    cfg = {"env": {"name": "synthetic", "d": 8, "K": 4, "rounds": 3000}, "seed": 2,
           "gate": {"name": "llf", "beta": 0.1}, "audit": 0.4, "comparator": "none"}
    sess = Session.create(tmp_path / "a.db", cfg)
    assert sess.play(DatasetOracle()).status == "finished"
    rep = sess.progress_report()
    audit = rep["audit"]
    assert 90 <= audit["n"] <= 150  # 0.4 of 300 labels, drawn round by round
    recs = {r.round: r for r in sess.records()}
    audited = [q for q in sess.ledger.queries() if q.purpose == "audit"]
    assert all(recs[q.round].queried for q in audited)
    assert audit["correct"] == sum(not recs[q.round].mistake for q in audited)
    truth = 1 - sum(r.mistake for r in recs.values()) / len(recs)
    lo, hi = audit["ci95"]
    assert lo - 0.03 <= truth <= hi + 0.03
    assert sess.ledger.spent() <= 300


def test_adapt_on_a_pool_ledger_trains_and_hands_the_model_back(pool200, tmp_path, capsys):
    """An unlabelled pool and a person's labels: adapt trains LoRA on them, a head over the session's features and
    LoRA on the head's labels for the rest of the pool, and hands the recommended model back."""
    pytest.importorskip("peft")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _tiny_llama import tiny_llama

    _, pool, gold = pool200
    db = tmp_path / "a.db"
    sess = Session.create(db, pool_config({"data": str(pool), "gate": {"name": "llf", "budget": 6}}))
    picks = select_batch(sess, 6).picks
    sess.ledger.record_answers([(p.query_id, gold[p.id], "ana", 1.0, 3) for p in picks])
    sess.close()
    from budgetsft.adapt import load_adapted
    from budgetsft.adapt.pipeline import run_adapt
    from budgetsft.exceptions import DataError
    from budgetsft.features.models import load_causal_tokenizer

    tokenizer = load_causal_tokenizer()
    llama = tmp_path / "llama"
    tiny_llama(len(tokenizer)).save_pretrained(llama)
    tokenizer.save_pretrained(llama)
    import torch

    threads = torch.get_num_threads()
    kw = {"model": str(llama), "seeds": (0,), "epochs": 1, "batch_size": 4, "max_prompt_tokens": 16,
          "device": "cpu", "threads": 1, "progress": False}
    try:
        plain = run_adapt(str(pool), tmp_path / "plain", labels_file=db, recipes=["plain"], **kw)
        capsys.readouterr()
        report = run_adapt(str(pool), tmp_path / "adapt", labels_file=db, **{**kw, "progress": True})
    finally:
        torch.set_num_threads(threads)
    said = capsys.readouterr()
    # before LoRA trains on the head's labels, adapt says how lopsided the head is on the pool
    assert re.search(r"seed 0: labels/distill: the head gives '.+' to \d+% of the items it labels \(\d+% of its own "
                     r"labels\)", said.out + said.err), said.out[-2000:] + said.err[-2000:]
    # --recipes plain: LoRA on the labels alone, the only model, handed back unscored
    assert plain["recommended"] == "labels/plain" and plain["unscored"].startswith("an unlabelled pool")
    assert list(plain["methods"]) == ["labels/plain"] and plain["methods"]["labels/plain"]["labels"] == [6]
    model = load_adapted(tmp_path / "plain")
    assert model.method == "labels/plain" and model.kind == "lora"
    rows = [json.loads(line) for line in pool.read_text().splitlines()][:3]
    probs = model(rows)
    assert len(probs) == 3 and all(abs(p.sum() - 1) < 1e-6 for p in probs)
    with pytest.raises(DataError, match="no test predictions"):
        from budgetsft.adapt.report import rebuild_report

        rebuild_report(tmp_path / "plain")
    assert plain["audit"] is None and not (tmp_path / "plain" / "seed-0" / "audit.json").exists()
    # the default on a pool: the head, plain and distill, recommended by cross-validation on the 6 labels
    out = tmp_path / "adapt"
    assert set(report["methods"]) == {"labels/head", "labels/plain", "labels/distill"}
    assert all(m["labels"] == [6] for m in report["methods"].values())
    assert report["recommendation"]["validation"] == "cv" and report["recommended"] in report["methods"]
    pseudo = json.loads((out / "seed-0" / "pseudo" / "labels.json").read_text())
    bought = {p.id for p in picks}
    assert len(pseudo) == 200 - 6 and bought.isdisjoint(pseudo) and report["distill"]["pseudo_labels"] == 194
    assert {a for a, _ in pseudo.values()} <= {0, 1, 2} and all(0 < w <= 1 for _, w in pseudo.values())
    head = load_adapted(out, method="labels/head")
    assert head.kind == "head" and head.predict(rows).shape == (3,)
    # the head handed back is the session's: refit on its labels over the session's features, it predicts the same
    from budgetsft.refit import refit

    sess = Session.open(db)
    try:
        stream = list(sess.stream())
        labelled = [Round(stream[a.round - 1].features, int(a.label), id=stream[a.round - 1].id)
                    for a in sess.ledger.answers()]
    finally:
        sess.close()
    again = refit(labelled, seed=0)
    by_id = {row["id"]: row for row in map(json.loads, pool.read_text().splitlines())}
    assert [int(np.argmax(again.predict_proba(r))) for r in stream[:20]] == \
        head.predict([by_id[r.id] for r in stream[:20]]).tolist()
    assert [a for a, _ in (pseudo[r.id] for r in stream[:50] if r.id in pseudo)] == \
        [int(np.argmax(again.predict_proba(r))) for r in stream[:50] if r.id in pseudo]
    assert load_adapted(out).method == report["recommended"]

    # A session with an audit share: its uniformly drawn labels are held out of every model and score each one.
    db2 = tmp_path / "b.db"
    sess = Session.create(db2, pool_config({"data": str(pool), "gate": {"name": "llf", "budget": 12},
                                            "audit": 0.5}))
    picks = select_batch(sess, 12).picks
    audited = {p.id for p in picks if p.purpose == "audit"}
    assert 0 < len(audited) < 12
    sess.ledger.record_answers([(p.query_id, gold[p.id], "ana", 1.0, 3) for p in picks])
    sess.close()
    threads = torch.get_num_threads()
    try:
        report = run_adapt(str(pool), tmp_path / "audited", labels_file=db2, **kw)
        everything = run_adapt(str(pool), tmp_path / "all", labels_file=db2, audit=0, recipes=["plain"], **kw)
    finally:
        torch.set_num_threads(threads)
    assert all(m["labels"] == [12 - len(audited)] for m in report["methods"].values())
    trained_on = {json.loads(line)["id"] for line in
                  (tmp_path / "audited" / "seed-0" / "labels" / "labels.jsonl").read_text().splitlines()}
    assert trained_on.isdisjoint(audited) and len(trained_on) == 12 - len(audited)
    pseudo = json.loads((tmp_path / "audited" / "seed-0" / "pseudo" / "labels.json").read_text())
    assert pseudo.keys().isdisjoint(audited) and len(pseudo) == 200 - 12  # an audit item is no pseudo-label
    saved = json.loads((tmp_path / "audited" / "seed-0" / "audit.json").read_text())
    assert set(saved["ids"]) == audited and saved["gold"] == [gold[i] for i in saved["ids"]]
    assert set(saved["scores"]) == {"labels/head", "labels/plain", "labels/distill"}
    nll = {}
    for m, scores in saved["scores"].items():
        right = sum(int(np.argmax(v)) == g for v, g in zip(scores, saved["gold"], strict=True))
        row = report["audit"]["methods"][m]["per_seed"][0]
        assert row["n"] == len(audited) and row["correct"] == right
        assert row["ci95"] == list(wilson_interval(right, len(audited)))
        nll[m] = row["nll"]
    assert report["recommendation"]["validation"] == "audit"
    assert report["recommended"] == min(nll, key=nll.get) and report["audit"]["nll"] == min(nll.values())
    assert report["unscored"].startswith("an unlabelled pool: scored on its audit labels")
    md = (tmp_path / "audited" / "report.md").read_text()
    assert "audit labels were drawn uniformly at random" in md and f"**Recommended: {report['recommended']}**" in md
    # --audit 0: the audit labels are trained on too, and nothing is scored
    assert everything["audit"] is None and everything["methods"]["labels/plain"]["labels"] == [12]


def test_a_cost_budget_with_an_audit_share_never_holds_more_than_it_has(tmp_path):
    """Items of different prices, a money budget, a large audit share: every batch fits what is left."""
    pool, gold = _write_pool(tmp_path, 120, seed=4, name="priced")
    lines = _read(pool)
    for k, x in enumerate(lines):
        x["cost"] = [0.5, 1.0, 3.0][k % 3]
    pool.write_text("".join(json.dumps(x) + "\n" for x in lines))
    cfg = pool_config({"data": str(pool), "gate": {"name": "llf", "budget": 12.5, "unit": "cost"}, "audit": 0.5},
                      batch=6)
    sess = Session.create(tmp_path / "c.db", cfg)
    for _ in range(20):
        sel = select_batch(sess)
        led = sess.ledger
        assert led.spent() + led.pending_reserve() <= 12.5 + 1e-9
        if not sel.picks:
            break
        led.record_answers([(p.query_id, gold[p.id], "ana", p.cost, 3) for p in sel.picks])
    assert sess.ledger.spent() <= 12.5 and any(q.purpose == "audit" for q in sess.ledger.queries())
