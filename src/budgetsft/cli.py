"""The command-line interface (STYLE habit 11: parse, load config, call one function, write results)."""

from __future__ import annotations

import json
import math
import sys
import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from budgetsft.exceptions import BudgetsftError, BudgetsftWarning, ConfigError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Budget-aware adaptation of language models.")
err = Console(stderr=True, soft_wrap=True)
# Tables are wide: give them room when stdout is a pipe or a file (CI logs, `| tee`).
out = Console() if sys.stdout.isatty() else Console(width=200)

TABLE_KEYS = ("labels_bought", "mistakes", "pseudo_regret", "stackelberg_regret", "regret_queried",
              "regret_unqueried", "test_accuracy", "refit_accuracy")
# Real data has no expected rewards (no pseudo-regret); without the LP, split the hinge loss instead.
DATA_KEYS = ("labels_bought", "mistakes", "mistakes_queried", "mistakes_unqueried", "hinge_loss",
             "stackelberg_regret", "test_accuracy", "refit_accuracy")
DATA_KEYS_NO_LP = ("labels_bought", "mistakes", "mistakes_queried", "mistakes_unqueried", "hinge_loss",
                   "hinge_loss_queried", "hinge_loss_unqueried", "test_accuracy", "refit_accuracy")



def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        out.print(f"budgetsft {version('budgetsft')}")
        raise typer.Exit()


_python_showwarning = warnings.showwarning


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """budgetsft's own warnings as one line on stderr (`warning: …`), not Python's two, which point into typer."""
    if issubclass(category, BudgetsftWarning):
        err.print(f"warning: {message}", markup=False, highlight=False)
        return
    _python_showwarning(message, category, filename, lineno, file, line)


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Budget-aware adaptation of language models."""
    warnings.showwarning = _show_warning


def _table_keys(cfg: dict) -> tuple[str, ...]:
    from budgetsft.experiment import comparator_method

    if not cfg.get("data"):
        return TABLE_KEYS
    return DATA_KEYS if comparator_method(cfg) != "none" else DATA_KEYS_NO_LP


COMPARATOR_HELP = ("Hindsight comparator of the Stackelberg regret, solved once per stream and cached: exact (LP), "
                   "approx (first-order bracket; the regret is then a lower bound, headed '(approx, ≥)'), none, or "
                   "auto (exact up to 8 M nonzeros, else approx, with a warning). \\[default: auto, from the "
                   "built-in config]")
NO_COMPARATOR_HELP = "Skip the comparator (same as --comparator none): no Stackelberg regret, fastest."


def _set_comparator(cfg: dict, comparator: str | None, no_comparator: bool) -> None:
    if no_comparator and comparator not in (None, "none"):
        raise ConfigError(f"'--no-comparator' and '--comparator {comparator}' contradict each other; give one.")
    if no_comparator:
        comparator = "none"
    if comparator is not None:
        if comparator not in ("auto", "exact", "approx", "none"):
            raise ConfigError(f"'--comparator' must be auto, exact, approx or none. Got {comparator!r}.")
        cfg.pop("regret_lp", None)
        cfg["comparator"] = comparator


def _clean(obj):
    """JSON-safe: NaN/inf become null, numpy scalars become Python numbers."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, str):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _floats(text: str, name: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"'{name}' must be a comma-separated list of numbers. Got {text!r}.") from None


LEARNER_HELP = ("Learner: logistic, arow, ridge, ogd, sketch (rank-64 Frequent Directions, O(m d)). "
                "\\[default: logistic, from the built-in config]")
RADIUS_HELP = ("Confidence radius ρ of the learner: a number, auto (ridge, arow, sketch: a noise scale estimated from "
               "the bought labels; logistic: the constant sqrt(2 log 10) = 2.146) or theory. "
               "\\[default: the learner's: auto; ogd 3.0]")


def _radius(text: str) -> float | str:
    if text in ("auto", "theory"):
        return text
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"'--radius' must be a number, 'auto' or 'theory'. Got {text!r}.") from None

FEATURES_HELP = ("Featuriser for --data: auto (block on a fixed label set, else encoder), block, encoder, causal, "
                 "grad (projected LoRA gradients of --model). "
                 "\\[default: auto]")
MODEL_HELP = ("Model of the featuriser: a local directory (save_pretrained) or a Hugging Face id org/name. "
              "\\[default: the packaged one: smollm2-135m-instruct for causal and grad, all-minilm-l6-v2 otherwise]")
DATA_HELP = ("Real data set instead of --env: bbc-news, medmcqa, logiqa, sarcasm (see `budgetsft data list`), "
             "hf:NAME[:CONFIG] or a .jsonl file. \\[default: none: play --env]")
ENV_HELP = "Environment: synthetic, drifting, adversarial. \\[default: synthetic, from the built-in config]"
ROUNDS_HELP = "Number of rounds T of the environment. \\[default: 5000, from the built-in config]"
DEVICE_HELP = "Featuriser device: auto, cpu, cuda. \\[default: auto]"
MAX_EXAMPLES_HELP = "Use a seeded subset of this many examples. \\[default: all]"


def _set_model(cfg: dict, model: str | None) -> None:
    """Put '--model' into the features section of a config that plays a data set."""
    if model is None:
        return
    if not cfg.get("data"):
        raise ConfigError("'--model' needs '--data' (or a config with a data section): only a real data set is "
                          "featurised by a model; a synthetic environment draws its own features.")
    cfg["features"]["model"] = model


def _ints(text: str, name: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"'{name}' must be a comma-separated list of integers. Got {text!r}.") from None


def _base_config(config: Path | None, env: str | None, rounds: int | None, learner: str | None,
                 radius: str | None, data: str | None = None, features: str | None = None,
                 device: str | None = None, max_examples: int | None = None,
                 skip_invalid: bool = False) -> dict:
    from budgetsft.config import DEFAULT_CONFIG, load_config, merge

    cfg = load_config(config) if config else merge(DEFAULT_CONFIG, {})
    if (data is not None or cfg.get("data")) and (env is not None or rounds is not None):
        given = " and ".join(f"'--{k}'" for k, v in (("env", env), ("rounds", rounds)) if v is not None)
        verb = "do" if env is not None and rounds is not None else "does"
        raise ConfigError(f"{given} {verb} not apply with a data set: its train split is the stream. Drop "
                          f"{given}, or drop '--data' to play a synthetic environment.")
    if data is not None:
        cfg["data"] = {"name": data}
    if cfg.get("data"):
        if isinstance(cfg["data"], str):
            cfg["data"] = {"name": cfg["data"]}
        if isinstance(cfg.get("features"), str):
            cfg["features"] = {"name": cfg["features"]}
        cfg.setdefault("features", {"name": "auto"})
        if features is not None and features != cfg["features"].get("name"):
            cfg["features"] = {"name": features}
        if device is not None:
            cfg["features"]["device"] = device
        if max_examples is not None:
            cfg["data"]["max_examples"] = max_examples
        if skip_invalid:
            cfg["data"]["skip_invalid"] = True
    if env is not None and env != cfg["env"]["name"]:
        cfg["env"] = merge(DEFAULT_CONFIG["env"], {})
        cfg["env"]["name"] = env
    if rounds is not None:
        cfg["env"]["rounds"] = rounds
    if learner is not None and learner != cfg["learner"]["name"]:
        cfg["learner"] = {"name": learner}
    if radius is not None:
        cfg["learner"]["radius"] = _radius(radius)
    return cfg


def _safe(text) -> str:
    """User text (an annotator's name, a label) as rich prints it: markup escaped, control characters shown as
    escapes (an ESC sequence in a name must not drive the terminal)."""
    from rich.markup import escape

    return escape(_shown(text))


