"""Serve what was compiled and keep it up: load a user's agent, feed back what the user really did,
re-align the users that are due.

The PersonaAgent loop: actions refine memory, memory refines the persona.

- ``load_agent(user_id)`` -> a ``ServedAgent`` (a ``PersonaAgent``) with the user's episodic memory,
  semantic profile and the persona of an alias (default ``production``) or version from the registry.
- ``agent.observe(interaction)`` / ``observe(interactions, memory=...)`` stores what the user really
  did: idempotent, never older than what is stored for the user, the whole batch checked before
  anything is written. It makes no LM call: the semantic profile is stale as soon as a newer episode
  exists (its watermark says so) and is re-distilled, once for all the news, by the next answer.
- ``RealignPolicy`` decides when a user is due (``realign_after`` interactions since the last compile,
  or ``max_age`` seconds since it with at least one new interaction); ``compile_due`` compiles exactly
  those users through the fleet (its journal, resume and skip logic apply).

What arrived since the last compile is read from the stores, not counted on the side: the episodes
later than the data watermark of the user's last recorded compile, plus older ones added since (the
compile's ``data_count``), or one when an older one was rewritten (its ``data_digest``). There is no
counter to reset or to drift when a compile, an ingest or a crash happens elsewhere.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import dspy
from pydantic import BaseModel, Field

from persona_dspy.agent import PersonaAgent, agent_kwargs
from persona_dspy.config import Settings
from persona_dspy.data.records import Interaction, data_digest, user_ids
from persona_dspy.errors import (
    ConfigurationError,
    LMOutputError,
    MalformedInteractionError,
    OutOfOrderObservationError,
    PersonaNotFoundError,
    TrackingUnavailableError,
    UnknownUserError,
)
from persona_dspy.memory.episodic import EpisodicMemory, validate_batch
from persona_dspy.memory.semantic import SemanticMemory
from persona_dspy.signatures.tasks import TaskSpec, get_task
from persona_dspy.tracking.registry import CANDIDATE, PRODUCTION
from persona_dspy.tracking.runs import LEGACY_AGENT, agent_settings
from persona_dspy.tracking.tracker import Tracking

if TYPE_CHECKING:
    from persona_dspy.fleet.report import FleetReport
    from persona_dspy.optimizers.base import GatedPersonaOptimizer

logger = logging.getLogger(__name__)


class RealignPolicy(BaseModel):
    """When a user is due for a new compile: ``realign_after`` interactions arrived since the last one
    (a user never compiled counts all of theirs), or ``max_age`` seconds passed since it and at least
    one interaction arrived."""

    realign_after: int = Field(5, ge=1)
    max_age: float | None = Field(None, gt=0)

    def verdict(self, new: int, age: float | None) -> tuple[bool, str]:
        if new >= self.realign_after:
            return True, f"{new} new interaction(s) >= realign_after={self.realign_after}"
        if self.max_age is not None and new and age is not None and age >= self.max_age:
            return True, f"{new} new interaction(s) and the last compile is {age:.0f} s old >= max_age={self.max_age:g}"
        return False, f"{new} new interaction(s) < realign_after={self.realign_after}"


class UserStatus(BaseModel):
    """Where one user stands against the policy."""

    user_id: str
    interactions: int
    latest: float = Field(description="timestamp of the user's latest stored interaction")
    compiled_watermark: float | None = Field(None, description="data watermark of the last recorded compile")
    last_compile_at: float | None = Field(None, description="unix time the last compile was recorded")
    new_since_compile: int = Field(
        description="interactions later than the compile's watermark, plus older ones added since (at least 1 when "
        "an older one was rewritten)"
    )
    due: bool
    reason: str

    def line(self) -> str:
        verdict = "due" if self.due else "not due"
        return f"{self.user_id}: {self.new_since_compile} new since last compile; {verdict} ({self.reason})"


class Observation(BaseModel):
    """What ``observe`` did: interactions written, ones already stored (idempotent), users' status."""

    written: int
    already_stored: int
    users: list[UserStatus] = Field(default_factory=list)
    status_error: str | None = Field(
        None, description="why the users' status is missing although the interactions were stored (tracking down)"
    )


