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

SCORE_TOLERANCE = 1e-9
"""Replay scores closer than this are equal (means of per-interaction scores)."""

MIN_LEAK_CHARS = 12
"""Replayed answers at least this long are redacted from a rewritten persona (no memorized answers)."""


class PersonaOptimizer(GatedPersonaOptimizer):
    """``PersonaOptimizer(n_recent=3, iterations=3).compile(agent, trainset=history) -> PersonaAgent``.

    Cost per iteration: ``n_recent`` replays + 1 loss + 1 update, and the gate adds ``2 * n_val``
    replays when the persona changed: ``iterations * (n + 2) + 2 * n_val`` at most. The replay that
    starts an iteration also judges the previous update, so the loop stops early, for free:

    - every replayed answer matches the user: nothing left to learn from this batch;
    - the update made the replay worse than the best persona so far: that step is undone, the
      candidate is the best persona;
    - ``patience`` iterations in a row without a better replay (default 1; ``None``: never);
    - the update returned the persona unchanged (its replay would be the same).

    ``result.stopped`` says which.
    """

    name = "PersonaOptimizer"

    def __init__(self, n_recent: int = 3, iterations: int = 3, *, patience: int | None = 1, **kwargs: Any) -> None:
        super().__init__(n_recent, **kwargs)
        if iterations < 1:
            raise ValueError("iterations must be >= 1")
        if patience is not None and patience < 1:
            raise ValueError("patience must be >= 1 or None")
        self.iterations, self.patience = iterations, patience

    @property
    def params(self) -> dict[str, Any]:
        return {**super().params, "iterations": self.iterations, "patience": self.patience}

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
        best_score, best_persona, stale = -1.0, persona.value, 0
        bar = tqdm(range(self.iterations), desc=f"align {agent.user_id}", disable=not self.progress, leave=False)
        for i in bar:
            agent.persona = persona.value
            score, preds = self.replay(agent, train, budget, f"iteration {i + 1} replay")
            step = Step(iteration=i + 1, persona=persona.value, train_score=score, predictions=preds)
            result.steps.append(step)
            bar.set_postfix(score=f"{score:.2f}")
            if score < best_score - SCORE_TOLERANCE:
                result.stopped = (f"the update of iteration {i} made the replay worse ({score:.3f} < {best_score:.3f}); "
                                  "the candidate is the best persona replayed")
                return best_persona
            stale = stale + 1 if i and score <= best_score + SCORE_TOLERANCE else 0
            best_score, best_persona = score, persona.value
            if score >= 1.0:
                result.stopped = f"every replayed answer matched the user (iteration {i + 1})"
                return persona.value
            if self.patience is not None and stale >= self.patience:
                result.stopped = f"no better replay for {stale} iteration(s) (patience {self.patience})"
                return persona.value
            budget.reserve(2, f"iteration {i + 1} loss and update")
            optimizer.zero_grad()
            cases = [ops.replay_case(agent.task, it, p) for it, p in zip(train, preds)]
            replay = ops.Replay()(persona, cases, agent.task)
            loss = loss_fn(persona, replay, ops.metric_summary(cases, agent.task))
            step.loss = loss.value
            loss.backward(engine)
            step.updated_persona = self._step(optimizer, persona, engine, train)
            if step.updated_persona == step.persona:
                result.stopped = f"the update of iteration {i + 1} left the persona unchanged"
                return persona.value
        result.stopped = f"{self.iterations} iteration(s) done"
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
