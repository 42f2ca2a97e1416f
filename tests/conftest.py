"""Shared fixtures: expensive objects are built once per test session."""

import persona_dspy  # noqa: F401  (sets the offline environment guards first)

import pytest

from persona_dspy.memory.embedder import OnnxEmbedder


@pytest.fixture(scope="session")
def embedder() -> OnnxEmbedder:
    """The real MiniLM embedder, loaded once (session creation is the slow part)."""
    return OnnxEmbedder()


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory) -> str:
    """One real sqlite MLflow store for the whole run (creating one costs ~7 s of migrations)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
