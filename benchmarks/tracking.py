"""MLflow overhead per compile: wall time of ``Tracking.record`` on a sqlite store and on a local server.

    python benchmarks/tracking.py [--compiles 10] [--steps 3]

``record`` = one run (tags, params, per-iteration and final metrics in batched calls, persona
artifacts) + one registered persona version + aliases. Hand-made ``CompileResult``s: no LM runs.
Prints a markdown table (median / p90 / max seconds per compile, and per-phase medians).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import persona_dspy  # noqa: F401  (environment guards before mlflow is imported)
from persona_dspy import Settings
from persona_dspy.results import CompileResult, Step
from persona_dspy.tracking import Tracking
from persona_dspy.tracking.server import LocalMlflowServer, migrated_sqlite


def compile_result(user: str, i: int, steps: int, production: str = "You are a helpful assistant.") -> CompileResult:
    persona = f"You answer for {user}. Version {i}. " + "They rate comedies high and long dramas low. " * 8
    return CompileResult(
        user_id=user,
        params={"n_recent": 3, "iterations": steps, "n_val": 2, "margin": 0.0},
        initial_persona="You are a helpful assistant.",
        candidate_persona=persona,
        production_persona=production,  # today's production: the gate compared with it, so a promotion stands
        promoted=i % 2 == 0,
        reason="gate: candidate not worse",
        lm_calls=5 * steps,
        tokens=4000 * steps,
        wall_time=60.0,
        data_watermark=1.7e9 + i,
        val_ids=["a", "b"],
        val_score_production=0.5,
        val_score_candidate=0.6,
        steps=[
            Step(
                iteration=k,
                persona=persona,
                train_score=0.1 * k,
                predictions=["3.0", "4.0", "2.5"],
                loss="- too high by 1.5 on two items; say the user is a harsh rater.",
                updated_persona=persona,
            )
            for k in range(1, steps + 1)
        ],
    )


def measure(tracking: Tracking, compiles: int, steps: int) -> list[float]:
    tracking.experiment_id()  # open the store once, as a long-running optimizer does
    tracking.record(compile_result("warmup", 0, steps))
    times, production = [], {}
    for i in range(1, compiles + 1):
        user = f"bench-{i % 3}"
        result = compile_result(user, i, steps, production.get(user, "You are a helpful assistant."))
        started = time.perf_counter()
        tracking.record(result)
        times.append(time.perf_counter() - started)
        if result.promoted:
            production[user] = result.candidate_persona
    return times


def requests_logged(server: LocalMlflowServer) -> int:
    """Requests in the server's uvicorn access log so far."""
    return sum(
        1
        for line in (server.folder / "server.log").read_text(errors="replace").splitlines()
        if '" 200' in line or '" 4' in line or '" 5' in line
    )


def row(backend: str, times: list[float]) -> str:
    times = sorted(times)
    p90 = times[min(len(times) - 1, int(0.9 * len(times)))]
    return f"| {backend} | {len(times)} | {statistics.median(times):.3f} | {p90:.3f} | {times[-1]:.3f} |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compiles", type=int, default=10)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="persona_dspy_bench_") as tmp:
        root = Path(tmp)
        template = migrated_sqlite(root / "template" / "mlflow.db")
        settings = Settings(state_dir=root / "state")
        sqlite_db = root / "sqlite" / "mlflow.db"
        sqlite_db.parent.mkdir()
        sqlite_db.write_bytes(template.read_bytes())
        lines = [
            "| backend | compiles | median s | p90 s | max s |",
            "|---|---|---|---|---|",
            row(
                "sqlite (local file)",
                measure(Tracking(settings, tracking_uri=f"sqlite:///{sqlite_db}"), args.compiles, args.steps),
            ),
        ]
        with LocalMlflowServer(root / "server", template_db=template) as server:
            tracking = Tracking(settings, tracking_uri=server.uri)
            tracking.experiment_id()
            before = requests_logged(server)
            times = measure(tracking, args.compiles, args.steps)
            per_record = (requests_logged(server) - before) / (args.compiles + 1)
            lines.append(row("mlflow server, 127.0.0.1 (sqlite + proxied artifacts)", times))
    print(
        f"`Tracking.record` per compile, {args.steps} iterations ({2 * args.steps + 5} artifact files), "
        "hand-made results:\n"
    )
    print("\n".join(lines))
    print(f"\nHTTP requests per record against the server (from its access log): {per_record:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
