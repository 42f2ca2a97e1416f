"""``persona-dspy``: demo, ingest, compile, serve (ask, observe, export), the registry (history, rollback, forget).

Every error becomes one line on stderr and an exit code, never a traceback (``--debug`` shows it):
bad arguments and settings exit 2 (``ConfigurationError``, checked before any work starts), each
``PersonaDSPyError`` its own code (``errors.EXIT_CODES``), anything unexpected 1.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

from pydantic import ValidationError

from persona_dspy.config import DEFAULT_K, Settings
from persona_dspy.errors import ConfigurationError, PersonaDSPyError
from persona_dspy.redaction import redact, redact_logs

PROG = "persona-dspy"


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a bad argument as one line (no usage block) with ConfigurationError's code.

    A value written in exponent form (``--timestamp -1e5``) is a value, as ``-1`` and ``-1.5`` are to argparse
    (no option of ours looks like a negative number); argparse reads it as an unknown option otherwise."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")

    def error(self, message: str) -> NoReturn:
        self.exit(ConfigurationError.exit_code, f"{PROG}: ConfigurationError: {self.prog}: {message} (see --help)\n")


def _int_at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        if value > MAX_INT:
            raise argparse.ArgumentTypeError(f"must be <= {MAX_INT} (a 64-bit integer), got {text}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


MAX_INT = 2**63 - 1
"""The largest count or version number accepted (the stores keep 64-bit integers)."""

positive = _int_at_least(1)
non_negative = _int_at_least(0)


def user_arg(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError(f"a user id must not be blank, got {text!r}")
    return text


user_arg.__name__ = "user id"


def state_dir_arg(text: str) -> Path:
    if not text.strip():  # Path("") is the working directory: stores would land wherever the command ran
        raise argparse.ArgumentTypeError("must not be empty (for the working directory, write .)")
    return Path(text)


state_dir_arg.__name__ = "state dir"


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def finite_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def task_text(text: str) -> str:
    """A task's text: not blank, and no longer than a stored interaction's input may be."""
    from persona_dspy.data.records import MAX_FIELD_CHARS

    if not text.strip():
        raise argparse.ArgumentTypeError("the task text is empty")
    if len(text) > MAX_FIELD_CHARS:
        raise argparse.ArgumentTypeError(f"the task text has {len(text):,} characters; at most {MAX_FIELD_CHARS:,}")
    return text


def user_list(text: str) -> str | list[str]:
    """``all``, or comma-separated user ids (spaces around them dropped; at least one)."""
    if text.strip() == "all":
        return "all"
    users = [u.strip() for u in text.split(",") if u.strip()]
    if not users:
        raise argparse.ArgumentTypeError(f"expected 'all' or user ids separated by commas, got {text!r}")
    return users


def existing_folder(text: str) -> Path:
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{path} does not exist")
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a file, not a folder")
    return path


def input_file(text: str) -> Path:
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a directory, not a file")
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{path} does not exist")
    return path


def output_file(text: str) -> Path:
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a directory; give a file path")
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"the folder {path.parent} does not exist")
    return path


def _settings(args: argparse.Namespace) -> Settings:
    """The one ``Settings`` of a command: flags over ``PERSONA_DSPY_*`` variables over defaults."""
    overrides = {
        k: v
        for k, v in {
            "lm": getattr(args, "lm", None),  # only the commands that call an LM take --lm
            "state_dir": args.state_dir,
            "qdrant": args.qdrant,
            "mlflow_tracking_uri": args.mlflow_tracking_uri,
        }.items()
        if v is not None
    }
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            (
                f"--{str(e['loc'][0]).replace('_', '-')} {e.get('input')!s}"
                if e["loc"] and e["loc"][0] in overrides  # the flag's value, not the variable's
                else f"PERSONA_DSPY_{'_'.join(map(str, e['loc'])).upper()}={e.get('input')!r}"
            )
            + f": {e['msg']}"
            for e in exc.errors()
        )
        raise ConfigurationError(f"invalid setting: {problems}") from exc
    from persona_dspy.config import follow_state_dir

    follow_state_dir(settings.state_dir)  # its LM caches too, not the default state dir's
    return settings


def _existing_state(settings: Settings, *, memory: bool = False) -> Settings:
    """``settings``, refused when the command would only read stores kept in a state dir that does not exist
    (its MLflow store; with ``memory``, its Qdrant folder too): a misspelled ``--state-dir`` would otherwise get
    an empty registry created there and "no persona versions" for an answer. A state dir below a file is left
    to the store's own error, which names the file."""
    state, folder = settings.state_dir, settings.qdrant_folder
    no_points = settings.qdrant_location == ":memory:" or (folder is not None and not folder.exists())
    local = settings.mlflow_tracking_uri is None and (not memory or no_points)
    if not local or state.exists():
        return settings
    ancestor = next((p for p in state.parents if p.exists()), None)
    if ancestor is not None and not ancestor.is_dir():
        return settings
    raise ConfigurationError(
        f"the state dir {state} does not exist: nothing was ingested or compiled there, and nothing was created. "
        "Check --state-dir (or PERSONA_DSPY_STATE_DIR)."
    )


