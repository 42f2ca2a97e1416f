"""``Engine`` on qdrant-client: a Qdrant server (URL), ``:memory:``, or a legacy local folder (``local:``).

A server indexes ``user_id`` (tenant keyword) and ``timestamp`` (float range), so reads grow with
the user's points. qdrant-client's local mode (``:memory:``, ``local:<folder>``) ignores payload
indexes and tests every point's payload in Python on each read: fine for tests and a few thousand
points, not for a store that grows (BENCHMARKS.md, "Memory").
"""

from __future__ import annotations

import atexit
import threading
import weakref
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import numpy as np
from qdrant_client import QdrantClient
from qdrant_client.http import models as qm
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from persona_dspy.compat.qdrant import LOCAL_IN_USE, is_local, local_sqlite
from persona_dspy.errors import StoreUnavailableError
from persona_dspy.memory.embedder import DIM
from persona_dspy.memory.engine import Payload

# Local mode locks its folder for one client, even inside one process: share the client.
_LOCAL_CLIENTS: dict[str, tuple[QdrantClient, int]] = {}
_LOCAL_GUARD = threading.Lock()
# Local mode mutates plain Python/numpy structures: serialise the calls made on one client.
_CLIENT_LOCKS: weakref.WeakKeyDictionary[QdrantClient, threading.RLock] = weakref.WeakKeyDictionary()


def _client_lock(client: QdrantClient) -> AbstractContextManager[Any]:
    if not is_local(client):
        return nullcontext()
    with _LOCAL_GUARD:
        return _CLIENT_LOCKS.setdefault(client, threading.RLock())


def _acquire_local(path: str) -> QdrantClient:
    """Open (or share) the local-mode client of ``path``; a folder held by another process fails clearly."""
    with _LOCAL_GUARD:
        if path in _LOCAL_CLIENTS:
            client, refs = _LOCAL_CLIENTS[path]
        else:
            try:
                client, refs = QdrantClient(path=path), 0
            except RuntimeError as exc:
                if LOCAL_IN_USE not in str(exc):
                    raise
                raise StoreUnavailableError(
                    f"the Qdrant folder {path} is in use by another process: an embedded store allows one "
                    "process per folder. Close the other process, or run a Qdrant server and set "
                    "PERSONA_DSPY_QDRANT=http://HOST:6333 for concurrent access."
                ) from exc
            except OSError as exc:
                raise StoreUnavailableError(f"cannot open the Qdrant folder {path}: {exc}") from exc
        _LOCAL_CLIENTS[path] = (client, refs + 1)
        return client


def _release_local(path: str) -> None:
    with _LOCAL_GUARD:
        client, refs = _LOCAL_CLIENTS[path]
        if refs > 1:
            _LOCAL_CLIENTS[path] = (client, refs - 1)
        else:
            del _LOCAL_CLIENTS[path]
            client.close()


@atexit.register
def _close_local_clients() -> None:
    """Close shared clients before interpreter teardown (their ``__del__`` fails that late)."""
    with _LOCAL_GUARD:
        for client, _ in _LOCAL_CLIENTS.values():
            client.close()
        _LOCAL_CLIENTS.clear()


def _user_filter(user_id: str, before: float | None = None) -> qm.Filter:
    must: list[qm.Condition] = [qm.FieldCondition(key="user_id", match=qm.MatchValue(value=user_id))]
    if before is not None:
        must.append(qm.FieldCondition(key="timestamp", range=qm.Range(lt=before)))
    return qm.Filter(must=must)


def _users_filter(user_ids: list[str], before: float | None) -> qm.Filter:
    must: list[qm.Condition] = [qm.FieldCondition(key="user_id", match=qm.MatchAny(any=user_ids))]
    if before is not None:
        must.append(qm.FieldCondition(key="timestamp", range=qm.Range(lt=before)))
    return qm.Filter(must=must)


