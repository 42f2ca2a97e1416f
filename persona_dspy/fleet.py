"""Compile many users: one independent compile per user, concurrent, resumable, idempotent.

``compile_users(users, optimizer, workers=N, backend="threads"|"ray") -> FleetReport``. For each user:
its history from episodic memory, an agent that starts from its ``production`` persona, then
``optimizer.compile(agent, trainset=history)`` (which records the run and moves ``production`` only
if the gate passes). One user's failure is recorded with its error and a traceback summary and
never stops the others.

Idempotence and resumption, at two levels:

- a fleet journal ``<state_dir>/fleet/<fleet-id>.jsonl`` (the id hashes the optimizer, its params
  and the user list) gets one line per finished user; ``resume=True`` skips the users it lists
  (failed ones are tried again) and discards runs a killed process left unfinished;
- independently, a user whose data watermark (latest interaction time) and optimizer params equal
  those of its last recorded compile (``Tracking.last_compile``) is skipped: rerunning a fleet
  compiles only users with new data. The registry never stores the same latest text twice.

Backends:

- ``threads``: a ``ThreadPoolExecutor``; each thread runs its compiles under ``dspy.context(lm=...)``
  (thread-local) on its user's snapshot, read ahead of the workers in few store reads. Threads help LM-bound compiles against an API LM. The embedded model is one
  in-process llama.cpp engine whose calls are serialized by its own lock, and embedded Qdrant
  serializes its calls too: with the embedded defaults threads do not speed a fleet up.
- ``ray``: one Ray task per user, each against a Qdrant server URL and an MLflow tracking URI from
  ``Settings``. Embedded Qdrant is single-process, so a Ray run pointed at a folder or ``:memory:``
  fails before Ray starts, unless ``ship_histories=True``: then the driver reads the users'
  snapshots (episodes and their vectors, in chunks as the threads do) and ships each to its task,
  which answers from it (for tests and benchmarks on one machine; production fleets read Qdrant
  by URL).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

import dspy
from pydantic import BaseModel, Field, ValidationError
from tqdm.auto import tqdm

from persona_dspy.config import Settings
from persona_dspy.errors import ConfigurationError, UnknownUserError
from persona_dspy.memory.episodic import EpisodicMemory
from persona_dspy.memory.snapshot import UserSnapshot
from persona_dspy.pipeline import align_user, unchanged_since_last_compile
from persona_dspy.tracking.tracker import Tracking

if TYPE_CHECKING:
    from persona_dspy.optimizers.base import GatedPersonaOptimizer

Status = Literal["promoted", "kept", "failed", "skipped"]
Backend = Literal["threads", "ray"]
LMSource = dspy.BaseLM | Callable[[], dspy.BaseLM] | None
"""An LM, a zero-argument factory of one (what Ray tasks need: it is pickled), or None for ``build_lm``."""

WHOLE_STORE_USERS = 256
"""Fleets at least this large read an embedded store in one unfiltered pass (see ``_snapshots``)."""

DONE: frozenset[str] = frozenset({"promoted", "kept", "skipped"})
"""Journal statuses that ``resume`` does not redo (a failure may be transient: it is tried again)."""


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
    timings: dict[str, float] = Field(default_factory=dict,
                                      description="seconds in: memory (history read), tracking (reads + record), "
                                                  "compile (replays, TextGrad, gate; LM time included)")
    from_journal: bool = Field(False, description="finished by an earlier, interrupted run of this fleet")

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

    def format(self) -> str:
        """The final report: one line per user (grouped by status), then totals."""
        order = {"failed": 0, "promoted": 1, "kept": 2, "skipped": 3}
        lines = [u.line() + ("  [earlier run]" if u.from_journal else "")
                 for u in sorted(self.users, key=lambda u: (order[u.status], u.user_id))]
        for u in self.failed:
            if u.traceback:
                lines.append(f"--- {u.user_id}: {u.error_type}\n{u.traceback.rstrip()}")
        counts = ", ".join(f"{n} {s}" for s, n in self.counts().items())
        lines.append(f"{len(self.users)} users: {counts}; {self.lm_calls} LM calls, {self.tokens} tokens, "
                     f"{self.wall_time:.1f} s with {self.workers} {self.backend} worker(s); journal {self.journal}")
        return "\n".join(lines)


# -- one user -------------------------------------------------------------------------------------

def _failure(user_id: str, exc: BaseException, **fields: Any) -> UserReport:
    """A ``failed`` report: error type, first line of the message, the last frames of the traceback."""
    message = str(exc).splitlines()[0][:500] if str(exc) else ""
    summary = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__, limit=-4))
    return UserReport(user_id=user_id, status="failed", reason=message, error_type=type(exc).__name__,
                      traceback=summary, **fields)


def compile_user(user_id: str, optimizer: GatedPersonaOptimizer, *, memory: EpisodicMemory | UserSnapshot,
                 tracking: Tracking, discard_unfinished: bool = False, read_seconds: float = 0.0) -> UserReport:
    """``align_user`` under the current DSPy LM, as a report: every error becomes a ``failed`` one."""
    started = time.perf_counter()
    try:
        done = align_user(user_id, optimizer, memory=memory, tracking=tracking, discard_unfinished=discard_unfinished,
                          read_seconds=read_seconds)
    except Exception as exc:  # noqa: BLE001 (isolation: one user's failure must not stop the fleet)
        return _failure(user_id, exc, timings={"memory": read_seconds}, seconds=time.perf_counter() - started)
    result = done.result
    return UserReport(user_id=user_id, status=done.status, reason=done.reason, version=done.version,
                      lm_calls=result.lm_calls if result else 0, tokens=result.tokens if result else 0,
                      timings=done.timings, seconds=done.seconds)


# -- the journal ----------------------------------------------------------------------------------

def fleet_id(optimizer: GatedPersonaOptimizer, user_ids: Sequence[str]) -> str:
    """Same optimizer, params and users -> same fleet (and journal)."""
    key = json.dumps({"optimizer": optimizer.name, "params": optimizer.params, "users": sorted(user_ids)},
                     sort_keys=True, default=str)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


class FleetJournal:
    """``<state_dir>/fleet/<fleet-id>.jsonl``: one ``UserReport`` per finished user, flushed per line.

    A lock file keeps a second process from running the same fleet at the same time. A line cut by a
    kill is ignored when read back. Without ``resume`` the journal starts anew.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[str] | None = None
        self._lock: IO[str] | None = None

    @contextmanager
    def open(self, resume: bool) -> Iterator[dict[str, UserReport]]:
        """Lock the fleet; yield the users already finished (resume only); close and unlock at exit."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.path.with_suffix(".lock"), "w")  # noqa: SIM115 (closed below)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            self._lock.close()
            raise ConfigurationError(f"this fleet is already running in another process (lock {self._lock.name}); "
                                     "wait for it or stop it, then rerun with --resume") from exc
        try:
            done = self.read() if resume else {}
            self._file = open(self.path, "a" if resume else "w", encoding="utf-8")  # noqa: SIM115
            yield done
        finally:
            if self._file is not None:
                self._file.close()
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()

    def read(self) -> dict[str, UserReport]:
        """The latest finished entry per user (statuses in ``DONE``)."""
        done: dict[str, UserReport] = {}
        if not self.path.exists():
            return done
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                report = UserReport.model_validate_json(line)
            except ValidationError:
                continue  # a line cut by a kill
            if report.status in DONE:
                done[report.user_id] = report
            else:
                done.pop(report.user_id, None)
        return done

    def append(self, report: UserReport) -> None:
        assert self._file is not None, "open the journal first"
        self._file.write(report.model_dump_json(exclude={"from_journal"}) + "\n")
        self._file.flush()


# -- the fleet ------------------------------------------------------------------------------------

def compile_users(users: Sequence[str] | Literal["all"], optimizer: GatedPersonaOptimizer | None = None, *,
                  settings: Settings | None = None, memory: EpisodicMemory | None = None,
                  tracking: Tracking | None = None, lm: LMSource = None, workers: int = 4,
                  backend: Backend = "threads", resume: bool = False, progress: bool = True, verbose: bool = False,
                  ship_histories: bool = False, read_chunk: int | None = None) -> FleetReport:
    """Compile the persona of every user in ``users`` (or ``"all"`` users in episodic memory).

    ``lm``: an LM object (threads), a zero-argument factory (threads or Ray), or None to build the
    configured one (``build_lm(settings)``). ``optimizer`` defaults to ``PersonaOptimizer()``; it
    records into ``tracking`` (default ``Tracking(settings)``). KeyboardInterrupt cancels the users
    not started; compiles in flight finish, and ``resume=True`` then does only the rest.
    ``read_chunk``: users whose episodes are read per store read (held in memory with their
    vectors until compiled). Default: 64, or the whole embedded store in one unfiltered read for a
    fleet of >= ``WHOLE_STORE_USERS`` users (see ``_snapshots``).
    """
    from persona_dspy.optimizers import PersonaOptimizer

    if backend not in ("threads", "ray"):
        raise ConfigurationError(f"backend must be 'threads' or 'ray', not {backend!r}")
    if workers < 1:
        raise ConfigurationError("workers must be >= 1")
    settings = settings or (memory.settings if memory is not None else Settings())
    optimizer = optimizer or PersonaOptimizer()
    if backend == "ray" and not settings.qdrant_is_server and not ship_histories:
        raise ConfigurationError(
            f"scale-out needs a Qdrant server: PERSONA_DSPY_QDRANT is {settings.qdrant_location!r}, an embedded store "
            "that only one process can open. Run a Qdrant server and set PERSONA_DSPY_QDRANT=http://HOST:6333 "
            "(and an MLflow tracking server in PERSONA_DSPY_MLFLOW_TRACKING_URI), or use backend='threads'.")
    if backend == "ray" and isinstance(lm, dspy.BaseLM):
        raise ConfigurationError("the Ray backend builds the LM inside each task: pass lm as a zero-argument "
                                 "factory (e.g. functools.partial(ScriptedLM, rule)) or None for the configured LM")
    own_memory = memory is None
    memory = memory or EpisodicMemory(settings)
    tracking = tracking or Tracking(settings)
    started = time.perf_counter()
    try:
        user_ids = sorted(set(memory.users() if users == "all" else users))
        fid = fleet_id(optimizer, user_ids)
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
                    _run_threads(todo, optimizer, memory=memory, tracking=tracking, lm=lm, settings=settings,
                                 workers=workers, resume=resume, on_done=finished, read_chunk=read_chunk)
                else:
                    _run_ray(todo, optimizer, memory=memory, settings=settings, lm=lm, workers=workers, resume=resume,
                             ship_histories=ship_histories, on_done=finished, read_chunk=read_chunk)
            finally:
                bar.close()
    finally:
        if own_memory:
            memory.close()
    return FleetReport(fleet_id=fid, journal=str(journal.path), backend=backend, workers=workers,
                       wall_time=time.perf_counter() - started, users=[reports[u] for u in user_ids if u in reports])


def _resolve_lm(lm: LMSource, settings: Settings) -> dspy.BaseLM:
    if isinstance(lm, dspy.BaseLM):
        return lm
    if lm is not None:
        return lm()
    from persona_dspy.lm import build_lm

    return build_lm(settings)


def _snapshots(memory: EpisodicMemory, user_ids: list[str],
               chunk: int | None) -> Iterator[tuple[str, UserSnapshot | Exception, float]]:
    """``(user, snapshot or the error, seconds of its share of the read)``, one store read per ``chunk``
    users. ``None``: 64 users per filtered read, or, for a fleet of >= ``WHOLE_STORE_USERS`` users on
    an embedded store, one unfiltered read of the whole store (local mode keeps every point in RAM
    and tests each against a filter in Python: at 50k points one unfiltered pass costs ~3 filtered
    reads of 64 users, BENCHMARKS.md). A snapshot is released once handed out; users outside the
    fleet are dropped right after the read."""
    whole = chunk is None and memory.embedded and len(user_ids) >= WHOLE_STORE_USERS
    chunk = max(1, len(user_ids)) if whole else chunk or 64
    for start in range(0, len(user_ids), chunk):
        ids = user_ids[start:start + chunk]
        mark = time.perf_counter()
        try:
            found: dict[str, UserSnapshot] | Exception = memory.snapshots(None if whole else ids)
        except Exception as exc:  # noqa: BLE001 (the store failed: these users fail, the next chunk retries)
            found = exc
        share = (time.perf_counter() - mark) / len(ids)
        if not isinstance(found, Exception):
            found = {uid: found[uid] for uid in ids if uid in found}
        for uid in ids:
            if isinstance(found, Exception):
                yield uid, found, share
            else:
                yield uid, found.pop(uid, None) or UnknownUserError(uid), share


def _run_threads(user_ids: list[str], optimizer: GatedPersonaOptimizer, *, memory: EpisodicMemory,
                 tracking: Tracking, lm: LMSource, settings: Settings, workers: int, resume: bool,
                 on_done: Callable[[UserReport], None], read_chunk: int | None = None) -> None:
    """Users' snapshots are read ahead of the workers, ``read_chunk`` users per store read (``_snapshots``)."""
    if not user_ids:
        return
    model = _resolve_lm(lm, settings)

    def work(uid: str, view: UserSnapshot, read_seconds: float) -> UserReport:
        with dspy.context(lm=model):  # thread-local; dspy.configure is for the main thread only
            return compile_user(uid, optimizer, memory=view, tracking=tracking, discard_unfinished=resume,
                                read_seconds=read_seconds)

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="persona-fleet")
    reads = _snapshots(memory, user_ids, read_chunk)
    pending: set[Any] = set()
    try:
        for uid, view, seconds in reads:
            if isinstance(view, Exception):
                on_done(_failure(uid, view, timings={"memory": seconds}, seconds=seconds))
                continue
            pending.add(pool.submit(work, uid, view, seconds))
            while len(pending) >= 2 * workers:
                completed, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in completed:
                    on_done(future.result())
        while pending:
            completed, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in completed:
                on_done(future.result())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# -- Ray ------------------------------------------------------------------------------------------

