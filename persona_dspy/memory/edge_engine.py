"""``Engine`` on Qdrant Edge (``qdrant-edge-py``): Qdrant's own Rust engine, in process, in a folder.

Layout: a collection is ``SHARDS`` (4) Edge shards, ``<folder>/<collection>/00`` .. ``03``, named in
``<collection>/shards.json``; a user's points all live in shard ``crc32(user_id) % 4`` (``shard_of``).
Each shard has the indexes a Qdrant server would get: a tenant keyword index on ``user_id`` and a
float range index on ``timestamp``, so a user's read touches that user's points only (top-5 in
~0.13 ms at 100k and at 1M points, where qdrant-client's local mode takes 1.3 s at 100k;
BENCHMARKS.md, "Memory"). A store written before the split (one shard, ``<collection>/`` itself
holds ``edge_config.json``) is read and written as it is, as one shard.

Shards are loaded when first read, not at open: loading is Edge reading every point of a shard
into RAM (~2.3 us per point here, holding the GIL, so threads cannot overlap it). A reopened 1M
store answers its first user after loading that user's shard (1/4 of the points); reads of all
users (``count()``, ``users()``) load the rest; a write loads the shards of the users it writes. Metadata files of every shard are checked at open, so an emptied file
is reported then rather than at the first read of its shard.

Payloads are stored packed (``pack``): ``user_id``, ``timestamp`` and ``content_hash`` as keys (the
indexes, the filters and the idempotence check read them), everything else as one JSON string;
the binding converts payloads key by key, and 4 keys instead of 8 is a quarter of the store-side
ingest cost. Every read unpacks; points written unpacked by earlier versions read as they are.

One process per folder. Edge 0.9 locks the shard's write-ahead log, so a second process fails
with an opaque ``Can't init WAL: Kind(WouldBlock)``; we take an OS lock (``fcntl.flock`` on
``<folder>/<collection>.lock``) before opening, which also covers creating the shards, and raise
``StoreUnavailableError`` saying what to do. Inside one process every ``EpisodicMemory`` of the
folder shares the open shards (the engine is thread-safe).

Segments: Edge runs no background optimizer; points stay in one appendable segment per shard,
which the tenant index keeps fast, and HNSW is never built (``indexing_threshold=0``: every read is
filtered to one user, a few hundred points, which exact scoring answers faster than a graph).
``forget`` leaves tombstones; ``optimize()`` vacuums them, see ``_vacuum``.
"""

from __future__ import annotations

import atexit
import fcntl
import json
import os
import threading
import uuid
import zlib
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import IO, cast

import numpy as np
import qdrant_edge as qe

from persona_dspy.compat.qdrant import is_local_folder
from persona_dspy.errors import StoreUnavailableError
from persona_dspy.memory.embedder import DIM
from persona_dspy.memory.engine import Payload

EDGE_CONFIG_FILE = "edge_config.json"
SHARDS_FILE = "shards.json"
SHARDS = 4
"""Shards of a new collection (by ``shard_of(user_id)``): a reopened store loads only the shards it reads."""
SCROLL_PAGE = 4096


def edge_config() -> qe.EdgeConfig:
    return qe.EdgeConfig(
        vectors=qe.EdgeVectorParams(size=DIM, distance=qe.Distance.Cosine),
        optimizers=qe.EdgeOptimizersConfig(indexing_threshold=0),
    )


class _OpenStore:
    """A collection open in this process: its folder lock, its shards (each loaded on first use),
    how many engines use it, and which shards served a ``forget`` (vacuumed at close)."""

    def __init__(self, folder: Path, names: list[str], lock: IO[str]) -> None:
        self.folder, self.names, self.lock = folder, names, lock
        self.shards: list[qe.EdgeShard | None] = [None] * len(names)
        self.loading = threading.Lock()
        self.refs = 0
        self.removed: set[int] = set()
        self.closed = False

    def shard(self, index: int) -> qe.EdgeShard:
        shard = self.shards[index]
        if shard is None:
            if self.closed:
                raise StoreUnavailableError(f"the Qdrant Edge store {self.folder} was closed: open it again")
            with self.loading:
                shard = self.shards[index]
                if shard is None:
                    self._check_made(self.names[index])
                    shard = self.shards[index] = _open(self.folder, self.names[index])
        return shard

    def _check_made(self, name: str) -> None:
        """A shard folder the layout made up front and gone now held users: never recreate it empty."""
        path = self.folder / name
        lost = "/" in name and not path.exists() and not (self.folder / f"{name}.replaced").is_dir()
        if lost and _made_folders(self.folder, name.split("/")[0]):
            raise StoreUnavailableError(
                f"the Qdrant Edge shard folder {path} is missing (the store's layout made it): its users' "
                "interactions are lost, not empty. Restore the folder from a backup, or move the store away and "
                "ingest the users' histories again; nothing was written."
            )

    def all(self) -> list[qe.EdgeShard]:
        return [self.shard(i) for i in range(len(self.names))]

    def close(self) -> None:
        try:
            with self.loading:
                self.closed = True
                for index, shard in enumerate(self.shards):
                    if shard is not None:
                        if index in self.removed:
                            _vacuum(shard)
                        shard.close()  # flushes (~70 ms a shard here, as much as a flush() before it)
                self.shards = [None] * len(self.names)
                self.removed.clear()
        finally:
            self.lock.close()  # releases the flock


