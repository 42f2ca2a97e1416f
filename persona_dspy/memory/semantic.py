"""Semantic memory: a compact profile of a user's stable preferences, distilled by the LM.

Each profile version records the *watermark* (latest episode time it was built from), so a read
bounded by ``before`` only sees profiles built from episodes strictly earlier (no leakage).
Updates are incremental: the previous profile plus the episodes since its watermark. When older
episodes were added since (its ``n_episodes`` tells), the profile is rebuilt from scratch on the latest
``max_episodes``, as a user with that history would get it.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import dspy
from dspy.utils.exceptions import AdapterParseError
from pydantic import BaseModel

from persona_dspy.errors import EmptyHistoryError, LMOutputError, PersonaDSPyError
from persona_dspy.signatures.tasks import TaskSpec, get_task, render_episode

if TYPE_CHECKING:
    from persona_dspy.memory.protocol import Memory

MAX_PROFILE_CHARS = 700
_BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+(.*\S)")


class DistillProfile(dspy.Signature):
    """Write this user's stable preferences as 2 to 5 short bullet lines starting with "- ". State only what the interactions show (tastes, habits, how they rate or label); no advice."""

    interactions: str = dspy.InputField(desc="the user's interactions, each with what the user answered")
    previous_profile: str = dspy.InputField(desc="the profile so far; keep what still holds")
    profile: str = dspy.OutputField(desc="2-5 lines, each starting with '- '")


class Profile(BaseModel):
    user_id: str
    text: str
    version: int
    watermark: float
    n_episodes: int
    created_at: float


def clean_profile(raw: str | None) -> str | None:
    """Bullet lines of a usable profile, or None when the LM output is not one."""
    if not raw:
        return None
    bullets = [m.group(1).strip() for line in raw.splitlines() if (m := _BULLET.match(line))]
    bullets = [b for b in bullets if 3 <= len(b) <= 200][:5]
    if not bullets:
        return None
    return "\n".join(f"- {b}" for b in bullets)[:MAX_PROFILE_CHARS]


class SemanticMemory:
    """Per-user profile versions, kept in memory and (when ``store_dir`` is set) in one JSON file per user."""

    def __init__(
        self,
        episodic: Memory,
        store_dir: str | Path | None = None,
        *,
        task: str | TaskSpec = "generic",
        max_episodes: int = 30,
        retries: int = 2,
    ) -> None:
        self.episodic = episodic
        self.store_dir = Path(store_dir) if store_dir else None
        self.task = get_task(task)
        self.max_episodes = max_episodes
        self.retries = retries
        self._versions: dict[str, list[Profile]] = {}
        self._lock = threading.Lock()
        self.distill = dspy.Predict(DistillProfile)

    def __deepcopy__(self, memo: dict) -> SemanticMemory:
        return self  # a store, not a parameter: copies of an agent share it

    def _path(self, user_id: str) -> Path | None:
        if self.store_dir is None:
            return None
        return self.store_dir / f"{hashlib.sha1(user_id.encode()).hexdigest()[:16]}.json"

    def versions(self, user_id: str) -> list[Profile]:
        with self._lock:
            if user_id not in self._versions:
                path = self._path(user_id)
                loaded = [Profile(**p) for p in json.loads(path.read_text())] if path and path.exists() else []
                self._versions[user_id] = loaded
            return list(self._versions[user_id])

    def get(self, user_id: str, before: float | None = None) -> Profile | None:
        """The newest profile built only from episodes strictly before ``before``."""
        usable = [p for p in self.versions(user_id) if before is None or p.watermark < before]
        return max(usable, key=lambda p: (p.watermark, p.version)) if usable else None

    def update(self, user_id: str, before: float | None = None) -> Profile:
        """Distill (or extend) the profile from the episodes before ``before``; one LM call when there is news.

        Garbage LM output is retried ``retries`` times, then ``LMOutputError``; the stored
        profile is left as it was.
        """
        previous = self.get(user_id, before)
        history = self.episodic.history(user_id, before=before)
        new = [it for it in history if previous is None or it.timestamp > previous.watermark]
        if previous is not None and len(history) - len(new) > previous.n_episodes:
            # older episodes were added since it was distilled, which ones is not recorded: rebuilt from scratch
            # on the latest episodes, as a user with this history would get it (its text is not carried over)
            new, previous = history, None
        if not history:
            raise EmptyHistoryError(f"user {user_id!r} has no interactions before {before}; nothing to distill")
        if not new and previous is not None:
            return previous
        shown = new[-self.max_episodes :]
        lines = "\n".join(render_episode(self.task, it) for it in shown)
        text = None
        kept = "the previous profile is kept" if previous else "the user has no profile yet"
        for attempt in range(self.retries + 1):
            config = {"rollout_id": attempt, "temperature": 0.7} if attempt else {}
            try:
                raw = self.distill(
                    interactions=lines, previous_profile=previous.text if previous else "(none)", config=config
                ).profile
            except AdapterParseError:  # not even the output format: as unusable as a wrong profile
                raw = None
            except PersonaDSPyError:
                raise
            except Exception as exc:  # the LM itself failed (unreachable, misconfigured)
                raise LMOutputError(
                    f"the LM failed distilling the profile of user {user_id!r} ({type(exc).__name__}: "
                    f"{' '.join(str(exc).split())[:200]}); {kept}. Check PERSONA_DSPY_LM."
                ) from exc
            text = clean_profile(raw)
            if text:
                break
        if text is None:
            raise LMOutputError(
                f"the LM returned no usable profile for user {user_id!r} after {self.retries + 1} "
                f"attempts; {kept}. Try a stronger LM (PERSONA_DSPY_LM)."
            )
        return self._save(user_id, text, watermark=shown[-1].timestamp, n_episodes=len(history))

    def _save(self, user_id: str, text: str, *, watermark: float, n_episodes: int) -> Profile:
        """Append a version (numbered under the lock, so concurrent updates never share one) and persist."""
        self.versions(user_id)  # load what is on disk first
        with self._lock:
            versions = self._versions[user_id]
            profile = Profile(
                user_id=user_id,
                text=text,
                version=max((p.version for p in versions), default=0) + 1,
                watermark=watermark,
                n_episodes=n_episodes,
                created_at=time.time(),
            )
            versions.append(profile)
            path = self._path(profile.user_id)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp")
                tmp.write_text(json.dumps([p.model_dump() for p in versions]))
                tmp.replace(path)
            return profile

    def forget(self, user_id: str) -> int:
        """Delete every profile version of one user (memory and disk); returns how many there were."""
        with self._lock:
            n = len(self._versions.pop(user_id, []))
            path = self._path(user_id)
            if path is not None and path.exists():
                n = max(n, len(json.loads(path.read_text())))
                path.unlink()
            return n

    def forget_user(self, user_id: str) -> dict[str, int]:
        """Forget a user everywhere memory holds them: profile versions and episodic points.

        Profiles are distilled from the episodes, so deleting one without the other would keep
        the user's data alive (or leave a profile of a history that no longer exists).
        """
        return {"profile_versions": self.forget(user_id), "qdrant_points": self.episodic.forget(user_id)}
