"""The TextGrad graph of one alignment step: guidance -> replay -> preference loss.

* ``Replay`` turns the agent's replayed answers (run by DSPy, memory bounded by each interaction's
  time) into a transcript variable whose predecessor is the trainable guidance;
* ``PreferenceLoss`` is the textual loss between simulated and true answers: the *measured* errors
  in words, computed from the task metric (so the loss can never contradict them), plus, when
  asked, one LM critique of the replay that is dropped if it points the other way;
* ``loss.backward()`` hands the loss to the guidance with the transcript as context, and
  ``PersonaTGD`` (TextGrad's TGD) rewrites it.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass

from persona_dspy.compat.textgrad import BackwardContext, EngineLM, Function, tg, update_prompt
from persona_dspy.data.records import Interaction
from persona_dspy.optimizers import prompts
from persona_dspy.optimizers.grounding import noun_of, with_article
from persona_dspy.signatures.tasks import TaskSpec

# TextGrad logs every prompt at INFO to stderr and a file; the compile's texts are in its MLflow run instead.
logging.getLogger("textgrad").setLevel(logging.WARNING)

GUIDANCE_ROLE = "guidance: short instructions telling the assistant how this specific user answers"
TRANSCRIPT_ROLE = "the assistant's replayed answers next to the user's real answers"
MAX_TASK_CHARS = 160
MIN_SHIFT = 0.25
MAX_LABEL_RULES = 2
"""A label replay's step: at most this many "when it looks like X, answer Y" rules, the most frequent first."""
"""A mean rating error at least this large (stars) is stated as the direction the guidance must move."""


class GuidanceVariable(tg.Variable):
    """The trainable guidance. Shown in full to the optimizer (TextGrad abbreviates long variables)."""

    def __init__(self, text: str) -> None:
        super().__init__(text, requires_grad=True, role_description=GUIDANCE_ROLE)

    def get_short_value(self, n_words_offset: int = 10) -> str:
        return self.value


@dataclass(frozen=True)
class ReplayCase:
    """One replayed interaction: what the agent answered with the current persona, and the truth."""

    interaction: Interaction
    predicted: str | None
    score: float
    verdict: str
    signed_error: float | None  # rating tasks: predicted - true

    def line(self, task: TaskSpec) -> str:
        text = task.compact(self.interaction.input)
        if len(text) > MAX_TASK_CHARS:
            text = text[: MAX_TASK_CHARS - 3] + "..."
        said = self.predicted if self.predicted is not None else "(invalid answer)"
        return f"- {text}: assistant {said}, user {self.interaction.output} ({self.verdict})"


def replay_case(task: TaskSpec, interaction: Interaction, predicted: str | None) -> ReplayCase:
    p, g = task.parse(predicted), task.parse(interaction.output)
    signed = float(p) - float(g) if task.kind == "rating" and p is not None and g is not None else None
    return ReplayCase(
        interaction,
        predicted,
        task.score(predicted, interaction.output),
        task.compare(predicted, interaction.output),
        signed,
    )


def step_size(errors: list[float], prior: int = 0) -> float:
    """The mean signed error (predicted - true) of a replay, weighed against the ``prior`` ratings
    behind the current typical answer: ``n`` new answers move a mean of ``prior`` by ``n / (n + prior)``
    of their error (``prior=0``: the whole error)."""
    return sum(errors) / (len(errors) + prior) if errors else 0.0


