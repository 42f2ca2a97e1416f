"""Compare compile runs: one row per run with its optimizer, params, gate scores and cost."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mlflow.entities import Run

from persona_dspy.tracking.registry import prompt_name

if TYPE_CHECKING:
    from persona_dspy.tracking.tracker import Tracking

_NOT_PARAMS = {"optimizer", "data_watermark", "val_ids"}


@dataclass(frozen=True)
class RunRow:
    """One compile run. ``before`` / ``after``: the gate's validation score of production / candidate."""

    run_id: str
    user_id: str
    optimizer: str
    params: dict[str, str] = field(default_factory=dict)
    before: float | None = None
    after: float | None = None
    promoted: bool = False
    persona_version: int | None = None
    lm_calls: int | None = None
    tokens: int | None = None
    seconds: float | None = None
    started: int = 0

    @classmethod
    def from_run(cls, run: Run) -> RunRow:
        tags, metrics = run.data.tags, run.data.metrics
        as_int = lambda v: None if v is None else int(v)
        return cls(
            run_id=run.info.run_id,
            user_id=tags.get("user_id", "?"),
            optimizer=tags.get("optimizer", "?"),
            params={k: v for k, v in run.data.params.items() if k not in _NOT_PARAMS},
            before=metrics.get("val_score_production"),
            after=metrics.get("val_score_candidate"),
            promoted=tags.get("promoted") == "true",
            persona_version=as_int(tags.get("persona_version")),
            lm_calls=as_int(metrics.get("lm_calls")),
            tokens=as_int(metrics.get("tokens")),
            seconds=metrics.get("wall_time_s"),
            started=run.info.start_time or 0,
        )


def compare_runs(tracking: Tracking, user_id: str | None = None, *, max_runs: int = 1000) -> list[RunRow]:
    """Finished compile runs of the tracking's experiment (one user's, or all), oldest first; none when the
    experiment does not exist (it is not created by a read)."""
    exp_id = tracking.store.existing_experiment_id()
    if exp_id is None:
        return []
    where = "attributes.status = 'FINISHED'"
    if user_id is not None:
        where += f" and tags.persona_prompt = '{prompt_name(user_id)}'"
    with tracking.store.guard("searching runs", read=True) as client:
        runs = client.search_runs(
            [exp_id], filter_string=where, max_results=max_runs, order_by=["attributes.start_time ASC"]
        )
    rows = [RunRow.from_run(r) for r in runs if "compile_id" in r.data.tags]
    return [r for r in rows if user_id is None or r.user_id == user_id]


def format_runs(rows: list[RunRow]) -> str:
    """A plain-text table (params as ``k=v``; ``-`` for what a run did not measure)."""

    def num(v: float | None, fmt: str = ".2f") -> str:
        return "-" if v is None else format(v, fmt)

    header = (
        "run",
        "user",
        "optimizer",
        "params",
        "before",
        "after",
        "promoted",
        "version",
        "calls",
        "tokens",
        "time_s",
    )
    body = [
        (
            r.run_id[:8],
            r.user_id,
            r.optimizer,
            " ".join(f"{k}={v}" for k, v in sorted(r.params.items())),
            num(r.before),
            num(r.after),
            "yes" if r.promoted else "no",
            "-" if r.persona_version is None else f"v{r.persona_version}",
            num(r.lm_calls, "d"),
            num(r.tokens, "d"),
            num(r.seconds, ".1f"),
        )
        for r in rows
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
    return "\n".join("  ".join(str(x).ljust(w) for x, w in zip(line, widths)).rstrip() for line in (header, *body))
