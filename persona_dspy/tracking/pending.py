"""Compiles kept on disk while the MLflow store was down (``<state_dir>/pending/<compile_id>.json``)."""

from __future__ import annotations

import json
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
        """The kept compiles this version can read (``unreadable`` lists the others: one bad file stops
        neither ``sync`` nor ``forget``)."""
        for path in self.paths():
            result = _read(path)
            if result is not None:
                yield path, result

    def unreadable(self) -> list[Path]:
        """Files of the folder that are not a kept compile this version can read (cut, edited, foreign)."""
        return [path for path in self.paths() if _read(path) is None]

    def drop_user(self, user_id: str) -> int:
        """Delete the user's kept compiles, and any unreadable file that names the user; returns how many."""
        named = json.dumps(user_id)
        dropped = 0
        for path in self.paths():
            result = _read(path)
            mine = result.user_id == user_id if result is not None else named in _text(path)
            if mine:
                path.unlink()
                dropped += 1
        return dropped


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _read(path: Path) -> CompileResult | None:
    try:
        return CompileResult.model_validate_json(path.read_bytes())
    except (OSError, ValueError):  # pydantic's ValidationError is a ValueError
        return None