def measured_feedback(
    cases: list[ReplayCase],
    task: TaskSpec,
    anchor: float | None = None,
    prior: int = 0,
    *,
    label_rules: bool = True,
    usual: str | None = None,
) -> str:
    """The task metric over the replay, in words: the direction and size of the errors, exactly.

    With the ``anchor`` (the typical answer the guidance states), the step is stated as the new
    number, not as a direction: a small model copies a number, and mis-sizes "a bit lower". The
    step weighs the replayed answers against the ``prior`` ratings the anchor was measured on
    (``step_size``), so three replayed answers do not outweigh twenty earlier ones. A label replay's
    step is stated as rules to add ("when an article looks like X, answer Y": what the assistant said,
    what the user answered; ``label_rules=False``: as a direction, "tell the assistant when ..."). No
    rule starts from ``usual``, the user's most frequent label: where the assistant answered what this
    user usually answers and the user chose otherwise, that is an exception, not a rule."""
    if task.kind == "rating":
        errors = [c.signed_error for c in cases if c.signed_error is not None]
        invalid = len(cases) - len(errors)
        if not errors:
            return f"All {len(cases)} answers were invalid (outside the output contract)."
        mean = sum(errors) / len(errors)
        high, low = sum(e > 0 for e in errors), sum(e < 0 for e in errors)
        way = "higher" if mean > 0 else "lower"
        text = (
            f"{high} of {len(errors)} answers were higher than the user's, {low} lower; "
            f"on average the assistant answered {abs(mean):.1f} {way} than the user."
        )
        shift = step_size(errors, prior if anchor is not None else 0)
        if abs(shift) >= MIN_SHIFT and anchor is not None:
            moved = task.parse(f"{anchor - shift:.3f}")
            if moved is not None and float(moved) != anchor:
                weighed = (
                    f" Weighed against the {prior} earlier ratings behind {task.parse(str(anchor))}:" if prior else ""
                )
                text += (
                    f"{weighed} So the guidance should tell the assistant to answer {moved} for a typical "
                    f"{noun_of(task)} instead of {task.parse(str(anchor))}, keeping the rest."
                )
        elif (
            abs(mean) >= MIN_SHIFT and anchor is None
        ):  # the direction of the step, stated so a small model need not infer it
            text += (
                f" So the guidance should tell the assistant to answer about {abs(mean):.1f} "
                f"{'lower' if mean > 0 else 'higher'} than it otherwise would for this user."
            )
        if not mean:
            text = (
                f"{high} of {len(errors)} answers were higher than the user's, {low} lower; on average they were right."
            )
        return text + (f" {invalid} answer(s) were invalid." if invalid else "")
    right = sum(c.score == 1.0 for c in cases)
    text = f"{right} of {len(cases)} answers matched the user."
    if task.kind == "label":
        missed = [(task.parse(c.predicted), task.parse(c.interaction.output)) for c in cases if c.score < 1.0]
        rules = label_rules_of(cases, task, usual)
        if rules and label_rules:  # the step as the sentence to add: a small model copies it, it does not infer it
            text += " So the guidance should say, for this user: " + "; ".join(rules) + "."
        elif missed and not label_rules:  # the step as a direction (the method before label_rules)
            users = sorted({str(u) for _, u in missed})
            said = sorted({str(p) for p, _ in missed if p is not None}) or ["an invalid answer"]
            text += (
                f" Where the assistant was wrong the user answered: {', '.join(users)}. So the guidance should tell "
                f"the assistant when this user chooses {' or '.join(users)} instead of {' or '.join(said)}."
            )
    return text


def label_rules_of(cases: list[ReplayCase], task: TaskSpec, usual: str | None = None) -> list[str]:
    """A label replay's misses as rules to add ("when an article looks like X, answer Y"), the most frequent
    first, at most ``MAX_LABEL_RULES``; none from an invalid answer or from ``usual``, the user's most
    frequent label (the user overriding their own habit is an exception, not a rule)."""
    missed = Counter((task.parse(c.predicted), task.parse(c.interaction.output)) for c in cases if c.score < 1.0)
    return [
        f"when {with_article(noun_of(task))} looks like {said}, answer {user}"
        for (said, user), _ in sorted(missed.items(), key=lambda kv: (-kv[1], str(kv[0])))
        if said is not None and user is not None and said != usual
    ][:MAX_LABEL_RULES]


def no_step(
    cases: list[ReplayCase], task: TaskSpec, prior: int = 0, *, usual: str | None = None, label_rules: bool = True
) -> bool:
    """A replay whose measured loss states no step, so no LM call is spent on a rewrite (a small model
    asked to rewrite anyway returns the guidance unchanged, or a guess): a rating replay whose valid
    answers are all there and whose step (``step_size``: the mean signed error, weighed against the
    ``prior`` ratings behind the anchor) is below ``MIN_SHIFT``; a label replay (``label_rules``) whose
    misses give no rule (``label_rules_of``)."""
    if task.kind == "label":
        return label_rules and not label_rules_of(cases, task, usual)
    if task.kind != "rating":
        return False
    errors = [c.signed_error for c in cases if c.signed_error is not None]
    return len(errors) == len(cases) and abs(step_size(errors, prior)) < MIN_SHIFT


def transcript(cases: list[ReplayCase], task: TaskSpec) -> str:
    return "\n".join(case.line(task) for case in cases)


_WRONG_WAY = {
    1: re.compile(r"\b(higher|increase|raise|more generous)\b", re.I),
    -1: re.compile(r"\b(lower|decrease|reduce|harsher)\b", re.I),
}


