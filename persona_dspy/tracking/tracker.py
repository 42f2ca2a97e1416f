"""Tracking: every compile is an MLflow run, every persona version is in the prompt registry.

Order of writes for one compile: run and its artifacts (persona texts, critiques, diff) ->
registered version with alias ``candidate`` -> alias ``production`` only if the gate passed ->
params, metrics and tags in one batch (``persona_version`` marks the run as recorded) -> run
finished. A store failure raises ``TrackingUnavailableError`` before ``production`` moves and keeps
the compile in ``<state_dir>/pending/`` for ``sync_pending``; runs carry a deterministic
``compile_id`` so a retried record never creates a second run.
"""

from __future__ import annotations

import contextlib
import difflib
import getpass
import hashlib
import re
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag, ViewType
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

from persona_dspy.config import Settings
from persona_dspy.errors import PersonaNotFoundError, TrackingUnavailableError
from persona_dspy.results import CompileResult
from persona_dspy.tracking.registry import CANDIDATE, PRODUCTION, PersonaRegistry, PersonaVersion, prompt_name

_STORE_ERRORS = (MlflowException, OSError, ConnectionError)


_CREDENTIALS = re.compile(r"://[^/@\s]+@")


def _redact_uri(text: str) -> str:
    """Drop credentials (``user:password@``) from any URI in ``text`` before it is shown or logged."""
    return _CREDENTIALS.sub("://***@", text)


def _sqlite_wal(db: Path) -> None:
    """Put a sqlite MLflow store in WAL mode: MLflow commits ~26 times per compile, and a rollback
    journal waits for the disk on each (a persistent, per-file setting; readers never block)."""
    db.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("PRAGMA journal_mode=WAL")


_SQLITE_LOCKS: dict[str, threading.RLock] = {}
_SQLITE_GUARD = threading.Lock()


def _writer_lock(tracking_uri: str) -> contextlib.AbstractContextManager[Any]:
    """One lock per sqlite file, for every ``Tracking`` of the process: sqlite has one writer, and
    threads queueing on its file lock drain MLflow's connection pool ("QueuePool limit ... reached").
    A tracking server or a database server takes concurrent clients: no lock."""
    if not tracking_uri.startswith("sqlite:"):
        return contextlib.nullcontext()
    with _SQLITE_GUARD:
        return _SQLITE_LOCKS.setdefault(tracking_uri, threading.RLock())


