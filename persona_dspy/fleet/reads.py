"""Users' snapshots read ahead of the workers, one filtered store read per user."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TypeVar

View = TypeVar("View")


def snapshots(read: Callable[[str], View], user_ids: list[str]) -> Iterator[tuple[str, View | Exception, float]]:
    """``(user, read(user) or the error it raised, seconds of the read)``, lazily: each user's snapshot
    is read as the workers take it, and released once compiled. ``read`` is the memory's ``snapshot``;
    on Qdrant Edge it costs ~1 ms per user whether users are read one or 64 at a time (BENCHMARKS.md),
    so there is no batching to tune."""
    for uid in user_ids:
        mark = time.perf_counter()
        try:
            view: View | Exception = read(uid)
        except Exception as exc:  # noqa: BLE001 (unknown user or a failed read: this user fails, not the fleet)
            view = exc
        yield uid, view, time.perf_counter() - mark