def cmd_demo(args: argparse.Namespace) -> int:
    from persona_dspy.demo import format_table, run_demo

    settings = _settings(args)
    started = time.perf_counter()
    rows = run_demo(settings, users=args.users, n_recent=args.n_recent, iterations=args.iterations, trace=args.trace)
    print("\n[4/4] before/after on each user's held-out last rating (score = 1 - |error| / 4.5)\n")
    print(format_table(rows))
    print(f"\ndemo finished in {time.perf_counter() - started:.0f} s")
    print(
        "open the runs and persona versions with:\n"
        f"  mlflow ui --backend-store-uri {settings.tracking_uri}\n"
        "then: Experiments > persona_dspy (one run per compile), Prompts > persona.<user>.* (versions, aliases)"
    )
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from persona_dspy.data import load_shared
    from persona_dspy.evaluation import METHODS, evaluate, format_report
    from persona_dspy.lm import build_lm
    from persona_dspy.memory import EpisodicMemory, SemanticMemory
    from persona_dspy.signatures.tasks import record_problem

    if args.method not in METHODS:
        raise ConfigurationError(f"unknown method {args.method!r}; choose one of {', '.join(METHODS)}")
    settings = _settings(args)
    cases = load_shared(args.data, limit_users=args.users, check=record_problem)
    lm = None if args.method == "trivial" else build_lm(settings)
    with EpisodicMemory(settings.model_copy(update={"qdrant": ":memory:"})) as memory:
        report = evaluate(
            cases,
            args.method,
            memory=memory,
            lm=lm,
            k=args.k,
            n_recent=args.n_recent,
            iterations=args.iterations,
            n_val=args.n_val,
            max_lm_calls=args.max_lm_calls,
            semantic_factory=lambda: SemanticMemory(memory, task=cases[0].task),
        )
    print(format_report(report))
    if args.out:
        args.out.write_text(report.model_dump_json(indent=1))
        print(f"per-case results written to {args.out}")
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from persona_dspy.data import load_interactions, load_shared
    from persona_dspy.errors import MalformedInteractionError
    from persona_dspy.memory import EpisodicMemory
    from persona_dspy.signatures.tasks import record_problem

    settings = _settings(args)
    if args.shared:
        # several queries of one user (LaMP) repeat its profile items: one record per user and id, the last line's
        unique = {
            (it.user_id, it.id): it for h in load_shared(args.file, check=record_problem) for it in h.interactions
        }
        interactions = list(unique.values())
    else:
        interactions = load_interactions(args.file, check=record_problem)
    if not interactions:  # a wrong or truncated file, most likely: say so rather than report "0 written"
        raise ConfigurationError(
            f"persona-dspy ingest: {args.file} holds no interactions (it is empty or has only blank lines"
            + (", or its profiles are empty" if args.shared else "")
            + "); nothing was written. Check the path, or the export that wrote it."
        )
    from persona_dspy.serving import refuse_future

    refuse_future(interactions, source=str(args.file))  # stored, it would put every later observation out of order
    with EpisodicMemory(settings) as memory:
        changed = [] if args.replace else memory.changed(interactions)
        if changed:  # an interaction is a fact of the past: replacing one must be asked for
            first = changed[0]
            raise MalformedInteractionError(
                f"{len(changed)} record(s) are stored under the same user and id with other content (first: user "
                f"{first.user_id!r}); ingest does not overwrite them silently: pass --replace to overwrite, or give "
                "them new ids. Nothing was written.",
                source=str(args.file),
                record_id=first.id,
                field="id",
            )
        written = memory.add(interactions, progress=True)
        print(f"{len(interactions)} interactions read, {written} written, {memory.count()} in store")
    return 0


