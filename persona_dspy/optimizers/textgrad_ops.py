"""The TextGrad graph of one alignment step: persona -> replay -> preference loss.

Two custom autograd functions keep the step at ``n + 2`` LM calls (n replays, one loss, one TGD
update) instead of TextGrad's naive ``4n + 1``:

* ``PreferenceLoss`` critiques *all* replayed interactions in one LM call, and phrases the
  critique as feedback on the persona, so its backward passes the critique on unchanged;
* ``Replay`` runs the DSPy agent (its own LM calls, memory bounded by each interaction's time)
  and its backward hands the transcript's feedback to the persona, with the transcript as context.

``loss.backward()`` and ``textgrad.TGD(...).step()`` are TextGrad's own.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import textgrad as tg
from textgrad.autograd.function import BackwardContext, Function
from textgrad.engine import EngineLM

from persona_dspy.data.records import Interaction
from persona_dspy.errors import LMOutputError
from persona_dspy.optimizers import prompts
from persona_dspy.signatures.tasks import TaskSpec

# TextGrad logs every prompt at INFO to stderr and a file; the compile's texts are in its MLflow run instead.
logging.getLogger("textgrad").setLevel(logging.WARNING)

PERSONA_ROLE = "persona: the system prompt telling the assistant how this specific user answers"
TRANSCRIPT_ROLE = "the assistant's replayed answers next to the user's real answers"


class PersonaVariable(tg.Variable):
    """The trainable persona. Shown in full to the optimizer (TextGrad abbreviates long variables)."""

    def __init__(self, text: str) -> None:
        super().__init__(text, requires_grad=True, role_description=PERSONA_ROLE)

    def get_short_value(self, n_words_offset: int = 10) -> str:
        return self.value


@dataclass(frozen=True)
class ReplayCase:
    """One replayed interaction: what the agent answered with the current persona, and the truth."""

    interaction: Interaction
    predicted: str | None
    score: float

    verdict: str

    def line(self, index: int, task: TaskSpec) -> str:
        text = task.compact(self.interaction.input)
        if len(text) > 300:
            text = text[:297] + "..."
        said = self.predicted if self.predicted is not None else "(invalid answer)"
        return (f"{index}. Task: {text}\n   Assistant answered: {said}\n"
                f"   User really answered: {self.interaction.output} ({self.verdict})")


def replay_case(task: TaskSpec, interaction: Interaction, predicted: str | None) -> ReplayCase:
    return ReplayCase(interaction, predicted, task.score(predicted, interaction.output),
                      task.compare(predicted, interaction.output))


def metric_summary(cases: list[ReplayCase], task: TaskSpec) -> str:
    """The task metric over the batch, in words: the part of the loss that needs no LM."""
    if task.kind == "rating":
        deltas = [float(c.predicted) - float(task.parse(c.interaction.output))
                  for c in cases if c.predicted is not None and task.parse(c.interaction.output) is not None]
        if deltas:
            mean = sum(deltas) / len(deltas)
            if not mean:
                return "On average the assistant's ratings were right."
            return f"On average the assistant rated {abs(mean):.1f} {'higher' if mean > 0 else 'lower'} than the user."
    return f"{sum(c.score == 1.0 for c in cases)} of {len(cases)} answers matched the user."


def transcript(cases: list[ReplayCase], task: TaskSpec) -> str:
    lines = [case.line(i, task) for i, case in enumerate(cases, start=1)]
    return "\n".join([*lines, metric_summary(cases, task)])


class Replay(Function):
    """persona -> transcript of replayed interactions. The replay itself is done by the caller (DSPy)."""

    def forward(self, persona: tg.Variable, cases: list[ReplayCase], task: TaskSpec) -> tg.Variable:
        out = tg.Variable(transcript(cases, task), predecessors=[persona], requires_grad=True,
                          role_description=TRANSCRIPT_ROLE)
        out.set_grad_fn(BackwardContext(self.backward, persona=persona, out=out))
        return out

    def backward(self, persona: tg.Variable, out: tg.Variable, backward_engine: EngineLM) -> None:
        for grad in out.gradients:
            feedback = tg.Variable(grad.value, requires_grad=False, role_description=f"feedback to the {PERSONA_ROLE}")
            persona.gradients.add(feedback)
            persona.gradients_context[feedback] = {
                "context": out.value, "response_desc": TRANSCRIPT_ROLE, "variable_desc": PERSONA_ROLE}


class PreferenceLoss(Function):
    """The textual loss: one LM critique of the whole replay against what the user really did, plus
    the task metric in words (``measured``)."""

    def __init__(self, engine: EngineLM, contract: str, kind: str = "text") -> None:
        super().__init__()
        self.engine = engine
        self.contract = contract
        self.system = prompts.loss_system(kind)

    def forward(self, persona: tg.Variable, replay: tg.Variable, measured: str = "") -> tg.Variable:
        prompt = prompts.LOSS_PROMPT.format(persona=persona.value, contract=self.contract, transcript=replay.value)
        critique = self.engine(prompt, system_prompt=self.system).strip()
        if not critique:  # one retry with a different sample, then a specific error
            critique = type(self.engine)(temperature=0.7)(prompt, system_prompt=self.system).strip()
        if not critique:
            raise LMOutputError("the LM returned an empty critique twice; production was not moved. "
                                "Try a stronger LM for alignment (PERSONA_DSPY_LM).")
        if measured:  # the task metric is part of the loss, stated exactly
            critique = f"{critique}\n- Measured: {measured}"
        loss = tg.Variable(critique, predecessors=[replay], requires_grad=True,
                           role_description="critique of the persona from the replayed interactions")
        loss.set_grad_fn(BackwardContext(self.backward, replay=replay, loss=loss))
        return loss

    def backward(self, replay: tg.Variable, loss: tg.Variable, backward_engine: EngineLM) -> None:
        replay.gradients.add(tg.Variable(loss.value, requires_grad=False,
                                         role_description=f"feedback to {TRANSCRIPT_ROLE}"))


class PersonaTGD(tg.TGD):
    """TextGrad's TGD step, tolerant of one habit of small models: an answer that drops the
    ``<IMPROVED_VARIABLE>`` tags is still accepted when it follows the persona constraint (it starts
    with ``PERSONA_START``); anything else without tags is unusable (``IndexError``, as in TGD)."""

    def step(self) -> None:
        start, end = self.new_variable_tags
        for parameter in self.parameters:
            answer = self.engine(self._update_prompt(parameter), system_prompt=self.optimizer_system_prompt).strip()
            if start in answer:
                value = answer.split(start)[1].split(end)[0].strip()
            elif answer.startswith(prompts.PERSONA_START):
                value = answer
            else:
                raise IndexError(f"the persona update has no {start} tags: {answer[:200]!r}")
            parameter.set_value(value)


def tgd_optimizer(persona: PersonaVariable, engine: EngineLM, constraints: list[str]) -> tg.TGD:
    return PersonaTGD(parameters=[persona], engine=engine, constraints=constraints,
                      optimizer_system_prompt=prompts.TGD_SYSTEM)
