"""What every persona optimizer shares: the split, the budget, the replay, the gate.

A subclass only implements ``_align(agent, train, budget, result) -> persona``; the rest (a new
agent, the student untouched, the gate on held-back interactions) is the same for PersonaOptimizer
and the GEPA / MIPROv2 baselines, so their results compare.

``compile`` is pure in DSPy's sense: it reads the memory and calls the LM, nothing else. The
production persona it gates against is an argument; recording the result (register, promote) is
``Tracking.record``'s job, and ``persona_dspy.pipeline.align_user`` runs read -> compile -> record.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import dspy
from dspy.teleprompt import Teleprompter

from persona_dspy._values import is_number, is_whole
from persona_dspy.agent import PersonaAgent
from persona_dspy.data.records import Interaction, UserHistory
from persona_dspy.errors import BudgetExceededError, ConfigurationError, EmptyHistoryError, UnknownUserError
from persona_dspy.memory.protocol import MemoryReader
from persona_dspy.results import CompileResult

MAX_PERSONA_CHARS = 1200


def usage_totals(usage: Any) -> tuple[int, int]:
    """(LM calls, tokens) recorded by a ``dspy.track_usage()`` tracker."""
    calls = sum(len(v) for v in usage.usage_data.values())
    tokens = sum(int(e.get("total_tokens") or 0) for v in usage.usage_data.values() for e in v)
    return calls, tokens


class Budget:
    """Counts LM calls and tokens through DSPy's usage tracking; raises before the cap is crossed."""

    def __init__(self, usage: Any, max_calls: int | None, max_tokens: int | None) -> None:
        self.usage, self.max_calls, self.max_tokens = usage, max_calls, max_tokens

    @property
    def calls(self) -> int:
        return usage_totals(self.usage)[0]

    @property
    def tokens(self) -> int:
        return usage_totals(self.usage)[1]

    @property
    def remaining_calls(self) -> int | None:
        return None if self.max_calls is None else self.max_calls - self.calls

    def reserve(self, calls: int, what: str) -> None:
        if self.max_calls is not None and self.calls + calls > self.max_calls:
            raise BudgetExceededError(
                f"{what} needs {calls} more LM call(s) but {self.calls} of max_lm_calls={self.max_calls} are used; "
                "production was not moved. Raise max_lm_calls or lower n_recent / iterations."
            )
        if self.max_tokens is not None and self.tokens >= self.max_tokens:
            raise BudgetExceededError(
                f"{self.tokens} tokens used, max_tokens={self.max_tokens}; production was not moved. "
                "Raise max_tokens or lower n_recent / iterations."
            )


def check_numbers(
    *,
    whole: dict[str, Any] | None = None,
    whole_or_none: dict[str, Any] | None = None,
    real: dict[str, Any] | None = None,
) -> None:
    """Options of the wrong type are a ``ConfigurationError`` naming them (``n_recent="3"`` was a bare
    TypeError from a comparison; ``True`` is not a count)."""
    some = {k: v for k, v in (whole_or_none or {}).items() if v is not None}
    checks = [(whole or {}, is_whole, "a whole number"), (real or {}, is_number, "a number")]
    checks.append((some, is_whole, "a whole number or None"))
    for values, ok, what in checks:
        for name, value in values.items():
            if not ok(value):
                raise ConfigurationError(f"{name} must be {what}, got {type(value).__name__} {value!r}")


