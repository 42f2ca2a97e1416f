"""The few primitives a vector engine gives ``EpisodicMemory``; each engine translates them to its API.

Payloads are the JSON of an ``Interaction`` plus its ``content_hash``; ids are ``point_id`` uuids.
Every per-user primitive filters on ``user_id`` and, with ``before``, on ``timestamp < before``
inside the engine, so the contract (no other user, no future) never depends on the caller.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

import numpy as np

Payload = dict[str, Any]


class Engine(Protocol):
    location: str

    def content_hashes(self, ids: list[str], users: list[str] | None = None) -> dict[str, str | None]:
        """``content_hash`` of the stored points among ``ids`` (missing ids are absent); ``users``, the
        user of each id, lets an engine partitioned by user ask only those users' partitions."""
        ...

    def upsert(self, ids: list[str], vectors: np.ndarray, payloads: list[Payload]) -> None:
        """Write one batch (one engine operation)."""
        ...

    def search(self, user_id: str, vector: np.ndarray, k: int, before: float | None) -> list[tuple[Payload, float]]:
        """Top-``k`` by cosine similarity, best first."""
        ...

    def latest(self, user_id: str, n: int, before: float | None) -> list[Payload]:
        """The ``n`` points with the largest timestamps, any order."""
        ...

    def scan(
        self, user_ids: list[str], before: float | None, with_vectors: bool
    ) -> Iterator[tuple[Payload, np.ndarray | None]]:
        """Every point of these users, in no particular order."""
        ...

    def count(self, user_id: str | None) -> int: ...

    def users(self) -> list[str]: ...

    def delete_user(self, user_id: str) -> int:
        """Delete every point of one user; returns how many there were."""
        ...

    def close(self) -> None: ...
