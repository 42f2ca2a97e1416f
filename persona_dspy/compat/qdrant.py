"""qdrant-client internals persona_dspy relies on (contract: tests/test_memory_compat.py).

qdrant-client's local mode (``QdrantClient(path=...)`` / ``":memory:"``) is a pure-Python engine
behind ``client._client``: a ``QdrantLocal`` whose collections persist to one sqlite file each.
We reach into it for three things only: to know a client is in local mode (it then needs a lock
around calls and ignores payload indexes), to put its sqlite file in WAL mode, and to recognise
a folder it wrote (``meta.json`` + ``collection/<name>/storage.sqlite``) so it can be migrated.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from qdrant_client import QdrantClient
from qdrant_client.local.qdrant_local import QdrantLocal

LOCAL_META = "meta.json"
LOCAL_COLLECTIONS_DIR = "collection"
LOCAL_STORAGE_FILE = "storage.sqlite"
LOCAL_IN_USE = "already accessed"
"""Text of the ``RuntimeError`` local mode raises when another client holds the folder's ``.lock``."""


def is_local(client: QdrantClient) -> bool:
    """True for local mode (a folder or ``:memory:``), False for a server."""
    return isinstance(getattr(client, "_client", None), QdrantLocal)


def local_sqlite(client: QdrantClient, collection: str) -> sqlite3.Connection | None:
    """The sqlite connection a local-mode collection persists to (None: in memory or internals moved)."""
    collections = getattr(getattr(client, "_client", None), "collections", None) or {}
    conn = getattr(getattr(collections.get(collection), "storage", None), "storage", None)
    return conn if isinstance(conn, sqlite3.Connection) else None


def is_local_folder(folder: Path) -> bool:
    """A folder written by qdrant-client's local mode."""
    return (folder / LOCAL_META).is_file() and (folder / LOCAL_COLLECTIONS_DIR).is_dir()


def local_folder_collections(folder: Path) -> list[str]:
    """Names of the collections a local-mode folder holds (from its ``meta.json``)."""
    meta = json.loads((folder / LOCAL_META).read_text())
    return sorted(meta.get("collections", {}))
