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
from urllib.parse import unquote, urlparse

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from sqlalchemy.exc import SQLAlchemyError

from persona_dspy.errors import PersonaNotFoundError, TrackingUnavailableError
from persona_dspy.redaction import redact

STORE_ERRORS = (MlflowException, OSError, ConnectionError, sqlite3.Error, SQLAlchemyError)
_SQLITE_LOCKS: dict[str, threading.RLock] = {}
_SQLITE_GUARD = threading.Lock()
_SQLITE_SEEN: set[str] = set()


redact_uri = redact
"""Drop credentials (``user:password@``) from any URI in ``text`` before it is shown or logged."""


def _sqlite_wal(db: Path) -> None:
    """Open a sqlite MLflow store, refusing one that is not usable, and put it in WAL mode (MLflow
    commits ~26 times per compile, and a rollback journal waits for the disk on each; a persistent,
    per-file setting; readers never block).

    A zero-byte file would otherwise silently become a new, empty registry, and a truncated one fail
    on some later query: the first open in this process runs ``PRAGMA quick_check``. Everything goes
    through sqlite: reading the file with a descriptor of our own and closing it would drop every POSIX
    lock this process holds on it (sqlite's connections' locks), and another process could then
    checkpoint or write under them.
    """
    problem = None
    if db.is_dir():
        problem = "is a directory"
    elif db.exists() and db.stat().st_size == 0:
        problem = "is empty (0 bytes), not an MLflow store"
    else:
        db.parent.mkdir(parents=True, exist_ok=True)
        with _SQLITE_GUARD:
            first = str(db.resolve()) not in _SQLITE_SEEN
        try:
            with contextlib.closing(sqlite3.connect(db)) as conn:
                conn.execute("PRAGMA journal_mode=WAL")
                verdict = conn.execute("PRAGMA quick_check(1)").fetchone()[0] if first else "ok"
            if verdict != "ok":
                problem = f"is damaged (sqlite: {verdict})"
        except sqlite3.DatabaseError as exc:
            unwritable = isinstance(exc, sqlite3.OperationalError) and not any(
                damage in str(exc) for damage in ("not a database", "malformed")
            )
            if unwritable:  # cannot open or write it: permissions, a read-only mount
                raise TrackingUnavailableError(
                    f"cannot open the MLflow store {db} for writing (sqlite: {exc}): check that it and its folder "
                    "are writable (a read-only mount, another user's file?); the store was not changed."
                ) from exc
            problem = f"is not a readable sqlite database (sqlite: {exc}; truncated or overwritten?)"
    if problem is not None:
        raise TrackingUnavailableError(
            f"the MLflow store {db} {problem}. Restore it from a backup, or move it away to start a new, "
            "empty registry (its persona versions and runs are then lost); nothing was written."
        )
    with _SQLITE_GUARD:
        _SQLITE_SEEN.add(str(db.resolve()))


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
    def guard(self, doing: str, *, read: bool = False) -> Iterator[MlflowClient]:
        """The client, under the store's writer lock (sqlite); store failures become ours (``read``: the
        operation writes nothing, and its error says so)."""
        try:
            with _writer_lock(self.tracking_uri):
                yield self.client
        except (PersonaNotFoundError, TrackingUnavailableError):
            raise
        except STORE_ERRORS as exc:
            first = str(exc).splitlines()[0] if str(exc) else ""
            detail = redact_uri(first if len(first) <= 300 else first[:300].rsplit(" ", 1)[0] + " ...")
            raise TrackingUnavailableError(
                f"MLflow store {redact_uri(self.tracking_uri)} failed while {doing}: {type(exc).__name__}: "
                f"{detail}. {'Nothing was changed' if read else 'No persona alias was moved'}. Check that the tracking server is up (or the sqlite path "
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

    def existing_experiment_id(self) -> str | None:
        """The experiment's id, or ``None`` when it does not exist yet (a read: nothing is created)."""
        with self._lock:
            if self._experiment_id:
                return self._experiment_id
        with self.guard("looking up the experiment", read=True) as client:
            exp = client.get_experiment_by_name(self.experiment)
        return None if exp is None else exp.experiment_id

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
                self._check_artifact_location(exp.artifact_location)
                exp_id = exp.experiment_id
        with self._lock:
            self._experiment_id = exp_id
        return exp_id

    def _check_artifact_location(self, location: str) -> None:
        """Refuse a sqlite store whose experiment keeps its artifacts somewhere else than next to it.

        MLflow stores the artifact location as an absolute path: in a copied (or moved) state dir it
        still names the original's folder, and a compile or a ``forget`` there would write or delete
        the original's files."""
        expected = self._artifact_location()
        if expected is None or not location.startswith("file:"):
            return
        found, here = Path(_file_uri_path(location)).resolve(), Path(_file_uri_path(expected)).resolve()
        if found != here:
            raise TrackingUnavailableError(
                f"the MLflow store {redact_uri(self.tracking_uri)} keeps the artifacts of experiment "
                f"{self.experiment!r} in {found}, not next to it ({here}): this state dir was copied or moved. "
                "Nothing was written or deleted (it would change the other folder's files). Use the original "
                "state dir, or set PERSONA_DSPY_EXPERIMENT to a new name to start a new experiment here."
            )

    def _artifact_location(self) -> str | None:
        """Next to a sqlite file (MLflow's default would be ``./mlruns`` in the working directory);
        a tracking server chooses its own (``mlflow-artifacts:/``)."""
        if self.tracking_uri.startswith("sqlite:///"):
            return (Path(self.tracking_uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
        return None


def _file_uri_path(uri: str) -> str:
    return unquote(urlparse(uri).path)
