"""Fleet compile benchmark: users/hour/core and framework overhead per user, threads and Ray.

    python benchmarks/fleet.py [--users 1000 --interactions 50] [--compile-users N] [--workers 2]
                               [--ray-users 40] [--profile-users 20]
    python benchmarks/fleet.py --embedded --users 10      # the embedded model: time per user, LM share
    python benchmarks/fleet.py --steady-state --users 2000 --interactions 20   # one thread, growing store

Zero-latency mode (default): a scripted LM that answers instantly, so everything measured is the
framework: DSPy (adapters, modules, usage tracking), TextGrad (variables, loss, TGD), memory
(embedding the query + one filtered Qdrant Edge read per user) and MLflow (sqlite store:
one run + one registered version + aliases per user).

1. ``users x interactions`` synthetic MovieLens-like interactions (titles and genres from the
   bundled samples, a per-user rating bias) are ingested into an embedded Qdrant folder. Vectors
   come from the real embedder, computed once per distinct text (users rate overlapping movies).
2. Threads: ``compile_users`` over ``--compile-users`` users (default all) with ``--workers``
   threads: users/hour (wall), users per CPU-hour (process CPU time: every thread), per-phase
   medians (memory read, tracking, compile).
3. Profile: ``--profile-users`` users compiled in the main thread under cProfile; self time grouped
   by package into memory / MLflow / TextGrad / DSPy / other (profiled times: inflated by the profiler).
4. Ray: ``--ray-users`` users on a local cluster (``num_cpus=--workers``), snapshots shipped to the
   tasks (embedded Qdrant is single-process), MLflow on the same sqlite file.

Prints a markdown report (for BENCHMARKS.md). LM calls per user depend on the optimizer
parameters (default ``--n-recent 3 --iterations 2 --n-val 2``).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import dspy

import persona_dspy
from persona_dspy import Settings
from persona_dspy.data import Interaction
from persona_dspy.fleet import FleetReport, compile_user, compile_users
from persona_dspy.lm.scripted import ScriptedLM
from persona_dspy.memory import EpisodicMemory
from persona_dspy.memory.embedder import OnnxEmbedder
from persona_dspy.optimizers import PersonaOptimizer, prompts
from persona_dspy.tracking import Tracking
from persona_dspy.tracking.server import migrated_sqlite

SAMPLES = Path(persona_dspy.__file__).parent / "data" / "samples" / "movielens_users.jsonl"
QUESTION = (
    "What rating would this user give the following movie, on MovieLens's 5-star scale with half-star "
    "steps (0.5, 1.0, ..., 5.0)? Just answer with the number without further explanation. "
)
GENRES = ["Action", "Adventure", "Comedy", "Crime", "Drama", "Fantasy", "Horror", "Romance", "Sci-Fi", "Thriller"]


# -- the scripted LM (module level: Ray pickles it) -----------------------------------------------


def instant_rule(messages: list[dict[str, str]]) -> str | dict[str, str]:
    """Answers instantly: a rating that depends on the persona, a critique, a rewritten persona."""
    system = messages[0]["content"] if messages and messages[0]["role"] == "system" else ""
    if system.startswith(prompts.LOSS_SYSTEM[:40]):
        return "- The user rates lower than the assistant thinks, mostly 2 stars; say the user is a harsh rater."
    if system.startswith(prompts.TGD_SYSTEM[:40]):
        return (
            "<IMPROVED_VARIABLE>This user is a harsh critic: most movies get 2 stars, dramas a little more, "
            "loud action films less. Answer with a single rating.</IMPROVED_VARIABLE>"
        )
    return {"answer": "2.0" if "harsh" in system else "4.0"}


def instant_lm() -> ScriptedLM:
    return ScriptedLM(instant_rule)


# -- data -----------------------------------------------------------------------------------------


def movie_pool() -> list[str]:
    """Distinct "movie: Title (Year) genres: ..." strings from the bundled samples' profiles."""
    movies = set()
    for line in SAMPLES.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        for item in record.get("profile", []):
            movies.add(f"movie: {item['movie']} genres: {item['genres']}")
    return sorted(movies)


