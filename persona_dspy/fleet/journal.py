"""The fleet journal: one line per finished user, so a killed fleet resumes where it stopped."""

from __future__ import annotations

import fcntl
import hashlib
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING

from pydantic import ValidationError

from persona_dspy.errors import ConfigurationError
from persona_dspy.fleet.report import UserReport

if TYPE_CHECKING:
    from persona_dspy.optimizers.base import GatedPersonaOptimizer

DONE: frozenset[str] = frozenset({"promoted", "kept", "skipped"})
"""Journal statuses that ``resume`` does not redo (a failure may be transient: it is tried again)."""


def fleet_id(optimizer: GatedPersonaOptimizer, user_ids: Sequence[str], state: str = "") -> str:
    """Same optimizer, params, users (and ``state``: the data they were chosen on, if given) -> same fleet
    (and journal)."""
    key = json.dumps(
        {"optimizer": optimizer.name, "params": optimizer.params, "users": sorted(user_ids), "state": state},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(key.encode()).hexdigest()[:16]


class FleetJournal:
    """``<state_dir>/fleet/<fleet-id>.jsonl``: one ``UserReport`` per finished user, flushed per line.

    A lock file keeps a second process from running the same fleet at the same time. A line cut by a
    kill is ignored when read back. Without ``resume`` the journal starts anew.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[str] | None = None
        self._lock: IO[str] | None = None

    @contextmanager
    def open(self, resume: bool) -> Iterator[dict[str, UserReport]]:
        """Lock the fleet; yield the users already finished (resume only); close and unlock at exit."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock = open(self.path.with_suffix(".lock"), "w")  # noqa: SIM115 (closed below)
        except OSError as exc:
            raise ConfigurationError(
                f"cannot write the fleet journal in {self.path.parent}: {exc.strerror or exc}. The state dir must "
                "be a writable folder: fix its permissions, or set PERSONA_DSPY_STATE_DIR (--state-dir)."
            ) from exc
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            self._lock.close()
            raise ConfigurationError(
                f"this fleet is already running in another process (lock {self._lock.name}); "
                "wait for it or stop it, then rerun with --resume"
            ) from exc
        try:
            done = self.read() if resume else {}
            self._file = open(self.path, "a" if resume else "w", encoding="utf-8")  # noqa: SIM115
            yield done
        finally:
            if self._file is not None:
                self._file.close()
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()

    def read(self) -> dict[str, UserReport]:
        """The latest finished entry per user (statuses in ``DONE``)."""
        done: dict[str, UserReport] = {}
        if not self.path.exists():
            return done
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                report = UserReport.model_validate_json(line)
            except ValidationError:
                continue  # a line cut by a kill
            if report.status in DONE:
                done[report.user_id] = report
            else:
                done.pop(report.user_id, None)
        return done

    def append(self, report: UserReport) -> None:
        assert self._file is not None, "open the journal first"
        self._file.write(report.model_dump_json(exclude={"from_journal"}) + "\n")
        self._file.flush()