MAX_FUTURE_SECONDS = 86_400.0
"""How far ahead of this machine's clock an observation may be (clock skew between hosts); later is refused."""


def refuse_future(items: Iterable[Interaction], *, source: str | None = None) -> None:
    """``MalformedInteractionError`` for the first interaction more than ``MAX_FUTURE_SECONDS`` ahead of the
    clock: stored, it would be its user's "latest" for good, and every later observation out of order."""
    now = time.time()
    for it in items:
        ahead = it.timestamp - now
        if ahead > MAX_FUTURE_SECONDS:
            hint = " (a milliseconds value is 1000 times too large)" if it.timestamp > 100 * now else ""
            raise MalformedInteractionError(
                f"user {it.user_id!r} has timestamp {it.timestamp:.6g}, {ahead / 86400:,.1f} days ahead of this "
                f"machine's clock: timestamps are seconds since the epoch{hint}. Nothing was written.",
                source=source,
                record_id=it.id,
                field="timestamp",
            )


def interaction_from(fields: Mapping[str, Any], *, user_id: str, task: str) -> Interaction:
    """An ``Interaction`` from what a caller knows (``input``, ``output``, maybe ``timestamp``/``id``):
    the user and task default to the agent's, the time to now, the id to a hash of the content and the
    time. The same observation sent twice with its ``timestamp`` (or ``id``) is stored once; without either,
    each call is a new observation at its own time (a user may answer the same thing again), so a caller
    that retries gives one of them."""
    data = {"user_id": user_id, "task": task, **fields}
    data.setdefault("timestamp", time.time())
    if "id" not in data:
        key = "\x1f".join(str(data.get(k, "")) for k in ("user_id", "input", "output", "timestamp"))
        data["id"] = "obs-" + hashlib.sha256(key.encode()).hexdigest()[:16]
    return validate_batch([data])[0]


def observe(
    interactions: Iterable[Interaction | Mapping[str, Any]],
    *,
    memory: EpisodicMemory,
    tracking: Tracking | None = None,
    policy: RealignPolicy | None = None,
) -> Observation:
    """Store what users really did; the whole batch is checked before anything is written.

    Per user: an interaction already stored with the same content is skipped (idempotent), and so is one
    stored under the same id with the same content at another time (a retry: its id names it, and a
    time left out defaults to now); one stored with the same id but other content is a
    ``MalformedInteractionError`` (observations are immutable: give it a new id); one older than the
    user's latest stored interaction is an ``OutOfOrderObservationError``; an unknown user is an ``UnknownUserError`` (ingest first). The order
    is checked against what is stored, not within the batch: one batch is stored as one, in any order
    (two calls with the same observations in descending time refuse the second). With ``tracking`` the
    result holds each user's status against ``policy``; when the tracking store fails after the write, the
    interactions stay stored and ``status_error`` says so (no exception, which would invite a resend).
    """
    items = validate_batch(interactions)
    refuse_future(items)
    by_user: dict[str, list[Interaction]] = {}
    for it in items:
        by_user.setdefault(it.user_id, []).append(it)
    todo: list[Interaction] = []
    for user_id, batch in by_user.items():
        stored = {it.id: it for it in memory.history(user_id)}
        latest = max(stored.values(), key=lambda it: (it.timestamp, it.id))
        for it in batch:
            known = stored.get(it.id)
            if known is not None:  # its id names the observation: a retry at another time is the same one
                if known.model_copy(update={"timestamp": it.timestamp}).content_hash != it.content_hash:
                    raise MalformedInteractionError(
                        f"user {user_id!r} already has an interaction with this id and other content; an "
                        "observation is immutable: send it under a new id. Nothing was written.",
                        record_id=it.id,
                        field="id",
                    )
                continue
            if it.timestamp < latest.timestamp:
                raise OutOfOrderObservationError(
                    f"observation {it.id!r} of user {user_id!r} has timestamp {it.timestamp}, older than the "
                    f"latest stored one ({latest.id!r} at {latest.timestamp}); observe interactions in time "
                    "order (or ingest an older history with `persona-dspy ingest`). Nothing was written."
                )
            todo.append(it)
    written = memory.add(todo) if todo else 0
    statuses: list[UserStatus] = []
    status_error = None
    try:
        if tracking is not None:
            statuses = [user_status(u, memory=memory, tracking=tracking, policy=policy) for u in by_user]
    except TrackingUnavailableError as exc:  # stored already: a failure here would invite a retry
        status_error = (
            f"{written} interaction(s) stored, but their users' status could not be read "
            f"({' '.join(str(exc).split())[:300]}); they need no resend"
        )
        logger.warning("%s", status_error)
    return Observation(
        written=written, already_stored=len(items) - len(todo), users=statuses, status_error=status_error
    )


