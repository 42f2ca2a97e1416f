"""``Tracking``: the façade over one MLflow store. Every compile is a run, every persona version is in
the prompt registry; one call records a compile (``record``), one replays what a store outage kept
(``sync_pending``).

The jobs live in their own modules: ``store`` (client, experiment, writer lock, failures),
``runs`` (what a run holds, writing and finding it), ``registry`` (persona versions and aliases),
``tracing`` (MLflow traces of a compile's LM calls), ``pending`` (compiles kept during an outage),
``forget`` (deleting a user).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mlflow import MlflowClient

from persona_dspy.config import Settings
from persona_dspy.errors import PersonaNotFoundError, TrackingUnavailableError
from persona_dspy.results import CompileResult
from persona_dspy.tracking.forget import forget_user
from persona_dspy.tracking.pending import PendingCompiles
from persona_dspy.tracking.registry import CANDIDATE, PRODUCTION, PersonaRegistry, PersonaVersion
from persona_dspy.tracking.runs import compile_id, discard_unfinished, last_compile, record_run
from persona_dspy.tracking.store import MlflowStore, redact_uri
from persona_dspy.tracking.tracing import Tracer


class Tracking:
    """One MLflow experiment per project; runs, persona registry, rollback. Thread-safe (calls on one
    sqlite store run one at a time); no I/O in ``__init__``.

    ``settings`` gives the store (``tracking_uri``, ``experiment``: overridable here) and the folder
    of pending compiles; ``trace=True`` records every LM call of a compile as a trace of its run
    (``compile_run``).
    """

    def __init__(
        self, settings: Settings, *, tracking_uri: str | None = None, experiment: str | None = None, trace: bool = False
    ) -> None:
        self.settings = settings
        self.tracking_uri = tracking_uri or settings.tracking_uri
        self.experiment = experiment or settings.experiment
        self.trace = trace
        self.store = MlflowStore(self.tracking_uri, self.experiment)
        self.pending_compiles = PendingCompiles(settings.state_dir / "pending")
        self._tracer = Tracer(self.store)

    @property
    def client(self) -> MlflowClient:
        return self.store.client

    @property
    def registry(self) -> PersonaRegistry:
        return PersonaRegistry(self.client)

    def experiment_id(self) -> str:
        return self.store.experiment_id()

    # -- personas -----------------------------------------------------------------------------
    def production_persona(self, user_id: str) -> str | None:
        with self.store.guard("reading the production persona", read=True):
            version = self.registry.get(user_id, PRODUCTION)
        return version.text if version else None

    def load_persona(self, user_id: str, alias_or_version: str | int = PRODUCTION) -> PersonaVersion:
        with self.store.guard("loading a persona", read=True):
            version = self.registry.get(user_id, alias_or_version)
        if version is None:
            raise PersonaNotFoundError(
                f"user {user_id!r} has no persona {alias_or_version!r} in "
                f"{redact_uri(self.tracking_uri)}; compile one first (persona-dspy demo / compile)."
            )
        return version

    def history(self, user_id: str) -> list[PersonaVersion]:
        with self.store.guard("listing persona versions", read=True):
            return self.registry.history(user_id)

    def rollback(self, user_id: str, to_version: int | None = None, *, reason: str = "") -> PersonaVersion:
        """Move ``production`` to ``to_version`` (default: the production before the current one)."""
        with self.store.guard("rolling back"):
            return self.registry.rollback(user_id, to_version, reason=reason)

    # -- compiles -----------------------------------------------------------------------------
    @contextmanager
    def compile_run(self, user_id: str) -> Iterator[str | None]:
        """Wrap one compile and its ``record``. With ``trace=True`` the run is opened here and every LM
        call inside becomes a trace of it; ``record`` then fills the same run. Otherwise this does
        nothing (``record`` creates the run) and yields ``None``."""
        if not self.trace:
            yield None
            return
        with self._tracer.compile_run(user_id) as run_id:
            yield run_id

    def record(self, result: CompileResult) -> int:
        """Log the compile as a run, register its candidate, and promote it if the gate passed and
        production is still the persona the gate compared with (``result.production_persona``; else the
        run is tagged ``promotion_skipped``); returns the persona version.

        Idempotent: a compile already recorded (same ``compile_id`` tag on a finished run) returns its
        version without writing. When the store fails, the result is kept in ``<state_dir>/pending/``
        for ``sync_pending`` and ``TrackingUnavailableError`` is raised; no alias was moved.
        """
        cid = compile_id(result)
        try:
            return record_run(self.store, result, cid, open_run_id=self._tracer.open_run(result.user_id))
        except TrackingUnavailableError as exc:
            kept = self.pending_compiles.keep(result, cid)
            raise TrackingUnavailableError(
                f"{exc} The compile result was kept in {kept}; run `persona-dspy sync` "
                "once the store is back to record it."
            ) from exc.__cause__

    @property
    def pending_dir(self) -> Path:
        return self.pending_compiles.folder

    def pending(self) -> list[Path]:
        return self.pending_compiles.paths()

    def sync_pending(self) -> list[tuple[str, int]]:
        """Record the compiles kept while the store was down; returns ``(user_id, version)`` per compile.

        A kept compile whose gate compared against a production persona that has moved since is
        registered as ``candidate`` only (``promotion_skipped`` tag): the gate no longer holds.
        """
        synced = []
        for path, result in self.pending_compiles:
            synced.append((result.user_id, record_run(self.store, result, path.stem)))
            path.unlink()
        return synced

    def last_compile(self, user_id: str) -> dict[str, Any] | None:
        """The user's latest recorded compile (``runs.last_compile``): what ``align_user`` compares to
        skip a user whose data and optimizer params are unchanged."""
        return last_compile(self.store, user_id)

    def discard_unfinished(self, user_id: str) -> int:
        """Delete the user's runs a killed process left unfinished; returns how many. Call it only when no
        other process is compiling this user (the fleet holds a lock)."""
        return discard_unfinished(self.store, user_id)

    def forget(self, user_id: str) -> dict[str, int]:
        """Delete everything of the user in MLflow (``forget.forget_user``) and its kept pending compiles."""
        counts = forget_user(self.store, user_id)
        counts["pending"] = self.pending_compiles.drop_user(user_id)
        return counts


__all__ = ["CANDIDATE", "PRODUCTION", "Tracking", "compile_id"]
