"""Personalized actions: tools bound to ONE user and ONE time bound.

A tool object is built per call with the user's id and ``before``; nothing it returns can come
from another user or from the future (the store filters on both, see ``EpisodicMemory``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING

import dspy

from persona_dspy.errors import UnknownUserError
from persona_dspy.signatures.tasks import MAX_EPISODE_CHARS, TaskSpec, render_episode

if TYPE_CHECKING:
    from persona_dspy.memory.protocol import MemoryReader
    from persona_dspy.memory.semantic import SemanticMemory


class UserTools:
    """The personalized actions of one user at one point in time."""

    def __init__(
        self,
        user_id: str,
        task: TaskSpec,
        *,
        memory: MemoryReader | None,
        semantic: SemanticMemory | None = None,
        before: float | None = None,
        episode_chars: int = MAX_EPISODE_CHARS,
    ) -> None:
        self.user_id, self.task, self.memory, self.semantic, self.before = user_id, task, memory, semantic, before
        self.episode_chars = episode_chars

    def recall_episodes(self, query: str, k: int = 4) -> str:
        """The user's k past interactions most similar to `query`, each with what the user answered."""
        if self.memory is None:
            return "(no memory)"
        try:
            episodes = self.memory.recall(self.user_id, self.task.compact(query), k=k, before=self.before)
        except UnknownUserError:
            return "(no past interactions)"
        return (
            "\n".join(render_episode(self.task, e.interaction, self.episode_chars) for e in episodes)
            or "(no past interactions)"
        )

    def recent_interactions(self, n: int = 5) -> str:
        """The user's n most recent interactions, oldest first."""
        if self.memory is None:
            return "(no memory)"
        try:
            items = self.memory.recent(self.user_id, n, before=self.before)
        except UnknownUserError:
            return "(no past interactions)"
        return "\n".join(render_episode(self.task, it, self.episode_chars) for it in items) or "(no past interactions)"

    def read_profile(self) -> str:
        """The user's semantic profile: short statements of stable preferences."""
        if self.semantic is None:
            return ""
        profile = self.semantic.get(self.user_id, before=self.before)
        return profile.text if profile else ""

    def answer_statistics(self) -> str:
        """How this user answered so far: rating mean and histogram, or label counts."""
        if self.memory is None or self.task.kind == "text":
            return ""
        try:
            history = self.memory.history(self.user_id, before=self.before)
        except UnknownUserError:
            return ""
        answers = [a for a in (self.task.parse(it.output) for it in history) if a is not None]
        if not answers:
            return ""
        if self.task.kind == "rating":
            values = [float(a) for a in answers]
            hist = Counter(answers)
            top = ", ".join(f"{k}: {v}" for k, v in sorted(hist.items(), key=lambda kv: float(kv[0])))
            return f"{len(values)} past ratings, mean {sum(values) / len(values):.2f} (counts {top})"
        counts = Counter(answers).most_common(5)
        return f"{len(answers)} past answers; most frequent: " + ", ".join(f"{k} ({v})" for k, v in counts)

    def as_dspy_tools(self) -> list[dspy.Tool]:
        return [dspy.Tool(getattr(self, name)) for name in ACTIONS]


ACTIONS = ("recall_episodes", "recent_interactions", "read_profile", "answer_statistics")

_BOUND: ContextVar[UserTools | None] = ContextVar("persona_dspy_bound_tools", default=None)


@contextmanager
def bound(tools: UserTools) -> Iterator[UserTools]:
    """Bind the late-bound tools (``late_bound_tools``) to one user and time bound for this call.

    A ``ContextVar`` keeps the binding per thread (and per asyncio task), so agents of different
    users answering concurrently never see each other's tools.
    """
    token = _BOUND.set(tools)
    try:
        yield tools
    finally:
        _BOUND.reset(token)


def _current() -> UserTools:
    tools = _BOUND.get()
    if tools is None:
        raise RuntimeError("a personalized tool was called outside `bound(...)`: no user and time bound are set")
    return tools


NOTHING_YET = "(nothing recorded for this user yet)"
"""What a ReAct action observes instead of an empty string (a small model repeats an action whose
observation is blank)."""


def _unwrap(value: object) -> object:
    """``{"type": "string", "value": "x"}`` -> ``"x"``: a small model often echoes the argument schema."""
    if isinstance(value, dict) and "value" in value and set(value) <= {"type", "value", "description"}:
        return value["value"]
    return value


class _LateBoundTool(dspy.Tool):
    """A ``dspy.Tool`` that accepts schema-shaped arguments (``_unwrap``) before DSPy validates them."""

    def __call__(self, **kwargs: object) -> object:
        return super().__call__(**{k: _unwrap(v) for k, v in kwargs.items()})

    async def acall(self, **kwargs: object) -> object:
        return await super().acall(**{k: _unwrap(v) for k, v in kwargs.items()})


def _observed(text: str) -> str:
    return text if text.strip() else NOTHING_YET


def late_bound_tools() -> list[dspy.Tool]:
    """The personalized actions as ``dspy.Tool``s for a long-lived ``dspy.ReAct``: each call
    dispatches to the ``UserTools`` bound for the current call (see ``bound``); an empty result is
    observed as ``NOTHING_YET``."""
    out: list[dspy.Tool] = []
    for name in ACTIONS:
        tool = _LateBoundTool(getattr(UserTools, name))
        tool.args.pop("self", None)
        tool.arg_types.pop("self", None)
        tool.func = lambda *, _name=name, **kwargs: _observed(getattr(_current(), _name)(**kwargs))
        out.append(tool)
    return out
