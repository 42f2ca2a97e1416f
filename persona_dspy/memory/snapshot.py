"""A read-only, in-process copy of ONE user's episodes, answering like ``EpisodicMemory``.

A compile asks memory ~30 questions about one user (a recall, the answer statistics and more per
replay). The optimizer reads the user's episodes once (one filtered scan, vectors included) and
answers the rest here in microseconds, without a store round trip; a Ray task receives it pickled.
Reads keep the same contract (``MemoryReader``): only this user, and ``before`` excludes everything
at or after it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from persona_dspy.data.records import Interaction
from persona_dspy.errors import ConfigurationError, UnknownUserError
from persona_dspy.memory.protocol import Episode

if TYPE_CHECKING:
    from persona_dspy.memory.embedder import OnnxEmbedder


class UserSnapshot:
    """``MemoryReader`` over one user's episodes (``recall`` scores them exactly, like the stores)."""

    def __init__(
        self, user_id: str, interactions: list[Interaction], vectors: np.ndarray, embedder: OnnxEmbedder | None
    ) -> None:
        order = sorted(range(len(interactions)), key=lambda i: (interactions[i].timestamp, interactions[i].id))
        self.user_id = user_id
        self.interactions = [interactions[i] for i in order]
        self.vectors = vectors[order] if len(order) else np.zeros((0, vectors.shape[1] if vectors.ndim == 2 else 0))
        self.timestamps = np.array([it.timestamp for it in self.interactions], dtype=np.float64)
        self.embedder = embedder

    def __deepcopy__(self, memo: dict) -> UserSnapshot:
        return self

    def __getstate__(self) -> dict:
        """Pickled (shipped to a Ray task) without the embedder: the receiver sets its own."""
        return {**self.__dict__, "embedder": None}

    def _check(self, user_id: str) -> None:
        if user_id != self.user_id:
            raise UnknownUserError(user_id, where=f"the snapshot of user {self.user_id!r}")
        if not self.interactions:
            raise UnknownUserError(user_id)

    def _upto(self, before: float | None) -> int:
        return len(self.interactions) if before is None else int(np.searchsorted(self.timestamps, before, "left"))

    def recall(self, user_id: str, query: str, k: int = 5, before: float | None = None) -> list[Episode]:
        self._check(user_id)
        end = self._upto(before)
        if end == 0 or k <= 0:
            return []
        if self.embedder is None:
            raise ConfigurationError("this snapshot was unpickled without an embedder: set its .embedder first")
        scores = self.vectors[:end] @ self.embedder.embed_one(query)
        top = np.argsort(-scores, kind="stable")[:k]
        return [Episode(interaction=self.interactions[i], score=float(scores[i])) for i in top]

    def recent(self, user_id: str, n: int, before: float | None = None) -> list[Interaction]:
        self._check(user_id)
        end = self._upto(before)
        return self.interactions[max(0, end - n) : end] if n > 0 else []

    def history(self, user_id: str, before: float | None = None) -> list[Interaction]:
        self._check(user_id)
        return self.interactions[: self._upto(before)]

    def count(self, user_id: str | None = None) -> int:
        return len(self.interactions) if user_id in (None, self.user_id) else 0

    def has_user(self, user_id: str) -> bool:
        return user_id == self.user_id and bool(self.interactions)

    def users(self) -> list[str]:
        return [self.user_id] if self.interactions else []

    def snapshot(self, user_id: str) -> UserSnapshot:
        self._check(user_id)
        return self
