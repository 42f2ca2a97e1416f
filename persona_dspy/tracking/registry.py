"""Persona versions in MLflow's prompt registry: one prompt per user, aliases ``candidate`` / ``production``."""

from __future__ import annotations

import getpass
import hashlib
import re
import time
from dataclasses import dataclass

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from persona_dspy._values import is_whole
from persona_dspy.compat.mlflow import (
    IS_PROMPT_TAG_KEY,
    PROMPT_EXPERIMENT_IDS_TAG_KEY,
    forget_cached_prompt,
    model_version_to_prompt_version,
    registry_store,
)
from persona_dspy.errors import ConfigurationError, PersonaNotFoundError

CANDIDATE, PRODUCTION = "candidate", "production"
WITHDRAWN = "withdrawn_at"
"""Version tag: when a rollback moved production away from it (removed when it is production again)."""
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def prompt_name(user_id: str) -> str:
    """A stable, valid registry name for a user: readable prefix + hash (ids may hold any character)."""
    readable = _UNSAFE.sub("-", user_id).strip("-.")[:40] or "user"
    return f"persona.{readable}.{hashlib.sha1(user_id.encode()).hexdigest()[:8]}"


@dataclass(frozen=True)
class PersonaVersion:
    user_id: str
    name: str
    version: int
    text: str
    aliases: tuple[str, ...]
    tags: dict[str, str]
    commit_message: str | None

    @property
    def uri(self) -> str:
        return f"prompts:/{self.name}/{self.version}"


MAX_VERSION = 2**63 - 1
"""The largest version number a store can hold (a 64-bit integer column): a larger one is not there."""


def _is_missing(exc: MlflowException) -> bool:
    """The store answered "no such prompt / version / alias" (an alias or a model that is not a prompt is
    INVALID_PARAMETER_VALUE). Anything else (a refused connection is INTERNAL_ERROR) is a failure:
    "absent" and "unreachable" must never read the same."""
    return exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE")