def synthetic_users(users: int, interactions: int, seed: int = 7) -> list[Interaction]:
    rng = random.Random(seed)
    pool = movie_pool()
    out = []
    for u in range(users):
        bias = rng.choice([1.5, 2.0, 2.5, 3.5, 4.0])
        for i, movie in enumerate(rng.sample(pool, interactions)):
            rating = min(5.0, max(0.5, round((bias + rng.gauss(0, 0.7)) * 2) / 2))
            out.append(
                Interaction(
                    user_id=f"user-{u:05d}",
                    id=f"r{i}",
                    input=QUESTION + movie,
                    output=str(rating),
                    timestamp=1.6e9 + u + i * 3600.0,
                    task="movielens_rating",
                )
            )
    return out


class PrecomputedEmbedder(OnnxEmbedder):
    """The real embedder, called once per distinct text (ingestion only: users share movies)."""

    def __init__(self) -> None:
        super().__init__()
        self._vectors: dict[str, object] = {}

    def embed(self, texts):  # type: ignore[override]
        import numpy as np

        todo = sorted({t for t in texts if t not in self._vectors})
        for start in range(0, len(todo), 256):
            batch = todo[start : start + 256]
            self._vectors.update(zip(batch, super().embed(batch)))
        return np.stack([self._vectors[t] for t in texts])


# -- measurements ---------------------------------------------------------------------------------


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def phases(report: FleetReport) -> dict[str, float]:
    done = [u for u in report.users if u.status in ("promoted", "kept")]
    return {k: median([u.timings.get(k, 0.0) for u in done]) for k in ("memory", "tracking", "compile")}


BUCKETS = {  # first match wins, on the profiled function's file path (or a builtin's name)
    "memory (Qdrant, embedder)": (
        "/qdrant_client/",
        "qdrant_edge",
        "onnxruntime",
        "/tokenizers/",
        "/persona_dspy/memory/",
        "/numpy/",
    ),
    "MLflow (+ SQLAlchemy, sqlite)": ("/mlflow/", "/sqlalchemy/", "sqlite3", "/alembic/"),
    "TextGrad": ("/textgrad/",),
    "DSPy (+ litellm, pydantic)": ("/dspy/", "/litellm/", "/json_repair/", "pydantic", "/jinja2/"),
    "persona_dspy (agent, optimizer, tools, fleet)": ("/persona_dspy/",),
}


def profile(memory: EpisodicMemory, tracking: Tracking, optimizer: PersonaOptimizer, users: list[str]) -> dict:
    """Self time per bucket, per user, for users compiled in the main thread under cProfile."""
    profiler = cProfile.Profile()
    started = time.perf_counter()
    with dspy.context(lm=instant_lm()):
        profiler.enable()
        for uid in users:  # as the fleet reads them: the user's snapshot, then its compile
            compile_user(uid, optimizer, memory=memory.snapshot(uid), tracking=tracking)
        profiler.disable()
    wall = time.perf_counter() - started
    totals = {name: 0.0 for name in [*BUCKETS, "other (stdlib, tqdm, ...)"]}
    for (path, _, name), (_, _, tottime, _, _) in pstats.Stats(profiler).stats.items():  # type: ignore[attr-defined]
        where = f"{path} {name}"
        bucket = next((b for b, keys in BUCKETS.items() if any(k in where for k in keys)), "other (stdlib, tqdm, ...)")
        totals[bucket] += tottime
    return {"wall_per_user": wall / len(users), "buckets": {k: v / len(users) for k, v in totals.items()}}


