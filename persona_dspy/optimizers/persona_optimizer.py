"""PersonaOptimizer: test-time preference alignment of a user's persona with TextGrad.

For each iteration: replay the user's latest ``n`` interactions with the current persona (memory
bounded by each interaction's own time), critique the replay against what the user really did
(textual loss), back-propagate the critique to the persona and let TGD rewrite it. Then a gate
scores the candidate against the production persona on held-back interactions; production moves
only when the candidate is not worse.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import dspy
from dspy.teleprompt import Teleprompter
from tqdm.auto import tqdm

from persona_dspy.agent import PersonaAgent
from persona_dspy.data.records import Interaction, UserHistory
from persona_dspy.errors import BudgetExceededError, EmptyHistoryError, LMOutputError
from persona_dspy.results import CompileResult, Step

if TYPE_CHECKING:
    from persona_dspy.tracking.tracker import Tracking

MAX_PERSONA_CHARS = 1200


class _Budget:
    """Counts LM calls and tokens through DSPy's usage tracking; raises before the cap is crossed."""

    def __init__(self, usage: Any, max_calls: int | None, max_tokens: int | None) -> None:
        self.usage, self.max_calls, self.max_tokens = usage, max_calls, max_tokens

    @property
    def calls(self) -> int:
        return sum(len(v) for v in self.usage.usage_data.values())

    @property
    def tokens(self) -> int:
        return sum(int(e.get("total_tokens") or 0) for v in self.usage.usage_data.values() for e in v)

    def reserve(self, calls: int, what: str) -> None:
        if self.max_calls is not None and self.calls + calls > self.max_calls:
            raise BudgetExceededError(
                f"{what} needs {calls} more LM call(s) but {self.calls} of max_lm_calls={self.max_calls} are used; "
                "production was not moved. Raise max_lm_calls or lower n_recent / iterations.")
        if self.max_tokens is not None and self.tokens >= self.max_tokens:
            raise BudgetExceededError(
                f"{self.tokens} tokens used, max_tokens={self.max_tokens}; production was not moved. "
                "Raise max_tokens or lower n_recent / iterations.")


