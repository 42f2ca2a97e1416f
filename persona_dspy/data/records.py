"""The records that cross every boundary: one user's interactions, validated."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from persona_dspy.errors import ConfigurationError

MAX_FIELD_CHARS = 20_000
"""Largest `input` or `output` accepted; longer records are rejected, not truncated silently."""


class Interaction(BaseModel):
    """One thing a user did: the task they saw (`input`) and what they really answered (`output`).

    `timestamp` orders a user's history; memory reads are always bounded by it (no leakage).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    user_id: str = Field(min_length=1, max_length=256)
    id: str = Field(min_length=1, max_length=256)
    input: str = Field(min_length=1, max_length=MAX_FIELD_CHARS)
    output: str = Field(max_length=MAX_FIELD_CHARS)
    timestamp: float = Field(allow_inf_nan=False, description="finite; a bool is not a time")
    task: str = "generic"
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("user_id", "id", mode="before")
    @classmethod
    def _ids_are_strings(cls, v: Any) -> Any:
        if isinstance(v, bool) or not isinstance(v, (str, int)):
            raise ValueError("must be a string (or an integer)")  # noqa: TRY004 -- pydantic reports only ValueError
        if not str(v).strip():
            raise ValueError("must not be blank")
        if "\x1f" in str(v):  # the store keys a record as user \x1f id: ("a\x1fb", "1") would be ("a", "b\x1f1")
            raise ValueError("must not contain the control character \\x1f (unit separator)")
        return str(v)

    @field_validator("timestamp", mode="before")
    @classmethod
    def _time_is_a_number(cls, v: Any) -> Any:
        # NaN compares false with everything: it would pass the time-order check and hide the record
        # from every time-bounded read; a bool is an int to Python and to pydantic's lax mode
        if isinstance(v, bool):
            raise ValueError("must be a number (seconds), not a boolean")  # noqa: TRY004 (pydantic reports ValueError)
        return v

    @field_validator("input", "output", mode="after")
    @classmethod
    def _no_nul(cls, v: str) -> str:
        if "\x00" in v:
            raise ValueError("contains a NUL character")
        return v

    @property
    def key(self) -> str:
        """Stable identity of the record across stores: user and interaction id."""
        return f"{self.user_id}\x1f{self.id}"

    @property
    def content_hash(self) -> str:
        """Changes whenever anything the agent could read changes (used for idempotent writes)."""
        payload = json.dumps(self.model_dump(mode="json"), sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def user_ids(users: object) -> list[str] | Literal["all"]:
    """``users`` as the fleet and serving functions take it: ``"all"`` or a collection of user ids. A lone
    string is refused (iterated, ``"43"`` would be the users ``"4"`` and ``"3"``), and so is an id that is
    not a non-blank string."""
    if isinstance(users, str) and users == "all":
        return "all"
    if isinstance(users, (str, bytes)):
        raise ConfigurationError(f"users is a list of user ids or 'all', not the string {users!r}: write [{users!r}]")
    try:
        ids = list(users)  # type: ignore[call-overload]
    except TypeError:
        raise ConfigurationError(f"users is a list of user ids or 'all', not {type(users).__name__}") from None
    bad = next((u for u in ids if not isinstance(u, str) or not u.strip()), None)
    if bad is not None:
        raise ConfigurationError(f"a user id is a non-blank string, got {bad!r} ({type(bad).__name__})")
    return ids


def data_digest(interactions: Iterable[Interaction]) -> str:
    """One hash of a set of interactions (ids and contents, in any order): it changes when one is added,
    removed or rewritten, wherever its time falls; what a compile's watermark alone would miss."""
    hashes = sorted(f"{it.key}\x1e{it.content_hash}" for it in interactions)
    return hashlib.sha256("\n".join(hashes).encode()).hexdigest()[:16]


class UserHistory(BaseModel):
    """A user's interactions in time order; the latest ones are what the optimizer replays."""

    model_config = ConfigDict(frozen=True)

    user_id: str
    interactions: tuple[Interaction, ...]
    query: Interaction | None = Field(None, description="a held-out interaction to evaluate on, never in memory")

    @model_validator(mode="after")
    def _one_user_in_time_order(self) -> UserHistory:
        items = self.interactions + ((self.query,) if self.query else ())
        for it in items:
            if it.user_id != self.user_id:
                raise ValueError(f"interaction {it.id!r} belongs to user {it.user_id!r}, not {self.user_id!r}")
        ids = [it.id for it in items]
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise ValueError(f"duplicate interaction id {dup!r} for user {self.user_id!r}")
        stamps = [it.timestamp for it in self.interactions]
        if stamps != sorted(stamps):
            object.__setattr__(
                self, "interactions", tuple(sorted(self.interactions, key=lambda i: (i.timestamp, i.id)))
            )
        if self.query and self.interactions and self.query.timestamp <= self.interactions[-1].timestamp:
            raise ValueError(f"query {self.query.id!r} is not later than the user's history (leakage risk)")
        return self

    @property
    def task(self) -> str:
        return (self.query or self.interactions[-1]).task if (self.query or self.interactions) else "generic"

    def latest(self, n: int) -> list[Interaction]:
        return list(self.interactions[-n:]) if n > 0 else []

    def before(self, timestamp: float) -> list[Interaction]:
        return [it for it in self.interactions if it.timestamp < timestamp]

    def __len__(self) -> int:
        return len(self.interactions)
