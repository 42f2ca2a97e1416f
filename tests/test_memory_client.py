"""The qdrant-client engine: a legacy local folder (``local:``) and a server URL."""

import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import persona_dspy  # noqa: F401
from persona_dspy.config import Settings
from persona_dspy.data.records import Interaction
from persona_dspy.errors import StoreUnavailableError
from persona_dspy.memory import EpisodicMemory
from persona_dspy.memory.embedder import OnnxEmbedder


def rec(i: int) -> Interaction:
    return Interaction(user_id="alice", id=str(i), input=f"note {i}", output="ok", timestamp=float(i))


def test_local_folder_commits_in_wal_mode(tmp_path: Path, embedder: OnnxEmbedder) -> None:
    # the default rollback journal fsyncs once per point (~70 points/s), see ClientEngine._ensure_collection
    folder = tmp_path / "q"
    with EpisodicMemory(Settings(qdrant=f"local:{folder}"), embedder=embedder) as m:
        m.add([rec(i) for i in range(3)])
        (db,) = folder.glob("collection/*/storage.sqlite")
        with sqlite3.connect(db) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with EpisodicMemory(Settings(qdrant=f"local:{folder}"), embedder=embedder) as m:
        assert m.count("alice") == 3


def test_local_folder_locked_by_another_process(tmp_path: Path, embedder: OnnxEmbedder) -> None:
    folder = tmp_path / "locked"
    script = textwrap.dedent(f"""
        import time
        from qdrant_client import QdrantClient
        client = QdrantClient(path={str(folder)!r})
        print("ready", flush=True)
        time.sleep(60)
    """)
    with subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) as holder:
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
            with pytest.raises(StoreUnavailableError, match="one process") as err:
                EpisodicMemory(Settings(qdrant=f"local:{folder}"), embedder=embedder).count()
            assert str(folder) in str(err.value) and "PERSONA_DSPY_QDRANT" in str(err.value)
        finally:
            holder.kill()


def test_unreachable_server(embedder: OnnxEmbedder) -> None:
    with pytest.raises(StoreUnavailableError, match="127.0.0.1:9"):
        EpisodicMemory(Settings(qdrant="http://127.0.0.1:9"), embedder=embedder).count()
