"""Episodic memory: every user's past interactions in one Qdrant collection, always read per user.

One collection serves all users (multitenancy by a ``user_id`` payload filter, as Qdrant
recommends) and every read is bounded by user and optionally by time (``before``), so an agent
never sees another user's data nor the future of the interaction it is answering.
"""

from __future__ import annotations

import atexit
import sqlite3
import threading
import uuid
import weakref
from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError
from qdrant_client import QdrantClient
from qdrant_client.http import models as qm
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse
from qdrant_client.local.qdrant_local import QdrantLocal
from tqdm.auto import tqdm

from persona_dspy.config import Settings
from persona_dspy.data.records import Interaction
from persona_dspy.errors import MalformedInteractionError, StoreUnavailableError, UnknownUserError
from persona_dspy.memory.embedder import DIM, OnnxEmbedder
from persona_dspy.memory.snapshot import UserSnapshot

NAMESPACE = uuid.UUID("8f0b6a1e-4f3c-5d2a-9b7e-2c1d0e9f6a54")
"""Namespace of point ids: ``uuid5(NAMESPACE, interaction.key)`` makes re-ingestion idempotent."""

_INTERACTION_FIELDS = tuple(Interaction.model_fields)


def point_id(interaction: Interaction) -> str:
    """Deterministic Qdrant point id of an interaction (same record -> same point)."""
    return str(uuid.uuid5(NAMESPACE, interaction.key))


class Episode(BaseModel):
    """A recalled interaction and its cosine similarity to the query."""

    model_config = ConfigDict(frozen=True)

    interaction: Interaction
    score: float


# Embedded Qdrant locks its folder for one client, even inside one process: share the client.
_LOCAL_CLIENTS: dict[str, tuple[QdrantClient, int]] = {}
_LOCAL_GUARD = threading.Lock()
# Local mode mutates plain Python/numpy structures: serialise the calls made on one client.
_CLIENT_LOCKS: weakref.WeakKeyDictionary[QdrantClient, threading.RLock] = weakref.WeakKeyDictionary()


def _is_local(client: QdrantClient) -> bool:
    return isinstance(getattr(client, "_client", None), QdrantLocal)


def _client_lock(client: QdrantClient) -> AbstractContextManager[Any]:
    if not _is_local(client):
        return nullcontext()
    with _LOCAL_GUARD:
        return _CLIENT_LOCKS.setdefault(client, threading.RLock())


