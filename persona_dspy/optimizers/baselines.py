"""DSPy's own optimizers as baselines, acting on the persona only, under the same split, gate and budget.

The agent's only predictor instructions *are* the persona, so GEPA and MIPROv2 (instruction-only,
no demos) optimize exactly what PersonaOptimizer optimizes; everything else (split, budget,
held-back gate, usage counting) is ``GatedPersonaOptimizer``'s, and recording is ``Tracking``'s.
"""

from __future__ import annotations

from typing import Any

import dspy

from persona_dspy.agent import PersonaAgent
from persona_dspy.data.records import Interaction
from persona_dspy.errors import BudgetExceededError
from persona_dspy.optimizers.base import Budget, GatedPersonaOptimizer
from persona_dspy.results import CompileResult


def as_examples(items: list[Interaction]) -> list[dspy.Example]:
    """Interactions as DSPy examples: inputs ``task`` and ``before`` (the time bound), label ``answer``."""
    return [
        dspy.Example(task=it.input, before=it.timestamp, answer=it.output).with_inputs("task", "before") for it in items
    ]


def score_metric(agent: PersonaAgent):
    """The task score in [0, 1] (MIPROv2)."""

    def metric(gold: dspy.Example, pred: dspy.Prediction, trace: Any = None) -> float:
        return agent.task.score(pred.answer, gold.answer)

    return metric


def feedback_metric(agent: PersonaAgent):
    """The task score with the metric in words as feedback (GEPA reflects on the feedback)."""

    def metric(
        gold: dspy.Example,
        pred: dspy.Prediction,
        trace: Any = None,
        pred_name: str | None = None,
        pred_trace: Any = None,
    ) -> dspy.Prediction:
        verdict = agent.task.compare(pred.answer, gold.answer)
        return dspy.Prediction(
            score=agent.task.score(pred.answer, gold.answer),
            feedback=f"The user really answered {gold.answer}; the assistant's answer: {verdict}.",
        )

    return metric


class GEPABaseline(GatedPersonaOptimizer):
    """``dspy.GEPA`` on the user's latest ``n_recent`` interactions, planned to fit ``max_lm_calls`` with the gate.

    GEPA stops on metric calls, checked before each iteration, so its budget is set to the number of
    proposals that fit (``plan``): an iteration costs the minibatch twice (current and proposed
    persona), one reflection call and, when the proposal wins its minibatch, the whole trainset. A
    budget too small for one proposal raises ``BudgetExceededError`` before any LM call.
    """

    name = "GEPA"

    def plan(self, n_train: int, remaining: int | None) -> tuple[int, int]:
        """``(minibatch size, max_metric_calls)`` for ``remaining`` LM calls (gate included)."""
        minibatch = min(3, n_train)
        if remaining is None:
            return minibatch, 6 * n_train
        spare = remaining - 2 * self.n_val - n_train  # after the gate and GEPA's first evaluation
        while minibatch > 1 and spare < 2 * minibatch + 1 + n_train:
            minibatch -= 1
        proposals = spare // (2 * minibatch + 1 + n_train)
        if proposals < 1:
            raise BudgetExceededError(
                f"GEPA needs {2 * self.n_val + 2 * n_train + 3} LM calls for one proposal and the gate, "
                f"max_lm_calls leaves {remaining}; production was not moved. Raise max_lm_calls."
            )
        return minibatch, n_train + (proposals - 1) * (2 * minibatch + n_train) + 1

    def _align(self, agent: PersonaAgent, train: list[Interaction], budget: Budget, result: CompileResult) -> str:
        minibatch, metric_calls = self.plan(len(train), budget.remaining_calls)
        lm = dspy.settings.lm
        gepa = dspy.GEPA(
            feedback_metric(agent),
            max_metric_calls=metric_calls,
            reflection_lm=lm,
            reflection_minibatch_size=minibatch,
            num_threads=1,
            use_merge=False,
            track_stats=False,
            seed=0,
        )
        examples = as_examples(train)
        best = gepa.compile(agent, trainset=examples, valset=examples)
        return best.persona[: self.max_persona_chars]


class MIPROv2Baseline(GatedPersonaOptimizer):
    """``dspy.MIPROv2`` (instruction proposals only, no demos) on the latest ``n_recent`` interactions."""

    name = "MIPROv2"

    def __init__(self, n_recent: int = 3, *, num_candidates: int = 2, num_trials: int = 2, **kwargs: Any) -> None:
        super().__init__(n_recent, **kwargs)
        self.num_candidates, self.num_trials = num_candidates, num_trials

    @property
    def params(self) -> dict[str, Any]:
        return {**super().params, "num_candidates": self.num_candidates, "num_trials": self.num_trials}

    def _align(self, agent: PersonaAgent, train: list[Interaction], budget: Budget, result: CompileResult) -> str:
        mipro = dspy.MIPROv2(
            score_metric(agent),
            auto=None,
            num_candidates=self.num_candidates,
            max_bootstrapped_demos=0,
            max_labeled_demos=0,
            num_threads=1,
            verbose=False,
            track_stats=False,
            seed=0,
        )
        examples = as_examples(train)
        best = mipro.compile(
            agent,
            trainset=examples,
            valset=examples,
            num_trials=self.num_trials,
            minibatch=False,
            data_aware_proposer=False,
            program_aware_proposer=False,
            fewshot_aware_proposer=False,
        )
        return best.persona[: self.max_persona_chars]
