"""Episodic memory: every user's past interactions in one store, always read per user.

One collection serves all users (multitenancy by a ``user_id`` payload filter, as Qdrant
recommends) and every read is bounded by user and optionally by time (``before``), so an agent
never sees another user's data nor the future of the interaction it is answering.

``PERSONA_DSPY_QDRANT`` picks the engine (``Engine``); the contract is the same on each:

- a folder, or ``edge:<folder>``: Qdrant Edge in process (the default, ``<state_dir>/qdrant``);
- ``http(s)://...``: a Qdrant server;
- ``:memory:``: qdrant-client's in-memory local mode (tests, a few thousand points);
- ``local:<folder>``: qdrant-client's local mode on a folder (the previous default; small stores).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Self

import numpy as np
from pydantic import ValidationError
from qdrant_client import QdrantClient
from tqdm.auto import tqdm

from persona_dspy._values import is_number, is_whole
from persona_dspy.config import Settings
from persona_dspy.data.records import Interaction
from persona_dspy.errors import ConfigurationError, MalformedInteractionError, UnknownUserError
from persona_dspy.memory.client_engine import ClientEngine
from persona_dspy.memory.edge_engine import EdgeEngine
from persona_dspy.memory.embedder import OnnxEmbedder
from persona_dspy.memory.engine import Engine
from persona_dspy.memory.protocol import Episode
from persona_dspy.memory.snapshot import UserSnapshot
from persona_dspy.signatures.tasks import record_problem

__all__ = ["NAMESPACE", "Episode", "EpisodicMemory", "point_id", "validate_batch"]

NAMESPACE = uuid.UUID("8f0b6a1e-4f3c-5d2a-9b7e-2c1d0e9f6a54")
"""Namespace of point ids: ``uuid5(NAMESPACE, interaction.key)`` makes re-ingestion idempotent."""

_INTERACTION_FIELDS = tuple(Interaction.model_fields)


def point_id(interaction: Interaction) -> str:
    """Deterministic Qdrant point id of an interaction (same record -> same point)."""
    return str(uuid.uuid5(NAMESPACE, interaction.key))


def to_interaction(payload: Mapping[str, Any] | None) -> Interaction:
    payload = payload or {}
    return Interaction.model_validate({k: payload[k] for k in _INTERACTION_FIELDS if k in payload})


def validate_batch(records: Iterable[Interaction | Mapping[str, Any]]) -> list[Interaction]:
    """Validate a whole batch before any write: bad records or duplicate keys reject it all."""
    if isinstance(records, (Interaction, Mapping, str, bytes)) or not isinstance(records, Iterable):
        raise MalformedInteractionError(
            f"expected a list of interactions, got one {type(records).__name__}: wrap a single one in a list"
        )
    items: list[Interaction] = []
    seen: dict[str, int] = {}
    for pos, rec in enumerate(records):
        if not isinstance(rec, Interaction):
            if not isinstance(rec, Mapping):
                raise MalformedInteractionError(f"item {pos}: expected an Interaction, got {type(rec).__name__}")
            raw_id = rec.get("id")
            try:
                rec = Interaction.model_validate(rec)
            except ValidationError as exc:
                err = exc.errors()[0]
                raise MalformedInteractionError(
                    f"item {pos}: {err['msg']}",
                    record_id=str(raw_id) if raw_id is not None else None,
                    field=".".join(map(str, err["loc"])) or None,
                ) from exc
        if rec.key in seen:
            raise MalformedInteractionError(
                f"item {pos}: duplicate of item {seen[rec.key]} (same user {rec.user_id!r} and id)",
                record_id=rec.id,
                field="id",
            )
        seen[rec.key] = pos
        items.append(rec)
    for pos, it in enumerate(items):  # the task here, not at the first compile (a KeyError then); the answer
        found = record_problem(it)
        if found:
            raise MalformedInteractionError(f"item {pos}: {found[1]}", record_id=it.id, field=found[0])
    return items


def _check_read(user_id: object, before: object, *, n: object = 0, k: object = 0, query: object = "") -> None:
    """A read's arguments, checked before they reach the engine: a NaN ``before`` panics inside Qdrant Edge
    (a Rust panic, past ``except Exception``), and other types fail deep in it with a bare TypeError."""
    if not isinstance(user_id, str):
        raise ConfigurationError(f"user_id is a string, got {type(user_id).__name__} {user_id!r}")
    if before is not None and not is_number(before):
        raise ConfigurationError(f"before is a time in seconds (a number, not NaN) or None, got {before!r}")
    for name, value in (("n", n), ("k", k)):
        if not is_whole(value):
            raise ConfigurationError(f"{name} is a whole number, got {type(value).__name__} {value!r}")
    if not isinstance(query, str):
        raise ConfigurationError(f"query is a text, got {type(query).__name__}")


def open_engine(settings: Settings, client: QdrantClient | None = None) -> Engine:
    """The engine ``settings.qdrant`` names (see the module docstring); opens it."""
    loc, collection = settings.qdrant_location, settings.collection
    if client is not None:
        return ClientEngine(collection, location=loc, client=client)
    if loc.startswith("local:"):
        return ClientEngine(
            collection, location=loc, local_path=str(Path(loc.removeprefix("local:")).expanduser().resolve())
        )
    if settings.qdrant_is_server:
        key = settings.qdrant_api_key
        return ClientEngine(collection, location=loc, url=loc, api_key=key.get_secret_value() if key else None)
    if loc == ":memory:":
        return ClientEngine(collection, location=loc)
    return EdgeEngine(loc.removeprefix("edge:"), collection)


class EpisodicMemory:
    """All users' interactions in one collection; every read is filtered by user (and time).

    Implements ``Memory``. Nothing is opened or created until the first call. A folder is a Qdrant
    Edge store shared by every ``EpisodicMemory`` of this process (one process per folder),
    ``:memory:`` a private store, a URL a Qdrant server.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        client: QdrantClient | None = None,
        embedder: OnnxEmbedder | None = None,
    ) -> None:
        self.settings = settings
        self.collection = self.settings.collection
        self.embedder = embedder or OnnxEmbedder()
        self._client = client
        self._engine: Engine | None = None
        self._open_lock = threading.Lock()

    @property
    def location(self) -> str:
        return self.settings.qdrant_location

    def engine(self) -> Engine:
        """The open engine (opened on first use)."""
        with self._open_lock:
            if self._engine is None:
                self._engine = open_engine(self.settings, self._client)
            return self._engine

    def close(self) -> None:
        """Release the store (a folder shared in this process is closed by its last user)."""
        with self._open_lock:
            if self._engine is not None:
                self._engine.close()
                self._engine = None

    def __deepcopy__(self, memo: dict) -> EpisodicMemory:
        return self  # a store, not a parameter: copies of an agent share it

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writes -------------------------------------------------------------------------------

    def add(
        self, interactions: Iterable[Interaction | Mapping[str, Any]], *, batch_size: int = 256, progress: bool = False
    ) -> int:
        """Upsert interactions in batches of ``batch_size`` (one store write each); unchanged ones
        are skipped without re-embedding. Returns points written.

        The whole input is validated first: a malformed record writes nothing. A batch is written
        atomically; a process killed between batches leaves the earlier ones, and re-adding the
        same input completes the rest.
        """
        items = validate_batch(interactions)
        engine = self.engine()
        written = 0
        with tqdm(total=len(items), disable=not progress, desc="memory", unit="rec") as bar:
            for start in range(0, len(items), batch_size):
                batch = items[start : start + batch_size]
                ids = [point_id(it) for it in batch]
                known = engine.content_hashes(ids, [it.user_id for it in batch])
                todo = [
                    (pid, it, digest) for pid, it in zip(ids, batch) if known.get(pid) != (digest := it.content_hash)
                ]
                if todo:
                    vectors = self.embedder.embed([it.input for _, it, _ in todo])
                    engine.upsert(
                        [pid for pid, _, _ in todo],
                        vectors,
                        [{**it.model_dump(mode="json"), "content_hash": digest} for _, it, digest in todo],
                    )
                    written += len(todo)
                bar.update(len(batch))
        return written

    def changed(self, interactions: Iterable[Interaction], *, batch_size: int = 256) -> list[Interaction]:
        """The ``interactions`` stored under the same user and id with other content: the ones ``add``
        would overwrite (a read; new and unchanged ones are not listed)."""
        items = list(interactions)
        engine, out = self.engine(), []
        for start in range(0, len(items), batch_size):
            batch = items[start : start + batch_size]
            ids = [point_id(it) for it in batch]
            known = engine.content_hashes(ids, [it.user_id for it in batch])
            out += [it for pid, it in zip(ids, batch) if known.get(pid) not in (None, it.content_hash)]
        return out

    def forget(self, user_id: str) -> int:
        """Delete every interaction of one user; returns how many were deleted."""
        return self.engine().delete_user(user_id)

    # -- reads (always per user) --------------------------------------------------------------

    def recall(self, user_id: str, query: str, k: int = 5, before: float | None = None) -> list[Episode]:
        """The ``k`` past interactions of ``user_id`` whose input is most similar to ``query``.

        Only interactions with ``timestamp < before`` are considered when ``before`` is given.
        """
        _check_read(user_id, before, k=k, query=query)
        vector = self.embedder.embed_one(query)
        hits = self.engine().search(user_id, vector, k, before) if k > 0 else []
        if not hits:
            self._require_user(user_id)
        return [Episode(interaction=to_interaction(payload), score=score) for payload, score in hits]

    def recent(self, user_id: str, n: int, before: float | None = None) -> list[Interaction]:
        """The ``n`` latest interactions of ``user_id`` (before ``before``), oldest first."""
        _check_read(user_id, before, n=n)
        records = self.engine().latest(user_id, n, before) if n > 0 else []
        if not records:
            self._require_user(user_id)
        return sorted((to_interaction(r) for r in records), key=lambda it: (it.timestamp, it.id))

    def history(self, user_id: str, before: float | None = None) -> list[Interaction]:
        """All interactions of ``user_id`` (before ``before``) in time order."""
        _check_read(user_id, before)
        out = [to_interaction(payload) for payload, _ in self.engine().scan([user_id], before, with_vectors=False)]
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

    def snapshots(self, user_ids: Iterable[str]) -> dict[str, UserSnapshot]:
        """``snapshot`` of many users in one filtered read; users with no episodes are left out."""
        wanted = sorted(set(user_ids))
        if not wanted:
            return {}
        by_user: dict[str, tuple[list[Interaction], list[np.ndarray]]] = {}
        for payload, vector in self.engine().scan(wanted, None, with_vectors=True):
            assert vector is not None  # scan(with_vectors=True) yields every point's vector
            items, vectors = by_user.setdefault(str(payload.get("user_id")), ([], []))
            items.append(to_interaction(payload))
            vectors.append(vector)
        return {
            uid: UserSnapshot(uid, items, np.asarray(vectors, dtype=np.float32), self.embedder)
            for uid, (items, vectors) in by_user.items()
        }

    def count(self, user_id: str | None = None) -> int:
        """Number of stored interactions, of one user or of all."""
        return self.engine().count(user_id)

    def has_user(self, user_id: str) -> bool:
        return self.count(user_id) > 0

    def users(self) -> list[str]:
        """Distinct user ids, sorted."""
        return self.engine().users()

    def _require_user(self, user_id: str) -> None:
        if not self.has_user(user_id):
            raise UnknownUserError(user_id)
