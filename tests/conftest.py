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


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real ``mlflow server`` (own sqlite store, artifacts proxied through it) on 127.0.0.1.

    Started once per session when first requested and not waited for here: use ``.wait().uri``, so the
    ~8 s startup overlaps with tests that run in between. Stopped at the end of the session.
    """
    from persona_dspy.tracking.server import LocalMlflowServer

    server = LocalMlflowServer(tmp_path_factory.mktemp("mlflow_server")).start()
    yield server
    server.stop()
