"""PersonaAgent: a DSPy module whose persona (the instructions of its predictors) is per user."""

from __future__ import annotations

from typing import TYPE_CHECKING

import dspy

from persona_dspy.signatures.tasks import DEFAULT_PERSONA, TaskSpec, get_task
from persona_dspy.tools import UserTools

if TYPE_CHECKING:
    from persona_dspy.memory.episodic import EpisodicMemory
    from persona_dspy.memory.semantic import SemanticMemory


class PersonaAgent(dspy.Module):
    """Answers a task as one user would, from that user's memory, guided by that user's persona.

    The persona is the *only* per-user trainable text: it is set with ``signature.with_instructions``
    on each predictor, never by mutating a shared Signature class, so two users' agents never share
    a persona. Memory reads are bound to ``user_id`` and, when given, to ``before`` (no leakage).
    """

    def __init__(self, task: str | TaskSpec = "generic", *, user_id: str, memory: EpisodicMemory | None = None,
                 semantic: SemanticMemory | None = None, persona: str | None = None, k: int = 4) -> None:
        super().__init__()
        self.task = get_task(task)
        self.user_id = user_id
        self.memory = memory
        self.semantic = semantic
        self.k = k
        self.respond = dspy.Predict(self.task.signature.with_instructions(persona or DEFAULT_PERSONA))

    @property
    def persona(self) -> str:
        texts = {p.signature.instructions for _, p in self.named_predictors()}
        if len(texts) != 1:
            raise RuntimeError(f"predictors disagree on the persona ({len(texts)} different texts)")
        return texts.pop()

    @persona.setter
    def persona(self, text: str) -> None:
        if not text or not text.strip():
            raise ValueError("a persona must be non-empty text")
        for _, predictor in self.named_predictors():
            predictor.signature = predictor.signature.with_instructions(text.strip())

    def tools(self, before: float | None = None) -> UserTools:
        """The personalized actions of this agent's user, bounded to strictly before ``before``."""
        return UserTools(self.user_id, self.task, memory=self.memory, semantic=self.semantic, before=before)

    def context(self, task: str, before: float | None = None) -> dict[str, str]:
        """Retrieve-then-answer: the profile and history fields the predictor reads."""
        tools = self.tools(before)
        profile = "\n".join(x for x in (tools.read_profile(), tools.answer_statistics()) if x) or "(unknown)"
        return {"profile": profile, "history": tools.recall_episodes(task, k=self.k)}

    def forward(self, task: str, before: float | None = None) -> dspy.Prediction:
        context = self.context(task, before)
        compact = self.task.compact(task)
        pred = self.respond(task=compact, **context)
        answer = self.task.parse(pred.answer)
        if answer is None:  # one retry outside the contract, then the worst score (as LaMP does)
            pred = self.respond(task=compact, **context, config={"rollout_id": 1, "temperature": 0.7})
            answer = self.task.parse(pred.answer)
        return dspy.Prediction(answer=answer, raw_answer=pred.answer, valid=answer is not None, **context)
