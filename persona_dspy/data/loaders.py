"""Loaders: the shared LaMP-style JSONL schema and a plain interactions JSONL.

Every error names the file, the line and the field, and nothing is returned from a file that
has one bad line: a partial load would silently train a persona on part of a history.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from persona_dspy.data.records import Interaction, UserHistory
from persona_dspy.errors import MalformedInteractionError

MAX_LINE_BYTES = 4 * 1024 * 1024
"""Largest JSONL line accepted (a LaMP record with a 100-item profile is ~150 KB)."""

_SHARED_REQUIRED = ("id", "task", "user_id", "input", "output", "profile")


def _lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) for each non-blank line, with precise errors."""
    path = Path(path)
    if not path.exists():
        raise MalformedInteractionError("file not found", source=str(path))
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if len(raw) > MAX_LINE_BYTES:
                raise MalformedInteractionError(
                    f"line is {len(raw):,} bytes, over the {MAX_LINE_BYTES:,}-byte limit; split or trim the record",
                    source=str(path),
                    line=lineno,
                )
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise MalformedInteractionError(
                    f"not valid UTF-8 ({exc.reason} at byte {exc.start}); re-encode the file as UTF-8",
                    source=str(path),
                    line=lineno,
                ) from None
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                raise MalformedInteractionError(
                    f"invalid JSON: {exc.msg} at column {exc.colno}", source=str(path), line=lineno
                ) from None
            if not isinstance(obj, dict):
                raise MalformedInteractionError("each line must be a JSON object", source=str(path), line=lineno)
            yield lineno, obj


Check = Callable[[Interaction], "tuple[str, str] | None"]
"""A record check beyond the schema (``signatures.record_problem``: its task and answer): ``(field, problem)``
or ``None``. The loaders take it from the caller, as the data layer sits below the tasks."""


def _interaction(fields: dict[str, Any], *, source: str, line: int, check: Check | None = None) -> Interaction:
    record_id = str(fields.get("id")) if fields.get("id") is not None else None
    try:
        it = Interaction(**fields)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or None
        raise MalformedInteractionError(
            err["msg"], source=source, line=line, record_id=record_id, field=field
        ) from None
    found = check(it) if check is not None else None
    if found:
        raise MalformedInteractionError(found[1], source=source, line=line, record_id=record_id, field=found[0])
    return it


def load_interactions(
    path: str | Path, *, require_time_order: bool = True, check: Check | None = None
) -> list[Interaction]:
    """A plain JSONL of interactions: ``{user_id, id, input, output, timestamp[, task, metadata]}`` per line;
    ``check`` (e.g. ``signatures.record_problem``) refuses a record with its line.

    Duplicate (user_id, id) pairs are rejected: re-ingesting the same record is idempotent, but one
    file holding two versions of a record is ambiguous. Each user's lines must be in time order
    (``require_time_order``): an out-of-order line usually means a wrong timestamp, and timestamps
    are what keeps the future out of memory.
    """
    out: list[Interaction] = []
    seen: dict[str, int] = {}
    last: dict[str, tuple[float, int]] = {}
    for lineno, obj in _lines(Path(path)):
        if isinstance(obj.get("profile"), list):
            raise MalformedInteractionError(
                "a line of the shared schema (a query with its 'profile'), not an interaction: read it with "
                "load_shared (`persona-dspy ingest --shared`)",
                source=str(path),
                line=lineno,
                record_id=str(obj.get("id")),
                field="profile",
            )
        it = _interaction(obj, source=str(path), line=lineno, check=check)
        if it.key in seen:
            raise MalformedInteractionError(
                f"duplicate id (first seen on line {seen[it.key]})",
                source=str(path),
                line=lineno,
                record_id=it.id,
                field="id",
            )
        previous = last.get(it.user_id)
        if require_time_order and previous and it.timestamp < previous[0]:
            raise MalformedInteractionError(
                f"timestamp {it.timestamp} is earlier than line {previous[1]} of the same user ({previous[0]}); "
                "sort the file by time or fix the timestamp",
                source=str(path),
                line=lineno,
                record_id=it.id,
                field="timestamp",
            )
        seen[it.key] = lineno
        last[it.user_id] = (it.timestamp, lineno)
        out.append(it)
    return out


def group_by_user(interactions: list[Interaction]) -> dict[str, UserHistory]:
    by_user: dict[str, list[Interaction]] = {}
    for it in interactions:
        by_user.setdefault(it.user_id, []).append(it)
    return {
        u: UserHistory(user_id=u, interactions=tuple(sorted(its, key=lambda i: (i.timestamp, i.id))))
        for u, its in by_user.items()
    }


def _stable_id(*parts: Any) -> str:
    return hashlib.sha1("\x1f".join(str(p) for p in parts).encode()).hexdigest()[:12]


