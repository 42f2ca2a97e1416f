"""MLflow internals persona_dspy relies on (contract: tests/test_compat.py), pinned to mlflow 3.17.

- The registry store behind ``MlflowClient`` (``client._get_registry_client()``): registering a
  version and moving an alias through it skips what the public client adds per call (copying every
  version tag onto the prompt, reloading all versions to check one exists, a background thread
  linking the prompt to the fluent experiment; see ``tracking/registry.py``).
- The prompt cache MLflow keeps per registry URI (``PromptCache``, ``client._registry_uri``):
  invalidated after those writes, as ``MlflowClient`` does.
- Reading persona versions through that store (``get_registered_model``, ``get_model_version``,
  ``get_model_version_by_alias``, ``model_version_to_prompt_version``): ``MlflowClient.get_prompt`` and
  the store's ``get_prompt_version`` turn every failure but an ``MlflowException`` into "not found",
  so an unreachable store would read as a user without personas.
- The prompt tags MLflow's UI reads (``IS_PROMPT_TAG_KEY``, ``PROMPT_EXPERIMENT_IDS_TAG_KEY``).
- The SQLAlchemy tracking store (``client._tracking_client.store``) and its ``_hard_delete_run``:
  what ``mlflow gc`` does to purge a run; there is no public API for it.
- ``get_artifact_repository``: the artifact repository of a run's URI (public in use, private path).
- ``mlflow.dspy.callback.MlflowCallback`` and the ``log_traces`` flag it checks in
  ``AUTOLOGGING_INTEGRATIONS["dspy"]``: ``mlflow.dspy.autolog`` sets the flag and installs the callback
  with ``dspy.configure``, which only the thread that first configured DSPy may call (a fleet worker
  may not), and a ``dspy.context`` entered earlier (the caller's ``dspy.context(lm=...)``) never
  sees it. Tracing sets the flag alone and passes its own callback through ``dspy.context``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.prompt.constants import IS_PROMPT_TAG_KEY, PROMPT_EXPERIMENT_IDS_TAG_KEY
from mlflow.prompt.registry_utils import PromptCache, model_version_to_prompt_version
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

__all__ = [
    "IS_PROMPT_TAG_KEY",
    "PROMPT_EXPERIMENT_IDS_TAG_KEY",
    "enable_dspy_tracing",
    "forget_cached_prompt",
    "get_artifact_repository",
    "hard_delete_run",
    "migrate_sqlite",
    "model_version_to_prompt_version",
    "registry_store",
    "sql_store",
    "with_dspy_tracing",
]


def registry_store(client: MlflowClient) -> Any:
    """The model-registry store the client writes prompts through (``create_registered_model``,
    ``create_prompt_version``, ``set_prompt_alias``)."""
    return client._get_registry_client()


def forget_cached_prompt(client: MlflowClient, name: str, alias: str) -> None:
    """Drop ``prompts:/name@alias`` from MLflow's process-wide prompt cache after moving it."""
    PromptCache.get_instance().delete(name, alias=alias, registry_uri=client._registry_uri)


def sql_store(client: MlflowClient) -> SqlAlchemyStore | None:
    """The SQLAlchemy store behind a sqlite/database URI (None for a tracking server)."""
    store = client._tracking_client.store
    return store if isinstance(store, SqlAlchemyStore) else None


def hard_delete_run(client: MlflowClient, run_id: str) -> bool:
    """Purge a run with its metadata (what ``mlflow gc`` does); False when the store cannot (a server)."""
    store = sql_store(client)
    if store is None:
        return False
    store._hard_delete_run(run_id)
    return True


def migrate_sqlite(path: Path) -> None:
    """Create a sqlite tracking store at ``path`` with every migration applied."""
    SqlAlchemyStore(f"sqlite:///{path}", str(path.parent / "unused-artifacts")).engine.dispose()


def with_dspy_tracing(callbacks: list[Any]) -> list[Any]:
    """``callbacks`` with a new MLflow tracing callback in place of any earlier one (for ``dspy.context``)."""
    from mlflow.dspy.callback import MlflowCallback

    return [c for c in callbacks if not isinstance(c, MlflowCallback)] + [MlflowCallback()]


def enable_dspy_tracing() -> None:
    """Let MLflow's DSPy callback record traces (what ``mlflow.dspy.autolog(log_traces=True)`` stores),
    without autolog's process-wide ``dspy.configure`` and ``Teleprompter.compile`` patches."""
    import mlflow.dspy  # noqa: F401  (importing it registers the integration: an empty config)
    from mlflow.utils.autologging_utils import AUTOLOGGING_INTEGRATIONS

    AUTOLOGGING_INTEGRATIONS.setdefault("dspy", {})["log_traces"] = True
