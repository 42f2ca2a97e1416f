"""What a worker does for one user: ``align_user`` under its LM, every error turned into a report."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeAlias

import dspy

from persona_dspy.config import Settings
from persona_dspy.fleet.report import UserReport
from persona_dspy.memory.protocol import MemoryReader
from persona_dspy.pipeline import align_user
from persona_dspy.tracking.tracker import Tracking

if TYPE_CHECKING:
    from persona_dspy.optimizers.base import GatedPersonaOptimizer

LMSource: TypeAlias = dspy.BaseLM | Callable[[], dspy.BaseLM] | None
"""An LM, a zero-argument factory of one (what Ray tasks need: it is pickled), or None for ``build_lm``."""


def compile_user(
    user_id: str,
    optimizer: GatedPersonaOptimizer,
    *,
    memory: MemoryReader,
    tracking: Tracking,
    discard_unfinished: bool = False,
    read_seconds: float = 0.0,
) -> UserReport:
    """``align_user`` under the current DSPy LM, as a report: every error becomes a ``failed`` one."""
    started = time.perf_counter()
    try:
        return UserReport.of(
            align_user(
                user_id,
                optimizer,
                memory=memory,
                tracking=tracking,
                discard_unfinished=discard_unfinished,
                read_seconds=read_seconds,
            )
        )
    except Exception as exc:  # noqa: BLE001 (isolation: one user's failure must not stop the fleet)
        return UserReport.failure(user_id, exc, timings={"memory": read_seconds}, seconds=time.perf_counter() - started)


def resolve_lm(lm: LMSource, settings: Settings) -> dspy.BaseLM:
    if isinstance(lm, dspy.BaseLM):
        return lm
    if lm is not None:
        return lm()
    from persona_dspy.lm import build_lm

    return build_lm(settings)
