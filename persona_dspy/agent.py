"""PersonaAgent: a DSPy module whose persona (the instructions of its predictors) is per user."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

import dspy
from dspy.utils.exceptions import AdapterParseError

from persona_dspy.config import DEFAULT_K
from persona_dspy.errors import LMOutputError, PersonaDSPyError
from persona_dspy.signatures.compact import CompactAdapter
from persona_dspy.signatures.tasks import DEFAULT_PERSONA, MAX_EPISODE_CHARS, TaskSpec, get_task
from persona_dspy.tools import UserTools, bound, late_bound_tools

if TYPE_CHECKING:
    from persona_dspy.memory.protocol import MemoryReader
    from persona_dspy.memory.semantic import SemanticMemory

Mode = Literal["pipeline", "react"]
AdapterName = Literal["chat", "compact"]
PIPELINE_ACTIONS = ("read_profile", "answer_statistics", "recall_episodes")
MIN_EPISODE_CHARS = 20
"""An episode cut shorter than this would cut the answers of a label task (``style & beauty``)."""


AGENT_STATE = "persona_agent"
"""The key of the agent's settings in a saved state (``PersonaAgent.dump_state``)."""


def agent_kwargs(settings: Mapping[str, str]) -> dict[str, Any]:
    """``PersonaAgent`` keyword arguments from recorded ``settings`` (``PersonaAgent.settings()``, or the
    ``agent.*`` tags of a persona version); keys it does not know are ignored, missing ones left out. A
    count that is not a positive whole number: ``ValueError`` naming it (the constructor checks the rest)."""
    kwargs: dict[str, Any] = {}
    for key in ("adapter", "mode"):
        if key in settings:
            kwargs[key] = str(settings[key])
    for key in ("k", "episode_chars", "max_iters"):
        if key in settings:
            value = str(settings[key])
            if not value.isdigit() or int(value) < 1:
                raise ValueError(f"{key} must be a positive whole number, not {value!r}")
            kwargs[key] = int(value)
    if "actions" in settings:
        kwargs["actions"] = tuple(a for a in str(settings["actions"]).split(",") if a)
    return kwargs


