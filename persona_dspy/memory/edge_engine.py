"""``Engine`` on Qdrant Edge (``qdrant-edge-py``): Qdrant's own Rust engine, in process, in a folder.

The folder holds one Edge shard per collection (``<folder>/<collection>/``) with the indexes a
Qdrant server would get: a tenant keyword index on ``user_id`` and a float range index on
``timestamp``, so a user's read touches that user's points only (top-5 in 0.13 ms at 100k and
at 1M points, where qdrant-client's local mode takes 1.3 s at 100k; BENCHMARKS.md, "Memory").

One process per folder. Edge 0.9 locks the shard's write-ahead log, so a second process fails
with an opaque ``Can't init WAL: Kind(WouldBlock)``; we take an OS lock (``fcntl.flock`` on
``<folder>/<collection>.lock``) before opening, which also covers creating the shard, and raise
``StoreUnavailableError`` saying what to do. Inside one process every ``EpisodicMemory`` of the
folder shares one shard (the engine is thread-safe).

Segments: Edge runs no background optimizer; points stay in one appendable segment, which the
tenant index keeps fast, and HNSW is never built (``indexing_threshold=0``: every read is filtered
to one user, a few hundred points, which exact scoring answers faster than a graph). ``forget``
leaves tombstones; ``optimize()`` vacuums them, see ``_vacuum``.
"""

from __future__ import annotations

import atexit
import fcntl
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import numpy as np
import qdrant_edge as qe

from persona_dspy.compat.qdrant import is_local_folder
from persona_dspy.errors import StoreUnavailableError
from persona_dspy.memory.embedder import DIM
from persona_dspy.memory.engine import Payload

EDGE_CONFIG_FILE = "edge_config.json"
SCROLL_PAGE = 4096


def edge_config() -> qe.EdgeConfig:
    return qe.EdgeConfig(
        vectors=qe.EdgeVectorParams(size=DIM, distance=qe.Distance.Cosine),
        optimizers=qe.EdgeOptimizersConfig(indexing_threshold=0),
    )


class _OpenShard:
    """A shard open in this process, its folder lock, and how many engines use it."""

    def __init__(self, shard: qe.EdgeShard, lock: IO[str]) -> None:
        self.shard, self.lock, self.refs, self.removed = shard, lock, 0, 0

    def close(self) -> None:
        try:
            _vacuum(self)
            self.shard.flush()
            self.shard.close()
        finally:
            self.lock.close()  # releases the flock


_OPEN: dict[str, _OpenShard] = {}
_GUARD = threading.Lock()


def _vacuum(entry: _OpenShard) -> None:
    """On close, after a ``forget``: let Edge's planner vacuum the segments it finds worth it.

    Edge vacuums a segment once 20% of it is deleted (and it holds >= 1000 vectors); below that
    ``optimize()`` returns at once. Measured (BENCHMARKS.md): tombstones do not slow user-filtered
    reads (the tenant index skips them), they only hold disk; the vacuum took 1.6 s after a third of
    100k points were forgotten, so it runs at close, never on a read path.
    """
    if entry.removed:
        entry.shard.optimize()
        entry.removed = 0


def legacy_folder_error(folder: Path) -> StoreUnavailableError:
    return StoreUnavailableError(
        f"{folder} was written by qdrant-client's local mode, the previous embedded engine. Convert it to "
        f"Qdrant Edge with: persona-dspy memory migrate {folder} (the old data is kept in a backup folder), "
        f"or keep the slow engine with PERSONA_DSPY_QDRANT=local:{folder}."
    )


def _lock(folder: Path, collection: str) -> IO[str]:
    path = folder / f"{collection}.lock"
    handle = open(path, "a+")  # noqa: SIM115 (held open: closing it releases the lock)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise StoreUnavailableError(
            f"the Qdrant Edge folder {folder} is in use by {holder}: an embedded store allows one process per "
            "folder. Close that process, give this one its own folder (PERSONA_DSPY_QDRANT=<folder>), or run a "
            "Qdrant server and set PERSONA_DSPY_QDRANT=http://HOST:6333 for concurrent access."
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"process {os.getpid()}\n")
    handle.flush()
    return handle


def _open(folder: Path, collection: str) -> qe.EdgeShard:
    path = folder / collection
    try:
        if (path / EDGE_CONFIG_FILE).is_file():
            shard = qe.EdgeShard.load(str(path))
        else:
            shard = qe.EdgeShard.create(str(path), edge_config())
        indexed = shard.info().payload_schema
        if "user_id" not in indexed:
            shard.update(qe.UpdateOperation.create_field_index("user_id", qe.KeywordIndexParams(is_tenant=True)))
        if "timestamp" not in indexed:
            shard.update(qe.UpdateOperation.create_field_index("timestamp", qe.PayloadSchemaType.Float))
    except Exception as exc:  # qdrant_edge raises plain Exception ("Service runtime error: ...")
        if "WouldBlock" in str(exc):
            raise StoreUnavailableError(f"the Qdrant Edge shard {path} is open in another process: close it.") from exc
        raise StoreUnavailableError(
            f"cannot open the Qdrant Edge shard {path}: {exc}. If a file of it was truncated or emptied, "
            "restore the folder from a backup, or move it away and ingest the users' histories again."
        ) from exc
    return shard