def cmd_compile(args: argparse.Namespace) -> int:
    from persona_dspy.fleet import compile_users
    from persona_dspy.optimizers import PersonaOptimizer
    from persona_dspy.tracking import Tracking

    if not args.due and (args.realign_after is not None or args.max_age is not None):
        raise ConfigurationError("--realign-after and --max-age choose which users are due: use them with --due")
    settings = _settings(args)
    users, state = args.users, ""
    if args.due:
        users, state = _due_users(args, settings, users)
        if not users:
            return 0
    optimizer = PersonaOptimizer(
        n_recent=args.n_recent,
        iterations=args.iterations,
        n_val=args.n_val,
        candidates=args.candidates,
        critique=args.critique,
        trust_measured=args.trust_measured,
        confusion=args.confusion,
        min_facts=args.min_facts,
        max_lm_calls=args.max_lm_calls,
    )
    report = compile_users(
        users,
        optimizer,
        settings=settings,
        tracking=Tracking(settings, trace=args.trace),
        workers=args.workers,
        backend=args.backend,
        resume=args.resume,
        verbose=args.verbose,
        state=state,
    )
    print(report.format(tracebacks=args.debug))
    return 1 if report.failed else 0


def _policy(args: argparse.Namespace):
    from persona_dspy.serving import RealignPolicy

    chosen = {"realign_after": args.realign_after, "max_age": args.max_age}
    return RealignPolicy(**{k: v for k, v in chosen.items() if v is not None})


def _due_users(args: argparse.Namespace, settings: Settings, users) -> tuple[list[str], str]:
    """``compile --due``: the users of ``users`` the re-alignment policy says are due (a line for each due
    user, for every user with ``--verbose``), and the fleet ``state`` their data names (``due_fleet``). A
    named id with nothing stored goes to the fleet, which reports it failed alone, as without ``--due``."""
    from persona_dspy.memory import EpisodicMemory
    from persona_dspy.serving import due_fleet, known_statuses
    from persona_dspy.tracking import Tracking

    with EpisodicMemory(_existing_state(settings, memory=True)) as memory:
        statuses, unknown = known_statuses(users, memory=memory, tracking=Tracking(settings), policy=_policy(args))
    for status in statuses:
        if status.due or args.verbose:
            print(status.line())
    for user_id in unknown:
        print(f"{user_id}: unknown user (no interactions stored)")
    due, state = due_fleet(statuses, unknown)
    print(f"{len(due) - len(unknown)} of {len(statuses)} user(s) due for a compile")
    return due, state


def cmd_ask(args: argparse.Namespace) -> int:
    import json

    import dspy

    from persona_dspy.lm import build_lm
    from persona_dspy.memory import EpisodicMemory
    from persona_dspy.serving import load_agent

    settings = _settings(args)
    with EpisodicMemory(settings) as memory:
        agent = load_agent(args.user, args.task, settings=settings, alias=args.alias, memory=memory, k=args.k)
        with dspy.context(lm=build_lm(settings)):
            prediction = agent(task=args.text)
    chosen = "(a react agent: the evidence is what its actions returned)"
    profile, history = prediction.get("profile", chosen), prediction.get("history", chosen)
    answer = {
        "user_id": args.user,
        "task": agent.task.name,
        "answer": prediction.answer,
        "valid": prediction.valid,
        "raw_answer": prediction.raw_answer,
        "persona_version": agent.persona_version,
        "alias": agent.alias,
        "evidence": {"profile": profile, "episodes": history},
    }
    if args.json:
        print(json.dumps(answer, indent=1, ensure_ascii=False))
        return 0
    version = f"v{agent.persona_version}" if agent.persona_version else "none (default persona, never compiled)"
    shown = prediction.answer if prediction.valid else f"(no valid answer; the LM said {prediction.raw_answer!r})"
    print(f"answer: {shown}\npersona: {version} ({agent.alias})")
    print(f"profile used:\n{profile}\nepisodes used:\n{history}")
    return 0