class PersonaRegistry:
    """Reads and moves persona versions. Callers wrap store failures (see ``Tracking``)."""

    def __init__(self, client: MlflowClient) -> None:
        self.client = client

    def _version(self, user_id: str, pv) -> PersonaVersion:
        return PersonaVersion(
            user_id=user_id,
            name=pv.name,
            version=int(pv.version),
            text=pv.template,
            aliases=tuple(getattr(pv, "aliases", ()) or ()),
            tags=dict(pv.tags or {}),
            commit_message=pv.commit_message,
        )

    def get(self, user_id: str, alias_or_version: str | int = PRODUCTION) -> PersonaVersion | None:
        """The version, or None when the store says it does not exist; a store failure raises."""
        name, store = prompt_name(user_id), registry_store(self.client)
        if not (isinstance(alias_or_version, str) or is_whole(alias_or_version)):
            raise ConfigurationError(  # True was version 1, 1.0 an alias named "1.0"
                f"a persona is named by an alias (str) or a version number (int), got "
                f"{type(alias_or_version).__name__} {alias_or_version!r}"
            )
        numbered = is_whole(alias_or_version) or str(alias_or_version).isdigit()
        if numbered and not 1 <= int(alias_or_version) <= MAX_VERSION:  # no store holds it (sqlite: 64-bit ids)
            return None
        try:
            if numbered:
                mv = store.get_model_version(name, int(alias_or_version))
            else:
                mv = store.get_model_version_by_alias(name, str(alias_or_version))
            pv = model_version_to_prompt_version(mv)
        except MlflowException as exc:
            if _is_missing(exc):
                return None
            raise
        return self._version(user_id, pv)

    def history(self, user_id: str) -> list[PersonaVersion]:
        """Every version, oldest first, with its aliases; [] only when the store says the prompt does not exist."""
        name, store = prompt_name(user_id), registry_store(self.client)
        try:
            model = store.get_registered_model(name)
        except MlflowException as exc:
            if _is_missing(exc):
                return []
            raise
        versions = list(store.search_prompt_versions(name, max_results=1000))
        aliases = {alias: int(version) for alias, version in (model.aliases or {}).items()}
        out = [self._version(user_id, pv) for pv in versions]
        out = [
            PersonaVersion(
                **{**v.__dict__, "aliases": tuple(sorted(a for a, ver in aliases.items() if ver == v.version))}
            )
            for v in out
        ]
        return sorted(out, key=lambda v: v.version)

    def register(
        self, user_id: str, text: str, *, commit_message: str, tags: dict[str, str], experiment_id: str | None = None
    ) -> PersonaVersion:
        """A new immutable version with alias ``candidate``; the same text as the latest is not registered twice.

        ``tags`` go on the version only; the prompt itself carries ``user_id`` and is linked to
        ``experiment_id`` (its Prompts tab in the MLflow UI). This is what ``MlflowClient.register_prompt``
        does, minus what it costs per version: it copies every version tag onto the prompt (one write
        per tag), reads the whole registered model twice and starts a thread that links the prompt to
        the fluent API's current experiment behind the caller's back.
        """
        name = prompt_name(user_id)
        latest = self.get(user_id, CANDIDATE)  # the latest registered version (register moves it there)
        if latest is None or latest.text != text:
            store = registry_store(self.client)
            if latest is None:  # a new prompt, or one whose candidate alias was removed by hand
                prompt_tags = {IS_PROMPT_TAG_KEY: "true", "user_id": user_id}
                if experiment_id is not None:
                    prompt_tags[PROMPT_EXPERIMENT_IDS_TAG_KEY] = f",{experiment_id},"
                try:
                    store.create_registered_model(name, tags=prompt_tags)
                except MlflowException as exc:
                    if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                        raise
            pv = store.create_prompt_version(
                name, template=text, description=commit_message, tags={"user_id": user_id, **tags}
            )
            forget_cached_prompt(self.client, name, "latest")
            latest = self._version(user_id, pv)
            self._set_alias(name, CANDIDATE, latest.version)
        return latest

    def promote(self, user_id: str, version: int, *, exists: bool = False, tags: dict[str, str] | None = None) -> None:
        """Move ``production`` to ``version`` (checked to exist unless the caller just registered or read it,
        and then passes its ``tags``); a version a rollback had left is production again (no ``withdrawn_at``)."""
        if not exists:
            found = self.get(user_id, version)
            if found is None:
                raise PersonaNotFoundError(
                    f"user {user_id!r} has no persona version {version}; nothing was moved. "
                    f"See `persona-dspy personas history {user_id}`."
                )
            tags = found.tags
        self._set_alias(prompt_name(user_id), PRODUCTION, version)
        if tags and WITHDRAWN in tags:
            self.client.delete_prompt_version_tag(prompt_name(user_id), version, WITHDRAWN)

    def rollback(self, user_id: str, to_version: int | None = None, *, reason: str = "") -> PersonaVersion:
        """Move ``production`` to ``to_version`` (default: the production before the current one: the latest
        earlier version that was promoted and not rolled back from since); the version is tagged with who
        rolled back, why and when, and the one production leaves with ``withdrawn_at``."""
        versions = self.history(user_id)
        if not versions:
            raise PersonaNotFoundError(f"user {user_id!r} has no persona versions; nothing to roll back")
        current = next((v for v in versions if PRODUCTION in v.aliases), None)
        if to_version is None:
            earlier = [
                v
                for v in versions
                if v.tags.get("promoted") == "true"
                and WITHDRAWN not in v.tags
                and (current is None or v.version < current.version)
            ]
            if not earlier:
                raise PersonaNotFoundError(
                    f"user {user_id!r} has no earlier production persona to roll back to; pass --to VERSION"
                )
            to_version = earlier[-1].version
        self.promote(user_id, to_version)
        name = prompt_name(user_id)
        if current is not None and current.version != to_version:
            self.client.set_prompt_version_tag(name, current.version, WITHDRAWN, str(int(time.time())))
        self.client.set_prompt_version_tag(name, to_version, "rolled_back_by", getpass.getuser())
        self.client.set_prompt_version_tag(name, to_version, "rollback_reason", reason or "manual rollback")
        self.client.set_prompt_version_tag(name, to_version, "rolled_back_at", str(int(time.time())))
        rolled = self.get(user_id, to_version)
        if rolled is None:  # deleted between the move and this read
            raise PersonaNotFoundError(f"user {user_id!r} has no persona version {to_version} any more")
        return rolled

    def _set_alias(self, name: str, alias: str, version: int) -> None:
        """``MlflowClient.set_prompt_alias`` without its existence check: that check loads the registered
        model with every one of its versions (~18 ms per call on sqlite, growing with the user's
        history, twice per promoted compile), and every caller here has just registered or read the
        version. The cache invalidation is MlflowClient's."""
        registry_store(self.client).set_prompt_alias(name, alias, version)
        forget_cached_prompt(self.client, name, alias)

    def forget(self, user_id: str) -> int:
        """Delete every persona version of the user; returns how many."""
        name = prompt_name(user_id)
        versions = self.history(user_id)
        for alias in (CANDIDATE, PRODUCTION):
            try:
                self.client.delete_prompt_alias(name, alias)
            except MlflowException as exc:
                if not _is_missing(exc):
                    raise
        for v in versions:
            self.client.delete_prompt_version(name, str(v.version))
        if versions:
            self.client.delete_prompt(name)
        return len(versions)