def _acquire(folder: Path, collection: str) -> _OpenShard:
    key = str(folder / collection)
    with _GUARD:
        entry = _OPEN.get(key)
        if entry is None:
            if is_local_folder(folder):
                raise legacy_folder_error(folder)
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreUnavailableError(f"cannot create the Qdrant folder {folder}: {exc}") from exc
            lock = _lock(folder, collection)
            try:
                entry = _OPEN[key] = _OpenShard(_open(folder, collection), lock)
            except BaseException:
                lock.close()
                raise
        entry.refs += 1
        return entry


def _release(folder: Path, collection: str) -> None:
    key = str(folder / collection)
    with _GUARD:
        entry = _OPEN[key]
        entry.refs -= 1
        if entry.refs == 0:
            del _OPEN[key]
            entry.close()


@atexit.register
def _close_all() -> None:
    """Flush and close shards a caller left open (the WAL would replay them anyway, only slower)."""
    with _GUARD:
        for entry in _OPEN.values():
            entry.close()
        _OPEN.clear()


def _user_filter(user_id: str, before: float | None) -> qe.Filter:
    must: list[qe.ConditionType] = [qe.FieldCondition(key="user_id", match=qe.MatchValue(user_id))]
    if before is not None:
        must.append(qe.FieldCondition(key="timestamp", range=qe.RangeFloat(lt=before)))
    return qe.Filter(must=must)


def _users_filter(user_ids: list[str], before: float | None) -> qe.Filter:
    must: list[qe.ConditionType] = [qe.FieldCondition(key="user_id", match=qe.MatchAny(user_ids))]
    if before is not None:
        must.append(qe.FieldCondition(key="timestamp", range=qe.RangeFloat(lt=before)))
    return qe.Filter(must=must)


class EdgeEngine:
    """One collection as an Edge shard in ``folder``; opened (created, locked) on construction."""

    def __init__(self, folder: str | Path, collection: str) -> None:
        self.folder = Path(folder).expanduser().resolve()
        self.collection = collection
        self.location = str(self.folder)
        self._entry: _OpenShard | None = _acquire(self.folder, collection)
        self.shard = self._entry.shard

    def close(self) -> None:
        if self._entry is not None:
            self._entry = None
            _release(self.folder, self.collection)

    # -- Engine -----------------------------------------------------------------------------

    def content_hashes(self, ids: list[str]) -> dict[str, str | None]:
        point_ids: list[qe.PointId] = list(ids)
        found = self.shard.retrieve(point_ids, with_payload=["content_hash"], with_vector=False)
        return {str(r.id): (r.payload or {}).get("content_hash") for r in found}

    def upsert(self, ids: list[str], vectors: np.ndarray, payloads: list[Payload]) -> None:
        points = [qe.Point(i, v.tolist(), p) for i, v, p in zip(ids, vectors, payloads)]
        self.shard.update(qe.UpdateOperation.upsert_points(points))

    def search(self, user_id: str, vector: np.ndarray, k: int, before: float | None) -> list[tuple[Payload, float]]:
        hits = self.shard.query(
            qe.QueryRequest(
                limit=k,
                query=qe.Query.Nearest(vector.tolist()),
                filter=_user_filter(user_id, before),
                with_payload=True,
            )
        )
        return [(h.payload or {}, h.score) for h in hits]

    def latest(self, user_id: str, n: int, before: float | None) -> list[Payload]:
        records, _ = self.shard.scroll(
            qe.ScrollRequest(
                limit=n,
                filter=_user_filter(user_id, before),
                with_payload=True,
                order_by=qe.OrderBy("timestamp", direction=qe.Direction.Desc),
            )
        )
        return [r.payload or {} for r in records]

    def scan(
        self, user_ids: list[str], before: float | None, with_vectors: bool
    ) -> Iterator[tuple[Payload, np.ndarray | None]]:
        flt = _users_filter(user_ids, before)
        offset = None
        while True:
            records, offset = self.shard.scroll(
                qe.ScrollRequest(
                    offset=offset, limit=SCROLL_PAGE, filter=flt, with_payload=True, with_vector=with_vectors
                )
            )
            for r in records:
                yield r.payload or {}, np.asarray(r.vector, dtype=np.float32) if with_vectors else None
            if offset is None:
                return

    def count(self, user_id: str | None) -> int:
        return self.shard.count(
            qe.CountRequest(exact=True, filter=None if user_id is None else _user_filter(user_id, None))
        )

    def users(self) -> list[str]:
        total = self.count(None)
        if not total:
            return []
        hits = self.shard.facet(qe.FacetRequest("user_id", limit=total, exact=True)).hits
        return sorted(str(h.value) for h in hits if h.count > 0)  # 0.9 keeps forgotten users with count 0

    def delete_user(self, user_id: str) -> int:
        n = self.count(user_id)
        if n:
            self.shard.update(qe.UpdateOperation.delete_points_by_filter(_user_filter(user_id, None)))
            if self._entry is not None:
                self._entry.removed += n
        return n
