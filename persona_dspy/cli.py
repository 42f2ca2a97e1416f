"""``persona-dspy``: demo, ingest, compile, and the persona registry (history, rollback, forget).

Errors of persona_dspy become one line on stderr and a distinct exit code; ``--debug`` shows
the traceback.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from persona_dspy.config import Settings
from persona_dspy.errors import PersonaDSPyError


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {k: v for k, v in {"lm": args.lm, "state_dir": args.state_dir, "qdrant": args.qdrant,
                                   "mlflow_tracking_uri": args.mlflow_tracking_uri}.items() if v is not None}
    return Settings(**overrides)


def cmd_demo(args: argparse.Namespace) -> int:
    from persona_dspy.demo import format_table, run_demo

    settings = _settings(args)
    started = time.perf_counter()
    rows = run_demo(settings, users=args.users, n_recent=args.n_recent, iterations=args.iterations)
    print("\n[4/4] before/after on each user's held-out last rating (score = 1 - |error| / 4.5)\n")
    print(format_table(rows))
    print(f"\ndemo finished in {time.perf_counter() - started:.0f} s")
    print("open the runs and persona versions with:\n"
          f"  mlflow ui --backend-store-uri {settings.tracking_uri}\n"
          "then: Experiments > persona_dspy (one run per compile), Prompts > persona.<user>.* (versions, aliases)")
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from persona_dspy.data import load_interactions, load_shared
    from persona_dspy.memory import EpisodicMemory

    settings = _settings(args)
    if args.shared:
        interactions = [it for h in load_shared(args.file) for it in h.interactions]
    else:
        interactions = load_interactions(args.file)
    with EpisodicMemory(settings) as memory:
        written = memory.add(interactions, progress=True)
        print(f"{len(interactions)} interactions read, {written} written, {memory.count()} in store")
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    from persona_dspy.tracking import Tracking

    versions = Tracking(_settings(args)).history(args.user)
    if not versions:
        print(f"user {args.user!r} has no persona versions")
        return 0
    for v in versions:
        aliases = ",".join(v.aliases) or "-"
        print(f"v{v.version:<4} {aliases:<22} val {v.tags.get('val_score_candidate', '-'):<8} "
              f"run {v.tags.get('run_id', '-')[:12]}  {v.text[:60]!r}")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from persona_dspy.tracking import Tracking

    version = Tracking(_settings(args)).rollback(args.user, args.to, reason=args.reason or "")
    print(f"production of {args.user!r} now points to v{version.version}")
    return 0


def cmd_forget(args: argparse.Namespace) -> int:
    from persona_dspy.memory import EpisodicMemory
    from persona_dspy.tracking import Tracking

    settings = _settings(args)
    counts = Tracking(settings).forget(args.user)
    with EpisodicMemory(settings) as memory:
        counts["qdrant_points"] = memory.forget(args.user)
    print(", ".join(f"{k}: {v}" for k, v in counts.items()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="persona-dspy", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--lm", help="LiteLLM model string (default: the embedded local model)")
    common.add_argument("--state-dir", type=Path, help="where the embedded stores live")
    common.add_argument("--qdrant", help="':memory:', a folder or a URL")
    common.add_argument("--mlflow-tracking-uri")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", parents=[common], help="run the offline end-to-end demo on the bundled users")
    demo.add_argument("--users", type=int, default=3)
    demo.add_argument("--n-recent", type=int, default=2)
    demo.add_argument("--iterations", type=int, default=1)
    demo.set_defaults(func=cmd_demo)

    ingest = sub.add_parser("ingest", parents=[common], help="add interactions (JSONL) to episodic memory")
    ingest.add_argument("file", type=Path)
    ingest.add_argument("--shared", action="store_true", help="the file is in the shared LaMP-style schema")
    ingest.set_defaults(func=cmd_ingest)

    personas = sub.add_parser("personas", help="persona versions in the registry")
    psub = personas.add_subparsers(dest="personas_command", required=True)
    hist = psub.add_parser("history", parents=[common], help="a user's persona versions and aliases")
    hist.add_argument("user")
    hist.set_defaults(func=cmd_history)

    rollback = sub.add_parser("rollback", parents=[common], help="move a user's production alias back")
    rollback.add_argument("user")
    rollback.add_argument("--to", type=int, help="version (default: the previous production)")
    rollback.add_argument("--reason")
    rollback.set_defaults(func=cmd_rollback)

    forget = sub.add_parser("forget", parents=[common], help="delete a user's points, persona versions and runs")
    forget.add_argument("user")
    forget.set_defaults(func=cmd_forget)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except PersonaDSPyError as exc:
        if args.debug:
            raise
        print(f"persona-dspy: {type(exc).__name__}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("persona-dspy: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