def cmd_observe(args: argparse.Namespace) -> int:
    from persona_dspy.data import load_interactions
    from persona_dspy.memory import EpisodicMemory
    from persona_dspy.serving import interaction_from, observe
    from persona_dspy.signatures.tasks import record_problem
    from persona_dspy.tracking import Tracking

    if (args.file is None) == (args.input is None or args.output is None) or (args.file is not None) == bool(args.user):
        raise ConfigurationError("observe USER --input TEXT --output ANSWER, or observe --file FILE.jsonl (not both)")
    if args.file is not None:
        given = [f"--{k}" for k in ("timestamp", "id", "task") if getattr(args, k) is not None]
        if given:
            raise ConfigurationError(
                f"observe --file: {', '.join(given)} describe one observation; each line of the file carries its own"
            )
        loaded = load_interactions(args.file, check=record_problem)
        if not loaded:
            raise ConfigurationError(
                f"persona-dspy observe: {args.file} holds no interactions (it is empty or has only blank lines); "
                "nothing was written. Check the path, or the export that wrote it."
            )
    settings = _settings(args)
    with EpisodicMemory(settings) as memory:
        if args.file is not None:
            interactions = _with_stored_tasks(memory, loaded, args.file)
        else:
            fields = {"input": args.input, "output": args.output}
            fields.update({k: v for k, v in (("timestamp", args.timestamp), ("id", args.id)) if v is not None})
            task = args.task or memory.recent(args.user, 1)[-1].task
            interactions = [interaction_from(fields, user_id=args.user, task=task)]
        result = observe(interactions, memory=memory, tracking=Tracking(settings), policy=_policy(args))
    print(f"{result.written} interaction(s) stored, {result.already_stored} already stored")
    for status in result.users:
        print(status.line())
    if result.status_error:
        print(f"persona-dspy: warning: {result.status_error}", file=sys.stderr)
    return 0


def _with_stored_tasks(memory: Any, interactions: list[Any], source: Path) -> list[Any]:
    """A line of ``observe --file`` without a ``task`` is of the user's latest stored task, as a single
    ``observe`` without ``--task`` is (not ``generic``: that would switch the user's task and skip the check of
    the answer against the task's scale). Users with nothing stored are left to ``observe``'s error."""
    from persona_dspy.errors import MalformedInteractionError, UnknownUserError
    from persona_dspy.signatures.tasks import record_problem

    latest: dict[str, str | None] = {}
    out = []
    for it in interactions:
        if "task" not in it.model_fields_set:
            if it.user_id not in latest:
                try:
                    latest[it.user_id] = memory.recent(it.user_id, 1)[-1].task
                except UnknownUserError:
                    latest[it.user_id] = None
            if latest[it.user_id] is not None:
                it = it.model_copy(update={"task": latest[it.user_id]})
                problem = record_problem(it)
                if problem:
                    raise MalformedInteractionError(problem[1], source=str(source), record_id=it.id, field=problem[0])
        out.append(it)
    return out


def cmd_export(args: argparse.Namespace) -> int:
    import json

    from persona_dspy.export import check_format, export_prompt
    from persona_dspy.memory import EpisodicMemory

    check_format(args.format, args.task_text)
    settings = _existing_state(_settings(args), memory=True)
    with EpisodicMemory(settings) as memory:
        exported = export_prompt(
            args.user,
            settings=settings,
            alias=args.alias,
            format=args.format,
            task=args.task,
            task_text=args.task_text,
            memory=memory,
        )
    print(exported if isinstance(exported, str) else json.dumps(exported, indent=1, ensure_ascii=False))
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    from persona_dspy.tracking import Tracking

    versions = Tracking(_existing_state(_settings(args))).history(args.user)
    if not versions:
        print(f"user {args.user!r} has no persona versions")
        return 0
    for v in versions:
        aliases = ",".join(v.aliases) or "-"
        print(
            f"v{v.version:<4} {aliases:<22} val {v.tags.get('val_score_candidate', '-'):<8} "
            f"run {v.tags.get('run_id', '-')[:12]}  {v.text[:60]!r}"
        )
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from persona_dspy.tracking import Tracking

    version = Tracking(_existing_state(_settings(args))).rollback(args.user, args.to, reason=args.reason or "")
    print(f"production of {args.user!r} now points to v{version.version}")
    return 0