def _shown(text) -> str:
    """Control characters of user text shown as escapes (for output printed with markup off)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def _fmt(v) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "—"
        return f"{v:.4f}" if abs(v) < 1 else f"{v:.1f}"
    return str(v)


BUDGET_HELP = ("Label budget as an amount: a number of labels, or with --unit cost an amount of money (each label "
               "charged at its annotator's price). Excludes --beta. \\[default: none: --beta sets it]")
UNIT_HELP = "What --budget counts: labels, or cost (money, at each annotator's price). \\[default: labels]"


def _set_budget(cfg: dict, beta: float | None, budget: float | None, unit: str | None) -> None:
    """--beta (a fraction of the rounds) or --budget (an amount), and --unit, into the gate section."""
    if beta is not None and budget is not None:
        raise ConfigError("give either '--beta' (a fraction of the rounds) or '--budget' (an amount), not both.")
    if unit is not None and unit not in ("labels", "cost"):
        raise ConfigError(f"'--unit' must be labels or cost. Got {unit!r}.")
    if budget is not None:
        if not (math.isfinite(budget) and budget >= 0):
            raise ConfigError(f"'--budget' must be a finite number >= 0. Got {budget!r}.")
        cfg["gate"].pop("beta", None)
        cfg["gate"]["budget"] = int(budget) if float(budget).is_integer() else float(budget)
    if beta is not None:
        cfg["gate"].pop("budget", None)
        cfg["gate"]["beta"] = beta
    if unit is not None:
        cfg["gate"]["unit"] = unit


@app.command()
def run(
    env: Annotated[str | None, typer.Option(help=ENV_HELP)] = None,
    gate: Annotated[str | None, typer.Option(help="Gate: llf, full, random, first, margin, bbq, cgz. "
                                                 "\\[default: llf, from the built-in config]")] = None,
    beta: Annotated[float | None, typer.Option(help="Label budget as a fraction of rounds, in (0, 1]. "
                                                    "\\[default: 0.1, from the built-in config]")] = None,
    budget: Annotated[float | None, typer.Option(help=BUDGET_HELP)] = None,
    unit: Annotated[str | None, typer.Option(help=UNIT_HELP)] = None,
    rounds: Annotated[int | None, typer.Option(help=ROUNDS_HELP)] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the whole run (stream, gate, follower, split). "
                                                  "\\[default: 0, from the built-in config]")] = None,
    learner: Annotated[str | None, typer.Option(help=LEARNER_HELP)] = None,
    radius: Annotated[str | None, typer.Option(help=RADIUS_HELP)] = None,
    window: Annotated[int | None, typer.Option(help="LLF window W (1 = stream mode). \\[default: 1]")] = None,
    schedule: Annotated[str | None, typer.Option(help="LLF spending: dual (a dual price, slowed where the "
                                                      "learner stays wrong on its bought labels), power (the "
                                                      "schedule B·(t/T)^p) or auto (dual in stream mode unless "
                                                      "pacing_power or memory is set). \\[default: auto]")] = None,
    data: Annotated[str | None, typer.Option(help=DATA_HELP)] = None,
    features: Annotated[str | None, typer.Option(help=FEATURES_HELP)] = None,
    model: Annotated[str | None, typer.Option(help=MODEL_HELP)] = None,
    device: Annotated[str | None, typer.Option(help=DEVICE_HELP)] = None,
    max_examples: Annotated[int | None, typer.Option(help=MAX_EXAMPLES_HELP)] = None,
    skip_invalid: Annotated[bool, typer.Option(help="Skip (and count) invalid JSONL lines instead of "
                                                    "failing.")] = False,
    comparator: Annotated[str | None, typer.Option(help=COMPARATOR_HELP)] = None,
    no_comparator: Annotated[bool, typer.Option("--no-comparator", help=NO_COMPARATOR_HELP)] = False,
    config: Annotated[Path | None, typer.Option(help="YAML config; options given here override it. "
                                                     "\\[default: none: the built-in config]")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Write records.csv, summary.json, config.json and "
                                                               "regret.png here. \\[default: none: write "
                                                               "nothing]")] = None,
    records_format: Annotated[str, typer.Option("--format", help="Records file format: csv or parquet.")] = "csv",
    session: Annotated[Path | None, typer.Option(help="Play as a resumable session stored in this SQLite "
                                                      "ledger (see `budgetsft resume`, `budgetsft session`). "
                                                      "\\[default: none: no session]")] = None,
    oracle: Annotated[str | None, typer.Option(help="With --session, where labels come from: dataset, file, "
                                                    "terminal, web. \\[default: dataset]")] = None,
    annotator: Annotated[str, typer.Option(help="Terminal oracle: the annotator's name.")] = "terminal",
    cost: Annotated[float, typer.Option(help="Terminal oracle: the annotator's price per label.")] = 1.0,
    checkpoint_every: Annotated[int, typer.Option(help="With --session, rounds between checkpoints.")] = 100,
    eval_file: Annotated[Path | None, typer.Option("--eval", help="With --session on unlabelled data: a labelled "
                                                                 "JSONL file to report held-out accuracy on. "
                                                                 "\\[default: none]")] = None,
    audit: Annotated[float | None, typer.Option(help="With --session: the share of the budget spent on rounds drawn "
                                                     "uniformly at random (bought whatever the gate says), so that "
                                                     "`session show` estimates accuracy without gold elsewhere. "
                                                     "\\[default: 0]")] = None,
    max_pending: Annotated[int | None, typer.Option(help="With --session and an oracle whose people answer later "
                                                         "(web, file): labels awaited at once while the stream "
                                                         "plays on; 0 waits for every label. \\[default: 10]")
                           ] = None,
) -> None:
    """Play one budgeted game and print its summary.

    The defaults are the built-in config's: the synthetic sanity setting (d = 20, K = 5, T = 5000), the
    llf gate at β = 0.1, the logistic learner, seed 0.

    Examples:

    budgetsft run
    budgetsft run --gate random --beta 0.05 --seed 3 --json
    budgetsft run --data bbc-news --out runs/bbc-llf
    budgetsft run --config configs/drifting_paced.yaml --rounds 2000
    budgetsft run --data bbc-news --schedule power            # the fixed schedule of earlier versions
    budgetsft run --gate llf --beta 0.1 --session llf.db      # resumable: `budgetsft resume llf.db`
    """
    from budgetsft.experiment import run as run_game

    cfg = _base_config(config, env, rounds, learner, radius, data, features, device, max_examples, skip_invalid)
    _set_model(cfg, model)
    _set_comparator(cfg, comparator, no_comparator)
    cfg["progress"] = not as_json
    if gate is not None and gate != cfg["gate"]["name"]:
        kept = {k: cfg["gate"][k] for k in ("beta", "budget", "unit") if k in cfg["gate"]}
        cfg["gate"] = {"name": gate, **(kept or {"beta": 0.1})}
    _set_budget(cfg, beta, budget, unit)
    if window is not None:
        cfg["gate"]["window"] = window
    if schedule is not None:
        cfg["gate"]["schedule"] = schedule
    if seed is not None:
        cfg["seed"] = seed
    if records_format not in ("csv", "parquet"):
        raise ConfigError(f"'--format' must be csv or parquet. Got {records_format!r}.")
    if oracle is not None and session is None:
        raise ConfigError("'--oracle' needs '--session FILE': only a session asks an oracle for labels.")
    if audit is not None and session is None:
        raise ConfigError("'--audit' needs '--session FILE': the audit estimate is reported by `session show`.")
    if max_pending is not None and session is None:
        raise ConfigError("'--max-pending' needs '--session FILE': only a session waits for people's answers.")
    if eval_file is not None and session is None:
        raise ConfigError("'--eval' needs '--session FILE' (a run without a session simulates on labelled data "
                          "and reports its own test split).")
    if session is not None:
        from budgetsft.sessions.session import Session

        if oracle in ("web", "file", "terminal") and cfg.get("data"):
            cfg["data"]["allow_unlabelled"] = True  # a person answers: the data needs no gold
        if eval_file is not None:
            if not eval_file.is_file():
                raise ConfigError(f"{eval_file}: no such evaluation file.")
            cfg["eval"] = str(eval_file.expanduser().resolve())
        if max_pending is not None:
            cfg["max_pending"] = max_pending
        if audit is not None:
            cfg["audit"] = audit
        spec = {"name": oracle or "dataset"}
        if oracle == "terminal":
            spec.update(annotator=annotator, cost=cost)
        _oracle_of(spec)  # an unknown oracle fails before the file is created
        cfg.pop("progress", None)
        sess = Session.create(session, cfg, oracle=spec, checkpoint_every=checkpoint_every)
        _play_session(sess, None, as_json, out_dir, records_format)
        return
    result = _with_progress(lambda cb: run_game(cfg, progress=cb), total=None if cfg.get("data") else
                            int(cfg["env"]["rounds"]), what=f"{cfg['gate']['name']} rounds",
                            quiet=as_json or bool(cfg.get("data")))
    _report_run(result.config, result.records, result.summary, as_json, out_dir, records_format)


def _report_run(cfg: dict, records, summary: dict, as_json: bool, out_dir: Path | None, records_format: str) -> None:
    """Write (--out) and print (table or --json) one run's results."""
    from budgetsft.experiment import SUMMARY_KEYS
    from budgetsft.plots import plot_runs
    from budgetsft.regret import to_frame

    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        frame = to_frame(records)
        if records_format == "parquet":
            try:
                frame.to_parquet(out_dir / "records.parquet", index=False)
            except ImportError as exc:
                raise BudgetsftError("Writing Parquet needs pyarrow: pip install pyarrow "
                                     "(or use --format csv).") from exc
        else:
            frame.to_csv(out_dir / "records.csv", index=False)
        (out_dir / "summary.json").write_text(json.dumps(_clean(summary), indent=2, sort_keys=True) + "\n")
        (out_dir / "config.json").write_text(json.dumps(_clean(cfg), indent=2, sort_keys=True) + "\n")
        plot_runs({f"{summary['gate']} β={summary['beta']}": frame}, out_dir / "regret.png",
                  title=f"{_setting(cfg)}: seed {summary['seed']}")
    if as_json:
        print(json.dumps(_clean(summary)))
        return
    model = summary.get("model")
    shown = [k for k in SUMMARY_KEYS if not (isinstance(summary.get(k), float) and math.isnan(summary[k]))]
    out.print(_kv_table(f"budgetsft run — {_setting(cfg)}" + (f", model {model}" if model else "")
                        + f", {summary['learner']} learner, seed {summary['seed']}", summary, shown, "metric"))
    if summary.get("comparator_loss") == 0 and summary.get("stackelberg_regret") == summary.get("hinge_loss"):
        out.print("note: the best fixed θ in hindsight has zero hinge loss on this stream (with d >= T, or separable "
                  "data, some θ ranks every gold first by a unit margin), so the Stackelberg regret equals the "
                  "learner's hinge loss and says nothing more about it: compare mistakes and refit accuracy.",
                  markup=False, highlight=False)
    if out_dir is not None:
        out.print(f"wrote {out_dir}/records.{records_format}, summary.json, config.json, regret.png")


def _kv_table(title: str, values: dict, keys, first: str) -> Table:
    """A two-column table of ``keys`` and their formatted ``values``."""
    table = Table(title=title)
    table.add_column(first)
    table.add_column("value", justify="right")
    for key in keys:
        table.add_row(key, _fmt(values.get(key)))
    return table


def _oracle_of(spec: dict):
    from budgetsft.sessions.oracles import make_oracle

    return make_oracle(spec)


def _play_session(sess, oracle_spec: dict | None, as_json: bool, out_dir: Path | None = None,
                  records_format: str = "csv") -> None:
    """Play a session until it finishes, waits for answers, or is stopped; report accordingly."""
    spec = oracle_spec or sess.ledger.oracle
    oracle = _oracle_of(spec)
    quiet = as_json or spec.get("name") == "terminal"  # a progress bar would draw over the annotator's prompt
    outcome = _with_progress(lambda cb: sess.play(oracle, progress=cb), total=sess.horizon(),
                             what=f"session {sess.ledger.path.name}", quiet=quiet)
    if outcome.status == "finished":
        _report_run(sess.config, sess.records(), sess.summary(), as_json, out_dir, records_format)
        return
    report = sess.progress_report()
    if as_json:
        print(json.dumps(_clean({"status": outcome.status, "position": outcome.position, **report})))
        return
    if outcome.status == "waiting":
        where = ""
        if hasattr(oracle, "queries_path"):
            where = f" Queries are in {oracle.queries_path(sess)}; import answers with " \
                    f"`budgetsft session import {sess.ledger.path} ANSWERS.jsonl`."
        elif report["pending"]:
            where = f" Answer them with `budgetsft annotate {sess.ledger.path}`."
        out.print(f"session {sess.ledger.path}: waiting for {report['pending']} answer(s) after round "
                  f"{outcome.position} of {report['horizon']}.{where} Then `budgetsft resume {sess.ledger.path}`.",
                  markup=False, highlight=False)
    else:
        out.print(f"session {sess.ledger.path}: saved after round {outcome.position} of {report['horizon']}; "
                  f"continue with `budgetsft resume {sess.ledger.path}`.", markup=False, highlight=False)


@app.command()
def resume(
    path: Annotated[Path, typer.Argument(help="Session ledger (.db) to continue.")],
    oracle: Annotated[str | None, typer.Option(help="Override the session's oracle: dataset, file, terminal, "
                                                    "web. \\[default: the session's own]")] = None,
    annotator: Annotated[str, typer.Option(help="Terminal oracle: the annotator's name.")] = "terminal",
    cost: Annotated[float, typer.Option(help="Terminal oracle: the annotator's price per label.")] = 1.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Once finished, write records.csv, summary.json, "
                                                               "config.json and regret.png here. \\[default: "
                                                               "none]")] = None,
    checkpoint_every: Annotated[int, typer.Option(help="Rounds between checkpoints.")] = 100,
    rebind: Annotated[bool, typer.Option(help="The data file changed: go on with it if every paid example is "
                                              "still at its round, unchanged.")] = False,
) -> None:
    """Continue an interrupted session (even after kill -9): same records as an uninterrupted run.

    It plays on from the newest checkpoint; answers already in the ledger are reused, never bought again.

    Examples:

    budgetsft resume llf.db --json
    budgetsft resume bbc.db --oracle terminal --annotator bo --cost 2.0
    budgetsft resume batch.db --out runs/batch       # once the file oracle's answers are imported
    """
    from budgetsft.sessions.session import Session

    spec = None
    if oracle is not None:
        spec = {"name": oracle}
        if oracle == "terminal":
            spec.update(annotator=annotator, cost=cost)
        _oracle_of(spec)  # a bad oracle or price fails before anything is played
    sess = Session.open(path, checkpoint_every=checkpoint_every, rebind=rebind)
    sess.check_source()
    _play_session(sess, spec, as_json, out_dir)


