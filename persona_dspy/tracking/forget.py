"""Forgetting a user in MLflow: runs (with artifacts and traces) and persona versions."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.entities import ViewType
from mlflow.utils.mlflow_tags import MLFLOW_ARTIFACT_LOCATION

from persona_dspy.compat.mlflow import get_artifact_repository, hard_delete_run
from persona_dspy.tracking.registry import PersonaRegistry
from persona_dspy.tracking.runs import user_runs
from persona_dspy.tracking.store import MlflowStore


def forget_user(store: MlflowStore, user_id: str) -> dict[str, int]:
    """Delete the user's runs (in every experiment of the store), their artifacts and traces, and every
    persona version; returns counts.

    On a sqlite store runs are purged (what ``mlflow gc`` does); a tracking server has no purge over
    REST, so there runs are deleted with their artifacts and traces, and their metadata is purged by
    ``mlflow gc`` on the server (counted as ``runs_awaiting_gc``).
    """
    store.experiment_id()  # the store checked (a copied state dir is refused) before anything is deleted
    mlflow.flush_trace_async_logging()  # this process's traces still being written land before they are deleted
    counts = {"persona_versions": 0, "runs": 0, "artifact_files": 0, "traces": 0, "runs_awaiting_gc": 0}
    with store.guard("forgetting a user") as client:
        experiments = client.search_experiments(view_type=ViewType.ALL, max_results=50_000)
        runs = [r for e in experiments for r in user_runs(client, e.experiment_id, user_id, view=ViewType.ALL)]
        for experiment in experiments:  # a copied state dir's experiment would name the original's files
            if any(r.info.experiment_id == experiment.experiment_id for r in runs):
                store._check_artifact_location(experiment.artifact_location)
        for run in runs:
            run_id = run.info.run_id
            counts["traces"] += _delete_traces(client, run.info.experiment_id, run_id, store.tracking_uri)
            repo = get_artifact_repository(run.info.artifact_uri, tracking_uri=store.tracking_uri)
            counts["artifact_files"] += _count_files(repo)
            repo.delete_artifacts()
            if not hard_delete_run(client, run_id):
                if run.info.lifecycle_stage != "deleted":
                    client.delete_run(run_id)
                counts["runs_awaiting_gc"] += 1
        counts["runs"] = len(runs)
        counts["persona_versions"] = PersonaRegistry(client).forget(user_id)
        if store.tracking_uri.startswith("sqlite:///"):
            vacuum_sqlite(Path(store.tracking_uri.removeprefix("sqlite:///")))
    return counts


def vacuum_sqlite(db: Path) -> None:
    """Rewrite a sqlite file without its free pages: a DELETE leaves the rows' bytes in them (and in
    the write-ahead log) until they are reused, so the forgotten texts would still be in the file."""
    with contextlib.closing(sqlite3.connect(db, timeout=60)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute("VACUUM")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def _delete_traces(client: MlflowClient, exp_id: str, run_id: str, tracking_uri: str) -> int:
    """The run's traces: their files (the spans: prompts and answers, under the trace's artifact location),
    then their rows (``delete_traces`` deletes only the rows)."""
    ids, token = [], None
    while True:
        page = client.search_traces(
            locations=[exp_id], run_id=run_id, include_spans=False, max_results=100, page_token=token
        )
        for trace in page:
            ids.append(trace.info.trace_id)
            location = trace.info.tags.get(MLFLOW_ARTIFACT_LOCATION)
            if location:
                get_artifact_repository(location, tracking_uri=tracking_uri).delete_artifacts()
        token = page.token
        if not token:
            break
    for start in range(0, len(ids), 100):
        client.delete_traces(exp_id, trace_ids=ids[start : start + 100])
    return len(ids)


def _count_files(repo) -> int:
    def walk(path: str | None) -> int:
        return sum(walk(f.path) if f.is_dir else 1 for f in repo.list_artifacts(path))

    return walk(None)
