"""Label Studio, live: what a person does for 100 labels in batches of 20 (``budgetsft labelstudio sync``).

Starts Label Studio (SQLite, a temporary folder) with the Python that has it
(``LABEL_STUDIO_PYTHON``; ``make test-integration`` installs it in
``.venv-labelstudio``), writes 300 bbc-news articles as an unlabelled pool and
makes a pool session with ``budgetsft select --batch 20 --budget 100``. A
script plays the annotator in Label Studio: it posts one annotation per open
task (the article's gold section) through Label Studio's API, as the labeling
page does. Two ways of running the sync, each on its own session and project:

* ``--once``, as from cron: one pass after each batch is labelled; the passes are counted;
* the loop: one ``budgetsft labelstudio sync`` left running (``--interval 1``)
  while the annotator labels whatever appears.

Before the sync, each batch was an export -> label -> import -> resume (or select) trip by hand.

    LABEL_STUDIO_PYTHON=.venv-labelstudio/bin/python .venv/bin/python benchmarks/labelstudio_round_trips.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import _labelstudio_live as live  # noqa: E402

from budgetsft.data import load_dataset  # noqa: E402
from budgetsft.labelstudio_sync import LabelStudioClient  # noqa: E402


def _pool(folder: Path, n: int) -> tuple[Path, dict[str, str]]:
    ds = load_dataset("bbc-news", seed=0)
    pool = folder / "bbc-pool.jsonl"
    with pool.open("w") as fh:
        for ex in ds.train[:n]:
            fh.write(json.dumps({"id": ex.id, "prompt": ex.prompt, "candidates": list(ex.candidates)}) + "\n")
    return pool, {ex.id: ex.candidates[int(ex.answer)] for ex in ds.train[:n]}


def _budgetsft(*args: str, env=None) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "budgetsft", *args], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"budgetsft {' '.join(args)} failed:\n{proc.stderr}")
    return proc


def _label_open(client: LabelStudioClient, project: int, gold: dict[str, str]) -> int:
    """The annotator: one annotation per task nobody has labelled yet; returns how many."""
    done = 0
    for task in client.tasks(project):
        if task["annotations"]:
            continue
        choice = gold[task["data"]["example_id"]]
        result = [{"from_name": "label", "to_name": "prompt", "type": "choices", "value": {"choices": [choice]}}]
        client.request("POST", f"/api/tasks/{task['id']}/annotations/", body={"result": result, "lead_time": 3.0})
        done += 1
    return done


def _session(folder: Path, pool: Path, name: str, batch: int, budget: int) -> Path:
    db = folder / f"{name}.db"
    _budgetsft("select", "--data", str(pool), "--session", str(db), "--batch", str(batch), "--budget", str(budget),
               "--out", str(folder / f"{name}-picks.jsonl"))
    return db


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pool", type=int, default=300)
    ap.add_argument("--budget", type=int, default=100)
    ap.add_argument("--batch", type=int, default=20)
    ap.add_argument("--out", type=Path, help="write the numbers here as JSON")
    args = ap.parse_args(argv)
    python = os.environ.get("LABEL_STUDIO_PYTHON") or sys.executable
    env = {**os.environ, "LABEL_STUDIO_API_KEY": live.TOKEN}
    port = live.free_port()
    url = f"http://127.0.0.1:{port}"
    out: dict = {"pool": args.pool, "budget": args.budget, "batch": args.batch}
    with tempfile.TemporaryDirectory(prefix="bsft-ls-trips-") as tmp:
        folder = Path(tmp)
        pool, gold = _pool(folder, args.pool)
        proc, seconds = live.start_server(folder, port, python=python)
        try:
            client = LabelStudioClient(url, live.TOKEN)
            out["label_studio_start_seconds"] = round(seconds, 1)
            # cron: a pass after each labelled batch
            db = _session(folder, pool, "cron", args.batch, args.budget)
            project = client.request("POST", "/api/projects/", body={"title": "budgetsft cron"})["id"]
            sync = ["labelstudio", "sync", str(db), "--url", url, "--project", str(project), "--cost", "1", "--once",
                    "--json"]
            passes, labelling, t0 = [], 0, time.perf_counter()
            while True:
                passes.append(json.loads(_budgetsft(*sync, env=env).stdout))
                print(f"  cron pass {len(passes)}: pushed {passes[-1]['pushed']}, imported {passes[-1]['imported']}, "
                      f"{passes[-1]['spent']:g} of {passes[-1]['budget']:g} spent", flush=True)
                if passes[-1]["done"]:
                    break
                labelling += 1
                _label_open(client, project, gold)
            out["cron"] = {"sync_passes": len(passes), "labelling_rounds": labelling,
                           "labels": passes[-1]["spent"], "seconds": round(time.perf_counter() - t0, 1),
                           "command": "budgetsft labelstudio sync S.db --url URL --project ID --cost 1 --once"}
            # the loop: one command left running
            db = _session(folder, pool, "loop", args.batch, args.budget)
            project = client.request("POST", "/api/projects/", body={"title": "budgetsft loop"})["id"]
            t0 = time.perf_counter()
            loop = subprocess.Popen([sys.executable, "-m", "budgetsft", "labelstudio", "sync", str(db), "--url", url,
                                     "--project", str(project), "--cost", "1", "--interval", "1", "--json"],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
            labelled = 0
            while loop.poll() is None:
                labelled += _label_open(client, project, gold)
                time.sleep(0.5)
            lines = [json.loads(line) for line in loop.stdout.read().splitlines() if line.strip()]
            if loop.returncode != 0 or not lines or not lines[-1]["done"]:
                raise SystemExit(f"the sync loop ended with {loop.returncode}:\n{loop.stderr.read()}")
            out["loop"] = {"commands": 1, "sync_passes": len(lines), "labels": lines[-1]["spent"],
                           "annotations_posted": labelled, "seconds": round(time.perf_counter() - t0, 1),
                           "command": "budgetsft labelstudio sync S.db --url URL --project ID --cost 1 --interval 1"}
        finally:
            live.stop_server(proc)
    c, lp = out["cron"], out["loop"]
    print(f"{args.budget} labels in batches of {args.batch}, pool of {args.pool} bbc-news articles, "
          f"Label Studio at {url}:")
    print(f"  --once (cron):  {c['sync_passes']} sync passes, {c['labelling_rounds']} labelling rounds, "
          f"{c['labels']:g} labels, {c['seconds']:g} s")
    print(f"  loop:           {lp['commands']} command, {lp['sync_passes']} passes made by it, "
          f"{lp['labels']:g} labels, {lp['seconds']:g} s")
    if args.out is not None:
        args.out.write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