session_app = typer.Typer(no_args_is_help=True, help="Inspect a session ledger: progress, labels, answers.")
app.add_typer(session_app, name="session")


@session_app.command("show")
def session_show(
    path: Annotated[Path, typer.Argument(help="Session ledger (.db).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Status, spend, remaining budget, labels by annotator, and the regret so far.

    The status is created, playing, waiting (for answers), stopped, finished, or interrupted: the ledger
    says playing but its player is gone (killed); `budgetsft resume FILE` goes on from its last checkpoint.

    Examples:

    budgetsft session show llf.db
    budgetsft session show llf.db --json | jq .status
    """
    from budgetsft.sessions.session import Session

    report = Session.open(path).progress_report()
    if as_json:
        print(json.dumps(_clean(report)))
        return
    if report.get("mode") == "pool":
        _show_pool(path, report)
    else:
        keys = ["rounds_played", "horizon", "budget", "unit", "spent", "remaining", "labels_bought", "pending"]
        keys += ["mistakes", "hinge_loss", "pseudo_regret"] if report.get("mistakes") is not None else []
        out.print(_kv_table(f"session {path} — {report['status']}", report, keys, ""))
        audit = report.get("audit")
        if audit and audit.get("accuracy") is not None:
            lo, hi = audit["ci95"]
            out.print(f"accuracy (audit estimate): {audit['accuracy']:.3f}, 95 % interval [{lo:.3f}, {hi:.3f}] from "
                      f"{audit['n']} audit round(s): {audit['estimator']}", markup=False, highlight=False)
        bought = report.get("mistakes_on_bought_rounds")
        if bought:
            out.print(f"mistakes on the {bought['n']} bought rounds: {bought['mistakes']} ({bought['note']})",
                      markup=False, highlight=False)
    if report["by_annotator"]:
        who = Table(title="labels by annotator")
        for col in ("annotator", "labels", "spent"):
            who.add_column(col, justify="left" if col == "annotator" else "right")
        for name, row in report["by_annotator"].items():
            who.add_row(_safe(name), str(row["labels"]), _fmt(row["spent"]))
        out.print(who)


def _show_pool(path: Path, report: dict) -> None:
    """`session show` of a pool session: the books, then each estimate with how it was made."""
    out.print(_kv_table(f"pool session {path} — {report['status']}", report,
                        ("pool_size", "budget", "unit", "spent", "held_by_pending", "remaining", "labels_bought",
                         "pending", "skipped", "batch", "audit_share"), ""))
    audit = report.get("audit")
    if audit and audit.get("accuracy") is not None:
        lo, hi = audit["ci95"]
        out.print(f"accuracy (audit estimate): {audit['accuracy']:.3f}, 95 % interval [{lo:.3f}, {hi:.3f}] from "
                  f"{audit['n']} audit item(s): {audit['estimator']}", markup=False, highlight=False)
    elif audit:
        out.print(f"accuracy (audit estimate): none yet ({audit['estimator']})", markup=False, highlight=False)
    ev = report.get("eval")
    if ev:
        out.print(f"accuracy on {ev['file']} ({ev['n']} items): {ev['accuracy']:.3f}: {ev['estimator']}",
                  markup=False, highlight=False)
    before = report.get("gate_picks_before_label")
    if before:
        out.print(f"the gate's picks, prediction before the label: {before['correct']} of {before['n']} right "
                  f"({before['note']})", markup=False, highlight=False)
    if not audit and not ev:
        out.print("no accuracy is shown: it needs gold. Give an audit share (select --audit) or an evaluation "
                  "file (select --eval) when creating the session.", markup=False, highlight=False)


@session_app.command("export")
def session_export(
    path: Annotated[Path, typer.Argument(help="Session ledger (.db).")],
    dest: Annotated[Path, typer.Argument(help="Output JSONL: the bought labelled set, canonical schema; with "
                                              "--format label-studio, the tasks (JSON).")],
    force: Annotated[bool, typer.Option(help="Overwrite DEST if it exists (never the ledger itself).")] = False,
    rebind: Annotated[bool, typer.Option(help="The data file changed: export if every paid example is still "
                                              "at its round, unchanged.")] = False,
    fmt: Annotated[str, typer.Option("--format", help="jsonl: the bought labelled set; label-studio: the pending "
                                                      "and bought queries as Label Studio tasks (JSON), with the "
                                                      "labeling config beside them (tasks.json -> "
                                                      "tasks.label_config.xml).")
                   ] = "jsonl",
) -> None:
    """Write the labelled examples the session bought (with annotator and cost) as JSONL.

    With --format label-studio, write the pending and bought queries as Label Studio tasks instead, and the
    labeling config to import with them; label in Label Studio, then bring its JSON export back with
    `budgetsft session import DB EXPORT.json --format label-studio`.

    Examples:

    budgetsft session export llf.db bought.jsonl
    budgetsft session export llf.db bought.jsonl --force     # overwrite bought.jsonl
    budgetsft session export web.db tasks.json --format label-studio   # + tasks.label_config.xml
    """
    import os
    import tempfile

    from budgetsft.sessions.session import Session

    if fmt not in ("jsonl", "label-studio"):
        raise ConfigError(f"'--format' must be one of 'jsonl', 'label-studio'. Got {fmt!r}.")
    if fmt == "label-studio":
        from budgetsft.labelstudio import config_path_for, write_tasks

        ledger_files = {Path(os.path.realpath(str(path) + suffix)) for suffix in ("", "-wal", "-shm", "-acks", ".lock")}
        if {Path(os.path.realpath(dest)), Path(os.path.realpath(config_path_for(dest)))} & ledger_files:
            raise ConfigError(f"{dest}: that is the session ledger {path} (or one of its files); choose another "
                              f"output file.")
        sess = Session.open(path, rebind=rebind)
        try:
            res = write_tasks(sess, dest, force=force)
        finally:
            sess.close()
        out.print(f"wrote {res.pending + res.answered} Label Studio task(s) to {dest} ({res.pending} pending, "
                  f"{res.answered} bought)", markup=False, highlight=False)
        out.print(f"labeling config: {res.config_path}", markup=False, highlight=False)
        return

    real_dest = Path(os.path.realpath(dest))
    if real_dest == Path(os.path.realpath(path)) or any(
            real_dest == Path(os.path.realpath(str(path) + suffix)) for suffix in ("-wal", "-shm", "-acks", ".lock")):
        raise ConfigError(f"{dest}: that is the session ledger {path} (or one of its files); choose another "
                          f"output file.")
    if dest.exists() and not force:
        raise ConfigError(f"{dest}: file exists; pass --force to overwrite it.")
    if dest.exists() and not dest.is_file():
        raise ConfigError(f"{dest}: not a regular file.")
    if not dest.parent.is_dir():
        raise ConfigError(f"{dest}: folder {dest.parent} does not exist.")
    sess = Session.open(path, rebind=rebind)
    rows = sess.export_labels()
    sess.close()
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    try:  # written whole, then renamed into place: a failure never leaves half a file
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write("".join(json.dumps(r) + "\n" for r in rows))
        os.replace(tmp, dest)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    out.print(f"wrote {len(rows)} labelled examples to {dest}", markup=False, highlight=False)


@session_app.command("import")
def session_import(
    path: Annotated[Path, typer.Argument(help="Session ledger (.db).")],
    answers: Annotated[Path, typer.Argument(help='JSONL answers: {"query_id": 3, "label": 1, "annotator": "a"}; '
                                                 "with --format label-studio, Label Studio's JSON export.")],
    fmt: Annotated[str, typer.Option("--format", help="jsonl: answer lines (file oracle); label-studio: a Label "
                                                      "Studio JSON export of tasks from `session export "
                                                      "--format label-studio`.")] = "jsonl",
    annotators: Annotated[Path | None, typer.Option(help='With --format label-studio: JSON or YAML map from Label '
                                                         'Studio user ids (or emails) to ledger annotators, '
                                                         '{"2": "ana", "3": {"name": "bo", "cost": 2.5}}. '
                                                         "\\[default: the ledger's annotators, by user id "
                                                         "or email]")] = None,
) -> None:
    """Import answers to pending queries (file oracle): all or nothing, nothing is charged if any is refused.

    With --format label-studio, import the labels of a Label Studio JSON export, each charged at its
    annotator's price: all or nothing (every bad task is listed by its Label Studio id), each query paid
    once (importing the same export again charges nothing), never beyond the budget.

    Examples:

    budgetsft run --window 50 --session batch.db --oracle file    # writes batch.queries.jsonl
    budgetsft session import batch.db answers.jsonl && budgetsft resume batch.db
    budgetsft session import web.db export.json --format label-studio --annotators annotators.json
    """
    from budgetsft.sessions.ledger import Ledger
    from budgetsft.sessions.oracles import import_answers

    if fmt not in ("jsonl", "label-studio"):
        raise ConfigError(f"'--format' must be one of 'jsonl', 'label-studio'. Got {fmt!r}.")
    if annotators is not None and fmt != "label-studio":
        raise ConfigError("'--annotators' maps Label Studio's annotators: it needs '--format label-studio'.")
    if fmt == "label-studio":
        from budgetsft.labelstudio import import_export, import_message

        with Ledger.open(path) as led:
            res = import_export(led, answers, annotators=annotators)
        out.print(import_message(res, answers), markup=False, highlight=False)
        return
    with Ledger.open(path) as led:
        res = import_answers(led, answers)
    out.print(f"imported {res['added']} answer(s), {res['duplicates']} duplicate(s) ignored, "
              f"{res['pending']} still pending", markup=False)


@app.command()
def select(
    data: Annotated[str | None, typer.Option(help="The pool: a JSONL file (answer optional on every line) or a "
                                                  "data set name. Needed when the session is created; later "
                                                  "calls read it from the session. \\[default: the session's]")
                    ] = None,
    session: Annotated[Path, typer.Option(help="The pool session's ledger (.db): created by the first call, "
                                               "then reopened.")] = Path("select.db"),
    batch: Annotated[int | None, typer.Option(help="Items to pick now. \\[default: the session's batch, "
                                                   "20 when created]")] = None,
    budget: Annotated[float | None, typer.Option(help=BUDGET_HELP)] = None,
    beta: Annotated[float | None, typer.Option(help="Budget as a fraction of the pool, in (0, 1]. "
                                                    "\\[default: 0.1 when neither is given]")] = None,
    unit: Annotated[str | None, typer.Option(help=UNIT_HELP)] = None,
    audit: Annotated[float | None, typer.Option(help="Audit share: the fraction of the picks drawn uniformly at "
                                                     "random, so that `session show` can estimate accuracy "
                                                     "without bias (their labels train the model too). "
                                                     "\\[default: 0]")] = None,
    eval_file: Annotated[Path | None, typer.Option("--eval", help="A labelled JSONL file (same candidates) on "
                                                                 "which `session show` reports held-out "
                                                                 "accuracy. \\[default: none]")] = None,
    out_file: Annotated[Path | None, typer.Option("--out", help="Write the picks here (one JSON line each, or "
                                                                "Label Studio tasks). \\[default: stdout]")
                        ] = None,
    fmt: Annotated[str, typer.Option("--format", help="jsonl, or label-studio (tasks JSON + labeling config "
                                                      "beside it).")] = "jsonl",
    features: Annotated[str | None, typer.Option(help=FEATURES_HELP)] = None,
    model: Annotated[str | None, typer.Option(help=MODEL_HELP)] = None,
    learner: Annotated[str | None, typer.Option(help=LEARNER_HELP)] = None,
    seed: Annotated[int | None, typer.Option(help="Seed (audit draws). \\[default: 0]")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML config for a new session; options override it. "
                                                     "\\[default: none: the built-in config]")] = None,
    force: Annotated[bool, typer.Option(help="Overwrite --out if it exists.")] = False,
    pending: Annotated[bool, typer.Option("--pending", help="Pick nothing: write the picks still awaiting an "
                                                            "answer again (a lost picks file).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object (the picks and the books).")
                       ] = False,
) -> None:
    """Pick the next batch of an unlabelled pool to label: LLF pool selection, within the budget.

    The first call creates a pool session; each later call picks the next --batch items, conditioned on
    every label received so far and on every pick still pending, and never past the budget (pending picks
    hold their share). Answers come back in any subset and order: `budgetsft session import`, the web page
    (`budgetsft annotate`), or `budgetsft labelstudio sync`.

    Examples:

    budgetsft select --data pool.jsonl --session s.db --batch 20 --budget 170 --out b1.jsonl
    budgetsft session import s.db answers.jsonl        # {"query_id": 3, "label": 1, "annotator": "ana"}
    budgetsft select --session s.db --out b2.jsonl     # the next 20, after what came back
    budgetsft select --session s.db --pending --out again.jsonl   # the picks still awaiting answers
    budgetsft select --data pool.jsonl --session m.db --budget 250 --unit cost --audit 0.1 --eval dev.jsonl
    budgetsft session show s.db
    """
    import os

    from budgetsft.sessions.pool import pending_picks, pool_config, select_batch
    from budgetsft.sessions.session import Session

    if fmt not in ("jsonl", "label-studio"):
        raise ConfigError(f"'--format' must be one of 'jsonl', 'label-studio'. Got {fmt!r}.")
    if batch is not None and batch < 1:
        raise ConfigError(f"'--batch' must be an int >= 1. Got {batch}.")
    if fmt == "label-studio" and out_file is None:
        raise ConfigError("'--format label-studio' writes a tasks file: give '--out FILE'.")
    if out_file is not None:
        if out_file.exists() and not force:
            raise ConfigError(f"{out_file}: file exists; pass --force to overwrite it (or choose another --out).")
        if out_file.exists() and not out_file.is_file():
            raise ConfigError(f"{out_file}: not a regular file.")
        if not out_file.parent.is_dir():
            raise ConfigError(f"{out_file}: folder {out_file.parent} does not exist.")
        ledger_files = {os.path.realpath(str(session) + x) for x in ("", "-wal", "-shm", "-acks", ".lock")}
        if os.path.realpath(out_file) in ledger_files:
            raise ConfigError(f"{out_file}: that is the session ledger {session}; choose another --out.")
    if session.exists():
        given = [f"--{k}" for k, v in (("budget", budget), ("beta", beta), ("unit", unit), ("audit", audit),
                                       ("eval", eval_file), ("features", features), ("model", model),
                                       ("learner", learner), ("seed", seed), ("config", config)) if v is not None]
        if given:
            raise ConfigError(f"{session}: the session exists; {', '.join(given)} only apply when it is created "
                              f"(see `budgetsft session show {session}`). Drop them, or use a new --session.")
        sess = Session.open(session)
        stored = sess.config.get("data", {})
        stored_name = stored.get("name") if isinstance(stored, dict) else stored
        if data is not None and os.path.realpath(data) != os.path.realpath(str(stored_name)) and data != stored_name:
            sess.close()
            raise ConfigError(f"{session}: the session's pool is {stored_name}, not {data}; drop --data or use a "
                              f"new --session.")
        sess.check_source()
    else:
        if data is None:
            raise ConfigError(f"{session}: no such session; the first call creates it and needs '--data POOL'.")
        cfg = _base_config(config, None, None, learner, None, data, features)
        _set_model(cfg, model)
        if budget is None and beta is None and "budget" not in cfg["gate"] and config is None:
            beta = 0.1
        _set_budget(cfg, beta, budget, unit)
        if cfg["gate"]["name"] != "llf":
            raise ConfigError(f"select picks by LLF pool selection; the config's gate is {cfg['gate']['name']!r}.")
        if seed is not None:
            cfg["seed"] = seed
        if audit is not None:
            cfg["audit"] = audit
        if eval_file is not None:
            if not eval_file.is_file():
                raise ConfigError(f"{eval_file}: no such evaluation file.")
            cfg["eval"] = str(eval_file.expanduser().resolve())
        cfg["comparator"] = "none"
        cfg = pool_config(cfg, batch=batch)
        if not as_json:
            err.print(f"creating pool session {session} from {data} (featurising the pool once; cached)",
                      markup=False, highlight=False)
        cfg["progress"] = not as_json
        sess = Session.create(session, cfg, oracle={"name": "web"})
    try:
        sess.ledger.check_writable()
        sel = pending_picks(sess) if pending else select_batch(sess, batch)
        if sel.picks and out_file is not None:
            if fmt == "label-studio":
                from budgetsft.labelstudio import write_tasks

                queries = [sess.ledger.query(p.query_id) for p in sel.picks]
                write_tasks(sess, out_file, force=force, queries=queries)
            else:
                _write_lines(out_file, [json.dumps(p.to_json(), ensure_ascii=False) for p in sel.picks])
    finally:
        sess.close()
    books = {"budget": sel.budget, "unit": sel.unit, "spent": sel.spent, "held_by_pending": sel.held,
             "pending": sel.pending, "pool_size": sel.pool_size, "unlabelled_left": sel.unlabelled_left}
    if as_json:
        print(json.dumps(_clean({"session": str(session), "picks": [p.to_json() for p in sel.picks],
                                 "n_picks": len(sel.picks), "reason": sel.reason, **books})))
        return
    if sel.picks and out_file is None and fmt == "jsonl":
        for p in sel.picks:
            print(json.dumps(p.to_json(), ensure_ascii=False))
    audits = sum(p.purpose == "audit" for p in sel.picks)
    what = (f"{len(sel.picks)} pending pick(s), written again" if pending else
            f"picked {len(sel.picks)} item(s)") + (f" ({audits} audit)" if audits else "")
    where = f" -> {out_file}" if sel.picks and out_file is not None else ""
    err.print(f"{session}: {what}{where}; {sel.spent:g} of {sel.budget:g} {sel.unit} spent, {sel.held:g} held by "
              f"{sel.pending} pending pick(s).", markup=False, highlight=False)
    if sel.reason:
        err.print(("nothing written: " if not sel.picks else "note: ") + sel.reason, markup=False, highlight=False)
    if sel.picks and fmt == "label-studio":
        err.print(f"import the tasks and {out_file.with_name(out_file.stem + '.label_config.xml').name} into Label "
                  f"Studio; label; then `budgetsft session import {session} EXPORT.json --format label-studio` and "
                  f"select again (or let `budgetsft labelstudio sync` do all of it).", markup=False, highlight=False)
    elif sel.picks:
        err.print(f"answer them, then `budgetsft session import {session} ANSWERS.jsonl` "
                  f'({{"query_id": ..., "label": ..., "annotator": ...}} per line) and select again.',
                  markup=False, highlight=False)


def _write_lines(path: Path, lines: list[str]) -> None:
    """Write text lines whole (temp file, then rename): a failure never leaves half a file."""
    import os
    import tempfile

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write("".join(line + "\n" for line in lines))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@app.command()
def annotate(
    path: Annotated[Path, typer.Argument(help="Session ledger (.db) whose queries people will answer.")],
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    host: Annotated[str, typer.Option(help="Interface to bind (loopback unless told otherwise).")] = "127.0.0.1",
    add_annotator: Annotated[str | None, typer.Option(help="Create an annotator, print its token, and exit.")] = None,
    cost: Annotated[float, typer.Option(help="With --add-annotator: the annotator's price per label.")] = 1.0,
    revoke: Annotated[str | None, typer.Option(help="Revoke this annotator's token at once, and exit.")] = None,
    rotate: Annotated[str | None, typer.Option(help="Give this annotator a fresh token (the old one stops "
                                                    "working), print it, and exit: how a lost token is "
                                                    "replaced.")] = None,
    list_annotators: Annotated[bool, typer.Option("--list", help="List the annotators (tokens are stored "
                                                                 "hashed: they cannot be shown; --rotate "
                                                                 "replaces a lost one), and exit.")] = False,
    lease_ttl: Annotated[float, typer.Option(help="Seconds an item stays reserved for the annotator "
                                                  "who fetched it.")] = 300.0,
    rebind: Annotated[bool, typer.Option(help="The data file changed: serve it if every paid example is still "
                                              "at its round, unchanged.")] = False,
    stay: Annotated[bool, typer.Option(help="Keep serving after the session has finished (the page then says "
                                            "so). \\[default: exit once it is finished]")] = False,
) -> None:
    """Serve the session's pending queries to annotators in the browser and over a JSON API.

    Examples:

    budgetsft run --window 50 --rounds 2000 --session web.db --oracle web
    budgetsft annotate web.db --add-annotator ana --cost 1.0    # prints ana's token
    budgetsft annotate web.db --port 8000                       # then open http://127.0.0.1:8000/
    budgetsft annotate web.db --list
    budgetsft annotate web.db --rotate ana                       # ana lost her token: a new one
    """
    from budgetsft.sessions.ledger import Ledger

    actions = [f"--{flag}" for flag, v in (("add-annotator", add_annotator), ("revoke", revoke),
                                            ("rotate", rotate), ("list", list_annotators or None)) if v is not None]
    if len(actions) > 1:
        raise ConfigError(f"{' and '.join(actions)} cannot be combined: give one of them at a time.")
    if add_annotator is not None:
        with Ledger.open(path) as led:
            ann = led.add_annotator(add_annotator, cost)
            unit, total = led.budget_unit, led.budget_total
        out.print(f"annotator {_shown(ann.name)} (cost {ann.cost:g} per label), token: {ann.token}", markup=False,
                  highlight=False)
        # Notes go to stderr: the token stays the last line of stdout, for scripts.
        if unit == "labels":
            err.print(f"note: this session's budget counts labels ({total:g}): every label uses 1 of them "
                      f"whatever the annotator's price; the price {ann.cost:g} is recorded, not charged. Prices "
                      f"are charged only under a cost budget (gate unit: cost).", markup=False, highlight=False)
        else:
            err.print(f"note: this session's budget counts cost units ({total:g}): each label by {_shown(ann.name)} "
                      f"charges {ann.cost:g} of them.", markup=False, highlight=False)
        err.print("the token is shown only now (the ledger keeps a hash); revoke it with "
                  f"`budgetsft annotate {path} --revoke {_shown(ann.name)}`.", markup=False, highlight=False)
        return
    if revoke is not None:
        with Ledger.open(path) as led:
            led.revoke_annotator(revoke)
        out.print(f"annotator {_shown(revoke)}: token revoked", markup=False, highlight=False)
        return
    if rotate is not None:
        with Ledger.open(path) as led:
            ann = led.rotate_token(rotate)
        out.print(f"annotator {_shown(ann.name)}: new token: {ann.token}", markup=False, highlight=False)
        err.print("the old token no longer works; the new one is shown only now.", markup=False, highlight=False)
        return
    if list_annotators:
        with Ledger.open(path) as led:
            anns, by, passes = led.annotators(include_revoked=True), led.labels_by_annotator(), led.passes()
        table = Table(title=f"annotators of {path}")
        for col in ("annotator", "cost", "labels", "spent", "skipped", "status"):
            table.add_column(col, justify="left" if col in ("annotator", "status") else "right")
        for a in anns:
            row = by.get(a.name, {"labels": 0, "spent": 0.0})
            table.add_row(_safe(a.name), f"{a.cost:g}", str(row["labels"]), _fmt(row["spent"]),
                          str(passes.get(a.name, 0)), "revoked" if a.revoked is not None else "active")
        # Names that answered without a token of this server (a Label Studio import, an answers file): the
        # same annotators as `session show` lists, marked for what they are.
        known = {a.name for a in anns}
        for name, row in by.items():
            if name not in known:
                table.add_row(_safe(name), "-", str(row["labels"]), _fmt(row["spent"]), str(passes.get(name, 0)),
                              "imported (no token)")
        if not anns and not by:
            err.print(f"{path}: no annotators yet; add one with --add-annotator NAME.", markup=False,
                      highlight=False)
        out.print(table)
        return
    if not 1 <= port <= 65535:
        raise ConfigError(f"'--port' must be an int in [1, 65535]. Got {port}.")
    from budgetsft.sessions.session import Session

    sess = Session.open(path, rebind=rebind)
    try:
        anns = sess.ledger.annotators()
        if not anns:
            raise ConfigError(f"{path}: no annotators yet; add one with `budgetsft annotate {path} "
                              f"--add-annotator NAME --cost 1.0`.")
        sess.check_source()  # changed data is refused here, before anyone is served
    finally:
        sess.close()
    from budgetsft.sessions.web import serve

    out.print(f"serving {path} on http://{host}:{port}/ for {len(anns)} annotator(s): "
              f"{', '.join(_shown(a.name) for a in anns)}", markup=False, highlight=False)

    def finished(status: dict) -> None:
        budget = status.get("budget") or {}
        out.print(f"session {path} finished: {status.get('labels_bought', 0)} label(s) bought, "
                  f"{budget.get('spent', 0):g} of {budget.get('total', 0):g} {budget.get('unit', '')} spent. "
                  + ("Still serving (--stay); Ctrl-C to stop." if stay else "Nothing is left to answer: exiting "
                     "(--stay keeps serving)."), markup=False, highlight=False)

    serve(path, host=host, port=port, lease_ttl=lease_ttl, stay=stay, on_finish=finished)


# Off a terminal (a log, `script`, CI), long steps print a plain progress line this often instead of a bar.
PROGRESS_LINE_S = 10.0


def _progress_lines(total: int | None, what: str):
    """A callback that prints ``what: n of total (…%), elapsed, ETA`` at most every :data:`PROGRESS_LINE_S`."""
    import time

    t0 = time.monotonic()
    last = [t0]

    def report(n: int) -> None:
        now = time.monotonic()
        if now - last[0] < PROGRESS_LINE_S:
            return
        last[0] = now
        done = f"{n} of {total} ({100 * n / total:.0f} %)" if total else f"{n}"
        eta = f", about {(now - t0) * (total - n) / n:.0f} s left" if total and 0 < n < total else ""
        print(f"{what}: {done}, {now - t0:.0f} s{eta}", file=sys.stderr, flush=True)

    return report


def _with_progress(fn, total: int, what: str, quiet: bool):
    """Run fn(callback) under a rich progress bar on stderr; off a terminal, a plain line every ~10 s; quiet:
    nothing."""
    if quiet:
        return fn(None)
    if not err.is_terminal:
        return fn(_progress_lines(total, what))
    from rich.progress import Progress

    with Progress(console=err, transient=True) as progress:
        task = progress.add_task(what, total=total)
        return fn(lambda n: progress.update(task, completed=n))


@app.command()
def sweep(
    gates: Annotated[str, typer.Option(help="Comma-separated gates.")] = "llf,random,first,full",
    betas: Annotated[str | None, typer.Option(help="Comma-separated budgets β (fractions of the rounds). "
                                                   "\\[default: 0.1]")] = None,
    budget: Annotated[float | None, typer.Option(help=BUDGET_HELP)] = None,
    unit: Annotated[str | None, typer.Option(help=UNIT_HELP)] = None,
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds.")] = "0,1,2",
    env: Annotated[str | None, typer.Option(help=ENV_HELP)] = None,
    rounds: Annotated[int | None, typer.Option(help=ROUNDS_HELP)] = None,
    learner: Annotated[str | None, typer.Option(help=LEARNER_HELP)] = None,
    radius: Annotated[str | None, typer.Option(help=RADIUS_HELP)] = None,
    data: Annotated[str | None, typer.Option(help=DATA_HELP)] = None,
    features: Annotated[str | None, typer.Option(help=FEATURES_HELP)] = None,
    model: Annotated[str | None, typer.Option(help=MODEL_HELP)] = None,
    device: Annotated[str | None, typer.Option(help=DEVICE_HELP)] = None,
    max_examples: Annotated[int | None, typer.Option(help=MAX_EXAMPLES_HELP)] = None,
    skip_invalid: Annotated[bool, typer.Option(help="Skip (and count) invalid JSONL lines instead of "
                                                    "failing.")] = False,
    comparator: Annotated[str | None, typer.Option(help=COMPARATOR_HELP)] = None,
    no_comparator: Annotated[bool, typer.Option("--no-comparator", help=NO_COMPARATOR_HELP)] = False,
    config: Annotated[Path | None, typer.Option(help="YAML config for everything but gate, β and seed. "
                                                     "\\[default: none: the built-in config]")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print only one JSON object of every cell's summary on "
                                                         "stdout (the table goes to stderr).")] = False,
    plot: Annotated[Path | None, typer.Option(help="Write a bar chart of pseudo-regret (real data: mistakes) "
                                                   "here. \\[default: none]")] = None,
    columns: Annotated[str | None, typer.Option(help="Table columns: compact (fits 80 columns), all, or a comma-"
                                                     "separated list of summary keys. \\[default: compact]")
                       ] = None,
    backend: Annotated[str, typer.Option(help="local (serial, this process) or ray (one task per cell).")] = "local",
    address: Annotated[str | None, typer.Option(help="Ray cluster address. \\[default: none: start a private "
                                                     "local instance]")] = None,
    num_cpus: Annotated[int | None, typer.Option(help="CPUs of the local Ray instance. \\[default: Ray's "
                                                      "choice]")] = None,
) -> None:
    """Run gates × β × seeds and print a table of mean ± sd (full runs once per seed at β = 1).

    Every cell of a seed plays the same stream, so a data set is featurised and the comparator solved
    once per seed. The other options are those of `budgetsft run`.

    Examples:

    budgetsft sweep --gates llf,random,first,full --betas 0.05,0.1 --seeds 0,1,2 --rounds 5000
    budgetsft sweep --data bbc-news --seeds 0,1,2 --plot runs/bbc-mistakes.png
    budgetsft sweep --gates llf,margin,bbq --json | jq .table
    budgetsft sweep --data bbc-news --budget 170 --gates llf,random,first   # 170 labels, not a fraction
    """
    from budgetsft.config import GATES

    gate_list = [g.strip() for g in gates.split(",") if g.strip()]
    unknown = [g for g in gate_list if g not in GATES]
    if unknown:
        raise ConfigError(f"unknown gate(s) {unknown}; valid: {', '.join(sorted(GATES))}.")
    if backend not in ("local", "ray"):
        raise ConfigError(f"'--backend' must be local or ray. Got {backend!r}.")
    cfg = _base_config(config, env, rounds, learner, radius, data, features, device, max_examples, skip_invalid)
    _set_model(cfg, model)
    _set_comparator(cfg, comparator, no_comparator)
    if budget is not None and betas is not None:
        raise ConfigError("give either '--betas' (fractions of the rounds) or '--budget' (an amount), not both.")
    _set_budget(cfg, None, budget, unit)
    beta_list: list = [None] if budget is not None else _floats(betas or "0.1", "betas")
    _columns(cfg, columns)  # a bad --columns fails before any cell is played
    _sweep_and_report(cfg, gate_list, beta_list, _ints(seeds, "seeds"), as_json, plot, columns=columns,
                      ray={"address": address, "num_cpus": num_cpus} if backend == "ray" else None)


def _sweep_and_report(cfg: dict, gate_list, beta_list, seed_list, as_json: bool, plot: Path | None,
                      runs_dir: Path | None = None, ray: dict | None = None, columns: str | None = None
                      ) -> list[dict]:
    from budgetsft.experiment import aggregate
    from budgetsft.experiment import sweep as run_sweep
    from budgetsft.regret import to_frame

    n_cells = sum(len(seed_list) * (1 if g == "full" else len(beta_list)) for g in gate_list)
    done: list[dict] = []
    curves: dict = {}

    def keep(result) -> None:
        s = result.summary
        if runs_dir is not None and s["seed"] == seed_list[0]:
            curves[f"{s['gate']} β={s['beta']:g}" if s["beta"] is not None else
                   f"{s['gate']} B={s['budget']:g}"] = to_frame(result.records)

    def sweep_with(cb):
        def on_result(summary):
            done.append(summary)
            if cb:
                cb(len(done))
        if ray is not None:
            from budgetsft.ray_backend import sweep_ray

            return sweep_ray(cfg, gate_list, beta_list, seed_list, on_result=on_result, on_error=on_result, **ray)
        return run_sweep(cfg, gate_list, beta_list, seed_list, on_result=on_result, on_run=keep)

    results = _with_progress(sweep_with, total=n_cells, what="sweep cells", quiet=as_json)
    failed = [r for r in results if "error" in r]
    summaries = [r for r in results if "error" not in r]
    for r in failed:
        err.print(f"cell gate={r['gate']} β={r['beta']} seed={r['seed']} failed: {r['error']}",
                  markup=False, highlight=False)
    keys = _columns(cfg, columns)
    rows = aggregate(summaries, tuple(dict.fromkeys((*_table_keys(cfg), *keys))))
    approx = any(s.get("comparator") == "approx" for s in summaries)
    # with --json, stdout holds only JSON
    _print_table(rows, cfg, console=err if as_json else out, approx=approx, keys=keys)
    if curves:
        from budgetsft.plots import plot_runs

        plot_runs(curves, runs_dir / "curves.png", title=f"{_setting(cfg)}, {cfg['learner']['name']} learner: "
                                                         f"seed {seed_list[0]}",
                  metric="mistakes" if cfg.get("data") else "regret")
    if plot is not None:
        from budgetsft.plots import plot_sweep

        metric = "mistakes" if cfg.get("data") else "pseudo_regret"
        plot_sweep(rows, metric, plot, title=f"{_setting(cfg)}, {cfg['learner']['name']} learner: "
                                             f"{metric.replace('_', '-')}, mean ± sd over {len(seed_list)} seeds")
        (err if as_json else out).print(f"wrote {plot}")
    if as_json:
        cells = [{k: v for k, v in s.items() if k != "seconds"} for s in results]
        print(json.dumps(_clean({"cells": cells, "table": rows}), sort_keys=True))
    return rows


def _setting(cfg: dict) -> str:
    if cfg.get("data"):
        from budgetsft.realdata import configured_features  # `auto` resolved once per process and data set

        data = cfg["data"] if isinstance(cfg["data"], dict) else {"name": cfg["data"]}
        return f"{data['name']} ({configured_features(cfg)} features)"
    env = cfg["env"]
    return f"{env['name']}: d={env.get('d')}, K={env.get('K')}, T={env.get('rounds')}"


# The sweep table's default columns (fit 80 columns), and short headers; `--columns all` shows every key.
COMPACT_KEYS = ("labels_bought", "mistakes", "pseudo_regret", "refit_accuracy")
COMPACT_DATA_KEYS = ("labels_bought", "mistakes", "stackelberg_regret", "refit_accuracy")
COMPACT_DATA_KEYS_NO_LP = ("labels_bought", "mistakes", "hinge_loss", "refit_accuracy")
HEADERS = {"labels_bought": "labels", "pseudo_regret": "pseudo-regret", "stackelberg_regret": "Stackelberg",
           "regret_queried": "regret (q)", "regret_unqueried": "regret (unq)", "test_accuracy": "test acc",
           "refit_accuracy": "refit acc", "hinge_loss": "hinge", "mistakes_queried": "mistakes (q)",
           "mistakes_unqueried": "mistakes (unq)", "hinge_loss_queried": "hinge (q)",
           "hinge_loss_unqueried": "hinge (unq)"}


def _columns(cfg: dict, columns: str | None) -> tuple[str, ...]:
    """The sweep table's columns: compact by default, ``all``, or a comma-separated list of summary keys."""
    from budgetsft.experiment import comparator_method

    full = _table_keys(cfg)
    if columns is None or columns == "compact":
        if not cfg.get("data"):
            return COMPACT_KEYS
        return COMPACT_DATA_KEYS if comparator_method(cfg) != "none" else COMPACT_DATA_KEYS_NO_LP
    if columns == "all":
        return full
    keys = tuple(c.strip() for c in columns.split(",") if c.strip())
    from budgetsft.experiment import SUMMARY_KEYS

    valid = sorted(set(SUMMARY_KEYS) | set(full) - {"gate", "beta", "budget", "seconds"})
    bad = [k for k in keys if k not in valid]
    if bad or not keys:
        raise ConfigError(f"'--columns' must be compact, all, or summary keys from: {', '.join(valid)}. "
                          f"Got {columns!r}.")
    return keys


def _cell(m: float, sd: float, seeds: int) -> str:
    if math.isnan(m):
        return "n/a"
    if float(m).is_integer() and sd == 0 and abs(m) > 1:
        return f"{int(m)}"  # a count every seed agrees on (labels bought)
    mean = f"{m:.3f}" if abs(m) <= 1 else f"{m:.1f}"
    if seeds < 2:
        return mean
    return f"{mean}±{sd:.3f}" if abs(m) <= 1 else f"{mean}±{sd:.1f}"


def _print_table(rows: list[dict], cfg: dict, console: Console | None = None, approx: bool = False,
                 keys: tuple[str, ...] | None = None) -> None:
    """The sweep's mean ± sd table; ``approx``: the regret columns come from the comparator's bracket (headed ≥)."""
    from rich import box

    seeds = rows[0]["seeds"] if rows else 0
    title = (f"{_setting(cfg)}, learner={cfg['learner']['name']}, "
             + (f"mean±sd over {seeds} seeds" if seeds > 1 else "1 seed"))
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1))
    keys = keys or _columns(cfg, None)
    for col in ("gate", "β", "B", *keys):
        label = HEADERS.get(col, col)
        if approx and col in ("stackelberg_regret", "regret_queried", "regret_unqueried"):
            label += " ≥"
        table.add_column(label, justify="left" if col == "gate" else "right", no_wrap=True)
    for r in rows:
        cells = [r["gate"], "-" if r["beta"] is None else f"{r['beta']:g}", f"{r['budget']:g}"]
        for k in keys:
            cells.append(_cell(r[k], r[f"{k}_sd"], r["seeds"]))
        table.add_row(*cells)
    (console or out).print(table)


@app.command()
def plot(
    records: Annotated[list[Path], typer.Argument(help="Records files (CSV or Parquet) written by run --out, or "
                                                       "the run folders holding them.")],
    out_file: Annotated[Path, typer.Option("--out", help="PNG to write.")] = Path("regret.png"),
) -> None:
    """Plot cumulative regret and labels bought of one or more runs.

    Each line is named by the gate and β of its run (read from the summary.json that `run --out` wrote beside
    the records; else by its folder), and the title names the setting.

    Examples:

    budgetsft run --out runs/llf && budgetsft run --gate first --out runs/first
    budgetsft plot runs/llf runs/first --out compare.png
    budgetsft plot runs/llf/records.csv runs/random/records.parquet
    """
    import pandas as pd

    from budgetsft.base import RECORD_FIELDS
    from budgetsft.plots import plot_runs

    runs = []
    for given in records:
        path = given
        if path.is_dir():  # a run folder: the records file `run --out` wrote in it
            path = next((path / f"records.{ext}" for ext in ("csv", "parquet") if (path / f"records.{ext}").is_file()),
                        path / "records.csv")
        if not path.is_file():
            raise ConfigError(f"records file not found: {path}")
        frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
        missing = [c for c in ("round", "regret", "hinge_loss", "mistake", "queried") if c not in frame.columns]
        if missing:
            raise ConfigError(f"{path}: not a records file; missing columns {missing} "
                                     f"(expected {', '.join(RECORD_FIELDS)}).")
        runs.append((path, frame, *_saved_run(path)))
    names, title = _plot_names(runs)
    plot_runs(dict(zip(names, (frame for _, frame, _, _ in runs), strict=True)), out_file, title=title)
    out.print(f"wrote {out_file}")


def _saved_run(records: Path) -> tuple[dict | None, dict | None]:
    """The summary.json and config.json that `run --out` wrote beside a records file (None where missing)."""
    found = []
    for name in ("summary.json", "config.json"):
        try:
            found.append(json.loads((records.parent / name).read_text()) if records.stem == "records" else None)
        except (OSError, ValueError):
            found.append(None)
    return found[0], found[1]


def _plot_names(runs: list) -> tuple[list[str], str | None]:
    """Legend names (gate and β, plus learner or seed where the runs differ in them) and a title naming the setting."""
    folders = [path.parent.name if path.stem == "records" else path.stem for path, *_ in runs]
    summaries = [summary or {} for _, _, summary, _ in runs]
    differ = {key: len({s.get(key) for s in summaries if "gate" in s}) > 1 for key in ("learner", "seed")}
    names = []
    for folder, s in zip(folders, summaries, strict=True):
        if "gate" not in s:
            names.append(folder)
            continue
        beta = s.get("beta")
        name = f"{s['gate']} β={beta:g}" if isinstance(beta, int | float) else s["gate"]
        if differ["learner"]:
            name += f", {s.get('learner')}"
        if differ["seed"]:
            name += f", seed {s.get('seed')}"
        names.append(name)
    # Two runs of the same cell (or a folder without a summary named like a cell): say which folder is which.
    names = [f"{n} ({f})" if names.count(n) > 1 else n for n, f in zip(names, folders, strict=True)]
    settings = []
    for _, _, summary, cfg in runs:
        setting = _saved_setting(summary or {}, cfg)
        if setting is not None and setting not in settings:
            settings.append(setting)
    if not settings:
        return names, None
    seeds = sorted({s["seed"] for s in summaries if "seed" in s})
    title = " vs ".join(settings)
    if seeds:
        title += f": seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"
    return names, title


def _saved_setting(summary: dict, cfg: dict | None) -> str | None:
    """The setting a saved run played: its data set and features, or its environment."""
    if summary.get("data") is not None:
        return f"{summary['data']} ({summary.get('features', 'auto')} features)"
    if cfg is not None:
        try:
            return _setting(cfg)
        except (BudgetsftError, KeyError, TypeError):  # an older or hand-edited config: no title rather than a crash
            return None
    return None


@app.command()
def demo(
    out_dir: Annotated[Path | None, typer.Option("--out", help="Where to write the table's plots. \\[default: "
                                                               "runs/demo; with --synthetic runs/demo-synthetic]")
                       ] = None,
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds.")] = "0,1,2",
    synthetic: Annotated[bool, typer.Option("--synthetic", help="Run the synthetic sanity sweep instead of "
                                                                "bbc-news.")] = False,
) -> None:
    """The main job on the built-in default: bbc-news (default features), llf / random / first / full at β = 0.1.

    Prints the table over the seeds and writes curves.png (cumulative mistakes or pseudo-regret, and labels
    bought, first seed) and a bar chart; bbc-news is featurised once, into the cache, on the first run.

    Examples:

    budgetsft demo                      # bbc-news, writes runs/demo/
    budgetsft demo --synthetic          # the synthetic sanity setting, writes runs/demo-synthetic/
    budgetsft demo --seeds 0 --out /tmp/demo
    """
    from budgetsft.config import DEFAULT_CONFIG, merge

    if out_dir is None:  # the two demos never overwrite each other's plots
        out_dir = Path("runs/demo-synthetic" if synthetic else "runs/demo")

    if synthetic:
        cfg = merge(DEFAULT_CONFIG, {})
        out.print("budgetsft demo: low-noise synthetic stream (the sanity setting: d = 20, K = 5, T = 5000), β = 0.1")
    else:
        cfg = merge(DEFAULT_CONFIG, {"data": {"name": "bbc-news"}, "progress": True})
        out.print("budgetsft demo: bbc-news (2,127 BBC articles, 5 topics), all-MiniLM-L6-v2 block features "
                  "(one linear model per topic), label budget β = 0.1 of the train stream")
    _sweep_and_report(cfg, ["llf", "random", "first", "full"], [0.1], _ints(seeds, "seeds"), False,
                      out_dir / ("pseudo_regret.png" if synthetic else "mistakes.png"), runs_dir=out_dir)
    out.print(f"wrote {out_dir}/curves.png")


@app.command()
def adapt(
    data: Annotated[str, typer.Option(help="Data set (see `budgetsft data list`); with --labels, where the test "
                                           "split comes from.")] = "bbc-news",
    out_dir: Annotated[Path, typer.Option("--out", help="Output folder: report.md/.json, accuracy.png, and per "
                                                        "seed adapters, labelled sets, predictions.")] = Path(
        "runs/adapt"),
    gate: Annotated[str, typer.Option(help="Gate whose labels are compared with the baselines.")] = "llf",
    baselines: Annotated[str, typer.Option(help="Gates that spend the same budget, comma-separated (margin too: "
                                                "random,first,margin).")] = "random,first",
    beta: Annotated[float | None, typer.Option(help="Label budget as a fraction of the train split. "
                                                    "\\[default: 0.1]")] = None,
    budget: Annotated[int | None, typer.Option(help="Label budget as a number of labels (excludes --beta). "
                                                    "\\[default: none: --beta sets it]")] = None,
    seeds: Annotated[str, typer.Option(help="Seeds (split, gates, LoRA), comma-separated: one run each.")] = "0",
    features: Annotated[str, typer.Option(help="Features of the gates' scoring head: auto (what `budgetsft run` "
                                               "uses: block on a fixed label set, else encoder), block, encoder, "
                                               "causal, grad (the gradients of the LoRA adapt trains).")] = "auto",
    model: Annotated[str, typer.Option(help="Causal LM to fine-tune (and to featurise with, for --features causal "
                                            "or grad): smollm2-135m-instruct (packaged), a local directory or a "
                                            "Hugging Face id org/name.")] = "smollm2-135m-instruct",
    mode: Annotated[str, typer.Option(help="stream (one pass, as `budgetsft run`) or pool (batched LLF "
                                           "selection).")] = "stream",
    labels: Annotated[Path | None, typer.Option(help="Fine-tune on this already-bought set instead of selecting: "
                                                     "a `budgetsft session export` JSONL or a session ledger "
                                                     "(.db). \\[default: none: the gates select]")] = None,
    no_all: Annotated[bool, typer.Option("--no-all", help="Skip the all-labels set (the longest to train).")] = False,
    max_examples: Annotated[int | None, typer.Option(help="Seeded subset of the data set (CPU budgets). "
                                                          "\\[default: all]")] = None,
    max_test: Annotated[int | None, typer.Option(help="Evaluate on a seeded subset of this many test items. "
                                                      "\\[default: all]")] = None,
    max_prompt_tokens: Annotated[int, typer.Option(help="Tokens of the text kept in the prompt (the first ones on a "
                                                        "fixed label set).")] = 64,
    lora_layers: Annotated[int, typer.Option(help="Top decoder layers that get LoRA adapters (the others are "
                                                  "computed once per example).")] = 4,
    epochs: Annotated[float, typer.Option(help="Passes over each labelled set.")] = 3,
    lr: Annotated[float, typer.Option(help="Peak LoRA learning rate (linear decay to 0).")] = 3e-3,
    lora_r: Annotated[int, typer.Option(help="LoRA rank (α = 16).")] = 16,
    batch_size: Annotated[int, typer.Option(help="LoRA batch size.")] = 8,
    eval_batch_size: Annotated[int, typer.Option(help="Examples per scoring batch.")] = 32,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    threads: Annotated[int | None, typer.Option(help="CPU threads of torch. \\[default: torch's, or 1 when a timed "
                                                     "warm-up finds one thread faster]")] = None,
    recipes: Annotated[str, typer.Option(help="Training recipes, comma-separated: plain (LoRA on the bought gold "
                                              "labels) and distill (plus the head's labels, refit on the bought "
                                              "ones, for the rest of the train split; for the gate's and random's "
                                              "sets, reported as <set>/distill; with --labels on "
                                              "an unlabelled pool, for the rest of the pool). \\[default: "
                                              "plain,distill; plain with --labels on labelled data]")] = "auto",
    distill_weight: Annotated[float, typer.Option(help="distill: weight of a pseudo-label relative to a gold "
                                                       "one, times the head's probability of it.")] = 1.0,
    distill_passes: Annotated[float | None, typer.Option(help="distill: passes over the head's labels; each gold "
                                                              "label is listed round(epochs / passes) times, so it "
                                                              "gets about --epochs passes. \\[default: 2, or --epochs "
                                                              "when that is lower]")] = None,
    all_passes: Annotated[float | None, typer.Option(help="all/plain (LoRA on every train label, the reference): "
                                                          "passes over the set. \\[default: 2, or --epochs when "
                                                          "that is lower]")] = None,
    audit: Annotated[float, typer.Option(help="Share of the gate's budget drawn uniformly at random and held out "
                                              "of training; the model (head, plain, distill) with the lowest gold "
                                              "NLL on these audit labels is recommended. 0: none (then --cv-folds "
                                              "decides).")] = 0.1,
    cv_folds: Annotated[int, typer.Option(help="With --audit 0: folds of the cross-validation on the gate's bought "
                                               "labels that picks the recommended model; 0: none.")] = 3,
    schedule: Annotated[str, typer.Option(help="The llf gate's spending rule: auto, dual or power (as `budgetsft "
                                               "run --schedule`).")] = "auto",
    estimate_only: Annotated[bool, typer.Option("--estimate-only", help="Print the time estimate and stop.")] = False,
    report_only: Annotated[bool, typer.Option("--report-only", help="Recompute --out's report.md/.json and "
                                                                   "accuracy.png from its saved predictions "
                                                                   "(trains nothing), and stop.")] = False,
) -> None:
    """Buy labels with a gate and baselines (or read them), fine-tune LoRA on each set, compare with noise bars.

    Every seed: llf, random and first buy B = ⌊β n⌋ labels of the train split as `budgetsft run` does,
    one LoRA (same recipe: --epochs passes over the set, --all-passes on all labels) is trained per set and on
    all labels, and each is scored
    on the test split beside zero-shot. report.md says which differences are within noise (a seed-level t interval,
    paired; a test-item bootstrap with one seed).
    A time estimate is printed before the start.

    Examples:

    budgetsft adapt --data bbc-news --beta 0.1 --seeds 0,1,2 --out runs/adapt-bbc
    budgetsft adapt --data bbc-news --budget 170 --seeds 0,1,2 --out runs/adapt-bbc   # 170 labels
    budgetsft adapt --data bbc-news --seeds 0,1,2 --estimate-only
    budgetsft adapt --data bbc-news --baselines random --no-all --seeds 0,1,2,3,4 --out runs/adapt-bbc
    budgetsft adapt --data bbc-news --recipes plain --audit 0 --seeds 0,1,2 --out runs/quick  # no distill, no audit
    budgetsft adapt --data sarcasm --max-examples 3000 --seeds 0,1,2 --out runs/adapt-sarcasm
    budgetsft adapt --data bbc-news --labels bought.jsonl --out runs/adapt-mine     # a session's export or ledger
    budgetsft adapt --out runs/adapt-bbc --report-only                  # the report again, from saved predictions
    """
    if report_only:
        if estimate_only:
            raise ConfigError("--report-only and --estimate-only cannot be combined.")
        from budgetsft.adapt.report import rebuild_report

        report = rebuild_report(out_dir)
        out.print((out_dir / "report.md").read_text(), markup=False, highlight=False)
        out.print(f"rewrote {out_dir}/report.md, report.json, accuracy.png from the saved predictions "
                  f"({len(report['methods'])} methods, {len(report['seeds'])} seed(s))")
        return
    from budgetsft.adapt.pipeline import run_adapt

    if beta is not None and budget is not None:
        raise ConfigError("give either '--beta' (a fraction of the train split) or '--budget' (a number of "
                          "labels), not both.")
    if budget is not None:
        from budgetsft.data import load_dataset

        n_train = len(load_dataset(data, seed=_ints(seeds, "seeds")[0], max_examples=max_examples).train)
        if not 1 <= budget <= n_train:
            raise ConfigError(f"'--budget' must be an int in [1, {n_train}] (the train split of {data}). "
                              f"Got {budget}.")
        beta = budget / n_train  # ⌊β n⌋ = budget exactly
    beta = 0.1 if beta is None else beta
    report = run_adapt(data, out_dir, gate=gate, baselines=[b for b in baselines.split(",") if b.strip()],
                       beta=beta, seeds=_ints(seeds, "seeds"), features=features, model=model, mode=mode,
                       labels_file=labels, include_all=not no_all, max_examples=max_examples, max_test=max_test,
                       max_prompt_tokens=max_prompt_tokens, lora_layers=lora_layers, epochs=epochs, lr=lr,
                       lora_r=lora_r, batch_size=batch_size, eval_batch_size=eval_batch_size, device=device,
                       threads=threads, estimate_only=estimate_only,
                       recipes=None if recipes == "auto" else [r.strip() for r in recipes.split(",") if r.strip()],
                       distill_weight=distill_weight, distill_passes=distill_passes, all_passes=all_passes,
                       cv_folds=cv_folds, audit=audit,
                       schedule=schedule)
    if estimate_only:
        out.print(f"estimate: {report['estimate_seconds'] / 60:.1f} min")
        return
    out.print((out_dir / "report.md").read_text(), markup=False, highlight=False)
    out.print(f"wrote {out_dir}/report.md, report.json, accuracy.png, seed-*/ ({len(report['methods'])} methods, "
              f"{len(report['seeds'])} seed(s))")


@app.command()
def featurize(
    data: Annotated[str, typer.Option(help="Data set: a name (see `budgetsft data list`), hf:NAME[:CONFIG] or a "
                                           ".jsonl file.")],
    features: Annotated[str, typer.Option(help="Featuriser: auto (block on a fixed label set, else encoder), "
                                                "encoder, causal, block, grad.")] = "auto",
    model: Annotated[str | None, typer.Option(help=MODEL_HELP)] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    max_examples: Annotated[int | None, typer.Option(help="Seeded subset of the data set. "
                                                          "\\[default: all]")] = None,
    backend: Annotated[str, typer.Option(help="local (this process) or ray (parallel actors).")] = "local",
    address: Annotated[str | None, typer.Option(help="Ray cluster address. \\[default: none: start a private "
                                                     "local instance]")] = None,
    num_cpus: Annotated[int | None, typer.Option(help="CPUs of the local Ray instance. \\[default: Ray's "
                                                      "choice]")] = None,
) -> None:
    """Featurise a data set (train and test) into the disk cache; later runs read it instead.

    Examples:

    budgetsft featurize --data bbc-news                  # the block features `run --data bbc-news` reads
    budgetsft featurize --data logiqa --features causal --device cuda
    budgetsft featurize --data my.jsonl --features encoder --backend ray --num-cpus 4
    """
    from budgetsft.data import load_dataset
    from budgetsft.features.models import resolve_device
    from budgetsft.realdata import resolve_features

    if backend not in ("local", "ray"):
        raise ConfigError(f"'--backend' must be local or ray. Got {backend!r}.")
    ds = load_dataset(data, seed=0, max_examples=max_examples)
    examples = list(ds.train) + list(ds.test)
    options: dict = {"device": resolve_device(device)}
    if model is not None:
        options["model_name"] = model
    features = resolve_features(features, ds)
    if features == "block":
        if ds.labels is None:
            raise ConfigError(f"the 'block' featuriser needs a fixed label set; data set {data!r} has none.")
        options["labels"] = ds.labels
    if features == "grad" and ds.labels is not None:  # as `run` featurises: adapt's label instruction
        options["labels"] = ds.labels
    if backend == "ray":
        from budgetsft.ray_backend import featurize_ray

        res = featurize_ray(examples, features, options=options, address=address, num_cpus=num_cpus)
    else:
        from budgetsft.features import featurize as featurize_local
        from budgetsft.features import make_featurizer

        res = featurize_local(examples, make_featurizer(features, **options))
    out.print(f"{data} ({features}): {len(examples)} examples, {res.n_cached} cached, {res.n_computed} computed")


data_app = typer.Typer(no_args_is_help=True, help="Built-in data sets: list, inspect, export.")
app.add_typer(data_app, name="data")


@data_app.command("list")
def data_list() -> None:
    """List the built-in data sets: task, example counts, source and licence.

    The counts are those of the seed-0 split (test fraction 0.2), after dropping the source items that
    cannot be used (`budgetsft data show NAME` gives the reasons); a data set whose source is not here yet
    shows — and what it needs (nothing is downloaded).

    Examples:

    budgetsft data list
    budgetsft data show logiqa
    """
    from budgetsft.data import list_datasets

    table = Table(title="budgetsft data sets (seed-0 split)")
    for col in ("name", "task", "train", "test", "skipped", "source", "licence"):
        table.add_column(col, overflow="fold", justify="right" if col in ("train", "test", "skipped") else "left")
    notes: dict[str, list[str]] = {}
    for d in list_datasets(counts=True):
        if d["missing"] is not None:
            notes.setdefault(d["missing"].replace(f"data show {d['name']}", "data show NAME"), []).append(d["name"])
        cells = ["—" if d[k] is None else f"{d[k]:,}" for k in ("n_train", "n_test", "n_skipped")]
        if d["n_skipped"] is not None:
            cells[2] += f" of {d['n_source']:,}"
        table.add_row(d["name"], d.get("task", ""), *cells, d.get("source", ""), d.get("licence", ""))
    out.print(table)
    for why, names in notes.items():
        out.print(f"— {', '.join(names)}: {why}", markup=False, highlight=False)


@data_app.command("show")
def data_show(
    name: Annotated[str, typer.Argument(help="Data set name, hf:NAME[:CONFIG], or a .jsonl file.")],
    seed: Annotated[int, typer.Option(help="Seed of the train/test split.")] = 0,
    skip_invalid: Annotated[bool, typer.Option(help="Skip (and count) invalid JSONL lines instead of "
                                                    "failing.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object (with every skipped item "
                                                         "and its reason).")] = False,
) -> None:
    """Counts, skipped items by reason, label balance and two examples of a data set.

    Examples:

    budgetsft data show logiqa
    budgetsft data show my.jsonl --skip-invalid        # check your own file
    budgetsft data show hf:NAME --json | jq .skip_reasons
    """
    from budgetsft.data import describe, load_dataset

    ds = load_dataset(name, seed=seed, skip_invalid=skip_invalid)
    info = describe(ds)
    if as_json:
        print(json.dumps(_clean({**info, "skipped": ds.meta.get("skipped", [])}), ensure_ascii=False))
        return
    out.print(f"[bold]{name}[/bold]: {info['n_train']} train / {info['n_test']} test examples, "
              f"candidates per example {info['n_candidates']}", highlight=False)
    n_skipped = info.get("n_skipped", 0)
    of = f" of {info['n_source']:,}" if info.get("n_source") is not None else ""
    out.print(f"{n_skipped:,}{of} source items skipped{':' if n_skipped else ''}", markup=False, highlight=False)
    for reason, count in info["skip_reasons"].items():
        out.print(f"  {count:>6,}  {reason} (e.g. {info['skip_first'][reason]})", markup=False, highlight=False)
    if n_skipped:
        out.print("  (`--json` lists every skipped item with its reason)", markup=False, highlight=False)
    balance = info["label_balance"]
    table = Table(title="label balance (gold answers)")
    table.add_column("label")
    table.add_column("train", justify="right")
    table.add_column("test", justify="right")
    for label in sorted(balance["train"].keys() | balance["test"].keys(), key=str):
        table.add_row(_safe(label), str(balance["train"].get(label, 0)), str(balance["test"].get(label, 0)))
    out.print(table)
    for ex in info["examples"]:
        prompt = ex["prompt"] if len(ex["prompt"]) < 400 else ex["prompt"][:400] + " …"
        out.print(f"\n[bold]{ex['id']}[/bold]: {prompt}", markup=True, highlight=False)
        for i, c in enumerate(ex["candidates"]):
            mark = "*" if i == ex.get("answer") else " "
            out.print(f"  {mark} {i}. {c}", markup=False, highlight=False)


@data_app.command("export")
def data_export(
    name: Annotated[str, typer.Argument(help="Data set name, hf:NAME[:CONFIG], or a .jsonl file.")],
    path: Annotated[Path, typer.Argument(help="Output JSONL file (canonical schema).")],
    split: Annotated[str, typer.Option(help="all, train or test.")] = "all",
    seed: Annotated[int, typer.Option(help="Seed of the train/test split.")] = 0,
) -> None:
    """Write a data set as canonical JSONL (one example a line, the format `--data FILE` reads).

    Examples:

    budgetsft data export bbc-news bbc.jsonl
    budgetsft data export medmcqa medmcqa-train.jsonl --split train --seed 1
    """
    from budgetsft.data import load_dataset, write_jsonl

    if split not in ("all", "train", "test"):
        raise ConfigError(f"'--split' must be all, train or test. Got {split!r}.")
    ds = load_dataset(name, seed=seed)
    examples = {"all": list(ds.train) + list(ds.test), "train": list(ds.train), "test": list(ds.test)}[split]
    write_jsonl(examples, path)
    out.print(f"wrote {len(examples)} examples to {path}")


labelstudio_app = typer.Typer(no_args_is_help=True, help="Label Studio, live: push a session's picks as tasks, "
                                                             "charge the labels, pick again.")
app.add_typer(labelstudio_app, name="labelstudio")


@labelstudio_app.command("sync")
def labelstudio_sync(
    path: Annotated[Path, typer.Argument(help="Session ledger (.db): a pool session (`budgetsft select`) or a stream "
                                              "session (`run --session ... --oracle web`).")],
    url: Annotated[str, typer.Option(help="Label Studio's address, as a browser opens it: http://localhost:8080.")],
    project: Annotated[int, typer.Option(help="The project's id (in its address: /projects/ID). An empty project "
                                              "gets budgetsft's labeling config.")],
    api_key: Annotated[str | None, typer.Option(envvar="LABEL_STUDIO_API_KEY", show_default=False,
                                                help="Label Studio access token (Account & Settings): a personal "
                                                     "access token or a legacy token. \\[default: "
                                                     "$LABEL_STUDIO_API_KEY]")] = None,
    batch: Annotated[int | None, typer.Option(help="Pool sessions: items to pick when nothing is pending. "
                                                   "\\[default: the session's batch]")] = None,
    interval: Annotated[float, typer.Option(help="Seconds between passes.")] = 10.0,
    once: Annotated[bool, typer.Option("--once", help="One pass (push, pull, release, push the next batch), then "
                                                      "exit: for cron.")] = False,
    annotators: Annotated[Path | None, typer.Option(help='JSON or YAML map from Label Studio user ids (or emails) '
                                                         'to ledger annotators, {"2": "ana", "3": {"name": "bo", '
                                                         '"cost": 2.5}}. \\[default: the ledger\'s annotators, by '
                                                         'user id or email]')] = None,
    cost: Annotated[float | None, typer.Option(help="Price per label of Label Studio users that neither --annotators "
                                                    "nor the ledger names (paid under their email). \\[default: "
                                                    "their labels are refused]")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object per pass.")] = False,
) -> None:
    """Label Studio as the labeling front end of a session: push its picks as tasks, charge the labels, pick again.

    Each pass reads the project, charges the annotations of pending queries in the ledger (all or nothing;
    a second pass charges nothing again), skips in the ledger the queries whose task was skipped or deleted in
    Label Studio (freeing their budget), pushes pending queries the project does not hold, and, when nothing is
    pending, picks the next batch (pool) or plays the stream on, and pushes it. Passes repeat every --interval
    seconds until the budget is spent; Ctrl-C stops cleanly (nothing is lost: run the command again to go on).

    Examples:

    budgetsft select --data pool.jsonl --session s.db --batch 20 --budget 100 --out picks.jsonl
    export LABEL_STUDIO_API_KEY=...    # Label Studio: Account & Settings
    budgetsft labelstudio sync s.db --url http://localhost:8080 --project 3 --cost 1
    budgetsft labelstudio sync s.db --url http://localhost:8080 --project 3 --annotators annotators.json --once
    """
    from budgetsft.labelstudio_sync import LabelStudioClient, pass_message, sync
    from budgetsft.sessions.session import Session

    if batch is not None and batch < 1:
        raise ConfigError(f"'--batch' must be an int >= 1. Got {batch}.")
    if not interval > 0:
        raise ConfigError(f"'--interval' must be a number of seconds > 0. Got {interval:g}.")
    client = LabelStudioClient(url, api_key or "")
    passes = 0
    idle_shown = False

    def report(p) -> None:
        nonlocal passes, idle_shown
        passes += 1
        if as_json:
            print(json.dumps(_clean({"pass": passes, **p.to_json()})), flush=True)
            return
        idle = not (p.pushed or p.imported or p.released or p.notes or p.done)
        if not (idle and idle_shown):  # a run of passes that change nothing is shown once
            out.print(pass_message(p, passes), markup=False, highlight=False, soft_wrap=True)
        idle_shown = idle

    def on_error(exc) -> None:
        err.print(f"error: {exc} (trying again every {interval:g} s)", markup=False, highlight=False)

    sess = Session.open(path)
    try:
        sess.ledger.check_writable()
        sess.check_source()
        last = sync(sess, client, project, batch=batch, annotators=annotators, cost=cost, interval=interval,
                    once=once, report=report, on_error=on_error)
    except KeyboardInterrupt:
        err.print(f"stopped after {passes} pass(es); nothing is lost (every label charged is in the ledger, every "
                  f"pick is pending there or in Label Studio): run the same command to go on.", markup=False,
                  highlight=False)
        raise typer.Exit(130) from None
    finally:
        sess.close()
    if last is not None and not last.done and not as_json:
        err.print(f"{last.pending} pending: label them in Label Studio ({client.url}/projects/{project}), then "
                  f"sync again.", markup=False, highlight=False)


def main() -> None:
    """Console-script entry point: library errors become one clear line and exit code 2."""
    try:
        app()
    except BudgetsftError as exc:
        err.print(f"error: {exc}", markup=False, highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
