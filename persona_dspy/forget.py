"""Forgetting a user everywhere persona_dspy keeps them, store by store, resumable.

``forget_user(settings, user_id)`` deletes, in this order: the files of the state dir (pending
compiles, fleet journal lines, the semantic profile), the episodic points (an embedded Qdrant Edge
shard is then rewritten, since Edge keeps a deleted point's payload in its pages and log), the MLflow
runs, artifacts, traces and persona versions (a sqlite store is then vacuumed), and the LM caches.

Every step is idempotent and one failing store does not stop the others: the ``ForgetReport`` says
per store what was removed and what remains, and ``ForgetReport.raise_if_incomplete`` raises the
first failure's error (its exit code) with that account; a second ``forget`` finishes the job.

The LM caches: DSPy's disk cache (``DSPY_CACHEDIR``) keys an entry by a hash of its request, so a
user's entries cannot be told from another's; ``forget`` drops the whole cache (a cost, never a loss:
an entry is recomputed on the next call) and TextGrad's call logs (``TEXTGRAD_LOG_DIR``).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from persona_dspy.config import Settings
from persona_dspy.errors import PersonaDSPyError
from persona_dspy.fleet.report import UserReport
from persona_dspy.redaction import redact


@dataclass
class ForgetReport:
    """Per store: what was removed (counts) or, for a store that failed, the error (what remains)."""

    user_id: str
    removed: dict[str, dict[str, int]] = field(default_factory=dict)
    failed: dict[str, PersonaDSPyError | Exception] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return not self.failed

    def format(self) -> str:
        lines = [
            f"{store}: " + (", ".join(f"{k} {v}" for k, v in n.items()) or "-") for store, n in self.removed.items()
        ]
        lines += [f"{store}: NOT FORGOTTEN ({type(e).__name__}: {redact(str(e))})" for store, e in self.failed.items()]
        if self.found_nothing:
            lines.append(
                f"nothing of user {self.user_id!r} was found in any store: forgotten before, or a misspelled id? "
                "(the LM caches are dropped all the same: their entries name no user)"
            )
        return "\n".join(lines)

    @property
    def found_nothing(self) -> bool:
        """Every store answered and none held the user (the LM caches, shared by all users, aside)."""
        own = {store: n for store, n in self.removed.items() if store != "lm caches"}
        return (
            self.complete
            and bool(own)
            and not any(v for n in own.values() for k, v in n.items() if k != "points kept in the rewritten shard")
        )

    def raise_if_incomplete(self) -> None:
        """Raise the first failed store's error class, saying what was removed and what remains."""
        if self.complete:
            return
        first = next(iter(self.failed.values()))
        done = "; ".join(f"{s}: " + ", ".join(f"{k} {v}" for k, v in n.items()) for s, n in self.removed.items())
        remains = ", ".join(self.failed)
        message = (
            f"forget of {self.user_id!r} is incomplete: the user is still in {remains} "
            f"({type(first).__name__}: {' '.join(redact(str(first)).split())}). Removed so far: {done or 'nothing'}. "
            f"Fix that store and run `persona-dspy forget {self.user_id}` again: it removes what remains."
        )
        try:  # the failed store's class, for its exit code (7 Qdrant, 8 MLflow)
            error = type(first)(message) if isinstance(first, PersonaDSPyError) else PersonaDSPyError(message)
        except TypeError:  # a class whose constructor takes other arguments
            error = PersonaDSPyError(message)
        raise error from first


