"""Align one user: read production -> compile -> record, each fact read once.

``align_user(user_id, optimizer, memory=..., tracking=...) -> Alignment`` is what the CLI, the fleet
(threads and Ray), the demo and the evaluation run for one user. The optimizer's ``compile`` is pure
(memory and LM only); this function owns the reads around it (the user's episodes, read once as a
snapshot that also gives the data watermark; the production persona; the last recorded compile)
and the one write after it (``Tracking.record``). Without ``tracking`` nothing is read from or
written to MLflow: the student's persona is production (evaluation).
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from persona_dspy.agent import PersonaAgent
from persona_dspy.data.records import data_digest
from persona_dspy.errors import EmptyHistoryError
from persona_dspy.memory.protocol import MemoryReader
from persona_dspy.results import CompileResult
from persona_dspy.tracking.runs import LEGACY_AGENT, agent_settings

if TYPE_CHECKING:
    from persona_dspy.data.records import Interaction
    from persona_dspy.optimizers.base import GatedPersonaOptimizer
    from persona_dspy.tracking.tracker import Tracking

Status = Literal["promoted", "kept", "skipped"]


@dataclass
class Alignment:
    """What ``align_user`` did for one user.

    ``agent`` serves the persona in production after the call (None when skipped); ``result`` is the
    compile's record (None when skipped; ``result.version`` is set once recorded). ``timings``:
    seconds in ``memory`` (the snapshot read), ``tracking`` (reads and the record) and ``compile``.
    """

    user_id: str
    status: Status
    reason: str
    agent: PersonaAgent | None = None
    result: CompileResult | None = None
    timings: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def version(self) -> int | None:
        return self.result.version if self.result is not None else None


def unchanged_since_last_compile(
    last: dict[str, Any] | None,
    optimizer: GatedPersonaOptimizer,
    watermark: float,
    digest: str | None = None,
    agent: dict[str, str] | None = None,
) -> bool:
    """True when the last recorded compile used the same optimizer, params and data watermark
    (compared as MLflow logged them: strings) and, given a ``digest`` (``data_digest`` of the history),
    the same data: an older interaction added or one rewritten since leaves the watermark as it was. A
    compile recorded before digests were (no ``data_digest`` tag) is compared on its watermark alone, so
    an upgrade does not recompile every user once. Given ``agent`` (the student's ``PersonaAgent.settings()``),
    a compile recorded with other agent settings (another adapter, k, ...) is not unchanged either; one
    recorded before settings were is taken to have had ``PersonaAgent``'s defaults of that time
    (``LEGACY_AGENT``), so a default student is not recompiled by the upgrade and any other one is."""
    if last is None or last.get("optimizer") != optimizer.name or last.get("data_watermark") != str(watermark):
        return False
    if digest is not None and last.get("data_digest") not in (None, digest):
        return False
    recorded = agent_settings(last["params"]) or LEGACY_AGENT
    if agent is not None and recorded != agent:
        return False
    return all(last["params"].get(k) == str(v)[:6000] for k, v in optimizer.params.items())


def align_user(
    user_id: str,
    optimizer: GatedPersonaOptimizer,
    *,
    memory: MemoryReader,
    tracking: Tracking | None = None,
    student: PersonaAgent | None = None,
    valset: list[Interaction] | None = None,
    skip_unchanged: bool = True,
    discard_unfinished: bool = False,
    read_seconds: float = 0.0,
) -> Alignment:
    """Compile ``user_id``'s persona under the current DSPy LM and record it in ``tracking``.

    ``memory``: the store, or the user's ``UserSnapshot`` already read (``read_seconds`` is then its
    share of that read, for the timings). ``student``: the agent to align (its task, tools, k and
    semantic memory); default ``PersonaAgent`` on the task of the user's latest interaction. Its
    persona is replaced by the production persona when ``tracking`` holds one.

    With ``tracking``: a user whose last recorded compile had the same optimizer, params and data
    (watermark and ``data_digest``) is ``skipped`` (``skip_unchanged``); ``discard_unfinished`` first deletes the user's
    runs a killed process left unfinished (call it only when no other process compiles this user);
    ``Tracking(trace=True)`` traces the compile's LM calls under its run. Errors propagate; nothing
    is recorded for a compile that raised.
    """
    started = time.perf_counter()
    timings = {"memory": read_seconds, "tracking": 0.0, "compile": 0.0}

    def done(status: Status, reason: str, **fields: Any) -> Alignment:
        return Alignment(
            user_id=user_id,
            status=status,
            reason=reason,
            timings=timings,
            seconds=time.perf_counter() - started,
            **fields,
        )

    view = memory.snapshot(user_id)  # one store read; a snapshot already read returns itself
    history = view.history(user_id)
    if not history:
        raise EmptyHistoryError(f"user {user_id!r} has no interactions in memory; ingest its history first")
    watermark = max(it.timestamp for it in history)
    digest = data_digest(history)
    timings["memory"] += time.perf_counter() - started

    if student is None:
        student = PersonaAgent(history[-1].task, user_id=user_id, memory=view)
    else:
        student = student.deepcopy()
        student.memory = view
    production = None
    if tracking is not None:
        mark = time.perf_counter()
        if discard_unfinished:
            tracking.discard_unfinished(user_id)
        last = tracking.last_compile(user_id) if skip_unchanged else None
        if last is not None and unchanged_since_last_compile(last, optimizer, watermark, digest, student.settings()):
            timings["tracking"] = time.perf_counter() - mark
            outcome = "promoted" if last["promoted"] else "kept"
            return done(
                "skipped",
                f"unchanged since its last compile (same data, optimizer params and agent settings): "
                f"v{last['persona_version']} {outcome}, run {last['run_id']}",
            )
        production = tracking.production_persona(user_id)
        timings["tracking"] = time.perf_counter() - mark

    if production is not None:
        student.persona = production

    with tracking.compile_run(user_id) if tracking is not None else nullcontext():
        mark = time.perf_counter()
        agent = optimizer.compile(student, trainset=history, valset=valset, production=production)
        result: CompileResult = agent.compile_result
        result.data_digest, result.data_count = digest, len(history)
        timings["compile"] = time.perf_counter() - mark
        if tracking is not None:
            mark = time.perf_counter()
            gated = result.promoted
            result.version = tracking.record(result)
            if gated and not result.promoted:  # production moved during the compile: serve what it is now
                agent.persona = tracking.production_persona(user_id) or agent.persona
            timings["tracking"] += time.perf_counter() - mark
    agent.memory = memory  # the snapshot served the compile; the agent serves from what it was given
    reason = "; ".join(filter(None, (result.reason, result.promotion_skipped)))
    return done("promoted" if result.promoted else "kept", reason, agent=agent, result=result)


__all__ = ["LEGACY_AGENT", "Alignment", "align_user", "unchanged_since_last_compile"]
