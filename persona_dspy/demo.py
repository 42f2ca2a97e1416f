"""The end-to-end demo: bundled users -> memory -> baseline -> aligned persona -> MLflow."""

from __future__ import annotations

import time
from dataclasses import dataclass

import dspy

from persona_dspy.agent import PersonaAgent
from persona_dspy.config import Settings
from persona_dspy.data import UserHistory, load_sample_users
from persona_dspy.errors import ConfigurationError


@dataclass
class DemoRow:
    user_id: str
    truth: str
    before: str | None
    before_score: float
    after: str | None
    after_score: float
    promoted: bool
    version: int | None
    lm_calls: int
    tokens: int
    seconds: float


def run_demo(
    settings: Settings,
    *,
    users: int = 3,
    n_recent: int = 2,
    iterations: int = 1,
    n_val: int = 2,
    lm: dspy.BaseLM | None = None,
    histories: list[UserHistory] | None = None,
    trace: bool = False,
    echo=print,
) -> list[DemoRow]:
    """Ingest the sample users, score the un-personalized agent on each user's held-out query,
    align a persona per user, score again. The query is never ingested (no leakage)."""
    from persona_dspy.lm import build_lm
    from persona_dspy.memory import EpisodicMemory
    from persona_dspy.optimizers import PersonaOptimizer, usage_totals
    from persona_dspy.pipeline import align_user
    from persona_dspy.tracking import Tracking

    histories = (histories or load_sample_users())[:users]
    echo(f"[1/4] {len(histories)} users; state in {settings.state_dir}")
    lm = lm or build_lm(settings)
    memory = EpisodicMemory(settings)
    tracking = Tracking(settings, trace=trace)
    echo(
        f"[2/4] ingesting past interactions into Qdrant ({settings.qdrant_location}); held-out queries are not ingested"
    )
    written = memory.add([it for h in histories for it in h.interactions], progress=True)
    echo(f"      {written} points written ({memory.count()} in store; unchanged records are skipped)")
    optimizer = PersonaOptimizer(
        n_recent=n_recent,
        iterations=iterations,
        n_val=n_val,
        max_lm_calls=4 * (n_recent + 2) * iterations + 2 * n_val + 4,
        progress=True,
    )
    rows: list[DemoRow] = []
    echo(
        f"[3/4] per user: align persona (n={n_recent}, iterations={iterations}), then answer the held-out query "
        "with the production persona before and after"
    )
    with dspy.context(lm=lm):
        for i, history in enumerate(histories, start=1):
            q = history.query
            if q is None:
                raise ConfigurationError(f"user {history.user_id!r} has no held-out query for the demo to answer")
            started = time.perf_counter()
            with dspy.track_usage() as usage:
                aligned = align_user(history.user_id, optimizer, memory=memory, tracking=tracking, skip_unchanged=False)
                res = aligned.result
                assert aligned.agent is not None and res is not None  # skip_unchanged=False: never skipped
                baseline = PersonaAgent(q.task, user_id=history.user_id, memory=memory, persona=res.production_persona)
                before = baseline(task=q.input, before=q.timestamp).answer
                after = aligned.agent(task=q.input, before=q.timestamp).answer
            calls, tokens = usage_totals(usage)
            row = DemoRow(
                history.user_id,
                q.output,
                before,
                baseline.task.score(before, q.output),
                after,
                baseline.task.score(after, q.output),
                res.promoted,
                res.version,
                calls,
                tokens,
                time.perf_counter() - started,
            )
            rows.append(row)
            echo(
                f"      user {row.user_id} ({i}/{len(histories)}): truth {row.truth}, before {row.before}, "
                f"after {row.after}, {'promoted' if row.promoted else 'kept production'} "
                f"(v{row.version}), {row.lm_calls} LM calls, {row.seconds:.0f} s"
            )
    return rows


def format_table(rows: list[DemoRow]) -> str:
    head = ("user", "truth", "before", "score", "after", "score", "production", "version", "LM calls", "tokens", "time")
    body = [
        (
            r.user_id,
            r.truth,
            str(r.before),
            f"{r.before_score:.2f}",
            str(r.after),
            f"{r.after_score:.2f}",
            "promoted" if r.promoted else "kept",
            str(r.version),
            str(r.lm_calls),
            str(r.tokens),
            f"{r.seconds:.0f} s",
        )
        for r in rows
    ]
    if rows:
        mean = lambda xs: sum(xs) / len(xs)
        body.append(
            (
                "mean",
                "",
                "",
                f"{mean([r.before_score for r in rows]):.2f}",
                "",
                f"{mean([r.after_score for r in rows]):.2f}",
                "",
                "",
                f"{mean([r.lm_calls for r in rows]):.1f}",
                f"{mean([r.tokens for r in rows]):.0f}",
                f"{mean([r.seconds for r in rows]):.0f} s",
            )
        )
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths))
    return "\n".join([line(head), line(["-" * w for w in widths]), *map(line, body)])