def forget_user(settings: Settings, user_id: str, *, lm_cache_dir: Path | None = None) -> ForgetReport:
    """Delete ``user_id`` from every store of ``settings``; never raises for a store (see the report).

    An embedded Qdrant Edge folder is rewritten on every call (its cost grows with the store), so a
    forget interrupted after the delete still ends with no deleted payload on disk.

    ``lm_cache_dir``: DSPy's disk cache (default ``DSPY_CACHEDIR``, this process's). The state dir's own
    ``dspy_cache`` and ``textgrad_logs`` are cleared too when they are other folders.
    """
    from persona_dspy.memory import EpisodicMemory, SemanticMemory
    from persona_dspy.memory.migrate import backup_path
    from persona_dspy.tracking import Tracking
    from persona_dspy.tracking.forget import forget_user as forget_tracked

    report = ForgetReport(user_id)

    def step(store: str, work) -> None:
        try:
            report.removed[store] = work()
        except Exception as exc:  # noqa: BLE001 (one store's failure must not stop the others)
            report.failed[store] = exc

    tracking = Tracking(settings)
    state = settings.state_dir
    step(
        "state dir",
        lambda: {
            "pending compiles": tracking.pending_compiles.drop_user(user_id),
            "journal lines": _drop_journal_lines(state / "fleet", user_id),
            "profile versions": SemanticMemory(None, state / "profiles").forget(user_id),  # type: ignore[arg-type]
        },
    )

    def qdrant() -> dict[str, int]:
        with EpisodicMemory(settings) as memory:
            points = memory.forget(user_id)
        counts = {"points": points}
        folder = settings.qdrant_folder
        if folder is not None and settings.qdrant_location.startswith("local:"):
            _vacuum_local(folder)
        elif folder is not None:  # a Qdrant Edge folder
            from persona_dspy.memory.compact import rewrite_shard

            counts["points kept in the rewritten shard"] = rewrite_shard(folder, settings.collection)
        if folder is not None and (backup := backup_path(folder)).is_dir():  # `memory migrate` kept the old store
            counts["points in the migrate backup"] = _forget_local(backup, settings.collection, user_id)
        return counts

    step("qdrant", qdrant)
    step("mlflow", lambda: forget_tracked(tracking.store, user_id))
    # this process's LM caches (where its calls were cached) and the state dir's own, when they differ
    caches = {lm_cache_dir or Path(os.environ.get("DSPY_CACHEDIR", state / "dspy_cache")), state / "dspy_cache"}
    logs = {Path(os.environ.get("TEXTGRAD_LOG_DIR", state / "textgrad_logs")), state / "textgrad_logs"}
    step(
        "lm caches",
        lambda: {
            "cache entries": sum(_clear_dspy_cache(folder) for folder in sorted(caches)),
            "textgrad logs": sum(_drop_files(folder, "*.jsonl") for folder in sorted(logs)),
        },
    )
    return report


def _forget_local(folder: Path, collection: str, user_id: str) -> int:
    """Delete the user's points from a local-mode Qdrant folder (``memory migrate``'s backup); returns how many."""
    from persona_dspy.memory.client_engine import ClientEngine

    engine = ClientEngine(collection, location=f"local:{folder}", local_path=str(folder))
    try:
        removed = engine.delete_user(user_id)
    finally:
        engine.close()
    _vacuum_local(folder)
    return removed


def _vacuum_local(folder: Path) -> None:
    """A local-mode store keeps its points in sqlite files, whose free pages keep a deleted row's bytes."""
    from persona_dspy.tracking.forget import vacuum_sqlite

    for db in sorted(folder.rglob("storage.sqlite")):
        vacuum_sqlite(db)


def _drop_journal_lines(folder: Path, user_id: str) -> int:
    """Remove the user's lines from every fleet journal (rewritten atomically); returns how many."""
    dropped = 0
    for journal in sorted(folder.glob("*.jsonl")) if folder.is_dir() else []:
        lines = journal.read_text(encoding="utf-8").splitlines(keepends=True)
        kept = [line for line in lines if not _is_users_line(line, user_id)]
        if len(kept) != len(lines):
            tmp = journal.with_suffix(".tmp")
            tmp.write_text("".join(kept), encoding="utf-8")
            tmp.replace(journal)
            dropped += len(lines) - len(kept)
    return dropped


def _is_users_line(line: str, user_id: str) -> bool:
    try:
        return UserReport.model_validate_json(line).user_id == user_id
    except ValueError:
        return False  # a line cut by a kill names nobody reliably; the journal ignores it


def _clear_dspy_cache(directory: Path) -> int:
    """Empty every diskcache shard under ``directory`` and vacuum it; returns how many entries were dropped."""
    if not directory.is_dir():
        return 0
    import diskcache

    from persona_dspy.tracking.forget import vacuum_sqlite

    dropped = 0
    for db in sorted(directory.rglob("cache.db")):
        with contextlib.closing(diskcache.Cache(str(db.parent))) as shard:
            dropped += shard.clear()
        vacuum_sqlite(db)
    return dropped


def _drop_files(directory: Path, pattern: str) -> int:
    if not directory.is_dir():
        return 0
    files = sorted(directory.glob(pattern))
    for path in files:
        path.unlink(missing_ok=True)
    return len(files)


__all__ = ["ForgetReport", "forget_user"]
