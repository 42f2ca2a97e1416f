"""Traced compiles: MLflow's DSPy autologging turns every LM call of a compile into a trace of its run.

Autologging and the fluent tracking URI are process-wide MLflow state: they are switched on while
at least one traced compile of this ``Tracer`` runs (the active run is per thread). The DSPy callback
that makes the traces is passed through ``dspy.context`` too: a compile usually runs inside the
caller's ``dspy.context(lm=...)``, which does not see what autologging configures after it began.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from persona_dspy.compat.mlflow import with_dspy_tracing
from persona_dspy.tracking.runs import user_tags
from persona_dspy.tracking.store import STORE_ERRORS, MlflowStore


class Tracer:
    """``with tracer.compile_run(user_id) as run_id:`` opens the run ``record`` then fills (``open_run``)."""

    def __init__(self, store: MlflowStore) -> None:
        self.store = store
        self._open_runs: dict[str, str] = {}
        self._traced, self._previous_uri = 0, ""
        self._lock = threading.Lock()

    def open_run(self, user_id: str) -> str | None:
        """The run a traced compile of ``user_id`` opened and is still in, if any."""
        return self._open_runs.get(user_id)

    @contextmanager
    def compile_run(self, user_id: str) -> Iterator[str]:
        import dspy
        import mlflow
        import mlflow.dspy

        exp_id = self.store.experiment_id()
        with self._lock:
            if self._traced == 0:
                self._previous_uri = mlflow.get_tracking_uri()
                mlflow.set_tracking_uri(self.store.tracking_uri)
                mlflow.dspy.autolog(log_traces=True, log_traces_from_compile=True, silent=True)
            self._traced += 1
        status = "FAILED"
        try:
            with self.store.guard("opening a traced compile run"):
                run = mlflow.start_run(experiment_id=exp_id, run_name=f"compile:{user_id}",
                                       tags=user_tags(user_id), nested=mlflow.active_run() is not None)
            self._open_runs[user_id] = run.info.run_id
            try:
                with dspy.context(callbacks=with_dspy_tracing(dspy.settings.callbacks)):
                    yield run.info.run_id
                status = "FINISHED"
            finally:
                self._open_runs.pop(user_id, None)
                try:
                    mlflow.flush_trace_async_logging()
                    mlflow.end_run(status)
                except STORE_ERRORS:
                    pass  # the run stays RUNNING in a store that went down; record() already raised
        finally:
            with self._lock:
                self._traced -= 1
                if self._traced == 0:
                    mlflow.dspy.autolog(disable=True, silent=True)
                    mlflow.set_tracking_uri(self._previous_uri)