class Tracking:
    """One MLflow experiment per project; runs, persona registry, rollback. Thread-safe (calls on one sqlite
    store run one at a time); no I/O in ``__init__``."""

    def __init__(self, settings: Settings | None = None, *, tracking_uri: str | None = None,
                 experiment: str | None = None, trace: bool = False) -> None:
        self.settings = settings or Settings()
        self.tracking_uri = tracking_uri or self.settings.tracking_uri
        self.experiment = experiment or self.settings.experiment
        self.trace = trace
        self._open_runs: dict[str, str] = {}
        self._traced, self._previous_uri = 0, ""
        self._client: MlflowClient | None = None
        self._experiment_id: str | None = None
        self._lock = threading.Lock()

    # -- connection ---------------------------------------------------------------------------
    @contextmanager
    def _store(self, doing: str) -> Iterator[MlflowClient]:
        """The client, under the store's writer lock (sqlite); store failures become ours."""
        try:
            with _writer_lock(self.tracking_uri):
                yield self.client
        except (PersonaNotFoundError, TrackingUnavailableError):
            raise
        except _STORE_ERRORS as exc:
            raise TrackingUnavailableError(
                f"MLflow store {_redact_uri(self.tracking_uri)} failed while {doing}: {type(exc).__name__}: "
                f"{_redact_uri(str(exc).splitlines()[0][:200]) if str(exc) else ''}. No persona alias was moved. Check that the "
                "tracking server is up (or the sqlite path is writable) and retry; set "
                "PERSONA_DSPY_MLFLOW_TRACKING_URI to change stores.") from exc

    @property
    def client(self) -> MlflowClient:
        with self._lock:
            if self._client is None:
                if self.tracking_uri.startswith("sqlite:///"):
                    _sqlite_wal(Path(self.tracking_uri.removeprefix("sqlite:///")))
                self._client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
            return self._client

    @property
    def registry(self) -> PersonaRegistry:
        return PersonaRegistry(self.client)

    def experiment_id(self) -> str:
        with self._lock:
            cached = self._experiment_id
        if cached:
            return cached
        with self._store("opening the experiment") as client:
            exp = client.get_experiment_by_name(self.experiment)
            if exp is None:
                try:
                    exp_id = client.create_experiment(self.experiment, artifact_location=self._artifact_location())
                except MlflowException:  # created concurrently by another worker
                    exp_id = client.get_experiment_by_name(self.experiment).experiment_id
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

    # -- personas -----------------------------------------------------------------------------
    def production_persona(self, user_id: str) -> str | None:
        with self._store("reading the production persona"):
            version = self.registry.get(user_id, PRODUCTION)
        return version.text if version else None

    def load_persona(self, user_id: str, alias_or_version: str | int = PRODUCTION) -> PersonaVersion:
        with self._store("loading a persona"):
            version = self.registry.get(user_id, alias_or_version)
        if version is None:
            raise PersonaNotFoundError(f"user {user_id!r} has no persona {alias_or_version!r} in "
                                       f"{_redact_uri(self.tracking_uri)}; compile one first (persona-dspy demo / compile).")
        return version

    def history(self, user_id: str) -> list[PersonaVersion]:
        with self._store("listing persona versions"):
            return self.registry.history(user_id)

    def rollback(self, user_id: str, to_version: int | None = None, *, reason: str = "") -> PersonaVersion:
        """Move ``production`` to ``to_version`` (default: the production before the current one)."""
        with self._store("rolling back"):
            versions = self.registry.history(user_id)
            if not versions:
                raise PersonaNotFoundError(f"user {user_id!r} has no persona versions; nothing to roll back")
            current = next((v for v in versions if PRODUCTION in v.aliases), None)
            if to_version is None:
                earlier = [v for v in versions if v.tags.get("promoted") == "true"
                           and (current is None or v.version < current.version)]
                if not earlier:
                    raise PersonaNotFoundError(f"user {user_id!r} has no earlier production persona to roll back to; "
                                               "pass --to VERSION")
                to_version = earlier[-1].version
            self.registry.promote(user_id, to_version)
            name = prompt_name(user_id)
            self.client.set_prompt_version_tag(name, to_version, "rolled_back_by", getpass.getuser())
            self.client.set_prompt_version_tag(name, to_version, "rollback_reason", reason or "manual rollback")
            self.client.set_prompt_version_tag(name, to_version, "rolled_back_at", str(int(time.time())))
            return self.registry.get(user_id, to_version)

    # -- runs ---------------------------------------------------------------------------------
    @contextmanager
    def compile_run(self, user_id: str) -> Iterator[str | None]:
        """Wrap one compile. With ``trace=True`` the run is opened here, MLflow's DSPy autologging is on
        and every LM call of the compile becomes a trace of this run; ``record`` then fills the same run.
        Without tracing this does nothing (the run is created by ``record``) and yields ``None``.

        Autologging and the fluent tracking URI are process-wide MLflow state: they are switched on
        while at least one traced compile of this ``Tracking`` runs (the active run is per thread).
        """
        if not self.trace:
            yield None
            return
        import mlflow
        import mlflow.dspy

        exp_id = self.experiment_id()
        with self._lock:
            if self._traced == 0:
                self._previous_uri = mlflow.get_tracking_uri()
                mlflow.set_tracking_uri(self.tracking_uri)
                mlflow.dspy.autolog(log_traces=True, log_traces_from_compile=True, silent=True)
            self._traced += 1
        status = "FAILED"
        try:
            with self._store("opening a traced compile run"):
                run = mlflow.start_run(experiment_id=exp_id, run_name=f"compile:{user_id}",
                                       tags=_user_tags(user_id), nested=mlflow.active_run() is not None)
            self._open_runs[user_id] = run.info.run_id
            try:
                yield run.info.run_id
                status = "FINISHED"
            finally:
                self._open_runs.pop(user_id, None)
                try:
                    mlflow.flush_trace_async_logging()
                    mlflow.end_run(status)
                except _STORE_ERRORS:
                    pass  # the run stays RUNNING in a store that went down; record() already raised
        finally:
            with self._lock:
                self._traced -= 1
                if self._traced == 0:
                    mlflow.dspy.autolog(disable=True, silent=True)
                    mlflow.set_tracking_uri(self._previous_uri)

    def record(self, result: CompileResult) -> int:
        """Log the compile as a run, register its candidate, and promote it if the gate passed.

        Idempotent: a compile already recorded (same ``compile_id`` tag on a finished run) returns its
        version without writing. When the store fails, the result is kept in ``<state_dir>/pending/``
        for ``sync_pending`` and ``TrackingUnavailableError`` is raised; no alias was moved.
        """
        cid = compile_id(result)
        try:
            return self._record(result, cid)
        except TrackingUnavailableError as exc:
            kept = self._keep_pending(result, cid)
            raise TrackingUnavailableError(f"{exc} The compile result was kept in {kept}; run `persona-dspy sync` "
                                           "once the store is back to record it.") from exc.__cause__

    @property
    def pending_dir(self) -> Path:
        return self.settings.state_dir / "pending"

    def pending(self) -> list[Path]:
        return sorted(self.pending_dir.glob("*.json"))

    def sync_pending(self) -> list[tuple[str, int]]:
        """Record the compiles kept while the store was down; returns ``(user_id, version)`` per compile.

        A kept compile whose gate compared against a production persona that has moved since is
        registered as ``candidate`` only (``promotion_skipped`` tag): the gate no longer holds.
        """
        synced = []
        for path in self.pending():
            result = CompileResult.model_validate_json(path.read_text(encoding="utf-8"))
            synced.append((result.user_id, self._record(result, path.stem, recheck_gate=True)))
            path.unlink()
        return synced

    def _keep_pending(self, result: CompileResult, cid: str) -> Path:
        self.pending_dir.mkdir(parents=True, exist_ok=True)
        path = self.pending_dir / f"{cid}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(result.model_dump_json(indent=1), encoding="utf-8")
        tmp.replace(path)
        return path

    def _record(self, result: CompileResult, cid: str, *, recheck_gate: bool = False) -> int:
        exp_id = self.experiment_id()
        with self._store("logging the compile run") as client:
            done = self._finished_run(client, exp_id, result.user_id, cid)
            if done is not None:
                return int(done.data.tags["persona_version"])
            run_id = self._open_runs.get(result.user_id)
            artifact_uri = None
            if run_id is None:
                info = client.create_run(exp_id, run_name=f"{result.optimizer}:{result.user_id}",
                                         tags=_user_tags(result.user_id)).info
                run_id, artifact_uri = info.run_id, info.artifact_uri
            with tempfile.TemporaryDirectory(prefix="persona_dspy_run_") as tmp:
                _write_artifacts(result, Path(tmp))
                if artifact_uri is None:
                    client.log_artifacts(run_id, tmp)
                else:  # what log_artifacts does, minus the get_run it needs to learn the run's artifact URI
                    get_artifact_repository(artifact_uri, tracking_uri=self.tracking_uri).log_artifacts(tmp)
            version = self.registry.register(result.user_id, result.candidate_persona, commit_message=result.reason[:500]
                                             or f"{result.optimizer} compile", tags={
                "run_id": run_id, "compile_id": cid, "promoted": str(result.promoted).lower(),
                "val_score_candidate": str(result.val_score_candidate),
                "val_score_production": str(result.val_score_production)}, experiment_id=exp_id)
            promote = result.promoted
            if promote and recheck_gate:
                current = self.registry.get(result.user_id, PRODUCTION)
                if current is not None and current.text != result.production_persona:
                    promote = False
                    client.set_tag(run_id, "promotion_skipped", "production moved while the result was pending")
            if promote:
                self.registry.promote(result.user_id, version.version, exists=True)
            # one batch for everything the run shows; persona_version marks the run as recorded
            tags = {**_run_tags(result, cid), "persona_version": str(version.version), "promoted": str(promote).lower()}
            client.log_batch(run_id, metrics=_metrics(result, int(time.time() * 1000)), params=_params(result),
                             tags=[RunTag(k, v) for k, v in tags.items()])
            client.set_terminated(run_id, "FINISHED")
        return version.version

    def _user_runs(self, client: MlflowClient, exp_id: str, user_id: str, extra: str = "",
                   view: int = ViewType.ACTIVE_ONLY) -> list:
        """Runs of exactly this user (the filter uses the prompt name: safe characters only)."""
        runs = client.search_runs([exp_id], filter_string=f"tags.persona_prompt = '{prompt_name(user_id)}'{extra}",
                                  run_view_type=view, max_results=10000)
        return [r for r in runs if r.data.tags.get("user_id") == user_id]

    def _finished_run(self, client: MlflowClient, exp_id: str, user_id: str, cid: str):
        for run in self._user_runs(client, exp_id, user_id, f" and tags.compile_id = '{cid}'"):
            if run.info.status == "FINISHED" and "persona_version" in run.data.tags:
                return run
        return None

    def last_compile(self, user_id: str) -> dict[str, Any] | None:
        """The user's latest recorded compile: ``optimizer``, ``data_watermark`` (as logged), ``params``
        (str values, as logged), ``persona_version``, ``promoted``, ``run_id``; None if never recorded.

        What the fleet compares to skip a user whose data and optimizer params are unchanged.
        """
        exp_id = self.experiment_id()
        with self._store("reading the last compile") as client:
            runs = client.search_runs([exp_id], filter_string=f"tags.persona_prompt = '{prompt_name(user_id)}' "
                                      "and attributes.status = 'FINISHED'", order_by=["attributes.start_time DESC"],
                                      max_results=20)
        for run in runs:
            tags = run.data.tags
            if tags.get("user_id") == user_id and "persona_version" in tags:
                return {"run_id": run.info.run_id, "optimizer": tags.get("optimizer"),
                        "data_watermark": tags.get("data_watermark"), "params": dict(run.data.params),
                        "persona_version": int(tags["persona_version"]), "promoted": tags.get("promoted") == "true"}
        return None

    def discard_unfinished(self, user_id: str) -> int:
        """Delete the user's runs that a killed process left unfinished (no ``persona_version``); returns
        how many. Call it only when no other process is compiling this user (the fleet holds a lock)."""
        exp_id = self.experiment_id()
        with self._store("discarding unfinished runs") as client:
            stale = [r for r in self._user_runs(client, exp_id, user_id, " and attributes.status = 'RUNNING'")
                     if "persona_version" not in r.data.tags]
            for run in stale:
                client.delete_run(run.info.run_id)
        return len(stale)

    def forget(self, user_id: str) -> dict[str, int]:
        """Delete everything of the user in MLflow: runs (with their artifacts and traces), persona
        versions, kept pending compiles. Returns counts.

        On a sqlite store runs are purged (what ``mlflow gc`` does); a tracking server has no purge
        over REST, so there runs are deleted with their artifacts and traces, and their metadata is
        purged by ``mlflow gc`` on the server (counted as ``runs_awaiting_gc``).
        """
        exp_id = self.experiment_id()
        counts = {"persona_versions": 0, "runs": 0, "artifact_files": 0, "traces": 0, "runs_awaiting_gc": 0,
                  "pending": 0}
        with self._store("forgetting a user") as client:
            runs = self._user_runs(client, exp_id, user_id, view=ViewType.ALL)
            store = _sql_store(client)
            for run in runs:
                run_id = run.info.run_id
                counts["traces"] += self._delete_traces(client, exp_id, run_id)
                repo = get_artifact_repository(run.info.artifact_uri, tracking_uri=self.tracking_uri)
                counts["artifact_files"] += _count_files(repo)
                repo.delete_artifacts()
                if store is not None:
                    store._hard_delete_run(run_id)  # what `mlflow gc` does; no public API for it
                else:
                    if run.info.lifecycle_stage != "deleted":
                        client.delete_run(run_id)
                    counts["runs_awaiting_gc"] += 1
            counts["runs"] = len(runs)
            counts["persona_versions"] = self.registry.forget(user_id)
        for path in self.pending():
            if CompileResult.model_validate_json(path.read_text(encoding="utf-8")).user_id == user_id:
                path.unlink()
                counts["pending"] += 1
        return counts

    @staticmethod
    def _delete_traces(client: MlflowClient, exp_id: str, run_id: str) -> int:
        ids, token = [], None
        while True:
            page = client.search_traces(locations=[exp_id], run_id=run_id, include_spans=False, max_results=100,
                                        page_token=token)
            ids += [t.info.trace_id for t in page]
            token = page.token
            if not token:
                break
        for start in range(0, len(ids), 100):
            client.delete_traces(exp_id, trace_ids=ids[start:start + 100])
        return len(ids)


