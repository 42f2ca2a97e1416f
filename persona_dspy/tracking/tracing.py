"""Traced compiles: MLflow's DSPy callback turns every LM call of a compile into a trace of its run.

MLflow links a new trace to the most recently started active run of *any* thread of the process,
and the fluent tracking URI is process-wide: two traced compiles at once would file each other's LM
calls. So traced compiles run one at a time per process (a fleet with ``trace=True`` serializes its
threads; Ray tasks are processes of their own). The callback goes through ``dspy.context``, not
``mlflow.dspy.autolog``: autolog calls ``dspy.configure``, which only the thread that configured DSPy
first may call, and a compile runs inside the caller's ``dspy.context(lm=...)``, which would not see
it anyway (``compat/mlflow.py``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from persona_dspy.compat.mlflow import enable_dspy_tracing, with_dspy_tracing
from persona_dspy.tracking.runs import user_tags
from persona_dspy.tracking.store import STORE_ERRORS, MlflowStore

_ONE_TRACED_COMPILE = threading.RLock()  # re-entrant: a traced compile may nest another (a nested run)


class Tracer:
    """``with tracer.compile_run(user_id) as run_id:`` opens the run ``record`` then fills (``open_run``)."""

    def __init__(self, store: MlflowStore) -> None:
        self.store = store
        self._open_runs: dict[str, str] = {}

    def open_run(self, user_id: str) -> str | None:
        """The run a traced compile of ``user_id`` opened and is still in, if any."""
        return self._open_runs.get(user_id)

    @contextmanager
    def compile_run(self, user_id: str) -> Iterator[str]:
        import dspy
        import mlflow

        exp_id = self.store.experiment_id()
        with _ONE_TRACED_COMPILE:
            previous_uri = mlflow.get_tracking_uri()
            mlflow.set_tracking_uri(self.store.tracking_uri)
            enable_dspy_tracing()
            status = "FAILED"
            try:
                with self.store.guard("opening a traced compile run"):
                    run = mlflow.start_run(
                        experiment_id=exp_id,
                        run_name=f"compile:{user_id}",
                        tags=user_tags(user_id),
                        nested=mlflow.active_run() is not None,
                    )
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
                mlflow.set_tracking_uri(previous_uri)
