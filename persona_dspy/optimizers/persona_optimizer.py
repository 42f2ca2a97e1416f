"""PersonaOptimizer: test-time preference alignment of a user's persona with TextGrad.

For each iteration: replay the user's latest ``n`` interactions with the current persona (memory
bounded by each interaction's own time), critique the replay against what the user really did
(textual loss, one LM call for the batch), back-propagate the critique to the persona and let TGD
rewrite it. The gate, budget and tracking are shared with the baselines (``base.py``).
"""

from __future__ import annotations

from typing import Any

from tqdm.auto import tqdm

from persona_dspy.agent import PersonaAgent
from persona_dspy.data.records import Interaction
from persona_dspy.errors import LMOutputError
from persona_dspy.optimizers.base import Budget, GatedPersonaOptimizer
from persona_dspy.results import CompileResult, Step

MIN_LEAK_CHARS = 12
"""Replayed answers at least this long are redacted from a rewritten persona (no memorized answers)."""


class PersonaOptimizer(GatedPersonaOptimizer):
    """``PersonaOptimizer(n_recent=3, iterations=3).compile(agent, trainset=history) -> PersonaAgent``.

    Cost per iteration: ``n_recent`` replays + 1 loss + 1 update; an iteration whose replay already
    matches every answer stops the loop. The gate adds ``2 * n_val`` replays when the persona changed.
    """

    name = "PersonaOptimizer"

    def __init__(self, n_recent: int = 3, iterations: int = 3, **kwargs: Any) -> None:
        super().__init__(n_recent, **kwargs)
        if iterations < 1:
            raise ValueError("iterations must be >= 1")
        self.iterations = iterations

    @property
    def params(self) -> dict[str, Any]:
        return {**super().params, "iterations": self.iterations}

    def _align(self, agent: PersonaAgent, train: list[Interaction], budget: Budget, result: CompileResult) -> str:
        from persona_dspy.lm.textgrad_engine import DSPyEngine
        from persona_dspy.optimizers import prompts, textgrad_ops as ops

        engine = DSPyEngine()
        persona = ops.PersonaVariable(agent.persona)
        constraints = [f"At most {self.max_persona_chars} characters.",
                       f"Write it as instructions to the assistant about this user, starting with '{prompts.PERSONA_START}', "
                       "stating the user's preferences and answering habits concretely.",
                       f"Keep the task's output contract: {agent.task.contract()}"]
        optimizer = ops.tgd_optimizer(persona, engine, constraints)
        loss_fn = ops.PreferenceLoss(engine, agent.task.contract(), agent.task.kind)
        bar = tqdm(range(self.iterations), desc=f"align {agent.user_id}", disable=not self.progress, leave=False)
        for i in bar:
            agent.persona = persona.value
            score, preds = self.replay(agent, train, budget, f"iteration {i + 1} replay")
            step = Step(iteration=i + 1, persona=persona.value, train_score=score, predictions=preds)
            result.steps.append(step)
            bar.set_postfix(score=f"{score:.2f}")
            if score >= 1.0:
                break  # every replayed answer matches the user: nothing to learn from this batch
            budget.reserve(2, f"iteration {i + 1} loss and update")
            optimizer.zero_grad()
            cases = [ops.replay_case(agent.task, it, p) for it, p in zip(train, preds)]
            replay = ops.Replay()(persona, cases, agent.task)
            loss = loss_fn(persona, replay, ops.metric_summary(cases, agent.task))
            step.loss = loss.value
            loss.backward(engine)
            step.updated_persona = self._step(optimizer, persona, engine, train)
        return persona.value

    def _step(self, optimizer: Any, persona: Any, engine: Any, train: list[Interaction]) -> str:
        """One TGD update, validated; one retry on unusable output, then ``LMOutputError``."""
        previous = persona.value
        retry_engine = type(engine)(temperature=0.7)  # a different cache key, a different sample
        try:
            for attempt_engine in (engine, retry_engine):
                optimizer.engine = attempt_engine
                try:
                    optimizer.step()
                except IndexError:  # no <IMPROVED_VARIABLE> tag in the answer
                    persona.set_value(previous)
                    continue
                text = self._redact(persona.value.strip().strip("{}\"'` \n"), train)
                if 20 <= len(text) <= self.max_persona_chars:
                    persona.set_value(text)
                    return text
                persona.set_value(previous)
        finally:
            optimizer.engine = engine
        raise LMOutputError("the LM's persona update was unusable twice (missing <IMPROVED_VARIABLE> tags, "
                            f"empty, or over {self.max_persona_chars} characters); production was not moved. "
                            "Try a stronger LM for alignment (PERSONA_DSPY_LM).")

    @staticmethod
    def _redact(text: str, train: list[Interaction]) -> str:
        """A persona must generalize, not store answers: long replayed answers are cut out of it."""
        for it in train:
            if len(it.output) >= MIN_LEAK_CHARS and it.output in text:
                text = text.replace(it.output, "[...]")
        return text