def compile_id(result: CompileResult) -> str:
    """A deterministic id of one compile's outcome: a retried ``record`` finds its earlier run by it."""
    return hashlib.sha256(result.model_dump_json(exclude={"version"}).encode()).hexdigest()[:20]


def _user_tags(user_id: str) -> dict[str, str]:
    return {"user_id": user_id, "persona_prompt": prompt_name(user_id)}


def _run_tags(result: CompileResult, cid: str) -> dict[str, str]:
    return {**_user_tags(result.user_id), "optimizer": result.optimizer, "compile_id": cid,
            "data_watermark": str(result.data_watermark), "gate": result.reason[:5000],
            "stopped": result.stopped[:5000],
            "mlflow.runName": f"{result.optimizer}:{result.user_id}"}


def _params(result: CompileResult) -> list[Param]:
    params = {"optimizer": result.optimizer, **result.params, "data_watermark": result.data_watermark,
              "val_ids": ",".join(result.val_ids)}
    return [Param(k, str(v)[:6000]) for k, v in params.items()]


def _metrics(result: CompileResult, now: int) -> list[Metric]:
    """Per-iteration (step = iteration) and final metrics."""
    per_step = [Metric(key, float(value), now, s.iteration) for s in result.steps for key, value in (
        ("train_score", s.train_score), ("loss_chars", len(s.loss)), ("persona_chars", len(s.persona)))]
    finals = {"lm_calls": result.lm_calls, "tokens": result.tokens, "wall_time_s": result.wall_time,
              "iterations_run": len(result.steps), "val_score_production": result.val_score_production,
              "val_score_candidate": result.val_score_candidate, "promoted": float(result.promoted)}
    return per_step + [Metric(k, float(v), now, 0) for k, v in finals.items() if v is not None]