class ClientEngine:
    """One collection through ``QdrantClient``; opened (and the collection created) on construction.

    ``local_path`` shares one local-mode client per folder in this process; ``client`` uses a
    client the caller owns.
    """

    def __init__(
        self,
        collection: str,
        *,
        location: str,
        url: str | None = None,
        api_key: str | None = None,
        local_path: str | None = None,
        client: QdrantClient | None = None,
    ) -> None:
        self.collection, self.location = collection, location
        self._local_path = local_path
        self._owns = client is None
        if client is not None:
            self.client = client
        elif local_path is not None:
            self.client = _acquire_local(local_path)
        elif url is not None:
            self.client = QdrantClient(url=url, api_key=api_key, check_compatibility=False)
        else:
            self.client = QdrantClient(":memory:")
        self._lock = _client_lock(self.client)
        try:
            with self._call():
                self._ensure_collection()
        except BaseException:
            self.close()
            raise

    def _ensure_collection(self) -> None:
        client, name = self.client, self.collection
        if not client.collection_exists(name):
            try:
                client.create_collection(name, vectors_config=qm.VectorParams(size=DIM, distance=qm.Distance.COSINE))
            except UnexpectedResponse as exc:  # another process created it meanwhile
                if exc.status_code != 409:
                    raise
            if not is_local(client):  # local mode ignores payload indexes and warns about them
                client.create_payload_index(
                    name, "user_id", qm.KeywordIndexParams(type=qm.KeywordIndexType.KEYWORD, is_tenant=True)
                )
                client.create_payload_index(name, "timestamp", qm.PayloadSchemaType.FLOAT)
        if (conn := local_sqlite(client, name)) is not None:
            # Local mode commits one sqlite transaction per point: with the default rollback journal
            # that is one fsync per point (~70 points/s). WAL keeps each commit atomic and
            # crash-safe for the process; a power loss can drop the last commits, which an
            # idempotent re-add restores.
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")

    @contextmanager
    def _call(self) -> Iterator[None]:
        """Under the client's lock; network failures become ``StoreUnavailableError``."""
        with self._lock:
            try:
                yield
            except ResponseHandlingException as exc:
                raise StoreUnavailableError(
                    f"cannot reach Qdrant at {self.location}: {exc}. Start the server or fix PERSONA_DSPY_QDRANT."
                ) from exc
            except UnexpectedResponse as exc:
                if exc.status_code in (401, 403):
                    raise StoreUnavailableError(
                        f"Qdrant at {self.location} refused access ({exc.status_code}): "
                        "check PERSONA_DSPY_QDRANT_API_KEY."
                    ) from exc
                raise

    def close(self) -> None:
        if self._owns:
            if self._local_path is not None:
                _release_local(self._local_path)
                self._local_path = None
            else:
                self.client.close()
        self._owns = False

    # -- Engine -----------------------------------------------------------------------------

    def content_hashes(self, ids: list[str], users: list[str] | None = None) -> dict[str, str | None]:
        with self._call():
            found = self.client.retrieve(self.collection, ids, with_payload=["content_hash"])
        return {str(p.id): (p.payload or {}).get("content_hash") for p in found}

    def upsert(self, ids: list[str], vectors: np.ndarray, payloads: list[Payload]) -> None:
        points = [qm.PointStruct(id=i, vector=v.tolist(), payload=p) for i, v, p in zip(ids, vectors, payloads)]
        with self._call():
            self.client.upsert(self.collection, points)

    def search(self, user_id: str, vector: np.ndarray, k: int, before: float | None) -> list[tuple[Payload, float]]:
        with self._call():
            hits = self.client.query_points(
                self.collection,
                query=vector.tolist(),
                limit=k,
                with_payload=True,
                query_filter=_user_filter(user_id, before),
            ).points
        return [(h.payload or {}, h.score) for h in hits]

    def latest(self, user_id: str, n: int, before: float | None) -> list[Payload]:
        with self._call():
            records, _ = self.client.scroll(
                self.collection,
                scroll_filter=_user_filter(user_id, before),
                limit=n,
                with_payload=True,
                order_by=qm.OrderBy(key="timestamp", direction=qm.Direction.DESC),
            )
        return [r.payload or {} for r in records]

    def scan(
        self, user_ids: list[str], before: float | None, with_vectors: bool
    ) -> Iterator[tuple[Payload, np.ndarray | None]]:
        flt = _users_filter(user_ids, before)
        offset: Any = None
        while True:
            with self._call():
                records, offset = self.client.scroll(
                    self.collection,
                    scroll_filter=flt,
                    limit=4096,
                    offset=offset,
                    with_payload=True,
                    with_vectors=with_vectors,
                )
            for r in records:
                yield r.payload or {}, np.asarray(r.vector, dtype=np.float32) if with_vectors else None
            if offset is None:
                return

    def count(self, user_id: str | None) -> int:
        flt = _user_filter(user_id) if user_id is not None else None
        with self._call():
            return self.client.count(self.collection, count_filter=flt, exact=True).count

    def users(self) -> list[str]:
        with self._call():
            total = self.client.count(self.collection, exact=True).count
            if not total:
                return []
            hits = self.client.facet(self.collection, "user_id", limit=total, exact=True).hits
        return sorted(str(h.value) for h in hits)

    def delete_user(self, user_id: str) -> int:
        with self._call():
            n = self.client.count(self.collection, count_filter=_user_filter(user_id), exact=True).count
            if n:
                self.client.delete(self.collection, points_selector=qm.FilterSelector(filter=_user_filter(user_id)))
        return n