def _profile_item(task: str, item: dict[str, Any], position: int) -> tuple[str, str, str, float, dict[str, Any]]:
    """(id, input, output, timestamp, metadata) of one profile item, by task family."""
    if "category" in item:  # LaMP-2N: an article the user filed under a category
        text = f"article: {item.get('title', '')}. {item['text']}".strip()
        return str(item.get("id", position)), text, item["category"], float(position), {"synthetic_time": True}
    if "abstract" in item:  # LaMP-1: a paper the user wrote
        return (
            str(item.get("id", position)),
            f"paper title: {item['title']}",
            item["abstract"][:600],
            float(position),
            {"synthetic_time": True},
        )
    if "movie" in item:  # MovieLens rating
        ts = float(item["timestamp"])
        text = f"movie: {item['movie']} genres: {item['genres']}"
        return _stable_id(ts, text), text, f"{float(item['rating']):.1f}", ts, {}
    if "summary" in item:  # Amazon review rating
        ts = float(item["time"])
        text = f"review summary: {item['summary']} review: {item['text']}"
        return _stable_id(ts, text), text, str(int(float(item["rating"]))), ts, {}
    raise ValueError(
        f"unrecognised profile item with keys {sorted(item)}: expected an article (category), a paper (abstract), "
        "a movie rating (movie) or a review (summary)"
    )


def load_shared(path: str | Path, *, limit_users: int | None = None, check: Check | None = None) -> list[UserHistory]:
    """The shared data schema: one query per line with the user's ``profile`` (``check``: as ``load_interactions``).

    Profile items become the user's past interactions (in time order; LaMP has no dates, so its
    list position is the time), and the query becomes the held-out interaction, strictly later
    than every past one. One ``UserHistory`` per line: two lines of one user are two cases.
    """
    path = Path(path)
    cases: list[UserHistory] = []
    users: list[str] = []
    for lineno, obj in _lines(path):
        missing = [k for k in _SHARED_REQUIRED if k not in obj]
        if "profile" in missing and "timestamp" in obj:  # a line of a plain interactions file
            missing = ["profile"]
        if missing:
            raise MalformedInteractionError(
                f"missing required field {missing[0]!r}"
                + (" (a plain interactions file? ingest it without --shared)" if missing == ["profile"] else ""),
                source=str(path),
                line=lineno,
                record_id=str(obj.get("id")),
                field=missing[0],
            )
        if not isinstance(obj["profile"], list):
            raise MalformedInteractionError(
                "profile must be a list", source=str(path), line=lineno, record_id=str(obj["id"]), field="profile"
            )
        for key in ("id", "user_id", "task"):  # as the plain loader: never a bool, a list or null turned into a name
            allowed = str if key == "task" else str | int  # an id may be a number, as in plain files
            if isinstance(obj[key], bool) or not isinstance(obj[key], allowed):
                raise MalformedInteractionError(
                    f"must be a string (got {type(obj[key]).__name__})",
                    source=str(path),
                    line=lineno,
                    record_id=str(obj["id"]),
                    field=key,
                )
        user_id, task = str(obj["user_id"]), obj["task"]
        if limit_users is not None and user_id not in users and len(users) >= limit_users:
            continue
        past: list[Interaction] = []
        for pos, item in enumerate(obj["profile"]):
            try:
                if not isinstance(item, dict):
                    raise ValueError(f"must be a JSON object, got {type(item).__name__}")  # noqa: TRY004 (reported as one)
                pid, text, output, ts, meta = _profile_item(task, item, pos)
            except (KeyError, TypeError, ValueError) as exc:
                problem = f"missing field {exc.args[0]!r}" if isinstance(exc, KeyError) else str(exc)
                raise MalformedInteractionError(
                    f"profile item {pos}: {problem}",
                    source=str(path),
                    line=lineno,
                    record_id=str(obj["id"]),
                    field=f"profile.{pos}",
                ) from None
            past.append(
                _interaction(
                    {
                        "user_id": user_id,
                        "id": pid,
                        "input": text,  # over MAX_FIELD_CHARS: rejected by the record, as everywhere
                        "output": output,
                        "timestamp": ts,
                        "task": task,
                        "metadata": meta,
                    },
                    source=str(path),
                    line=lineno,
                    check=check,
                )
            )
        synthetic = any(p.metadata.get("synthetic_time") for p in past) or "timestamp" not in obj
        stamp = obj.get("timestamp")
        if "timestamp" in obj and (isinstance(stamp, bool) or not isinstance(stamp, int | float)):
            raise MalformedInteractionError(
                f"must be a number (seconds since the epoch), got {stamp!r}"[:200],
                source=str(path),
                line=lineno,
                record_id=str(obj["id"]),
                field="timestamp",
            )
        q_ts = float(len(past)) if synthetic or stamp is None else float(stamp)
        if past and q_ts <= max(p.timestamp for p in past):
            q_ts = max(p.timestamp for p in past) + 1.0
        query = _interaction(
            {
                "user_id": user_id,
                "id": f"query-{obj['id']}",
                "input": obj["input"],
                "output": str(obj["output"]),
                "timestamp": q_ts,
                "task": task,
                "metadata": {"record_id": str(obj["id"]), "synthetic_time": synthetic},
            },
            source=str(path),
            line=lineno,
            check=check,
        )
        dedup = {p.id: p for p in past}
        try:
            history = UserHistory(
                user_id=user_id,
                interactions=tuple(sorted(dedup.values(), key=lambda i: (i.timestamp, i.id))),
                query=query,
            )
        except ValidationError as exc:
            raise MalformedInteractionError(
                exc.errors()[0]["msg"], source=str(path), line=lineno, record_id=str(obj["id"])
            ) from None
        cases.append(history)
        if user_id not in users:
            users.append(user_id)
    return cases
