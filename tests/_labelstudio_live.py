"""Drive a real Label Studio server: start it on SQLite, label budgetsft tasks through its API, export JSON.

Runs under a Python that has ``label-studio`` and ``label-studio-sdk``
(``pip install 'budgetsft[labelstudio]'``); it imports nothing of budgetsft, so
that server may live in a virtual environment of its own. Used by
``tests/test_labelstudio.py``'s live test and, by hand, to make the fixtures::

    python tests/_labelstudio_live.py TASKS.json CONFIG.xml PLAN.json EXPORT.json

``PLAN.json`` lists the annotations to submit: ``{"task": i, "annotator":
EMAIL, "choice": TEXT}`` (``i`` indexes TASKS.json) or ``{"task": i,
"annotator": EMAIL, "cancelled": true}`` for a skip. One Label Studio user is
created per annotator email. Prints one JSON object: the server's start time,
its version, and the ids of the users and tasks.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from importlib.metadata import version
from pathlib import Path

ADMIN = "budgetsft-admin@example.org"
TOKEN = "budgetsft0live0test0token0000000000000000"  # a legacy API token for the admin (len 41)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(data_dir: Path, port: int, timeout: float = 300.0,
                 python: str | None = None) -> tuple[subprocess.Popen, float]:
    """Start ``label-studio start`` on 127.0.0.1:port with its SQLite files in data_dir; (process, seconds).

    ``python`` is the interpreter that has label-studio (default: this one).
    """
    env = {**os.environ, "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir), "LABEL_STUDIO_USERNAME": ADMIN,
           "LABEL_STUDIO_PASSWORD": "budgetsft-live-test", "LABEL_STUDIO_USER_TOKEN": TOKEN,
           "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true", "LATEST_VERSION_CHECK": "false",
           "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true", "SENTRY_DSN": "", "FRONTEND_SENTRY_DSN": ""}
    log = open(data_dir / "server.log", "wb")  # noqa: SIM115 - the server writes it while it runs
    start = time.perf_counter()
    proc = subprocess.Popen([python or sys.executable, "-m", "label_studio.server", "start", "--no-browser", "--port",
                             str(port), "--internal-host", "127.0.0.1", "--enable-legacy-api-token"],
                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}/health"
    while time.perf_counter() - start < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"label-studio exited with {proc.returncode}:\n"
                               + (data_dir / "server.log").read_text(errors="replace")[-3000:])
        try:
            with urllib.request.urlopen(url, timeout=2) as res:
                if res.status == 200:
                    return proc, time.perf_counter() - start
        except OSError:
            pass
        time.sleep(0.5)
    stop_server(proc)
    raise TimeoutError(f"label-studio did not answer {url} within {timeout:g} s")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def label(base_url: str, tasks: list, config: str, plan: list) -> tuple[list, dict]:
    """Create a project, import the tasks, submit the plan's annotations, and return the JSON export."""
    from label_studio_sdk import LabelStudio

    client = LabelStudio(base_url=base_url, api_key=TOKEN)
    users = {}
    for email in sorted({p["annotator"] for p in plan}):
        users[email] = client.users.create(username=email.split("@")[0], email=email).id
    project = client.projects.create(title="budgetsft round trip", label_config=config)
    client.projects.import_tasks(project.id, request=tasks, return_task_ids=True)
    ids = sorted(t.id for t in client.tasks.list(project=project.id))
    if len(ids) != len(tasks):
        raise RuntimeError(f"imported {len(ids)} tasks, expected {len(tasks)}")
    for p in plan:
        if p.get("cancelled"):
            client.annotations.create(id=ids[p["task"]], result=[], was_cancelled=True,
                                      completed_by=users[p["annotator"]])
            continue
        result = [{"from_name": "label", "to_name": "prompt", "type": "choices",
                   "value": {"choices": [p["choice"]]}}]
        client.annotations.create(id=ids[p["task"]], result=result, completed_by=users[p["annotator"]],
                                  lead_time=1.5)
    # What the project page's "Export -> JSON" gives (all tasks, the unlabelled ones too).
    blob = b"".join(client.projects.exports.download_sync(project.id, export_type="JSON", download_all_tasks=True))
    return json.loads(blob), {"project": project.id, "users": users, "task_ids": ids}


def run(tasks_path: Path, config_path: Path, plan_path: Path, out_path: Path, port: int | None = None) -> dict:
    import label_studio

    tasks = json.loads(tasks_path.read_text(encoding="utf-8"))
    config = config_path.read_text(encoding="utf-8")
    plan = json.loads(plan_path.read_text(encoding="utf-8"))
    port = port or free_port()
    with tempfile.TemporaryDirectory(prefix="budgetsft-ls-") as tmp:
        proc, seconds = start_server(Path(tmp), port)
        try:
            export, ids = label(f"http://127.0.0.1:{port}", tasks, config, plan)
        finally:
            stop_server(proc)
    out_path.write_text(json.dumps(export, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return {"start_seconds": round(seconds, 1), "label_studio": label_studio.__version__,
            "label_studio_sdk": version("label-studio-sdk"), **ids}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("tasks", "config", "plan", "out"):
        ap.add_argument(name, type=Path)
    ap.add_argument("--port", type=int)
    args = ap.parse_args()
    print(json.dumps(run(args.tasks, args.config, args.plan, args.out, args.port)))


if __name__ == "__main__":
    main()
