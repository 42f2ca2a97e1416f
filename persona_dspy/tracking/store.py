"""The connection to one MLflow store: the client, the experiment, the sqlite writer lock, and store
failures turned into ``TrackingUnavailableError`` (with credentials redacted from every message)."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from persona_dspy.errors import PersonaNotFoundError, TrackingUnavailableError
from persona_dspy.redaction import redact

STORE_ERRORS = (MlflowException, OSError, ConnectionError)
_SQLITE_LOCKS: dict[str, threading.RLock] = {}
_SQLITE_GUARD = threading.Lock()


redact_uri = redact
"""Drop credentials (``user:password@``) from any URI in ``text`` before it is shown or logged."""


def _sqlite_wal(db: Path) -> None:
    """Put a sqlite MLflow store in WAL mode: MLflow commits ~26 times per compile, and a rollback
    journal waits for the disk on each (a persistent, per-file setting; readers never block)."""
    db.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("PRAGMA journal_mode=WAL")


def _writer_lock(tracking_uri: str) -> contextlib.AbstractContextManager[Any]:
    """One lock per sqlite file, for every ``Tracking`` of the process: sqlite has one writer, and
    threads queueing on its file lock drain MLflow's connection pool ("QueuePool limit ... reached").
    A tracking server or a database server takes concurrent clients: no lock."""
    if not tracking_uri.startswith("sqlite:"):
        return contextlib.nullcontext()
    with _SQLITE_GUARD:
        return _SQLITE_LOCKS.setdefault(tracking_uri, threading.RLock())


class MlflowStore:
    """``guard(doing)`` yields the client under the store's writer lock; no I/O in ``__init__``."""

    def __init__(self, tracking_uri: str, experiment: str) -> None:
        self.tracking_uri, self.experiment = tracking_uri, experiment
        self._client: MlflowClient | None = None
        self._experiment_id: str | None = None
        self._lock = threading.Lock()

    @contextmanager
    def guard(self, doing: str) -> Iterator[MlflowClient]:
        """The client, under the store's writer lock (sqlite); store failures become ours."""
        try:
            with _writer_lock(self.tracking_uri):
                yield self.client
        except (PersonaNotFoundError, TrackingUnavailableError):
            raise
        except STORE_ERRORS as exc:
            detail = redact_uri(str(exc).splitlines()[0][:200]) if str(exc) else ""
            raise TrackingUnavailableError(
                f"MLflow store {redact_uri(self.tracking_uri)} failed while {doing}: {type(exc).__name__}: "
                f"{detail}. No persona alias was moved. Check that the tracking server is up (or the sqlite path "
                "is writable) and retry; set PERSONA_DSPY_MLFLOW_TRACKING_URI to change stores."
            ) from exc

    @property
    def client(self) -> MlflowClient:
        with self._lock:
            if self._client is None:
                if self.tracking_uri.startswith("sqlite:///"):
                    _sqlite_wal(Path(self.tracking_uri.removeprefix("sqlite:///")))
                self._client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
            return self._client

    def experiment_id(self) -> str:
        with self._lock:
            cached = self._experiment_id
        if cached:
            return cached
        with self.guard("opening the experiment") as client:
            exp = client.get_experiment_by_name(self.experiment)
            if exp is None:
                try:
                    exp_id = client.create_experiment(self.experiment, artifact_location=self._artifact_location())
                except MlflowException:  # created concurrently by another worker
                    created = client.get_experiment_by_name(self.experiment)
                    if created is None:
                        raise
                    exp_id = created.experiment_id
            else:
                exp_id = exp.experiment_id
        with self._lock:
            self._experiment_id = exp_id
        return exp_id

    def _artifact_location(self) -> str | None:
        """Next to a sqlite file (MLflow's default would be ``./mlruns`` in the working directory);
        a tracking server chooses its own (``mlflow-artifacts:/``)."""
        if self.tracking_uri.startswith("sqlite:///"):
            return (Path(self.tracking_uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
        return None
