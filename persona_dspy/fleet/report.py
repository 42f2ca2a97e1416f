"""What a fleet reports: one ``UserReport`` per user (also the journal's line), totals in ``FleetReport``."""

from __future__ import annotations

import traceback
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from persona_dspy.pipeline import Alignment
from persona_dspy.redaction import redact

Status = Literal["promoted", "kept", "failed", "skipped"]


class UserReport(BaseModel):
    """What happened to one user in a fleet."""

    user_id: str
    status: Status
    reason: str = ""
    error_type: str | None = None
    traceback: str | None = Field(None, description="the last frames of a failure, innermost last")
    lm_calls: int = 0
    tokens: int = 0
    seconds: float = 0.0
    version: int | None = None
    timings: dict[str, float] = Field(
        default_factory=dict,
        description="seconds in: memory (history read), tracking (reads + record), "
        "compile (replays, TextGrad, gate; LM time included)",
    )
    from_journal: bool = Field(False, description="finished by an earlier, interrupted run of this fleet")

    @field_validator("reason", "traceback")
    @classmethod
    def _no_credentials(cls, v: str | None) -> str | None:
        """Redacted at the source: the journal, the report and the CLI print these as they are."""
        return redact(v) if v else v

    @classmethod
    def of(cls, done: Alignment) -> UserReport:
        """The report of an ``align_user`` that returned."""
        result = done.result
        return cls(
            user_id=done.user_id,
            status=done.status,
            reason=done.reason,
            version=done.version,
            lm_calls=result.lm_calls if result else 0,
            tokens=result.tokens if result else 0,
            timings=done.timings,
            seconds=done.seconds,
        )

    @classmethod
    def failure(cls, user_id: str, exc: BaseException, **fields: Any) -> UserReport:
        """A ``failed`` report: error type, first line of the message, the last frames of the traceback."""
        message = str(exc).splitlines()[0][:500] if str(exc) else ""
        summary = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__, limit=-4))
        return cls(
            user_id=user_id, status="failed", reason=message, error_type=type(exc).__name__, traceback=summary, **fields
        )

    def line(self) -> str:
        cost = f"{self.lm_calls} calls, {self.tokens} tokens, {self.seconds:.2f} s"
        detail = f"{self.error_type}: {self.reason}" if self.error_type else self.reason
        version = f" v{self.version}" if self.version is not None else ""
        return f"{self.status:<8} {self.user_id}{version} ({cost}) {detail}"


class FleetReport(BaseModel):
    """Per-user outcomes and totals of one ``compile_users`` call."""

    fleet_id: str
    journal: str
    backend: str
    workers: int
    wall_time: float = 0.0
    users: list[UserReport]

    def counts(self) -> dict[str, int]:
        return {s: sum(u.status == s for u in self.users) for s in ("promoted", "kept", "skipped", "failed")}

    @property
    def failed(self) -> list[UserReport]:
        return [u for u in self.users if u.status == "failed"]

    @property
    def lm_calls(self) -> int:
        return sum(u.lm_calls for u in self.users)

    @property
    def tokens(self) -> int:
        return sum(u.tokens for u in self.users)

    def format(self, tracebacks: bool = False) -> str:
        """The final report: one line per user (grouped by status), then totals. A failure's last frames
        (kept in the journal) follow with ``tracebacks``; otherwise one line says where they are."""
        order = {"failed": 0, "promoted": 1, "kept": 2, "skipped": 3}
        lines = [
            u.line() + ("  [earlier run]" if u.from_journal else "")
            for u in sorted(self.users, key=lambda u: (order[u.status], u.user_id))
        ]
        traced = [u for u in self.failed if u.traceback]
        if tracebacks:
            lines += [f"--- {u.user_id}: {u.error_type}\n{u.traceback.rstrip()}" for u in traced if u.traceback]
        elif traced:
            lines.append(f"the last frames of {len(traced)} failure(s) are in the journal (or rerun with --debug)")
        counts = ", ".join(f"{n} {s}" for s, n in self.counts().items())
        lines.append(
            f"{len(self.users)} users: {counts}; {self.lm_calls} LM calls, {self.tokens} tokens, "
            f"{self.wall_time:.1f} s with {self.workers} {self.backend} worker(s); journal {self.journal}"
        )
        return "\n".join(lines)
