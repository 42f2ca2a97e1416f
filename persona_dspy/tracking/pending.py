"""Compiles kept on disk while the MLflow store was down (``<state_dir>/pending/<compile_id>.json``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from persona_dspy.redaction import redact
from persona_dspy.results import CompileResult


class PendingCompiles:
    """One JSON file per kept compile, named by its ``compile_id``; written atomically."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def paths(self) -> list[Path]:
        return sorted(self.folder.glob("*.json"))

    def keep(self, result: CompileResult, cid: str) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{cid}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(redact(result.model_dump_json(indent=1)), encoding="utf-8")
        tmp.replace(path)
        return path

    def __iter__(self) -> Iterator[tuple[Path, CompileResult]]:
        for path in self.paths():
            yield path, CompileResult.model_validate_json(path.read_text(encoding="utf-8"))

    def drop_user(self, user_id: str) -> int:
        """Delete the user's kept compiles; returns how many."""
        dropped = 0
        for path, result in self:
            if result.user_id == user_id:
                path.unlink()
                dropped += 1
        return dropped
