"""Compile many users: one independent compile per user, concurrent, resumable, idempotent.

``compile_users(users, optimizer, workers=N, backend="threads"|"ray") -> FleetReport``. Each user goes
through ``pipeline.align_user`` (its snapshot, its production persona, the compile, ``Tracking.record``:
``production`` moves only if the gate passes). One user's failure is recorded with its error and a
traceback summary and never stops the others.

Modules: ``run`` (``compile_users``), ``report`` (``UserReport``, ``FleetReport``), ``journal``
(resume), ``reads`` (snapshots read in chunks ahead of the workers), ``worker`` (one user, errors
isolated), ``executors/threads`` and ``executors/ray``.

Idempotence and resumption, at two levels:

- a fleet journal ``<state_dir>/fleet/<fleet-id>.jsonl`` (the id hashes the optimizer, its params
  and the user list) gets one line per finished user; ``resume=True`` skips the users it lists
  (failed ones are tried again) and discards runs a killed process left unfinished;
- independently, a user whose data watermark (latest interaction time) and optimizer params equal
  those of its last recorded compile (``Tracking.last_compile``) is skipped: rerunning a fleet
  compiles only users with new data. The registry never stores the same latest text twice.

Backends:

- ``threads``: a ``ThreadPoolExecutor``; each thread runs its compiles under ``dspy.context(lm=...)``
  (thread-local) on its user's snapshot, read ahead of the workers in few store reads. Threads help
  LM-bound compiles against an API LM. The embedded model is one in-process llama.cpp engine whose calls are serialized by its own lock, and embedded Qdrant
  serializes its calls too: with the embedded defaults threads do not speed a fleet up.
- ``ray``: one Ray task per user, each against a Qdrant server URL and an MLflow tracking URI from
  ``Settings``. Embedded Qdrant is single-process, so a Ray run pointed at a folder or ``:memory:``
  fails before Ray starts, unless ``ship_histories=True``: then the driver reads the users'
  snapshots (episodes and their vectors, in chunks as the threads do) and ships each to its task,
  which answers from it (for tests and benchmarks on one machine; production fleets read Qdrant
  by URL).
"""

from persona_dspy.fleet.journal import FleetJournal, fleet_id
from persona_dspy.fleet.report import FleetReport, UserReport
from persona_dspy.fleet.run import compile_users
from persona_dspy.fleet.worker import compile_user

__all__ = ["FleetJournal", "FleetReport", "UserReport", "compile_user", "compile_users", "fleet_id"]