class PersonaAgent(dspy.Module):
    """Answers a task as one user would, from that user's memory, guided by that user's persona.

    - ``mode="pipeline"`` (default, one LM call): run the ``actions`` (by default the profile, the
      answer statistics and the k most similar episodes), then answer.
    - ``mode="react"``: a ``dspy.ReAct`` loop that chooses among the personalized actions
      (recall_episodes, recent_interactions, read_profile, answer_statistics); the persona tells it
      which to use.
    - ``episode_chars``: a past interaction's text is cut at this many characters in the prompt.
    - ``adapter``: ``"chat"`` (DSPy's ``ChatAdapter``, or whatever ``dspy.settings.adapter`` is) or
      ``"compact"`` (``CompactAdapter``: the same inputs in ``name: value`` lines, the answer alone; about
      a third fewer tokens per call).

    The persona is the *only* per-user text: it is set with ``signature.with_instructions`` on each
    predictor, never by mutating a shared Signature class, so two users' agents never share a
    persona. Tools are bound to ``user_id`` and to ``before`` on every call (no leakage).
    """

    def __init__(
        self,
        task: str | TaskSpec = "generic",
        *,
        user_id: str,
        memory: MemoryReader | None = None,
        semantic: SemanticMemory | None = None,
        persona: str | None = None,
        k: int = DEFAULT_K,
        mode: Mode = "pipeline",
        max_iters: int = 4,
        actions: tuple[str, ...] = PIPELINE_ACTIONS,
        episode_chars: int = MAX_EPISODE_CHARS,
        adapter: AdapterName = "chat",
    ) -> None:
        super().__init__()
        if adapter not in ("chat", "compact"):
            raise ValueError(f"adapter must be 'chat' or 'compact', not {adapter!r}")
        if adapter == "compact" and mode == "react":
            raise ValueError("adapter='compact' formats one-answer calls; a react agent's calls are not (use 'chat')")
        self.adapter = adapter
        if episode_chars < MIN_EPISODE_CHARS:
            raise ValueError(f"episode_chars must be >= {MIN_EPISODE_CHARS} (got {episode_chars})")
        if mode not in ("pipeline", "react"):
            raise ValueError(f"mode must be 'pipeline' or 'react', not {mode!r}")
        self.task = get_task(task)
        self.user_id = user_id
        self.memory = memory
        self.semantic = semantic
        self.k = k
        self.episode_chars = episode_chars
        self.mode = mode
        unknown = set(actions) - {"read_profile", "answer_statistics", "recall_episodes", "recent_interactions"}
        if unknown:
            raise ValueError(f"unknown pipeline actions {sorted(unknown)}")
        self.actions = tuple(actions)
        initial = (persona or DEFAULT_PERSONA).strip()
        signature = self.task.signature.with_instructions(initial)
        if mode == "pipeline":
            self.respond = dspy.Predict(signature)
        else:
            self.respond = dspy.ReAct(
                signature.delete("profile").delete("history"), tools=late_bound_tools(), max_iters=max_iters
            )
        # what each predictor's instructions hold besides the persona (ReAct's tool protocol)
        self._suffixes = {name: p.signature.instructions[len(initial) :] for name, p in self.named_predictors()}

    @property
    def persona(self) -> str:
        texts = set()
        for name, predictor in self.named_predictors():
            text, suffix = predictor.signature.instructions, self._suffixes[name]
            texts.add(text[: len(text) - len(suffix)] if suffix and text.endswith(suffix) else text)
        if len(texts) != 1:
            raise RuntimeError(f"predictors disagree on the persona ({len(texts)} different texts)")
        return texts.pop()

    @persona.setter
    def persona(self, text: str) -> None:
        if not text or not text.strip():
            raise ValueError("a persona must be non-empty text")
        for name, predictor in self.named_predictors():
            predictor.signature = predictor.signature.with_instructions(text.strip() + self._suffixes[name])

    def settings(self) -> dict[str, str]:
        """What, besides the persona, shapes this agent's prompt: ``adapter``, ``mode``, ``k``,
        ``episode_chars``, ``actions`` (and a react agent's ``max_iters``), as strings. A compile records
        them (``CompileResult.agent``), ``load_agent`` serves a persona with the settings it was gated
        with, and ``save`` keeps them."""
        return {
            "adapter": self.adapter,
            "mode": self.mode,
            "k": str(self.k),
            "episode_chars": str(self.episode_chars),
            "actions": ",".join(self.actions),
            **({"max_iters": str(self.respond.max_iters)} if self.mode == "react" else {}),
        }

    def dump_state(self, json_mode: bool = True) -> dict:
        return {**super().dump_state(json_mode=json_mode), AGENT_STATE: self.settings()}

    def load_state(self, state: dict, *, allow_unsafe_lm_state: bool = False) -> PersonaAgent:
        """Load the persona and, from a state ``save`` wrote since settings were saved, the agent's
        settings (``adapter``, ``k``, ``episode_chars``, ``actions``, ``max_iters``); a state of the other
        ``mode`` is refused (its predictors differ), and so is one whose settings are invalid (nothing loaded)."""
        state = dict(state)
        saved = state.pop(AGENT_STATE, None)
        if saved is not None and not isinstance(saved, Mapping):
            raise ValueError(
                f"the state's {AGENT_STATE!r} entry must be the agent's settings (a mapping), not {saved!r}"
            )
        if saved is not None:
            if saved.get("mode", self.mode) != self.mode:
                raise ValueError(
                    f"this state was saved from a mode={saved['mode']!r} agent; load it into "
                    f"PersonaAgent(..., mode={saved['mode']!r}) (this one is mode={self.mode!r})"
                )
            checked = PersonaAgent(self.task, user_id=self.user_id, **{**agent_kwargs(saved), "mode": self.mode})
        super().load_state(state, allow_unsafe_lm_state=allow_unsafe_lm_state)
        if saved is not None:
            self.adapter, self.k = checked.adapter, checked.k
            self.episode_chars, self.actions = checked.episode_chars, checked.actions
            if self.mode == "react":
                self.respond.max_iters = checked.respond.max_iters
        return self

    def adapter_settings(self) -> dict[str, dspy.Adapter]:
        """``dspy.context`` settings of this agent's ``adapter`` (none for ``"chat"``: the configured one)."""
        return {"adapter": CompactAdapter()} if self.adapter == "compact" else {}

    def tools(self, before: float | None = None) -> UserTools:
        """The personalized actions of this agent's user, bounded to strictly before ``before``."""
        return UserTools(
            self.user_id,
            self.task,
            memory=self.memory,
            semantic=self.semantic,
            before=before,
            episode_chars=self.episode_chars,
        )

    def context(self, task: str, before: float | None = None) -> dict[str, str]:
        """Retrieve-then-answer: the profile and history fields the pipeline predictor reads."""
        tools = self.tools(before)
        profile = [getattr(tools, a)() for a in self.actions if a in ("read_profile", "answer_statistics")]
        history = [
            tools.recall_episodes(task, k=self.k) if a == "recall_episodes" else tools.recent_interactions(self.k)
            for a in self.actions
            if a in ("recall_episodes", "recent_interactions")
        ]
        return {
            "profile": "\n".join(x for x in profile if x) or "(unknown)",
            "history": "\n".join(x for x in history if x) or "(none)",
        }

    def forward(self, task: str, before: float | None = None) -> dspy.Prediction:
        """Answer ``task``; an answer outside the contract (or unparsable output) is retried once, then
        returned as ``answer=None`` (scored as the worst answer, as LaMP does). An LM that fails twice
        raises ``LMOutputError``."""
        compact = self.task.compact(task)
        raw, failure = None, None
        with bound(self.tools(before)), dspy.context(**self.adapter_settings()):
            inputs = {"task": compact, **(self.context(task, before) if self.mode == "pipeline" else {})}
            for attempt in range(2):
                config = {"config": {"rollout_id": attempt, "temperature": 0.7}} if attempt else {}
                try:
                    raw, failure = self.respond(**inputs, **config).answer, None
                except AdapterParseError:  # empty or garbled output: an invalid answer
                    raw, failure = None, None
                except PersonaDSPyError:
                    raise
                except Exception as exc:  # noqa: BLE001 -- any LM failure is recorded; the LM layer already retried
                    failure = exc
                answer = self.task.parse(raw)
                if answer is not None:
                    break
        if failure is not None:
            raise LMOutputError(
                f"the LM failed twice answering for user {self.user_id!r} "
                f"({type(failure).__name__}: {' '.join(str(failure).split())[:200]}). Check PERSONA_DSPY_LM."
            ) from failure
        extra = {k: v for k, v in inputs.items() if k != "task"}
        return dspy.Prediction(answer=answer, raw_answer=raw, valid=answer is not None, **extra)
