"""Contract of the qdrant-client internals persona_dspy/compat/qdrant.py relies on: if an upgrade
moves them, this fails here instead of silently slowing or breaking the local engine."""

import sqlite3
from pathlib import Path

import pytest
from qdrant_client import QdrantClient
from qdrant_client.http import models as qm

import persona_dspy  # noqa: F401
from persona_dspy.compat.qdrant import LOCAL_IN_USE, is_local, is_local_folder, local_folder_collections, local_sqlite


def test_local_mode_is_recognised_and_a_server_client_is_not() -> None:
    assert is_local(QdrantClient(":memory:"))
    assert not is_local(QdrantClient(url="http://127.0.0.1:9", check_compatibility=False))


def test_local_folder_layout_sqlite_and_lock_message(tmp_path: Path) -> None:
    folder = tmp_path / "q"
    client = QdrantClient(path=str(folder))
    try:
        client.create_collection("episodes", vectors_config=qm.VectorParams(size=4, distance=qm.Distance.COSINE))
        assert isinstance(local_sqlite(client, "episodes"), sqlite3.Connection)
        assert is_local_folder(folder) and local_folder_collections(folder) == ["episodes"]
        with pytest.raises(RuntimeError, match=LOCAL_IN_USE):
            QdrantClient(path=str(folder))
    finally:
        client.close()
    assert not is_local_folder(tmp_path)
    assert local_sqlite(QdrantClient(":memory:"), "episodes") is None