def zero_latency(args: argparse.Namespace, root: Path) -> str:
    optimizer = PersonaOptimizer(
        n_recent=args.n_recent, iterations=args.iterations, n_val=args.n_val, max_lm_calls=None
    )
    db = migrated_sqlite(root / "mlflow.db")
    settings = Settings(state_dir=root / "state", qdrant=str(root / "qdrant"), mlflow_tracking_uri=f"sqlite:///{db}")
    lines = [
        (
            f"Zero-latency scripted LM; {args.users} users x {args.interactions} interactions in an embedded Qdrant "
            f"folder ({args.users * args.interactions} points); sqlite MLflow; PersonaOptimizer(n_recent="
            f"{args.n_recent}, iterations={args.iterations}, n_val={args.n_val}); {os.cpu_count()} cores.\n"
        )
    ]

    items = synthetic_users(args.users, args.interactions)
    started = time.perf_counter()
    with EpisodicMemory(settings, embedder=PrecomputedEmbedder()) as ingest:
        ingest.add(items, batch_size=1024)
    lines.append(
        f"- ingest: {len(items)} interactions in {time.perf_counter() - started:.0f} s (distinct texts embedded once)"
    )
    users = sorted({it.user_id for it in items})
    embedder = OnnxEmbedder()
    memory = EpisodicMemory(settings, embedder=embedder)
    tracking = Tracking(settings)
    tracking.experiment_id()

    rows = [
        (
            "| backend | users | workers | wall s | users/hour (wall) | users per CPU-hour | CPU ms per user | "
            "LM calls/user | median s/user: memory read / tracking / compile | failed |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    ray_users = users[len(users) - args.ray_users :] if args.ray_users else []
    prof_users = users[len(users) - args.ray_users - args.profile_users : len(users) - args.ray_users]
    rest = users[: len(users) - args.ray_users - args.profile_users]
    compile_n = rest[: args.compile_users or len(rest)]
    cpu0, wall0 = time.process_time(), time.perf_counter()
    report = compile_users(
        compile_n,
        optimizer,
        memory=memory,
        tracking=tracking,
        lm=instant_lm(),
        workers=args.workers,
        progress=args.progress,
    )
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    p = phases(report)
    n = len(report.users)
    rows.append(
        f"| threads | {n} | {args.workers} | {wall:.0f} | {3600 * n / wall:.0f} | {3600 * n / cpu:.0f} | "
        f"{1000 * cpu / n:.0f} | "
        f"{report.lm_calls / max(1, n):.1f} | {p['memory']:.3f} / {p['tracking']:.3f} / {p['compile']:.3f} | "
        f"{len(report.failed)} |"
    )
    if report.failed:
        rows.append(f"\nthreads failures: {report.failed[0].error_type}: {report.failed[0].reason}")
    prof = profile(memory, tracking, optimizer, prof_users)

    if ray_users:
        import ray

        ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
        try:
            cpu0, wall0 = time.process_time(), time.perf_counter()
            ray_report = compile_users(
                ray_users,
                optimizer,
                memory=memory,
                settings=settings,
                lm=instant_lm,
                workers=args.workers,
                backend="ray",
                ship_histories=True,
                progress=args.progress,
                resume=False,
            )
            wall = time.perf_counter() - wall0
        finally:
            ray.shutdown()
        p = phases(ray_report)
        n = len(ray_report.users)
        task_seconds = sum(u.seconds for u in ray_report.users)
        rows.append(
            f"| ray (local, snapshots shipped) | {n} | {args.workers} | {wall:.0f} | {3600 * n / wall:.0f} | "
            f"{3600 * n / task_seconds:.0f} (per task-second) | {1000 * task_seconds / n:.0f} (task wall; median "
            f"{1000 * median([u.seconds for u in ray_report.users]):.0f}) | "
            f"{ray_report.lm_calls / max(1, n):.1f} | "
            f"{p['memory']:.3f} / {p['tracking']:.3f} / {p['compile']:.3f} | {len(ray_report.failed)} |"
        )
        if ray_report.failed:
            rows.append(f"\nRay failures: {ray_report.failed[0].error_type}: {ray_report.failed[0].reason}")
    memory.close()

    lines += [
        "",
        *rows,
        "",
        (
            f"Where a user's time goes (cProfile self time, {len(prof_users)} users compiled in the "
            f"main thread; {prof['wall_per_user'] * 1000:.0f} ms/user under the profiler):"
        ),
        "",
        "| part | ms per user | share |",
        "|---|---|---|",
    ]
    total = sum(prof["buckets"].values())
    for name, seconds in sorted(prof["buckets"].items(), key=lambda kv: -kv[1]):
        lines.append(f"| {name} | {seconds * 1000:.0f} | {100 * seconds / total:.0f}% |")
    return "\n".join(lines)


def embedded(args: argparse.Namespace, root: Path) -> str:
    """The embedded model on ``--users`` synthetic users: time per user and the LM's share of it."""
    from persona_dspy.lm import build_lm, embedded_engine

    settings = Settings(
        state_dir=root / "state",
        qdrant=str(root / "qdrant"),
        mlflow_tracking_uri=f"sqlite:///{migrated_sqlite(root / 'mlflow.db')}",
    )
    engine = embedded_engine(settings)
    lm_seconds = [0.0]
    complete = engine.complete

    def timed(request):
        started = time.perf_counter()
        try:
            return complete(request)
        finally:
            lm_seconds[0] += time.perf_counter() - started

    engine.complete = timed  # type: ignore[method-assign]
    with EpisodicMemory(settings) as memory:
        memory.add(synthetic_users(args.users, args.interactions))
        started = time.perf_counter()
        report = compile_users(
            "all",
            PersonaOptimizer(n_recent=args.n_recent, iterations=args.iterations, n_val=args.n_val),
            memory=memory,
            lm=build_lm(settings),
            workers=1,
            progress=args.progress,
            verbose=True,
        )
        wall = time.perf_counter() - started
    n = len(report.users)
    return (
        f"Embedded model ({settings.lm}), {n} users x {args.interactions} interactions, PersonaOptimizer("
        f"n_recent={args.n_recent}, iterations={args.iterations}, n_val={args.n_val}), 1 worker:\n\n"
        f"- {wall / n:.1f} s per user ({report.lm_calls / n:.1f} LM calls, {report.tokens / n:.0f} tokens); "
        f"LM share {100 * lm_seconds[0] / wall:.0f}% of the wall time\n"
        f"- {report.counts()}\n\n| user | status | LM calls | tokens | s |\n|---|---|---|---|---|\n"
        + "\n".join(f"| {u.user_id} | {u.status} | {u.lm_calls} | {u.tokens} | {u.seconds:.0f} |" for u in report.users)
    )


def steady_state(args: argparse.Namespace, root: Path) -> str:
    """One thread, users compiled in order on one growing MLflow store: CPU ms per user per bucket of
    ``--bucket`` users (does the per-user cost grow with the number of runs and prompts stored?)."""
    db = migrated_sqlite(root / "mlflow.db")
    settings = Settings(state_dir=root / "state", qdrant=":memory:", mlflow_tracking_uri=f"sqlite:///{db}")
    tracking = Tracking(settings)
    optimizer = PersonaOptimizer(
        n_recent=args.n_recent, iterations=args.iterations, n_val=args.n_val, max_lm_calls=None
    )
    with EpisodicMemory(settings, embedder=PrecomputedEmbedder()) as memory:
        memory.add(synthetic_users(args.users, args.interactions))
        views = memory.snapshots(memory.users())
    queries = OnnxEmbedder()  # what a compile's memory reads embed with (its LRU query cache included)
    for view in views.values():
        view.embedder = queries
    lines = [
        (
            f"One thread, {args.users} users x {args.interactions} interactions compiled in order into one sqlite "
            "MLflow store (zero-latency LM):"
        ),
        "",
        "| users | CPU ms per user | median tracking ms per user |",
        "|---|---|---|",
    ]
    cpu, tracking_s = [], []
    with dspy.context(lm=instant_lm()):
        for i, uid in enumerate(sorted(views)):
            mark = time.process_time()
            report = compile_user(uid, optimizer, memory=views[uid], tracking=tracking)
            cpu.append(time.process_time() - mark)
            tracking_s.append(report.timings["tracking"])
            if (i + 1) % args.bucket == 0 or i + 1 == len(views):
                lines.append(
                    f"| {i + 2 - len(cpu)}-{i + 1} | {1000 * statistics.mean(cpu):.0f} | "
                    f"{1000 * median(tracking_s):.0f} |"
                )
                cpu, tracking_s = [], []
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--interactions", type=int, default=50)
    parser.add_argument("--compile-users", type=int, default=0, help="threads: compile only the first N (0 = all)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--ray-users", type=int, default=40, help="0 to skip Ray")
    parser.add_argument("--profile-users", type=int, default=20)
    parser.add_argument("--n-recent", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--n-val", type=int, default=2)
    parser.add_argument("--embedded", action="store_true", help="use the embedded model (slow: use --users 10)")
    parser.add_argument(
        "--steady-state",
        action="store_true",
        help="one thread, users in order: CPU ms per user as the MLflow store grows",
    )
    parser.add_argument("--bucket", type=int, default=250, help="--steady-state: users per row")
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="persona_fleet_bench_") as tmp:
        mode = embedded if args.embedded else steady_state if args.steady_state else zero_latency
        print(mode(args, Path(tmp)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
