"""``compile_users``: the fleet's entry point (journal, skip, progress, backend)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import dspy
from tqdm.auto import tqdm

from persona_dspy.config import Settings
from persona_dspy.data.records import user_ids as checked_users
from persona_dspy.errors import ConfigurationError
from persona_dspy.fleet.executors.ray import run_ray
from persona_dspy.fleet.executors.threads import run_threads
from persona_dspy.fleet.journal import FleetJournal, fleet_id
from persona_dspy.fleet.report import FleetReport, UserReport
from persona_dspy.fleet.worker import LMSource
from persona_dspy.memory.episodic import EpisodicMemory
from persona_dspy.tracking.tracker import Tracking

if TYPE_CHECKING:
    from persona_dspy.optimizers.base import GatedPersonaOptimizer

Backend = Literal["threads", "ray"]


def compile_users(
    users: Sequence[str] | Literal["all"],
    optimizer: GatedPersonaOptimizer | None = None,
    *,
    settings: Settings | None = None,
    memory: EpisodicMemory | None = None,
    tracking: Tracking | None = None,
    lm: LMSource = None,
    workers: int = 4,
    backend: Backend = "threads",
    resume: bool = False,
    progress: bool = True,
    verbose: bool = False,
    ship_histories: bool = False,
    state: str = "",
) -> FleetReport:
    """Compile the persona of every user in ``users`` (or ``"all"`` users in episodic memory).

    ``lm``: an LM object (threads), a zero-argument factory (threads or Ray), or None to build the
    configured one (``build_lm(settings)``). ``settings`` defaults to the memory's (or the tracking's);
    one of the three is required. ``optimizer`` defaults to ``PersonaOptimizer()``; each user is
    recorded into ``tracking`` (default ``Tracking(settings)``). KeyboardInterrupt cancels the users
    not started; compiles in flight finish, and ``resume=True`` then does only the rest.
    Each user's episodes are read (one filtered read, vectors included) just ahead of its compile.
    ``state`` names the data the users were chosen on (``compile_due`` passes their status): a fleet of
    the same users on other data is another fleet, and ``resume`` never takes the earlier one's journal.
    """
    from persona_dspy.optimizers import PersonaOptimizer

    users = checked_users(users)
    if backend not in ("threads", "ray"):
        raise ConfigurationError(f"backend must be 'threads' or 'ray', not {backend!r}")
    if workers < 1:
        raise ConfigurationError("workers must be >= 1")
    settings = settings or (
        memory.settings if memory is not None else tracking.settings if tracking is not None else None
    )
    if settings is None:
        raise ConfigurationError(
            "compile_users needs its configuration: pass settings=Settings() (or the memory= / tracking= it should use)"
        )
    optimizer = optimizer or PersonaOptimizer()
    if backend == "ray" and not settings.qdrant_is_server and not ship_histories:
        raise ConfigurationError(
            f"scale-out needs a Qdrant server: PERSONA_DSPY_QDRANT is {settings.qdrant_location!r}, an embedded store "
            "that only one process can open. Run a Qdrant server and set PERSONA_DSPY_QDRANT=http://HOST:6333 "
            "(and an MLflow tracking server in PERSONA_DSPY_MLFLOW_TRACKING_URI), or use backend='threads'."
        )
    if backend == "ray" and isinstance(lm, dspy.BaseLM):
        raise ConfigurationError(
            "the Ray backend builds the LM inside each task: pass lm as a zero-argument "
            "factory (e.g. functools.partial(ScriptedLM, rule)) or None for the configured LM"
        )
    own_memory = memory is None
    memory = memory or EpisodicMemory(settings)
    tracking = tracking or Tracking(settings)
    started = time.perf_counter()
    try:
        user_ids = sorted(set(memory.users() if users == "all" else users))
        fid = fleet_id(optimizer, user_ids, state)
        journal = FleetJournal(settings.state_dir / "fleet" / f"{fid}.jsonl")
        reports: dict[str, UserReport] = {}
        with journal.open(resume) as done:
            for uid in user_ids:
                if uid in done:
                    reports[uid] = done[uid].model_copy(update={"from_journal": True})
            todo = [uid for uid in user_ids if uid not in reports]
            bar = tqdm(total=len(user_ids), initial=len(reports), desc="fleet", unit="user", disable=not progress)

            def finished(report: UserReport) -> None:
                reports[report.user_id] = report
                journal.append(report)
                bar.update(1)
                bar.set_postfix(failed=sum(r.status == "failed" for r in reports.values()), refresh=False)
                if verbose:
                    tqdm.write(report.line())

            try:
                if backend == "threads":
                    run_threads(
                        todo,
                        optimizer,
                        memory=memory,
                        tracking=tracking,
                        lm=lm,
                        settings=settings,
                        workers=workers,
                        resume=resume,
                        on_done=finished,
                    )
                else:
                    run_ray(
                        todo,
                        optimizer,
                        memory=memory,
                        settings=settings,
                        lm=lm,
                        workers=workers,
                        resume=resume,
                        ship_histories=ship_histories,
                        on_done=finished,
                    )
            finally:
                bar.close()
    finally:
        if own_memory:
            memory.close()
    return FleetReport(
        fleet_id=fid,
        journal=str(journal.path),
        backend=backend,
        workers=workers,
        wall_time=time.perf_counter() - started,
        users=[reports[u] for u in user_ids if u in reports],
    )
