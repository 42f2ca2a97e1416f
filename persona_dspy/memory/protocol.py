"""What every episodic memory answers: the ``Memory`` protocol and the ``Episode`` it recalls.

The agent, its tools, the optimizers, the evaluation and the fleet type what they receive as
``Memory`` (or ``MemoryReader`` when they only read): ``EpisodicMemory`` (Qdrant Edge in a folder,
qdrant-client for ``:memory:`` and server URLs) and ``UserSnapshot`` (one user's episodes in
process) answer the same reads under the same contract, so none of them asks which one it got.

Contract of every read: only ``user_id``'s interactions; with ``before``, only those with
``timestamp < before`` (strict); a user with no stored interaction raises ``UnknownUserError``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol, Self, runtime_checkable

from pydantic import BaseModel, ConfigDict

from persona_dspy.data.records import Interaction


class Episode(BaseModel):
    """A recalled interaction and its cosine similarity to the query."""

    model_config = ConfigDict(frozen=True)

    interaction: Interaction
    score: float


@runtime_checkable
class MemoryReader(Protocol):
    """The reads an agent and its tools make about one user at a time."""

    def recall(self, user_id: str, query: str, k: int = 5, before: float | None = None) -> list[Episode]:
        """The ``k`` interactions whose input is most similar to ``query``, best first."""
        ...

    def recent(self, user_id: str, n: int, before: float | None = None) -> list[Interaction]:
        """The ``n`` latest interactions, oldest first."""
        ...

    def history(self, user_id: str, before: float | None = None) -> list[Interaction]:
        """All interactions in time order."""
        ...

    def count(self, user_id: str | None = None) -> int:
        """Stored interactions of one user (or of all users this memory holds)."""
        ...

    def has_user(self, user_id: str) -> bool: ...

    def users(self) -> list[str]:
        """Distinct user ids, sorted."""
        ...

    def snapshot(self, user_id: str) -> MemoryReader:
        """The user's episodes read once, answering further reads in process (``UserSnapshot``)."""
        ...


@runtime_checkable
class Memory(MemoryReader, Protocol):
    """A store: the reads, plus writes, bulk snapshots and its lifetime."""

    def add(
        self, interactions: Iterable[Interaction | Mapping[str, Any]], *, batch_size: int = 256, progress: bool = False
    ) -> int:
        """Upsert a validated batch (all or nothing); returns the points written."""
        ...

    def forget(self, user_id: str) -> int:
        """Delete every interaction of one user; returns how many were deleted."""
        ...

    def snapshots(self, user_ids: Iterable[str]) -> Mapping[str, MemoryReader]:
        """``snapshot`` of many users; users with no episodes are left out."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc: object) -> None: ...