def _write_artifacts(result: CompileResult, folder: Path) -> None:
    """Persona texts of every step, the critique that moved it, the diff against production, the record."""
    personas = folder / "personas"
    personas.mkdir()
    texts = {"initial.txt": result.initial_persona, "production.txt": result.production_persona,
             "candidate.txt": result.candidate_persona}
    for step in result.steps:
        texts[f"step_{step.iteration}.txt"] = step.persona
        if step.loss:
            texts[f"step_{step.iteration}_critique.txt"] = step.loss
        if step.updated_persona is not None:
            texts[f"step_{step.iteration}_updated.txt"] = step.updated_persona
    diff = "".join(difflib.unified_diff(result.production_persona.splitlines(keepends=True),
                                        result.candidate_persona.splitlines(keepends=True),
                                        "production", "candidate"))
    texts["candidate_vs_production.diff"] = diff or "(no change)\n"
    for name, text in texts.items():
        (personas / name).write_text(text, encoding="utf-8")
    (folder / "compile_result.json").write_text(result.model_dump_json(indent=1), encoding="utf-8")


def _sql_store(client: MlflowClient):
    """The SQLAlchemy store behind a sqlite/database URI (None for a tracking server)."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    store = client._tracking_client.store
    return store if isinstance(store, SqlAlchemyStore) else None


def _count_files(repo) -> int:
    def walk(path: str | None) -> int:
        return sum(walk(f.path) if f.is_dir else 1 for f in repo.list_artifacts(path))
    return walk(None)


__all__ = ["Tracking", "CANDIDATE", "PRODUCTION"]