def user_status(
    user_id: str,
    *,
    memory: EpisodicMemory,
    tracking: Tracking,
    policy: RealignPolicy | None = None,
    now: float | None = None,
) -> UserStatus:
    """How many interactions arrived since the user's last recorded compile, and whether that makes
    the user due. Unknown user: ``UnknownUserError``."""
    policy = policy or RealignPolicy()
    history = memory.history(user_id)
    last = tracking.last_compile(user_id)
    watermark = float(last["data_watermark"]) if last and last.get("data_watermark") not in (None, "None") else None
    new = sum(1 for it in history if watermark is None or it.timestamp > watermark)
    if last is not None and watermark is not None and last.get("data_count") is not None:
        # an older interaction added since (a backfill), or one rewritten: news the watermark cannot see
        seen = [it for it in history if it.timestamp <= watermark]
        new += max(0, len(seen) - last["data_count"])
        if not new and last.get("data_digest") not in (None, data_digest(seen)):  # hashed only when it decides
            new = 1  # an interaction rewritten in place counts once
    compiled_at = last["recorded_at"] if last is not None else None
    age = None if compiled_at is None else (now or time.time()) - compiled_at
    due, reason = policy.verdict(new, age)
    if last is None:
        reason += "; never compiled"
    return UserStatus(
        user_id=user_id,
        interactions=len(history),
        latest=history[-1].timestamp,
        compiled_watermark=watermark,
        last_compile_at=compiled_at,
        new_since_compile=new,
        due=due,
        reason=reason,
    )


def due_users(
    users: Sequence[str] | Literal["all"] = "all",
    *,
    memory: EpisodicMemory,
    tracking: Tracking,
    policy: RealignPolicy | None = None,
) -> list[UserStatus]:
    """The status of every user in ``users`` (``"all"``: every user in episodic memory); filter on ``.due``.
    A named user with nothing stored is an ``UnknownUserError`` (``known_statuses`` sets them apart)."""
    statuses, unknown = known_statuses(users, memory=memory, tracking=tracking, policy=policy)
    if unknown:
        raise UnknownUserError(unknown[0])
    return statuses


def due_fleet(statuses: Sequence[UserStatus], unknown: Sequence[str] = ()) -> tuple[list[str], str]:
    """The users to compile (the due ones, and ``unknown`` ids, which the fleet then reports failed one by
    one, as it does without ``--due``) and the ``state`` that names their data for ``compile_users``: a
    later fleet of the same users on newer data is another fleet, whose ``resume`` starts afresh."""
    due = [s for s in statuses if s.due]
    state = json.dumps(
        [[s.user_id, s.interactions, s.latest, s.compiled_watermark, s.new_since_compile] for s in due]
        + sorted(unknown)
    )
    return [s.user_id for s in due] + sorted(unknown), hashlib.sha256(state.encode()).hexdigest()[:16]


def known_statuses(
    users: Sequence[str] | Literal["all"],
    *,
    memory: EpisodicMemory,
    tracking: Tracking,
    policy: RealignPolicy | None = None,
) -> tuple[list[UserStatus], list[str]]:
    """``due_users``, with the named ids that have nothing stored set apart instead of raising."""
    chosen = user_ids(users)
    ids = memory.users() if chosen == "all" else sorted(set(chosen))
    statuses, unknown = [], []
    for u in ids:
        try:
            statuses.append(user_status(u, memory=memory, tracking=tracking, policy=policy))
        except UnknownUserError:
            unknown.append(u)
    return statuses, unknown