_OPEN: dict[str, _OpenStore] = {}
_GUARD = threading.Lock()


def _vacuum(shard: qe.EdgeShard) -> None:
    """On close, after a ``forget``: let Edge's planner vacuum the segments it finds worth it.

    Edge vacuums a segment once 20% of it is deleted (and it holds >= 1000 vectors); below that
    ``optimize()`` returns at once. Measured (BENCHMARKS.md): tombstones do not slow user-filtered
    reads (the tenant index skips them), they only hold disk; the vacuum took 1.6 s after a third of
    100k points were forgotten, so it runs at close, never on a read path.
    """
    shard.optimize()


def shard_of(user_id: str, shards: int) -> int:
    """The shard of a user: a stable hash (crc32) of its id, the same in every process and release."""
    return zlib.crc32(user_id.encode()) % shards if shards > 1 else 0


def shard_names(folder: Path, collection: str) -> list[str]:
    """The Edge shard folders of a collection, relative to ``folder``, in shard order.

    ``<collection>/shards.json`` present: ``<collection>/00`` .. ``<collection>/NN`` (the layout of
    new stores); otherwise the single shard ``<collection>`` (stores written before the split, read
    as they are). Missing collection: the single-shard name (see ``_acquire`` for what is created).
    """
    layout = folder / collection / SHARDS_FILE
    if layout.is_file():
        try:
            count = int(json.loads(layout.read_text())["shards"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StoreUnavailableError(
                f"cannot read {layout}: {exc}. Restore the folder from a backup, or write "
                f'{{"shards": N}} with N the number of numbered shard folders in {layout.parent}.'
            ) from exc
        return [f"{collection}/{i:02d}" for i in range(count)]
    return [collection]


def _create_layout(folder: Path, collection: str) -> None:
    """A new collection: ``SHARDS`` shard folders, made empty now (each shard is created in its folder on
    first use), then named in ``shards.json`` (written atomically, last) with ``"folders": "made"``: from then
    on a missing shard folder is a lost one (``_open``), not one never used."""
    root = folder / collection
    root.mkdir(parents=True, exist_ok=True)
    for i in range(SHARDS):
        (root / f"{i:02d}").mkdir(exist_ok=True)
    tmp = root / f"{SHARDS_FILE}.tmp"
    tmp.write_text(json.dumps({"shards": SHARDS, "folders": "made"}) + "\n")
    os.replace(tmp, root / SHARDS_FILE)


def _made_folders(folder: Path, collection: str) -> bool:
    """Whether the collection's layout made every shard folder up front (stores before it made them lazily)."""
    try:
        return json.loads((folder / collection / SHARDS_FILE).read_text()).get("folders") == "made"
    except (OSError, ValueError, AttributeError):
        return False


def legacy_folder_error(folder: Path) -> StoreUnavailableError:
    return StoreUnavailableError(
        f"{folder} was written by qdrant-client's local mode, the previous embedded engine. Convert it to "
        f"Qdrant Edge with: persona-dspy memory migrate {folder} (the old data is kept in a backup folder), "
        f"or keep the slow engine with PERSONA_DSPY_QDRANT=local:{folder}."
    )


def _lock(folder: Path, collection: str) -> IO[str]:
    path = folder / f"{collection}.lock"
    try:
        handle = open(path, "a+")  # noqa: SIM115 (held open: closing it releases the lock)
    except OSError as exc:  # a read-only mount, a folder of another user, ...
        raise StoreUnavailableError(
            f"cannot open the lock file {path} of the Qdrant Edge folder {folder} for writing ({exc.strerror}): "
            "the embedded store needs a writable folder, even to read. Make it writable, or point "
            "PERSONA_DSPY_STATE_DIR (or PERSONA_DSPY_QDRANT) at a writable copy; nothing was changed."
        ) from exc
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


def _open(folder: Path, name: str) -> qe.EdgeShard:
    """Load (or create) the Edge shard ``folder/name`` with its two payload indexes."""
    path = folder / name
    replaced = folder / f"{name}.replaced"
    if not path.exists() and replaced.is_dir():  # a compaction killed between its two renames: complete
        replaced.rename(path)
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


_METADATA = ("edge_config.json", "wal/open-*", "segments/*/version.info", "segments/*/segment.json")


def _check_files(folder: Path, names: list[str]) -> None:
    """An emptied metadata file of any shard, reported at open (shards are loaded only when first read)."""
    for name in names:
        for pattern in _METADATA:
            for file in (folder / name).glob(pattern):
                if file.is_file() and file.stat().st_size == 0:
                    raise StoreUnavailableError(
                        f"cannot open the Qdrant Edge shard {folder / name}: {file} is empty; restore the folder "
                        "from a backup, or move it away and ingest the users' histories again."
                    )


def _acquire(folder: Path, collection: str) -> _OpenStore:
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
                root = folder / collection
                if not root.exists() and not (folder / f"{collection}.replaced").exists():
                    _create_layout(folder, collection)
                names = shard_names(folder, collection)
                _check_files(folder, names)
                entry = _OPEN[key] = _OpenStore(folder, names, lock)
            except OSError as exc:
                lock.close()
                raise StoreUnavailableError(
                    f"cannot create the Qdrant Edge store {folder / collection}: {exc}"
                ) from exc
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


def _point_id(pid: str) -> qe.PointId:
    """A uuid string as a ``UUID`` (the binding reads it ~2x faster than the string); other ids as given."""
    try:
        return uuid.UUID(pid)
    except ValueError:
        return pid


def _vector(row: np.ndarray) -> list[float]:
    """A float32 vector for the binding: an ``array('f')`` is one copy, where ``tolist()`` builds 384
    Python floats (~14 us a point here); Edge reads any float sequence to the same f32 values (its
    stubs say ``list[float]``, hence the cast)."""
    return cast("list[float]", array("f", np.ascontiguousarray(row, dtype=np.float32).tobytes()))


PACKED = "episode"
"""Payload key of the JSON of every field but the three Edge reads itself (``FLAT``)."""
FLAT = ("user_id", "timestamp", "content_hash")


def pack(payload: Payload) -> Payload:
    """The stored form of a payload: ``FLAT`` keys as they are, the rest as one JSON string.

    The binding converts a payload key by key (~4 us each, measured): 4 keys instead of 8 is ~25 us
    less per point written, a quarter of the store-side ingest. The indexes, the filters and the
    ``content_hash`` check only ever read the flat keys.
    """
    out = {k: payload[k] for k in FLAT if k in payload}
    rest = {k: v for k, v in payload.items() if k not in FLAT}
    if rest:
        out[PACKED] = json.dumps(rest, ensure_ascii=False, separators=(",", ":"))
    return out


def unpack(payload: Payload | None) -> Payload:
    """A stored payload as it was given to ``upsert`` (points written unpacked are returned as stored)."""
    if not payload:
        return {}
    if PACKED not in payload:
        return payload
    out = json.loads(payload[PACKED])
    out.update((k, v) for k, v in payload.items() if k != PACKED)
    return out


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
    """One collection as Edge shards in ``folder``; locked on construction, each shard loaded on first use."""

    def __init__(self, folder: str | Path, collection: str) -> None:
        self.folder = Path(folder).expanduser().resolve()
        self.collection = collection
        self.location = str(self.folder)
        self._entry: _OpenStore | None = _acquire(self.folder, collection)
        self._store = self._entry
        self.shards = len(self._store.names)

    def close(self) -> None:
        if self._entry is not None:
            self._entry = None
            _release(self.folder, self.collection)

    def shard(self, user_id: str) -> qe.EdgeShard:
        """The (loaded) shard that holds ``user_id``'s points."""
        return self._store.shard(shard_of(user_id, self.shards))

    def retrieve(self, ids: list[str]) -> dict[str, tuple[Payload, np.ndarray | None]]:
        """Stored points among ``ids``: payload (as given to ``upsert``) and vector; missing ids are absent."""
        point_ids: list[qe.PointId] = list(ids)
        out: dict[str, tuple[Payload, np.ndarray | None]] = {}
        for shard in self._store.all():
            for r in shard.retrieve(point_ids, with_payload=True, with_vector=True):
                vector = None if r.vector is None else np.asarray(r.vector, dtype=np.float32)
                out[str(r.id)] = (unpack(r.payload), vector)
        return out

    # -- Engine -----------------------------------------------------------------------------

    def content_hashes(self, ids: list[str], users: list[str] | None = None) -> dict[str, str | None]:
        """With ``users`` (the user of each id), only those users' shards are asked (and loaded): a
        point is always written to its user's shard. Without, every shard (an id alone does not
        name its user)."""
        out: dict[str, str | None] = {}
        if users is None:
            groups = {index: ids for index in range(self.shards)}
        else:
            groups = {}
            for pid, user in zip(ids, users, strict=True):
                groups.setdefault(shard_of(user, self.shards), []).append(pid)
        for index, group in groups.items():
            point_ids = [_point_id(i) for i in group]
            for r in self._store.shard(index).retrieve(point_ids, with_payload=["content_hash"], with_vector=False):
                out[str(r.id)] = (r.payload or {}).get("content_hash")
        return out

    def upsert(self, ids: list[str], vectors: np.ndarray, payloads: list[Payload]) -> None:
        by_shard: dict[int, list[qe.Point]] = {}
        rows = np.ascontiguousarray(vectors, dtype=np.float32)
        for pid, row, payload in zip(ids, rows, payloads):
            by_shard.setdefault(shard_of(str(payload.get("user_id", "")), self.shards), []).append(
                qe.Point(pid, _vector(row), pack(payload))
            )
        for index, points in by_shard.items():
            self._store.shard(index).update(qe.UpdateOperation.upsert_points(points))

    def search(self, user_id: str, vector: np.ndarray, k: int, before: float | None) -> list[tuple[Payload, float]]:
        hits = self.shard(user_id).query(
            qe.QueryRequest(
                limit=k,
                query=qe.Query.Nearest(_vector(vector)),
                filter=_user_filter(user_id, before),
                with_payload=True,
            )
        )
        return [(unpack(h.payload), h.score) for h in hits]

    def latest(self, user_id: str, n: int, before: float | None) -> list[Payload]:
        records, _ = self.shard(user_id).scroll(
            qe.ScrollRequest(
                limit=n,
                filter=_user_filter(user_id, before),
                with_payload=True,
                order_by=qe.OrderBy("timestamp", direction=qe.Direction.Desc),
            )
        )
        return [unpack(r.payload) for r in records]

    def scan(
        self, user_ids: list[str], before: float | None, with_vectors: bool
    ) -> Iterator[tuple[Payload, np.ndarray | None]]:
        by_shard: dict[int, list[str]] = {}
        for user_id in user_ids:
            by_shard.setdefault(shard_of(user_id, self.shards), []).append(user_id)
        for index, users in sorted(by_shard.items()):
            shard, flt, offset = self._store.shard(index), _users_filter(users, before), None
            while True:
                records, offset = shard.scroll(
                    qe.ScrollRequest(
                        offset=offset, limit=SCROLL_PAGE, filter=flt, with_payload=True, with_vector=with_vectors
                    )
                )
                for r in records:
                    yield unpack(r.payload), np.asarray(r.vector, dtype=np.float32) if with_vectors else None
                if offset is None:
                    break

    def count(self, user_id: str | None) -> int:
        if user_id is not None:
            return self.shard(user_id).count(qe.CountRequest(exact=True, filter=_user_filter(user_id, None)))
        return sum(shard.count(qe.CountRequest(exact=True)) for shard in self._store.all())

    def users(self) -> list[str]:
        found: set[str] = set()
        for shard in self._store.all():
            total = shard.count(qe.CountRequest(exact=True))
            if total:
                hits = shard.facet(qe.FacetRequest("user_id", limit=total, exact=True)).hits
                found.update(str(h.value) for h in hits if h.count > 0)  # 0.9 keeps forgotten users with count 0
        return sorted(found)

    def delete_user(self, user_id: str) -> int:
        n = self.count(user_id)
        if n:
            self.shard(user_id).update(qe.UpdateOperation.delete_points_by_filter(_user_filter(user_id, None)))
            self._store.removed.add(shard_of(user_id, self.shards))
        return n
