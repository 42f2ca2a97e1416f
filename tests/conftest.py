"""Shared fixtures: expensive objects are built once per test session."""

import contextlib
import os
import sqlite3
from pathlib import Path

import pytest

import persona_dspy  # noqa: F401  (sets the offline environment guards first)
from persona_dspy.memory.embedder import OnnxEmbedder


@pytest.fixture(autouse=True)
def _lm_cache_folders_restored():
    """A CLI command run in-process with ``--state-dir`` points the LM caches' folders there
    (``config.follow_state_dir``): the next test starts from the process's own again."""
    from persona_dspy.config import STATE_VARIABLES

    before = {key: os.environ.get(key) for key in STATE_VARIABLES}
    yield
    for key, value in before.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def embedder() -> OnnxEmbedder:
    """The real MiniLM embedder, loaded once (session creation is the slow part)."""
    return OnnxEmbedder()


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory) -> str:
    """One real sqlite MLflow store for the whole run (creating one costs ~7 s of migrations)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture(scope="session")
def migrated_db(tmp_path_factory) -> Path:
    """An empty MLflow sqlite store, migrated once per session by MLflow itself (its tables and its
    ``Default`` experiment; no persona_dspy experiment, whose artifact location is set where it is created)."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    folder = tmp_path_factory.mktemp("mlflow_template")
    store = SqlAlchemyStore(f"sqlite:///{folder / 'mlflow.db'}", str(folder / "artifacts"))
    store.engine.dispose()
    return folder / "mlflow.db"


@pytest.fixture
def seed_store(migrated_db):
    """``seed_store(state_dir, name="mlflow.db")`` copies the migrated store to where ``Settings(state_dir=...)``
    (or a ``sqlite:///<state_dir>/<name>`` URI) finds it: a real store, without the seconds of migrations a
    new one spends. Tests of what a store's creation does leave it out. Copied by sqlite, not as a file."""

    def seed(state_dir: Path, name: str = "mlflow.db") -> Path:
        state_dir.mkdir(parents=True, exist_ok=True)
        with (
            contextlib.closing(sqlite3.connect(migrated_db)) as source,
            contextlib.closing(sqlite3.connect(state_dir / name)) as target,
        ):
            source.backup(target)
        return state_dir

    return seed


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


@pytest.fixture
def memory(tmp_path, embedder):
    """A fresh in-memory Qdrant episodic memory (real engine) per test."""
    from persona_dspy import Settings
    from persona_dspy.memory import EpisodicMemory

    with EpisodicMemory(Settings(qdrant=":memory:", state_dir=tmp_path), embedder=embedder) as mem:
        yield mem


@pytest.fixture
def tracking(mlflow_uri, tmp_path):
    """Tracking on the session's sqlite MLflow store (pending compiles go to this test's tmp dir)."""
    from persona_dspy import Settings
    from persona_dspy.tracking import Tracking

    return Tracking(Settings(state_dir=tmp_path), tracking_uri=mlflow_uri)