def compile_due(
    optimizer: GatedPersonaOptimizer | None = None,
    *,
    settings: Settings,
    policy: RealignPolicy | None = None,
    users: Sequence[str] | Literal["all"] = "all",
    memory: EpisodicMemory | None = None,
    tracking: Tracking | None = None,
    **fleet: Any,
) -> tuple[list[UserStatus], FleetReport | None]:
    """Compile exactly the users the policy says are due, through ``compile_users`` (``fleet``: its
    other arguments: ``lm``, ``workers``, ``resume``...). Returns every status and the fleet report
    (None when nobody is due). A named user with nothing stored fails alone in the report (no status)."""
    from persona_dspy.fleet.run import compile_users

    own = memory is None
    memory = memory or EpisodicMemory(settings)
    tracking = tracking or Tracking(settings)
    try:
        statuses, unknown = known_statuses(users, memory=memory, tracking=tracking, policy=policy)
        due, state = due_fleet(statuses, unknown)
        report = (
            compile_users(due, optimizer, settings=settings, memory=memory, tracking=tracking, state=state, **fleet)
            if due
            else None
        )
    finally:
        if own:
            memory.close()
    return statuses, report


class _Store:
    """Holds the stores a served agent writes to; shared, never copied, by copies of the agent."""

    def __init__(self, memory: EpisodicMemory, tracking: Tracking, policy: RealignPolicy) -> None:
        self.memory, self.tracking, self.policy = memory, tracking, policy

    def __deepcopy__(self, memo: dict) -> _Store:
        return self


class ServedAgent(PersonaAgent):
    """A ``PersonaAgent`` loaded from the registry (``load_agent``) that can also learn from outcomes.

    ``persona_version`` is the registry version it serves (None: the default persona, never
    compiled); ``alias`` the alias it was loaded by. Answering "now" (``before=None``) first
    re-distills the semantic profile when newer episodes exist (one LM call for all the news).
    """

    def __init__(
        self,
        task: str | TaskSpec,
        *,
        user_id: str,
        memory: EpisodicMemory,
        tracking: Tracking,
        policy: RealignPolicy | None = None,
        persona_version: int | None = None,
        alias: str | None = None,
        **agent: Any,
    ) -> None:
        super().__init__(task, user_id=user_id, memory=memory, **agent)
        self.persona_version, self.alias = persona_version, alias
        self._serving = _Store(memory, tracking, policy or RealignPolicy())

    def observe(self, interaction: Interaction | Mapping[str, Any]) -> Observation:
        """Store what this user really did (``Interaction``, or a mapping with at least ``input`` and
        ``output``; ``timestamp`` defaults to now); see ``serving.observe``."""
        if not isinstance(interaction, (Interaction, Mapping)):
            raise MalformedInteractionError(
                f"observe takes one interaction (an Interaction or a mapping), got {type(interaction).__name__}; "
                "for several, call persona_dspy.serving.observe"
            )
        if not isinstance(interaction, Interaction):
            interaction = interaction_from(interaction, user_id=self.user_id, task=self.task.name)
        if interaction.user_id != self.user_id:
            raise MalformedInteractionError(
                f"this agent serves user {self.user_id!r}; observe user {interaction.user_id!r} with their own agent",
                record_id=interaction.id,
                field="user_id",
            )
        serving = self._serving
        return observe([interaction], memory=serving.memory, tracking=serving.tracking, policy=serving.policy)

    def status(self) -> UserStatus:
        """This user against the re-alignment policy (new interactions since the last compile, due or not)."""
        serving = self._serving
        return user_status(self.user_id, memory=serving.memory, tracking=serving.tracking, policy=serving.policy)

    def profile_is_stale(self) -> bool:
        if self.semantic is None or self.memory is None:
            return False
        profile = self.semantic.get(self.user_id)
        latest = self.memory.recent(self.user_id, 1)
        return bool(latest) and (
            profile is None
            or profile.watermark < latest[-1].timestamp
            or self.memory.count(self.user_id) > profile.n_episodes  # older episodes added since
        )

    def refresh_profile(self) -> None:
        """Re-distill the semantic profile if newer episodes exist; an LM failure keeps the old one."""
        if self.semantic is not None and self.profile_is_stale():
            try:
                self.semantic.update(self.user_id)
            except LMOutputError as exc:
                logger.warning("answering for user %r without a new profile: %s", self.user_id, exc)

    def forward(self, task: str, before: float | None = None) -> dspy.Prediction:
        if before is None:
            self.refresh_profile()
        prediction = super().forward(task, before=before)
        prediction["persona_version"] = self.persona_version
        return prediction