def _acquire_local(path: str) -> QdrantClient:
    """Open (or share) the embedded client of ``path``; a folder held by another process fails clearly."""
    with _LOCAL_GUARD:
        if path in _LOCAL_CLIENTS:
            client, refs = _LOCAL_CLIENTS[path]
        else:
            try:
                client, refs = QdrantClient(path=path), 0
            except RuntimeError as exc:
                if "already accessed" not in str(exc):
                    raise
                raise StoreUnavailableError(
                    f"the Qdrant folder {path} is in use by another process: embedded Qdrant allows one "
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


def _fast_local_commits(client: QdrantClient, collection: str) -> None:
    """Put the local folder's sqlite file in WAL mode with ``synchronous=NORMAL``.

    Local mode commits one transaction per point; with sqlite's default rollback journal each
    commit is an fsync, which caps ingestion at ~70 points/s on a disk (BENCHMARKS.md). In WAL
    mode a commit stays atomic and survives a crash of the process; only a power loss can drop
    the last commits, which an idempotent re-ingest restores. Skipped silently if the client's
    internals differ (the folder then keeps working, only slower).
    """
    collections = getattr(getattr(client, "_client", None), "collections", None) or {}
    conn = getattr(getattr(collections.get(collection), "storage", None), "storage", None)
    if isinstance(conn, sqlite3.Connection):
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.Error:
            pass


def _user_filter(user_id: str, before: float | None = None) -> qm.Filter:
    must: list[qm.Condition] = [qm.FieldCondition(key="user_id", match=qm.MatchValue(value=user_id))]
    if before is not None:
        must.append(qm.FieldCondition(key="timestamp", range=qm.Range(lt=before)))
    return qm.Filter(must=must)


def _to_interaction(payload: Mapping[str, Any] | None) -> Interaction:
    payload = payload or {}
    return Interaction.model_validate({k: payload[k] for k in _INTERACTION_FIELDS if k in payload})


def _validate(records: Iterable[Interaction | Mapping[str, Any]]) -> list[Interaction]:
    """Validate a whole batch before any write: bad records or duplicate keys reject it all."""
    items: list[Interaction] = []
    seen: dict[str, int] = {}
    for pos, rec in enumerate(records):
        if not isinstance(rec, Interaction):
            if not isinstance(rec, Mapping):
                raise MalformedInteractionError(f"item {pos}: expected an Interaction, got {type(rec).__name__}")
            try:
                rec = Interaction.model_validate(rec)
            except ValidationError as exc:
                err = exc.errors()[0]
                raise MalformedInteractionError(
                    f"item {pos}: {err['msg']}", record_id=str(rec.get("id")) if rec.get("id") is not None else None,
                    field=".".join(map(str, err["loc"])) or None,
                ) from exc
        if rec.key in seen:
            raise MalformedInteractionError(
                f"item {pos}: duplicate of item {seen[rec.key]} (same user {rec.user_id!r} and id)",
                record_id=rec.id, field="id",
            )
        seen[rec.key] = pos
        items.append(rec)
    return items


class EpisodicMemory:
    """All users' interactions in one Qdrant collection; every read is filtered by user (and time).

    Nothing is opened or created until the first call. ``:memory:`` gives a private store, a folder
    an embedded store shared by every ``EpisodicMemory`` of this process, a URL a Qdrant server.
    """

    def __init__(self, settings: Settings | None = None, *, client: QdrantClient | None = None,
                 embedder: OnnxEmbedder | None = None) -> None:
        self.settings = settings or Settings()
        self.collection = self.settings.collection
        self.embedder = embedder or OnnxEmbedder()
        self._client = client
        self._owns_client = client is None
        self._local_path: str | None = None
        self._ready = False
        self._open_lock = threading.Lock()

    # -- connection ---------------------------------------------------------------------------

    @property
    def location(self) -> str:
        return self.settings.qdrant_location

    @property
    def embedded(self) -> bool:
        """True for a folder or ``:memory:`` (qdrant-client's local mode: every point in RAM, no indexes)."""
        return _is_local(self._client) if self._client is not None else not self.settings.qdrant_is_server

    def _connect(self) -> QdrantClient:
        with self._open_lock:
            if self._client is None:
                loc = self.location
                if loc == ":memory:":
                    self._client = QdrantClient(":memory:")
                elif self.settings.qdrant_is_server:
                    key = self.settings.qdrant_api_key
                    self._client = QdrantClient(url=loc, api_key=key.get_secret_value() if key else None,
                                                check_compatibility=False)
                else:
                    self._local_path = str(Path(loc).expanduser().resolve())
                    self._client = _acquire_local(self._local_path)
            return self._client

    def _ensure_collection(self, client: QdrantClient) -> None:
        if self._ready:
            return
        if not client.collection_exists(self.collection):
            try:
                client.create_collection(
                    self.collection, vectors_config=qm.VectorParams(size=DIM, distance=qm.Distance.COSINE))
            except UnexpectedResponse as exc:  # another process created it meanwhile
                if exc.status_code != 409:
                    raise
            if not _is_local(client):  # local mode ignores payload indexes and warns about them
                client.create_payload_index(self.collection, "user_id",
                                            qm.KeywordIndexParams(type=qm.KeywordIndexType.KEYWORD, is_tenant=True))
                client.create_payload_index(self.collection, "timestamp", qm.PayloadSchemaType.FLOAT)
        if _is_local(client):
            _fast_local_commits(client, self.collection)
        self._ready = True

    @contextmanager
    def _store(self) -> Iterator[QdrantClient]:
        """The client, its collection ready, under the client's lock; network failures become ours."""
        client = self._connect()
        with _client_lock(client):
            try:
                self._ensure_collection(client)
                yield client
            except ResponseHandlingException as exc:
                raise StoreUnavailableError(
                    f"cannot reach Qdrant at {self.location}: {exc}. Start the server or fix PERSONA_DSPY_QDRANT."
                ) from exc
            except UnexpectedResponse as exc:
                if exc.status_code in (401, 403):
                    raise StoreUnavailableError(
                        f"Qdrant at {self.location} refused access ({exc.status_code}): "
                        "check PERSONA_DSPY_QDRANT_API_KEY.") from exc
                raise

    def close(self) -> None:
        """Release the store (a shared local client is closed by its last user)."""
        with self._open_lock:
            if self._client is not None and self._owns_client:
                if self._local_path is not None:
                    _release_local(self._local_path)
                else:
                    self._client.close()
                self._client = None
            self._local_path, self._ready = None, False

    def __deepcopy__(self, memo: dict) -> EpisodicMemory:
        return self  # a store, not a parameter: copies of an agent share it

    def __enter__(self) -> EpisodicMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writes -------------------------------------------------------------------------------

    def add(self, interactions: Iterable[Interaction | Mapping[str, Any]], *, batch_size: int = 256,
            progress: bool = False) -> int:
        """Upsert interactions; unchanged ones are skipped without re-embedding. Returns points written."""
        items = _validate(interactions)
        written = 0
        with tqdm(total=len(items), disable=not progress, desc="memory", unit="rec") as bar:
            for start in range(0, len(items), batch_size):
                batch = items[start:start + batch_size]
                ids = [point_id(it) for it in batch]
                with self._store() as client:
                    known = {str(p.id): (p.payload or {}).get("content_hash")
                             for p in client.retrieve(self.collection, ids, with_payload=["content_hash"])}
                todo = [(pid, it) for pid, it in zip(ids, batch) if known.get(pid) != it.content_hash]
                if todo:
                    vectors = self.embedder.embed([it.input for _, it in todo])
                    points = [qm.PointStruct(id=pid, vector=vec.tolist(),
                                             payload={**it.model_dump(mode="json"), "content_hash": it.content_hash})
                              for (pid, it), vec in zip(todo, vectors)]
                    with self._store() as client:
                        client.upsert(self.collection, points)
                    written += len(points)
                bar.update(len(batch))
        return written

    def forget(self, user_id: str) -> int:
        """Delete every interaction of one user; returns how many were deleted."""
        with self._store() as client:
            n = client.count(self.collection, count_filter=_user_filter(user_id), exact=True).count
            if n:
                client.delete(self.collection, points_selector=qm.FilterSelector(filter=_user_filter(user_id)))
            return n

    # -- reads (always per user) --------------------------------------------------------------

    def recall(self, user_id: str, query: str, k: int = 5, before: float | None = None) -> list[Episode]:
        """The ``k`` past interactions of ``user_id`` whose input is most similar to ``query``.

        Only interactions with ``timestamp < before`` are considered when ``before`` is given.
        """
        vector = self.embedder.embed_one(query).tolist()
        with self._store() as client:
            hits = client.query_points(self.collection, query=vector, query_filter=_user_filter(user_id, before),
                                       limit=k, with_payload=True).points
        if not hits:
            self._require_user(user_id)
        return [Episode(interaction=_to_interaction(h.payload), score=h.score) for h in hits]

    def recent(self, user_id: str, n: int, before: float | None = None) -> list[Interaction]:
        """The ``n`` latest interactions of ``user_id`` (before ``before``), oldest first."""
        if n <= 0:
            self._require_user(user_id)
            return []
        with self._store() as client:
            records, _ = client.scroll(
                self.collection, scroll_filter=_user_filter(user_id, before), limit=n, with_payload=True,
                order_by=qm.OrderBy(key="timestamp", direction=qm.Direction.DESC))
        if not records:
            self._require_user(user_id)
        return sorted((_to_interaction(r.payload) for r in records), key=lambda it: (it.timestamp, it.id))

    def history(self, user_id: str, before: float | None = None) -> list[Interaction]:
        """All interactions of ``user_id`` (before ``before``) in time order."""
        out: list[Interaction] = []
        offset: Any = None
        with self._store() as client:
            while True:
                records, offset = client.scroll(self.collection, scroll_filter=_user_filter(user_id, before),
                                                limit=1024, offset=offset, with_payload=True)
                out.extend(_to_interaction(r.payload) for r in records)
                if offset is None:
                    break
        if not out:
            self._require_user(user_id)
        return sorted(out, key=lambda it: (it.timestamp, it.id))

    def snapshot(self, user_id: str) -> UserSnapshot:
        """One filtered read of the user's episodes (vectors included) that answers the reads of a
        compile in process; see ``UserSnapshot``. Unknown user -> ``UnknownUserError``."""
        found = self.snapshots([user_id])
        if user_id not in found:
            raise UnknownUserError(user_id)
        return found[user_id]

    def snapshots(self, user_ids: Iterable[str] | None = None) -> dict[str, UserSnapshot]:
        """``snapshot`` of many users in ONE read (``None``: every user, unfiltered); users with no
        episodes are left out.

        What a fleet does per chunk of users: embedded Qdrant tests every stored point against a
        filter in Python, so one read for 64 users costs about what one read for one user does.
        """
        wanted = None if user_ids is None else sorted(set(user_ids))
        if wanted == []:
            return {}
        flt = None if wanted is None else qm.Filter(
            must=[qm.FieldCondition(key="user_id", match=qm.MatchAny(any=wanted))])
        points = []
        offset: Any = None
        with self._store() as client:
            while True:
                records, offset = client.scroll(self.collection, scroll_filter=flt, limit=4096, offset=offset,
                                                with_payload=True, with_vectors=True)
                points.extend(records)
                if offset is None:
                    break
        by_user: dict[str, list[Any]] = {}
        for p in points:
            by_user.setdefault(str((p.payload or {}).get("user_id")), []).append(p)
        return {uid: UserSnapshot(uid, [_to_interaction(p.payload) for p in pts],
                                  np.asarray([p.vector for p in pts], dtype=np.float32), self.embedder)
                for uid, pts in by_user.items()}

    def count(self, user_id: str | None = None) -> int:
        """Number of stored interactions, of one user or of all."""
        with self._store() as client:
            flt = _user_filter(user_id) if user_id is not None else None
            return client.count(self.collection, count_filter=flt, exact=True).count

    def has_user(self, user_id: str) -> bool:
        return self.count(user_id) > 0

    def users(self) -> list[str]:
        """Distinct user ids, sorted (a facet query: local mode supports it too)."""
        with self._store() as client:
            total = client.count(self.collection, exact=True).count
            if not total:
                return []
            hits = client.facet(self.collection, "user_id", limit=total, exact=True).hits
        return sorted(str(h.value) for h in hits)

    def _require_user(self, user_id: str) -> None:
        if not self.has_user(user_id):
            raise UnknownUserError(user_id)
