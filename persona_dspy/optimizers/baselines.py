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
    """``dspy.GEPA`` on the user's latest ``n_recent`` interactions, stopped so that GEPA and the gate fit
    ``max_lm_calls``.

    GEPA counts metric calls, not LM calls (its reflection calls are not metric calls), and checks its
    stoppers only before an iteration, so the run is stopped by the compile's own budget: before each
    iteration, GEPA goes on only if the worst iteration (the minibatch twice, one reflection, the whole
    trainset when the proposal wins its minibatch) and the gate still fit. The minibatch shrinks until
    one proposal fits; a budget too small even for that raises ``BudgetExceededError`` before any LM
    call. Like every compile, an answer retried after an invalid output is not planned for.
    """

    name = "GEPA"

    @staticmethod
    def iteration_cost(n_train: int, minibatch: int) -> int:
        """LM calls of one GEPA iteration at worst (its proposal wins the minibatch)."""
        return 2 * minibatch + 1 + n_train

    def plan(self, n_train: int, remaining: int | None, gate: int) -> int:
        """The minibatch size for ``remaining`` LM calls, of which ``gate`` go to the gate."""
        minibatch = min(3, n_train)
        if remaining is None:
            return minibatch
        while minibatch > 1 and remaining < n_train + self.iteration_cost(n_train, minibatch) + gate:
            minibatch -= 1
        needed = n_train + self.iteration_cost(n_train, minibatch) + gate
        if remaining < needed:
            raise BudgetExceededError(
                f"GEPA needs {needed} LM calls for one proposal and the gate, max_lm_calls leaves {remaining}; "
                "production was not moved. Raise max_lm_calls."
            )
        return minibatch

    def _align(self, agent: PersonaAgent, train: list[Interaction], budget: Budget, result: CompileResult) -> str:
        gate = 2 * len(result.val_ids)
        minibatch = self.plan(len(train), budget.remaining_calls, gate)
        worst = self.iteration_cost(len(train), minibatch) + gate

        def out_of_budget(state: Any) -> bool:  # checked by GEPA before each iteration
            return budget.remaining_calls is not None and budget.remaining_calls < worst

        lm = dspy.settings.lm
        gepa = dspy.GEPA(
            feedback_metric(agent),
            max_metric_calls=budget.remaining_calls or 6 * len(train),  # metric calls <= LM calls
            reflection_lm=lm,
            reflection_minibatch_size=minibatch,
            num_threads=1,
            use_merge=False,
            track_stats=False,
            seed=0,
            gepa_kwargs={"stop_callbacks": [out_of_budget]},
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