def load_agent(
    user_id: str,
    task: str | TaskSpec | None = None,
    *,
    settings: Settings | None = None,
    alias: str | int = PRODUCTION,
    memory: EpisodicMemory | None = None,
    tracking: Tracking | None = None,
    policy: RealignPolicy | None = None,
    k: int | None = None,
) -> ServedAgent:
    """The agent serving ``user_id``: episodic memory, semantic profile (``<state_dir>/profiles``) and
    the persona of ``alias`` (``"production"``, ``"candidate"``) or of a version number.

    ``task`` defaults to the task of the user's latest interaction. A user with no compiled persona
    gets the default persona when asking for ``production`` (``agent.persona_version is None``), and so
    does a user of two tasks served the task their production persona was not compiled for (a version's
    ``task`` tag; a user has one persona, compiled for the task of their latest interaction).
    Unknown user: ``UnknownUserError``; an alias or version the user does not have:
    ``PersonaNotFoundError``; a ``task`` of which the user has no interaction: ``ConfigurationError``.
    The agent has the settings the persona was compiled and gated with (the version's ``agent.*`` tags:
    adapter, mode, k, episode_chars, actions; for a version recorded before them, the defaults of that
    time, ``LEGACY_AGENT``); ``k`` overrides the recorded one. Reads only; no LM call.
    """
    settings = settings or (
        memory.settings if memory is not None else tracking.settings if tracking is not None else Settings()
    )
    memory = memory or EpisodicMemory(settings)
    tracking = tracking or Tracking(settings)
    latest = memory.recent(user_id, 1)  # UnknownUserError for a user with no interactions
    spec = get_task(task if task is not None else latest[-1].task)
    if spec.name != latest[-1].task and spec.name not in (tasks := {it.task for it in memory.history(user_id)}):
        raise ConfigurationError(  # the persona, profile and episodes would all be of another task
            f"user {user_id!r} has no interactions of task {spec.name!r} (theirs: {', '.join(sorted(tasks))}); "
            "leave the task out to serve their latest one"
        )
    try:
        version = tracking.load_persona(user_id, alias)
    except PersonaNotFoundError as exc:
        if alias != PRODUCTION:
            raise PersonaNotFoundError(
                f"user {user_id!r} has no persona {alias!r} (an alias, {PRODUCTION} or {CANDIDATE}, or a version "
                f"number); see `persona-dspy personas history {user_id}`."
            ) from exc
        version = None  # never compiled (or never promoted): the default persona
    if version is not None and version.tags.get("task", spec.name) != spec.name:  # compiled for their other task
        if alias != PRODUCTION:
            raise ConfigurationError(
                f"persona version {version.version} of user {user_id!r} was compiled for task "
                f"{version.tags['task']!r}, not {spec.name!r}; serve it with that task"
            )
        version = None
    recorded = (agent_settings(version.tags) or LEGACY_AGENT) if version is not None else {}
    try:
        agent = agent_kwargs(recorded)
        if k is not None:
            agent["k"] = k
        return ServedAgent(
            spec,
            user_id=user_id,
            tracking=tracking,
            policy=policy,
            persona_version=version.version if version else None,
            alias=str(alias),
            memory=memory,
            semantic=SemanticMemory(memory, settings.state_dir / "profiles", task=spec),
            persona=version.text if version else None,
            **agent,
        )
    except ValueError as exc:
        if not recorded or version is None:
            raise
        tags = ", ".join(f"agent.{key}={value!r}" for key, value in recorded.items())
        raise ConfigurationError(
            f"persona version {version.version} of user {user_id!r} has agent settings it cannot be served with "
            f"({exc}; its tags: {tags}); fix the tag in the MLflow UI or serve another version (--alias)"
        ) from exc


__all__ = [
    "Observation",
    "RealignPolicy",
    "ServedAgent",
    "UserStatus",
    "compile_due",
    "due_users",
    "interaction_from",
    "load_agent",
    "observe",
    "user_status",
]
