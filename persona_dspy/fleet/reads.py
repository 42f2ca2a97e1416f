"""Users' snapshots read ahead of the workers, a chunk of users per store read."""

from __future__ import annotations

import time
from collections.abc import Iterator

from persona_dspy.errors import UnknownUserError
from persona_dspy.memory.episodic import EpisodicMemory
from persona_dspy.memory.snapshot import UserSnapshot

WHOLE_STORE_USERS = 256
"""Fleets at least this large read an embedded store in one unfiltered pass (see ``snapshots``)."""


def snapshots(
    memory: EpisodicMemory, user_ids: list[str], chunk: int | None
) -> Iterator[tuple[str, UserSnapshot | Exception, float]]:
    """``(user, snapshot or the error, seconds of its share of the read)``, one store read per ``chunk``
    users. ``None``: 64 users per filtered read, or, for a fleet of >= ``WHOLE_STORE_USERS`` users on
    an embedded store, one unfiltered read of the whole store (local mode keeps every point in RAM
    and tests each against a filter in Python: at 50k points one unfiltered pass costs ~3 filtered
    reads of 64 users, BENCHMARKS.md). A snapshot is released once handed out; users outside the
    fleet are dropped right after the read."""
    whole = chunk is None and memory.embedded and len(user_ids) >= WHOLE_STORE_USERS
    chunk = max(1, len(user_ids)) if whole else chunk or 64
    for start in range(0, len(user_ids), chunk):
        ids = user_ids[start : start + chunk]
        mark = time.perf_counter()
        try:
            found: dict[str, UserSnapshot] | Exception = memory.snapshots(None if whole else ids)
        except Exception as exc:  # noqa: BLE001 (the store failed: these users fail, the next chunk retries)
            found = exc
        share = (time.perf_counter() - mark) / len(ids)
        if not isinstance(found, Exception):
            found = {uid: found[uid] for uid in ids if uid in found}
        for uid in ids:
            if isinstance(found, Exception):
                yield uid, found, share
            else:
                yield uid, found.pop(uid) if uid in found else UnknownUserError(uid), share