def contradicts_measure(critique: str, cases: list[ReplayCase]) -> bool:
    """A rating critique that asks to move answers in the direction they were already wrong."""
    errors = [c.signed_error for c in cases if c.signed_error is not None]
    if not errors or not sum(errors):
        return False
    sign = 1 if sum(errors) > 0 else -1  # +1: the assistant was too high, it must not be told to go higher
    return bool(_WRONG_WAY[sign].search(critique)) and not _WRONG_WAY[-sign].search(critique)


class Replay(Function):
    """guidance -> transcript of replayed interactions. The replay itself is done by the caller (DSPy)."""

    def forward(self, guidance: tg.Variable, cases: list[ReplayCase], task: TaskSpec) -> tg.Variable:
        out = tg.Variable(
            transcript(cases, task), predecessors=[guidance], requires_grad=True, role_description=TRANSCRIPT_ROLE
        )
        out.set_grad_fn(BackwardContext(self.backward, guidance=guidance, out=out))
        return out

    def backward(self, guidance: tg.Variable, out: tg.Variable, backward_engine: EngineLM) -> None:
        for grad in out.gradients:
            feedback = tg.Variable(grad.value, requires_grad=False, role_description=f"feedback to the {GUIDANCE_ROLE}")
            guidance.gradients.add(feedback)
            guidance.gradients_context[feedback] = {
                "context": out.value,
                "response_desc": TRANSCRIPT_ROLE,
                "variable_desc": GUIDANCE_ROLE,
            }


class PreferenceLoss(Function):
    """The textual loss of a replay: measured errors in words, plus an optional LM critique.

    With ``critique=True`` one LM call reads the transcript, the measured errors and the user's
    facts; a critique that points the other way than the measured errors (or is empty) is dropped,
    so the loss never says "the user rates lower" when the assistant was too low.
    """

    def __init__(
        self,
        engine: EngineLM,
        task: TaskSpec,
        *,
        facts: str = "",
        critique: bool = False,
        label_rules: bool = True,
        usual: str | None = None,
    ) -> None:
        super().__init__()
        self.engine, self.task, self.facts, self.critique = engine, task, facts, critique
        self.label_rules, self.usual = label_rules, usual

    def forward(
        self, replay: tg.Variable, cases: list[ReplayCase], anchor: float | None = None, prior: int = 0
    ) -> tg.Variable:
        measured = measured_feedback(cases, self.task, anchor, prior, label_rules=self.label_rules, usual=self.usual)
        text = f"Measured: {measured}"
        if self.critique:
            prompt = prompts.LOSS_PROMPT.format(
                facts=self.facts or "(none measured)", transcript=f"{replay.value}\n{measured}"
            )
            critique = self.engine(prompt, system_prompt=prompts.LOSS_SYSTEM).strip()
            if critique and not contradicts_measure(critique, cases):
                text = f"{text}\nCritique: {critique}"
        loss = tg.Variable(
            text,
            predecessors=[replay],
            requires_grad=True,
            role_description="the replay's errors against what the user really did",
        )
        loss.set_grad_fn(BackwardContext(self.backward, replay=replay, loss=loss))
        return loss

    def backward(self, replay: tg.Variable, loss: tg.Variable, backward_engine: EngineLM) -> None:
        replay.gradients.add(
            tg.Variable(loss.value, requires_grad=False, role_description=f"feedback to {TRANSCRIPT_ROLE}")
        )


class PersonaTGD(tg.TGD):
    """TextGrad's TGD step, tolerant of one habit of small models: an answer that drops the
    ``<IMPROVED_VARIABLE>`` tags is still accepted when it follows the guidance constraint (it starts
    with ``GUIDANCE_START``); anything else without tags is unusable (``IndexError``, as in TGD)."""

    def step(self) -> None:
        start, end = self.new_variable_tags
        for parameter in self.parameters:
            answer = self.engine(update_prompt(self, parameter), system_prompt=self.optimizer_system_prompt).strip()
            if start in answer:
                value = answer.split(start)[1].split(end)[0].strip()
            elif answer.startswith(prompts.GUIDANCE_START):
                value = answer
            else:
                raise IndexError(f"the guidance update has no {start} tags: {answer[:200]!r}")
            parameter.set_value(value)


def tgd_optimizer(guidance: GuidanceVariable, engine: EngineLM, constraints: list[str]) -> tg.TGD:
    return PersonaTGD(
        parameters=[guidance], engine=engine, constraints=constraints, optimizer_system_prompt=prompts.TGD_SYSTEM
    )