def cmd_forget(args: argparse.Namespace) -> int:
    from persona_dspy.forget import forget_user

    report = forget_user(_existing_state(_settings(args), memory=True), args.user)
    print(report.format())
    report.raise_if_incomplete()
    return 0


def cmd_runs_compare(args: argparse.Namespace) -> int:
    from persona_dspy.tracking import Tracking, compare_runs, format_runs

    tracking = Tracking(_existing_state(_settings(args)), experiment=args.experiment)
    rows = compare_runs(tracking, args.user)
    if not rows and args.experiment and tracking.store.existing_experiment_id() is None:
        raise ConfigurationError(
            f"no experiment {args.experiment!r} in {redact(tracking.tracking_uri)}: check --experiment "
            "(without it, the configured PERSONA_DSPY_EXPERIMENT)"
        )
    print(format_runs(rows) if rows else "no compile runs" + (f" of user {args.user!r}" if args.user else ""))
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    from persona_dspy.tracking import Tracking

    tracking = Tracking(_settings(args))
    synced = tracking.sync_pending()
    print(f"{len(synced)} pending compile(s) recorded" + "".join(f"\n  {u}: v{v}" for u, v in synced))
    unreadable = tracking.pending_compiles.unreadable()
    for path in unreadable:
        print(
            f"persona-dspy: warning: {path} is not a kept compile this version can read; move it away", file=sys.stderr
        )
    return 1 if unreadable else 0


def cmd_memory_migrate(args: argparse.Namespace) -> int:
    from persona_dspy.memory.migrate import migrate_local_folder

    report = migrate_local_folder(
        args.folder,
        progress=lambda name, done, total: print(
            f"\r{name}: {done:,}/{total:,} points", end="", file=sys.stderr, flush=True
        ),
    )
    print(file=sys.stderr)
    for name, n in report.points.items():
        print(f"{name}: {n:,} points copied (count verified, {report.spot_checked} points compared)")
    print(
        f"{report.folder} is now a Qdrant Edge folder; the old one is kept at {report.backup}: delete it when satisfied"
    )
    return 0


