"""Convert a folder written by qdrant-client's local mode (the previous embedded engine) to Qdrant Edge.

The folder keeps its path, so ``PERSONA_DSPY_QDRANT`` needs no change: every collection is copied
point for point (same ids, vectors and payloads) into a new Edge folder next to it, the copy is
verified (counts per collection, and a sample of points compared payload and vector), then the old
folder is renamed ``<folder>.local-backup`` and the new one takes its place. Nothing is deleted:
remove the backup once satisfied. A failure before the swap leaves the old folder untouched.
"""

from __future__ import annotations

import random
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydantic import BaseModel
from qdrant_client import QdrantClient

from persona_dspy.compat.qdrant import LOCAL_IN_USE, is_local_folder, local_folder_collections
from persona_dspy.errors import StoreUnavailableError
from persona_dspy.memory.edge_engine import EdgeEngine

BATCH = 1024
SPOT_CHECKS = 64


class MigrationReport(BaseModel):
    folder: Path
    backup: Path
    points: dict[str, int]
    """Points per collection, equal in the old and the new store."""
    spot_checked: int


def backup_path(folder: Path) -> Path:
    return folder.with_name(folder.name + ".local-backup")


def migrate_local_folder(
    folder: str | Path, *, progress: Callable[[str, int, int], None] | None = None, spot_checks: int = SPOT_CHECKS
) -> MigrationReport:
    """Convert ``folder`` in place (see the module docstring); ``progress(collection, done, total)``."""
    folder = Path(folder).expanduser().resolve()
    backup, staging = backup_path(folder), folder.with_name(folder.name + ".edge-migrating")
    if not folder.exists() and backup.is_dir() and staging.is_dir():
        raise StoreUnavailableError(
            f"a migration of {folder} stopped after its verified copy: finish it with mv {staging} {folder}"
        )
    if not is_local_folder(folder):
        if any(lock.with_suffix("").is_dir() for lock in folder.glob("*.lock")):  # <collection>/ + its .lock
            raise StoreUnavailableError(f"{folder} is already a Qdrant Edge folder: nothing to migrate.")
        raise StoreUnavailableError(
            f"{folder} is not a qdrant-client local-mode folder (no meta.json and collection/): nothing to migrate."
        )
    if backup.exists():
        raise StoreUnavailableError(f"{backup} already exists: move it away, then migrate again.")
    shutil.rmtree(staging, ignore_errors=True)  # leftovers of an interrupted migration
    try:
        source = QdrantClient(path=str(folder))  # holds the folder's lock: no writer meanwhile
    except RuntimeError as exc:
        if LOCAL_IN_USE in str(exc):
            raise StoreUnavailableError(f"{folder} is in use by another process: close it, then migrate.") from exc
        raise
    counts: dict[str, int] = {}
    checked = 0
    try:
        for name in local_folder_collections(folder):
            counts[name] = _copy(source, name, staging, progress)
            checked += _verify(source, name, staging, counts[name], spot_checks)
    except BaseException:
        source.close()
        shutil.rmtree(staging, ignore_errors=True)
        raise
    source.close()
    folder.rename(backup)
    staging.rename(folder)
    return MigrationReport(folder=folder, backup=backup, points=counts, spot_checked=checked)


def _copy(source: QdrantClient, name: str, staging: Path, progress: Callable[[str, int, int], None] | None) -> int:
    total = source.count(name, exact=True).count
    target = EdgeEngine(staging, name)
    try:
        done, offset = 0, None
        while True:
            records, offset = source.scroll(name, limit=BATCH, offset=offset, with_payload=True, with_vectors=True)
            if records:
                target.upsert(
                    [str(r.id) for r in records],
                    np.asarray([r.vector for r in records], np.float32),
                    [r.payload or {} for r in records],
                )
                done += len(records)
                if progress:
                    progress(name, done, total)
            if offset is None:
                break
    finally:
        target.close()
    return done


def _unit(vector: object) -> np.ndarray:
    """Edge stores cosine vectors normalised; local mode stores them as given."""
    v = np.asarray(vector, np.float32)
    return v / (np.linalg.norm(v) or 1.0)


def _verify(source: QdrantClient, name: str, staging: Path, copied: int, spot_checks: int) -> int:
    """Counts equal, and ``spot_checks`` random points equal in payload and vector; returns points checked."""
    target = EdgeEngine(staging, name)
    try:
        expected = source.count(name, exact=True).count
        if not expected == copied == target.count(None):
            raise StoreUnavailableError(
                f"migration of collection {name!r} failed its count check: {expected} "
                f"points in the old store, {target.count(None)} in the new one."
            )
        ids = [str(r.id) for r in source.scroll(name, limit=expected or 1, with_payload=False)[0]]
        sample = random.Random(0).sample(ids, min(spot_checks, len(ids)))
        if not sample:
            return 0
        old = {str(r.id): r for r in source.retrieve(name, sample, with_payload=True, with_vectors=True)}
        new = target.retrieve(sample)
        for pid in sample:
            same = (
                pid in new
                and new[pid][0] == old[pid].payload
                and np.allclose(_unit(new[pid][1]), _unit(old[pid].vector), atol=1e-5)
            )
            if not same:
                raise StoreUnavailableError(f"migration of collection {name!r} failed its spot check on point {pid}.")
        return len(sample)
    finally:
        target.close()
