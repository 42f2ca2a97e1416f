"""Rewriting a Qdrant Edge shard with its live points only, so deleted payloads leave the disk.

Edge deletes a point by marking it: its payload stays in the segment's pages and in the write-ahead
log (``wal/open-*``) until those are recycled, and ``optimize()`` vacuums a segment only past 20%
deleted points. After a ``forget`` the user's texts would still be in the folder. ``rewrite_shard``
copies the live points into a new shard next to it and swaps the folders under the folder lock
(``<folder>/<collection>.lock``, the one ``EdgeEngine`` takes): a second process cannot open the
store meanwhile. A rewrite killed between its two renames is completed by the next one.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import qdrant_edge as qe

from persona_dspy.errors import StoreUnavailableError
from persona_dspy.memory.edge_engine import _OPEN, EDGE_CONFIG_FILE, SCROLL_PAGE, _lock, _open, shard_names


def rewrite_shard(folder: str | Path, collection: str) -> int:
    """Rewrite every shard of ``<folder>/<collection>`` with its live points; returns how many were kept.

    The collection must not be open in this process (close every ``EpisodicMemory`` on it first).
    """
    folder = Path(folder).expanduser().resolve()
    if str(folder / collection) in _OPEN:
        raise StoreUnavailableError(
            f"the Qdrant Edge shard {folder / collection} is open in this process: close it before a rewrite"
        )
    if not folder.is_dir():
        return 0
    lock = _lock(folder, collection)
    try:
        return sum(_rewrite(folder, name) for name in shard_names(folder, collection))
    finally:
        lock.close()


def _rewrite(folder: Path, name: str) -> int:
    """Rewrite one shard ``folder/name`` (the collection's lock held)."""
    path, new, old = (folder / n for n in (name, f"{name}.rewrite", f"{name}.replaced"))
    try:
        if old.exists() and not path.exists():  # killed between the two renames: the old shard is complete
            old.rename(path)
        shutil.rmtree(old, ignore_errors=True)
        shutil.rmtree(new, ignore_errors=True)
        if not (path / EDGE_CONFIG_FILE).is_file():
            return 0
        source, target = _open(folder, name), _open(folder, f"{name}.rewrite")
        kept, offset = 0, None
        try:
            while True:
                records, offset = source.scroll(
                    qe.ScrollRequest(offset=offset, limit=SCROLL_PAGE, with_payload=True, with_vector=True)
                )
                if records:
                    points = [qe.Point(r.id, r.vector, r.payload or {}) for r in records if r.vector is not None]
                    if len(points) != len(records):  # with_vector=True: every point has its vector
                        raise StoreUnavailableError(f"compacting {path}: the shard returned points without vectors")
                    target.update(qe.UpdateOperation.upsert_points(points))
                    kept += len(points)
                if offset is None:
                    break
            target.flush()
        finally:
            source.close()
            target.close()
        path.rename(old)
        new.rename(path)
        shutil.rmtree(old)
        return kept
    except OSError as exc:
        raise StoreUnavailableError(f"cannot rewrite the Qdrant Edge shard {path}: {exc}") from exc
