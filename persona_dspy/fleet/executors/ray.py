"""The Ray backend: one task per user, each against the stores of ``Settings`` (a Qdrant server and an
MLflow tracking URI), or on a snapshot shipped by the driver (``ship_histories``, one machine)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import dspy

from persona_dspy.config import Settings
from persona_dspy.errors import ConfigurationError
from persona_dspy.fleet.reads import snapshots
from persona_dspy.fleet.report import UserReport
from persona_dspy.fleet.worker import LMSource, compile_user, resolve_lm
from persona_dspy.memory.episodic import EpisodicMemory
from persona_dspy.memory.protocol import MemoryReader
from persona_dspy.memory.snapshot import UserSnapshot
from persona_dspy.tracking.tracker import Tracking

if TYPE_CHECKING:
    from persona_dspy.optimizers.base import GatedPersonaOptimizer

_WORKER_STATE: dict[str, Any] = {}
"""Per Ray worker process: the Tracking client and the embedder, reused by every task it runs."""


def _ray_compile_user(
    user_id: str,
    optimizer: GatedPersonaOptimizer,
    settings: Settings,
    lm: LMSource,
    view: UserSnapshot | None,
    read_seconds: float,
    resume: bool,
) -> UserReport:
    """One Ray task: compile ``user_id`` against the stores of ``settings``.

    With ``view`` (the user's snapshot shipped by the driver: test/benchmark path) the compile reads
    it instead of Qdrant; otherwise Qdrant at its URL.
    """
    key = settings.model_dump_json()
    if _WORKER_STATE.get("key") != key:
        from persona_dspy.memory.embedder import OnnxEmbedder

        _WORKER_STATE.update(key=key, tracking=Tracking(settings), embedder=OnnxEmbedder(), memory=None)
    state = _WORKER_STATE
    tracking = state["tracking"]
    try:
        model = resolve_lm(lm, settings)
    except Exception as exc:  # noqa: BLE001
        return UserReport.failure(user_id, exc)
    if view is not None:
        view.embedder = state["embedder"]
        memory: MemoryReader = view
    else:
        if state["memory"] is None:
            state["memory"] = EpisodicMemory(settings, embedder=state["embedder"])
        memory = state["memory"]
    with dspy.context(lm=model):
        return compile_user(
            user_id, optimizer, memory=memory, tracking=tracking, discard_unfinished=resume, read_seconds=read_seconds
        )


def run_ray(
    user_ids: list[str],
    optimizer: GatedPersonaOptimizer,
    *,
    memory: EpisodicMemory,
    settings: Settings,
    lm: LMSource,
    workers: int,
    resume: bool,
    ship_histories: bool,
    on_done: Callable[[UserReport], None],
) -> None:
    try:
        import ray
    except ImportError as exc:
        raise ConfigurationError("the Ray backend needs Ray: pip install 'persona-dspy[ray]'") from exc
    if not user_ids:
        return
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    task = ray.remote(num_cpus=1, max_retries=1)(_ray_compile_user)
    spec = ray.put(optimizer)  # each task records into its own Tracking
    in_flight: dict[Any, str] = {}
    # shipped: the driver reads snapshots ahead, as the threads backend does; else tasks read Qdrant
    queue = snapshots(memory.snapshot, user_ids) if ship_histories else ((u, None, 0.0) for u in user_ids)
    pending = True
    try:
        while pending or in_flight:
            while pending and len(in_flight) < 2 * workers:  # bounded: snapshots are shipped as tasks start
                item = next(queue, None)
                if item is None:
                    pending = False
                    break
                uid, view, seconds = item
                if isinstance(view, Exception):  # e.g. UnknownUserError: this user fails, not the fleet
                    on_done(UserReport.failure(uid, view, timings={"memory": seconds}, seconds=seconds))
                    continue
                in_flight[task.remote(uid, spec, settings, lm, view, seconds, resume)] = uid
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            for ref in ready:
                uid = in_flight.pop(ref)
                try:
                    report = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 (a worker died: the user failed, the fleet goes on)
                    report = UserReport.failure(uid, exc)
                on_done(report)
    finally:
        for ref in in_flight:
            ray.cancel(ref)
        if started_here:
            ray.shutdown()