def add_policy_arguments(parser: argparse.ArgumentParser) -> None:
    """The re-alignment policy's flags (``serving.RealignPolicy``)."""
    parser.add_argument(
        "--realign-after",
        type=positive,
        help="due after this many interactions since the last compile (default: 5)",
    )
    parser.add_argument(
        "--max-age", type=positive_seconds, help="or due this many seconds after the last compile (with news)"
    )


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("persona-dspy")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "(not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--version", action="version", version=f"{PROG} {_version()}")
    common = ArgumentParser(add_help=False)
    # --debug after the command too ("rerun with --debug"); SUPPRESS: absent, it leaves the top-level value
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    common.add_argument("--state-dir", type=state_dir_arg, help="where the embedded stores live")
    common.add_argument("--qdrant", help="':memory:', a folder or a URL")
    common.add_argument("--mlflow-tracking-uri")
    with_lm = ArgumentParser(add_help=False)  # the commands that call an LM
    with_lm.add_argument("--lm", help="LiteLLM model string (default: the embedded local model)")
    traced = ArgumentParser(add_help=False)  # the commands that compile
    traced.add_argument(
        "--trace", action="store_true", help="record every LM call of a compile as an MLflow trace under its run"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser(
        "demo", parents=[common, with_lm, traced], help="run the offline end-to-end demo on the bundled users"
    )
    demo.add_argument("--users", type=positive, default=3, help="bundled sample users to compile (default: 3)")
    demo.add_argument("--n-recent", type=positive, default=2, help="latest interactions replayed (default: 2)")
    demo.add_argument("--iterations", type=positive, default=1, help="alignment steps per user (default: 1)")
    demo.set_defaults(func=cmd_demo)

    evaluate = sub.add_parser(
        "evaluate", parents=[common, with_lm], help="run a method on a data file in the shared schema"
    )
    evaluate.add_argument(
        "--data", type=input_file, required=True, help="JSONL with id, task, user_id, input, output, profile"
    )
    evaluate.add_argument(
        "--method", required=True, help="none, icl, rag, profile, persona, persona+align, gepa, trivial"
    )
    evaluate.add_argument("--users", type=positive, help="only the first K users")
    evaluate.add_argument(
        "--k",
        type=positive,
        default=DEFAULT_K,
        help=f"episodes in the prompt (icl, rag, persona; default: {DEFAULT_K})",
    )
    evaluate.add_argument("--n-recent", type=positive, default=3)
    evaluate.add_argument("--iterations", type=positive, default=1)
    evaluate.add_argument(
        "--n-val", type=non_negative, default=4, help="held-back interactions the gate replays (aligning methods)"
    )
    evaluate.add_argument(
        "--max-lm-calls", type=positive, default=20, help="per-user budget of the aligning methods (default: 20)"
    )
    evaluate.add_argument("--out", type=output_file, help="write per-case results as JSON")
    evaluate.set_defaults(func=cmd_evaluate)

    ingest = sub.add_parser("ingest", parents=[common], help="add interactions (JSONL) to episodic memory")
    ingest.add_argument("file", type=input_file)
    ingest.add_argument("--shared", action="store_true", help="the file is in the shared LaMP-style schema")
    ingest.add_argument(
        "--replace", action="store_true", help="overwrite records stored under the same user and id with other content"
    )
    ingest.set_defaults(func=cmd_ingest)

    fleet = sub.add_parser(
        "compile", parents=[common, with_lm, traced], help="compile the persona of many users (concurrent, resumable)"
    )
    fleet.add_argument(
        "--users", type=user_list, default="all", help="'all' (every user in episodic memory) or u1,u2,..."
    )
    fleet.add_argument("--workers", type=positive, default=4)
    fleet.add_argument("--backend", choices=["threads", "ray"], default="threads")
    fleet.add_argument("--resume", action="store_true", help="skip users this fleet's journal lists as finished")
    fleet.add_argument("--n-recent", type=positive, default=3)
    fleet.add_argument("--iterations", type=positive, default=1)
    fleet.add_argument("--n-val", type=non_negative, default=4, help="held-back interactions the gate replays")
    fleet.add_argument("--candidates", type=positive, default=1, help="guidance rewrites replayed per iteration")
    fleet.add_argument("--critique", action="store_true", help="add an LM critique to the measured loss")
    fleet.add_argument(
        "--trust-measured",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="promote a persona of measured facts alone unless the gate shows it worse (a rewrite must still "
        "win); --no-trust-measured asks it to win too",
    )
    fleet.add_argument(
        "--confusion",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="label tasks: state which apparent label (the embedder's nearest label name) the user files under "
        "another label; --no-confusion leaves it out (the method before)",
    )
    fleet.add_argument(
        "--min-facts",
        type=non_negative,
        default=0,
        help="narrow a short history's replay and gate windows so the facts keep this many interactions "
        "(an experiment; 0: the windows as given)",
    )
    fleet.add_argument("--max-lm-calls", type=positive, default=40, help="per-user budget (default: 40)")
    fleet.add_argument("--verbose", action="store_true", help="a status line per user as it finishes")
    fleet.add_argument("--due", action="store_true", help="only the users the re-alignment policy says are due")
    fleet.set_defaults(func=cmd_compile)

    add_policy_arguments(fleet)

    ask = sub.add_parser("ask", parents=[common, with_lm], help="answer a task as a user's agent (production persona)")
    ask.add_argument("user", type=user_arg)
    ask.add_argument("text", type=task_text, help="the task text")
    ask.add_argument("--alias", default="production", help="alias or version number (default: production)")
    ask.add_argument("--task", help="task name (default: the task of the user's latest interaction)")
    ask.add_argument(
        "--k",
        type=positive,
        default=None,
        help=f"episodes retrieved (default: the k the persona was compiled with; {DEFAULT_K} for a user never compiled)",
    )
    ask.add_argument("--json", action="store_true", help="print the answer, version and evidence as JSON")
    ask.set_defaults(func=cmd_ask)

    obs = sub.add_parser("observe", parents=[common], help="store what a user really did (idempotent, in time order)")
    add_policy_arguments(obs)
    obs.add_argument("user", type=user_arg, nargs="?", help="the user (with --input/--output)")
    obs.add_argument("--input", help="the task the user saw")
    obs.add_argument("--output", help="what the user really answered")
    obs.add_argument(
        "--timestamp",
        type=finite_number,
        help="when (default: now; give it, or --id, to make a retried call idempotent)",
    )
    obs.add_argument("--id", help="interaction id (default: a hash of user, input, output and timestamp)")
    obs.add_argument("--task", help="task name (default: the task of the user's latest interaction)")
    obs.add_argument("--file", type=input_file, help="a JSONL of interactions (the format `ingest` reads)")
    obs.set_defaults(func=cmd_observe)

    personas = sub.add_parser("personas", help="persona versions in the registry")
    personas.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    psub = personas.add_subparsers(dest="personas_command", required=True, metavar="COMMAND")
    hist = psub.add_parser("history", parents=[common], help="a user's persona versions and aliases")
    hist.add_argument("user", type=user_arg)
    hist.set_defaults(func=cmd_history)
    export = psub.add_parser("export", parents=[common], help="a user's persona as a self-contained chat prompt")
    export.add_argument("user", type=user_arg)
    export.add_argument("--alias", default="production", help="alias or version number (default: production)")
    export.add_argument(
        "--format",
        choices=["text", "json", "messages"],
        default="text",
        help="text/json: a readable system prompt (json: its parts); messages: exactly the chat the agent sends "
        "for --task-text (built by its DSPy adapter; in the chat format the reply follows the [[ ## answer ## ]] "
        "marker, in the compact format it is the answer alone)",
    )
    export.add_argument("--task", help="task name (default: the task of the user's latest interaction)")
    export.add_argument("--task-text", help="the task the chat is for (--format messages; its episodes are retrieved)")
    export.set_defaults(func=cmd_export)

    rollback = sub.add_parser("rollback", parents=[common], help="move a user's production alias back")
    rollback.add_argument("user", type=user_arg)
    rollback.add_argument("--to", type=positive, help="version (default: the previous production)")
    rollback.add_argument("--reason")
    rollback.set_defaults(func=cmd_rollback)

    forget = sub.add_parser("forget", parents=[common], help="delete a user's points, persona versions and runs")
    forget.add_argument("user", type=user_arg)
    forget.set_defaults(func=cmd_forget)

    runs = sub.add_parser("runs", help="compile runs in MLflow")
    runs.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    rsub = runs.add_subparsers(dest="runs_command", required=True, metavar="COMMAND")
    compare = rsub.add_parser("compare", parents=[common], help="a table of compile runs: params, scores, cost")
    compare.add_argument("--user", type=user_arg, help="only this user's runs (default: every user's)")
    compare.add_argument("--experiment", help="MLflow experiment (default: the configured one)")
    compare.set_defaults(func=cmd_runs_compare)

    sync = sub.add_parser("sync", parents=[common], help="record compiles kept while the MLflow store was down")
    sync.set_defaults(func=cmd_sync)

    memory = sub.add_parser("memory", help="the episodic store")
    memory.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    msub = memory.add_subparsers(dest="memory_command", required=True, metavar="COMMAND")
    migrate = msub.add_parser("migrate", help="convert a folder of the previous embedded engine to Qdrant Edge")
    migrate.add_argument("folder", type=existing_folder, help="a folder written by qdrant-client's local mode")
    migrate.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    migrate.set_defaults(func=cmd_memory_migrate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    redact_logs()
    if not args.debug:  # store migrations and library chatter are not the user's business
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow is imported (lazily, later)
        for name in ("mlflow", "alembic", "textgrad", "LiteLLM", "httpx"):
            logging.getLogger(name).setLevel(logging.WARNING)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        message = redact(" ".join(str(exc).split())) or "(no message)"
        if isinstance(exc, PersonaDSPyError):
            print(f"{PROG}: {type(exc).__name__}: {message}", file=sys.stderr)
            return exc.exit_code
        print(
            f"{PROG}: {type(exc).__name__}: {message} (unexpected; rerun with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