class GatedPersonaOptimizer(Teleprompter, ABC):
    """``compile(agent, trainset=history, production=text) -> PersonaAgent``: align on the latest
    ``n_recent`` interactions, gate the candidate against ``production`` on the ``n_val`` before them
    (or ``valset``); promoted if not worse by more than ``margin``.

    The returned agent carries the persona to serve after the compile (the candidate if it was
    promoted, else ``production``) and ``compile_result``; the student is never modified and
    nothing is recorded (``Tracking.record(agent.compile_result)`` does that).
    """

    name = "GatedPersonaOptimizer"

    def __init__(
        self,
        n_recent: int = 3,
        *,
        n_val: int = 2,
        margin: float = 0.0,
        max_lm_calls: int | None = 40,
        max_tokens: int | None = None,
        max_persona_chars: int = MAX_PERSONA_CHARS,
        seed_from_profile: bool = False,
        snapshot_memory: bool = True,
        progress: bool = False,
    ) -> None:
        super().__init__()
        check_numbers(
            whole={"n_recent": n_recent, "n_val": n_val, "max_persona_chars": max_persona_chars},
            whole_or_none={"max_lm_calls": max_lm_calls, "max_tokens": max_tokens},
            real={"margin": margin},
        )
        if n_recent < 1 or n_val < 0:
            raise ConfigurationError(f"n_recent must be >= 1 and n_val >= 0 (got n_recent={n_recent}, n_val={n_val})")
        if max_lm_calls is not None and max_lm_calls < 1:
            raise ConfigurationError(f"max_lm_calls must be >= 1 or None (got {max_lm_calls})")
        self.n_recent, self.n_val, self.margin = n_recent, n_val, margin
        self.max_lm_calls, self.max_tokens, self.max_persona_chars = max_lm_calls, max_tokens, max_persona_chars
        self.seed_from_profile = seed_from_profile
        self.snapshot_memory = snapshot_memory
        self.progress = progress

    @property
    def params(self) -> dict[str, Any]:
        return {
            "n_recent": self.n_recent,
            "n_val": self.n_val,
            "margin": self.margin,
            "max_lm_calls": self.max_lm_calls,
            "max_tokens": self.max_tokens,
            "max_persona_chars": self.max_persona_chars,
            "seed_from_profile": self.seed_from_profile,
        }

    @abstractmethod
    def _align(self, agent: PersonaAgent, train: list[Interaction], budget: Budget, result: CompileResult) -> str:
        """Return the candidate persona; record steps in ``result``."""

    def compile(
        self,
        student: PersonaAgent,
        *,
        trainset: Sequence[Interaction] | UserHistory,
        teacher: Any = None,
        valset: Sequence[Interaction] | None = None,
        production: str | None = None,
    ) -> PersonaAgent:
        """Align ``student``'s persona on ``trainset`` and gate it against ``production`` (default: the
        student's own persona, i.e. the student is what serves today)."""
        train, val = self.split(student.user_id, trainset, valset, task=student.task.name)
        started = time.perf_counter()
        production_text = production or student.persona
        result = CompileResult(
            user_id=student.user_id,
            task=student.task.name,
            optimizer=self.name,
            params=self.params,
            agent=student.settings(),
            initial_persona=student.persona,
            candidate_persona=student.persona,
            production_persona=production_text,
            val_ids=[it.id for it in val],
            data_watermark=max(it.timestamp for it in train),
        )
        if valset is None and (len(train), len(val)) != (self.n_recent, self.n_val):
            result.windows = (len(train), len(val))
        agent = student.deepcopy()
        live_memory = agent.memory
        agent.memory = self._snapshot(agent)
        with dspy.track_usage() as usage:
            budget = Budget(usage, self.max_lm_calls, self.max_tokens)
            try:
                if self.seed_from_profile:
                    agent.persona = self._seed(agent, min(it.timestamp for it in train + val), budget)
                    result.initial_persona = agent.persona
                agent.persona = self._align(agent, train, budget, result)
                result.candidate_persona = agent.persona
                items, known = self._gate_set(agent, train, val, result)
                self._gate(agent, production_text, items, budget, result, known)
                if result.promoted:
                    result.gated_persona = agent.persona
                    agent.persona = result.candidate_persona = self._finalize(agent, train, result)
            finally:
                agent.memory = live_memory
                result.lm_calls, result.tokens = budget.calls, budget.tokens
                result.wall_time = time.perf_counter() - started
        if not result.promoted:
            agent.persona = production_text  # what serving uses; the candidate stays in the result
        agent.compile_result = result
        agent._compiled = True
        return agent

    def _finalize(self, agent: PersonaAgent, train: list[Interaction], result: CompileResult) -> str:
        """The persona to promote once the gate said yes (default: the gated one, as it is)."""
        return agent.persona

    def split(
        self,
        user_id: str,
        trainset: Sequence[Interaction] | UserHistory,
        valset: Sequence[Interaction] | None = None,
        *,
        task: str | None = None,
    ) -> tuple[list[Interaction], list[Interaction]]:
        """(latest ``n_recent`` interactions, the ``n_val`` just before them or ``valset``), in time order;
        with ``task``, a trainset that mixes it with others keeps that task's only (a user of two tasks: the
        other's answers are not this persona's)."""
        items = list(trainset.interactions if isinstance(trainset, UserHistory) else trainset)
        if not items:
            raise EmptyHistoryError(f"user {user_id!r} has an empty trainset; ingest interactions first")
        mine = [it for it in items if it.task == task]
        if mine and len(mine) < len(items):  # a user of two tasks; a trainset of none of the task's is taken as given
            items = mine
        foreign = [it.id for it in items if it.user_id != user_id]
        if foreign:
            raise ConfigurationError(
                f"trainset holds interactions of other users (ids {foreign[:3]}); "
                f"compile one user at a time (agent user {user_id!r})"
            )
        items.sort(key=lambda it: (it.timestamp, it.id))
        n_recent, n_val = (self.n_recent, 0) if valset is not None else self.windows(items)
        needed = n_recent + n_val
        if len(items) < needed:
            raise EmptyHistoryError(
                f"user {user_id!r} has {len(items)} interactions; n_recent={self.n_recent} + n_val={self.n_val} "
                f"needs {needed} (the latest n to replay and the ones before them to gate on). "
                "Lower n_recent / n_val or pass a valset."
            )
        train = items[-n_recent:]
        if valset is not None:
            val = sorted(valset, key=lambda it: (it.timestamp, it.id))
        else:
            val = items[len(items) - n_recent - n_val : len(items) - n_recent]
        return train, val

    def windows(self, items: list[Interaction]) -> tuple[int, int]:
        """How many of the latest ``items`` (in time order) to replay and, before them, to gate on:
        ``(n_recent, n_val)`` as configured; a subclass may fit them to a short history."""
        return self.n_recent, self.n_val

    def _snapshot(self, agent: PersonaAgent) -> MemoryReader | None:
        """The user's episodes read once for the whole compile (``UserSnapshot``)."""
        if not self.snapshot_memory or agent.memory is None:
            return agent.memory
        try:
            return agent.memory.snapshot(agent.user_id)
        except UnknownUserError:
            return agent.memory  # nothing stored yet: the tools answer "(no past interactions)"

    def replay(
        self, agent: PersonaAgent, items: list[Interaction], budget: Budget, what: str
    ) -> tuple[float, list[str | None]]:
        """Answer ``items`` with the agent's persona; memory is bounded by each item's own time (no leakage)."""
        budget.reserve(len(items), what)
        preds = [agent(task=it.input, before=it.timestamp).answer for it in items]
        scores = [agent.task.score(p, it.output) for p, it in zip(preds, items)]
        return sum(scores) / len(scores), preds

    def _seed(self, agent: PersonaAgent, before: float, budget: Budget) -> str:
        """The persona plus the user's semantic profile built from episodes before every replayed one."""
        if agent.semantic is None:
            return agent.persona
        budget.reserve(1, "profile seed")
        profile = agent.semantic.update(agent.user_id, before=before)
        return f"{agent.persona}\nWhat is known about this user:\n{profile.text}"[: self.max_persona_chars]

    def _gate_set(
        self, agent: PersonaAgent, train: list[Interaction], val: list[Interaction], result: CompileResult
    ) -> tuple[list[Interaction], dict[str, str | None]]:
        """The interactions the gate scores the candidate on, in time order, and the candidate's answers
        already known for some of them (by id; they are not replayed again). Default: the held-back ones."""
        return val, {}

    def _gate(
        self,
        agent: PersonaAgent,
        production_text: str,
        val: list[Interaction],
        budget: Budget,
        result: CompileResult,
        known: dict[str, str | None] | None = None,
    ) -> None:
        candidate_text = agent.persona
        if candidate_text == production_text:
            result.reason = "the persona did not change"
            return
        if not val:
            result.reason = "no held-back interactions to gate on; the candidate is not promoted"
            return
        known = known or {}
        result.val_ids = [it.id for it in val]
        agent.persona = production_text
        result.val_score_production, production = self.replay(agent, val, budget, "gate (production)")
        agent.persona = candidate_text
        fresh = [it for it in val if it.id not in known]
        answers = (
            dict(zip([it.id for it in fresh], self.replay(agent, fresh, budget, "gate (candidate)")[1]))
            if fresh
            else {}
        )
        candidate = [known[it.id] if it.id in known else answers[it.id] for it in val]
        result.val_score_candidate = sum(agent.task.score(c, it.output) for c, it in zip(candidate, val)) / len(val)
        self._decide(agent, val, production, candidate, result)
        if known:
            result.reason += f"; {len(known)} of the {len(val)} were replayed first, their answers reused"

    def _decide(
        self,
        agent: PersonaAgent,
        val: list[Interaction],
        production: list[str | None],
        candidate: list[str | None],
        result: CompileResult,
    ) -> None:
        """Promote from the gate's replays (answers per held-back interaction; mean scores in ``result``):
        here, when the candidate is not worse than production by more than ``margin``."""
        assert result.val_score_candidate is not None and result.val_score_production is not None
        result.promoted = result.val_score_candidate >= result.val_score_production - self.margin
        result.reason = (
            f"candidate {result.val_score_candidate:.3f} vs production "
            f"{result.val_score_production:.3f} on {len(val)} held-back interactions "
            f"(margin {self.margin})"
        )