_WORKER_STATE: dict[str, Any] = {}
"""Per Ray worker process: the Tracking client and the embedder, reused by every task it runs."""


def _ray_compile_user(user_id: str, optimizer: GatedPersonaOptimizer, settings: Settings, lm: LMSource,
                      view: UserSnapshot | None, read_seconds: float, resume: bool) -> UserReport:
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
        model = _resolve_lm(lm, settings)
    except Exception as exc:  # noqa: BLE001
        return _failure(user_id, exc)
    if view is not None:
        view.embedder = state["embedder"]
        memory: EpisodicMemory | UserSnapshot = view
    else:
        if state["memory"] is None:
            state["memory"] = EpisodicMemory(settings, embedder=state["embedder"])
        memory = state["memory"]
    with dspy.context(lm=model):
        return compile_user(user_id, optimizer, memory=memory, tracking=tracking,
                            discard_unfinished=resume, read_seconds=read_seconds)


def _run_ray(user_ids: list[str], optimizer: GatedPersonaOptimizer, *, memory: EpisodicMemory, settings: Settings,
             lm: LMSource, workers: int, resume: bool, ship_histories: bool,
             on_done: Callable[[UserReport], None], read_chunk: int | None = None) -> None:
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
    # shipped: the driver reads snapshots in chunks, as the threads backend does; else tasks read Qdrant
    queue = _snapshots(memory, user_ids, read_chunk) if ship_histories else ((u, None, 0.0) for u in user_ids)
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
                    on_done(_failure(uid, view, timings={"memory": seconds}, seconds=seconds))
                    continue
                in_flight[task.remote(uid, spec, settings, lm, view, seconds, resume)] = uid
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            for ref in ready:
                uid = in_flight.pop(ref)
                try:
                    report = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 (a worker died: the user failed, the fleet goes on)
                    report = _failure(uid, exc)
                on_done(report)
    finally:
        for ref in in_flight:
            ray.cancel(ref)
        if started_here:
            ray.shutdown()


__all__ = [
    "FleetJournal",
    "FleetReport",
    "UserReport",
    "compile_user",
    "compile_users",
    "fleet_id",
    "unchanged_since_last_compile",
]
