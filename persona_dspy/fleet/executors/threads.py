"""The threads backend: a ``ThreadPoolExecutor``, each thread under ``dspy.context(lm=...)`` (thread-local)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING

import dspy

from persona_dspy.config import Settings
from persona_dspy.fleet.reads import snapshots
from persona_dspy.fleet.report import UserReport
from persona_dspy.fleet.worker import LMSource, compile_user, resolve_lm
from persona_dspy.memory.protocol import Memory, MemoryReader
from persona_dspy.tracking.tracker import Tracking

if TYPE_CHECKING:
    from persona_dspy.optimizers.base import GatedPersonaOptimizer


def run_threads(
    user_ids: list[str],
    optimizer: GatedPersonaOptimizer,
    *,
    memory: Memory,
    tracking: Tracking,
    lm: LMSource,
    settings: Settings,
    workers: int,
    resume: bool,
    on_done: Callable[[UserReport], None],
) -> None:
    """Users' snapshots are read ahead of the workers, at most ``2 * workers`` held (``fleet.reads.snapshots``)."""
    if not user_ids:
        return
    model = resolve_lm(lm, settings)

    def work(uid: str, view: MemoryReader, read_seconds: float) -> UserReport:
        with dspy.context(lm=model):  # thread-local; dspy.configure is for the main thread only
            return compile_user(
                uid, optimizer, memory=view, tracking=tracking, discard_unfinished=resume, read_seconds=read_seconds
            )

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="persona-fleet")
    reads = snapshots(memory.snapshot, user_ids)
    pending: set[Future[UserReport]] = set()
    unreported: set[Future[UserReport]] = set()

    def report(futures: set[Future[UserReport]]) -> None:
        for future in futures:
            on_done(future.result())
            unreported.discard(future)

    try:
        for uid, view, seconds in reads:
            if isinstance(view, Exception):
                on_done(UserReport.failure(uid, view, timings={"memory": seconds}, seconds=seconds))
                continue
            future = pool.submit(work, uid, view, seconds)
            pending.add(future)
            unreported.add(future)
            while len(pending) >= 2 * workers:
                completed, pending = wait(pending, return_when=FIRST_COMPLETED)
                report(completed)
        while pending:
            completed, pending = wait(pending, return_when=FIRST_COMPLETED)
            report(completed)
    except BaseException:
        # Ctrl-C: the users not started are cancelled, the compiles in flight finish (and are recorded):
        # each is reported too, so the journal lists every user the registry has a compile of
        pool.shutdown(wait=True, cancel_futures=True)
        report({f for f in unreported if f.done() and not f.cancelled()})
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