class PersonaOptimizer(Teleprompter):
    """``PersonaOptimizer(n_recent=3, iterations=3).compile(agent, trainset=history) -> PersonaAgent``.

    Returns a new agent (the student is untouched) whose ``compile_result`` tells what happened.
    With ``tracking``, the candidate is registered in MLflow's prompt registry and ``production``
    moves only when the gate passes.
    """

    def __init__(self, n_recent: int = 3, iterations: int = 3, *, n_val: int = 2, margin: float = 0.0,
                 max_lm_calls: int | None = 40, max_tokens: int | None = None,
                 max_persona_chars: int = MAX_PERSONA_CHARS, tracking: Tracking | None = None,
                 progress: bool = False) -> None:
        super().__init__()
        if n_recent < 1 or iterations < 1:
            raise ValueError("n_recent and iterations must be >= 1")
        self.n_recent, self.iterations, self.n_val, self.margin = n_recent, iterations, n_val, margin
        self.max_lm_calls, self.max_tokens, self.max_persona_chars = max_lm_calls, max_tokens, max_persona_chars
        self.tracking = tracking
        self.progress = progress

    @property
    def params(self) -> dict[str, Any]:
        return {"n_recent": self.n_recent, "iterations": self.iterations, "n_val": self.n_val, "margin": self.margin,
                "max_lm_calls": self.max_lm_calls, "max_tokens": self.max_tokens,
                "max_persona_chars": self.max_persona_chars}

    # -- the verb -------------------------------------------------------------------------------
    def compile(self, student: PersonaAgent, *, trainset: Sequence[Interaction] | UserHistory,
                teacher: Any = None, valset: Sequence[Interaction] | None = None, **kwargs: Any) -> PersonaAgent:
        train, val = self._split(student.user_id, trainset, valset)
        started = time.perf_counter()
        production = self.tracking.production_persona(student.user_id) if self.tracking else None
        production_text = production or student.persona
        result = CompileResult(user_id=student.user_id, params=self.params, initial_persona=student.persona,
                               candidate_persona=student.persona, production_persona=production_text,
                               val_ids=[it.id for it in val],
                               data_watermark=max(it.timestamp for it in train))
        agent = student.deepcopy()
        with dspy.track_usage() as usage:
            budget = _Budget(usage, self.max_lm_calls, self.max_tokens)
            try:
                agent.persona = self._align(agent, train, budget, result)
                result.candidate_persona = agent.persona
                self._gate(agent, production_text, val, budget, result)
            finally:
                result.lm_calls, result.tokens = budget.calls, budget.tokens
                result.wall_time = time.perf_counter() - started
        if self.tracking is not None:
            result.version = self.tracking.record(result)
        if not result.promoted:
            agent.persona = production_text  # what serving uses; the candidate stays in the result
        agent.compile_result = result
        agent._compiled = True
        return agent

    # -- pieces ---------------------------------------------------------------------------------
    def _split(self, user_id: str, trainset: Sequence[Interaction] | UserHistory,
               valset: Sequence[Interaction] | None) -> tuple[list[Interaction], list[Interaction]]:
        items = list(trainset.interactions if isinstance(trainset, UserHistory) else trainset)
        if not items:
            raise EmptyHistoryError(f"user {user_id!r} has an empty trainset; ingest interactions first")
        foreign = [it.id for it in items if it.user_id != user_id]
        if foreign:
            raise ValueError(f"trainset holds interactions of other users (ids {foreign[:3]}); "
                             f"compile one user at a time (agent user {user_id!r})")
        items.sort(key=lambda it: (it.timestamp, it.id))
        if len(items) < self.n_recent + (0 if valset is not None else 1):
            raise EmptyHistoryError(
                f"user {user_id!r} has {len(items)} interactions; n_recent={self.n_recent} needs at least "
                f"{self.n_recent + 1} (the latest n to replay and one before them to gate on). Lower n_recent.")
        train = items[-self.n_recent:]
        val = list(valset) if valset is not None else items[-self.n_recent - self.n_val:-self.n_recent]
        return train, val

    def _score(self, agent: PersonaAgent, items: list[Interaction], budget: _Budget,
               what: str) -> tuple[float, list[str | None]]:
        """Replay ``items`` with the agent's persona; memory is bounded by each item's own time."""
        budget.reserve(len(items), what)
        preds = [agent(task=it.input, before=it.timestamp).answer for it in items]
        scores = [agent.task.score(p, it.output) for p, it in zip(preds, items)]
        return sum(scores) / len(scores), preds

    def _align(self, agent: PersonaAgent, train: list[Interaction], budget: _Budget, result: CompileResult) -> str:
        from persona_dspy.lm.textgrad_engine import DSPyEngine
        from persona_dspy.optimizers import textgrad_ops as ops

        engine = DSPyEngine()
        persona = ops.PersonaVariable(agent.persona)
        constraints = [f"At most {self.max_persona_chars} characters.",
                       f"Keep the task's output contract: {agent.task.contract()}",
                       "Describe this user's preferences and answering habits; do not address the reviewer."]
        optimizer = ops.tgd_optimizer(persona, engine, constraints)
        loss_fn = ops.PreferenceLoss(engine, agent.task.contract())
        bar = tqdm(range(self.iterations), desc=f"align {agent.user_id}", disable=not self.progress, leave=False)
        for i in bar:
            agent.persona = persona.value
            score, preds = self._score(agent, train, budget, f"iteration {i + 1} replay")
            step = Step(iteration=i + 1, persona=persona.value, train_score=score, predictions=preds)
            result.steps.append(step)
            bar.set_postfix(score=f"{score:.2f}")
            if score >= 1.0:
                break  # every replayed answer matches the user: nothing to learn from this batch
            cases = [ops.replay_case(agent.task, it, p) for it, p in zip(train, preds)]
            budget.reserve(2, f"iteration {i + 1} loss and update")
            optimizer.zero_grad()
            replay = ops.Replay()(persona, cases, agent.task)
            loss = loss_fn(persona, replay)
            step.loss = loss.value
            loss.backward(engine)
            step.updated_persona = self._step(optimizer, persona, engine)
        return persona.value

    def _step(self, optimizer: Any, persona: Any, engine: Any) -> str:
        """One TGD update, validated; one retry on unusable output, then ``LMOutputError``."""
        previous = persona.value
        for attempt in range(2):
            if attempt:
                optimizer.engine = type(engine)(temperature=0.7)
            try:
                optimizer.step()
            except IndexError:
                persona.set_value(previous)
                continue
            text = persona.value.strip()
            if 20 <= len(text) <= self.max_persona_chars:
                optimizer.engine = engine
                return text
            persona.set_value(previous)
        optimizer.engine = engine
        raise LMOutputError("the LM's persona update was unusable twice (missing <IMPROVED_VARIABLE> tags, "
                            f"empty, or over {self.max_persona_chars} characters); production was not moved. "
                            "Try a stronger LM for alignment.")

    def _gate(self, agent: PersonaAgent, production_text: str, val: list[Interaction], budget: _Budget,
              result: CompileResult) -> None:
        if not val:
            result.reason = "no held-back interactions to gate on; candidate registered, production not moved"
            return
        candidate_text = agent.persona
        if candidate_text == production_text:
            result.reason = "the persona did not change"
            return
        agent.persona = production_text
        result.val_score_production, _ = self._score(agent, val, budget, "gate (production)")
        agent.persona = candidate_text
        result.val_score_candidate, _ = self._score(agent, val, budget, "gate (candidate)")
        result.promoted = result.val_score_candidate >= result.val_score_production - self.margin
        result.reason = (f"candidate {result.val_score_candidate:.3f} vs production "
                         f"{result.val_score_production:.3f} on {len(val)} held-back interactions "
                         f"(margin {self.margin})")
