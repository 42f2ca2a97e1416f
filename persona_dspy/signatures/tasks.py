"""Task signatures: the shared contract of each task, and how its answers are validated and scored.

The persona is the signature's *instructions* and the only thing that differs between users;
everything task-specific (input/output fields and their descriptions, the label set or rating
scale) lives in the fields, so a persona rewrite can never break the output contract.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import dspy

from persona_dspy.data.records import Interaction


class PersonalizedTask(dspy.Signature):
    """You answer on behalf of one specific user. Predict what this user would answer, using their profile and past interactions, not a generic answer."""

    profile: str = dspy.InputField(desc="stable preferences and statistics of this user")
    history: str = dspy.InputField(desc="this user's relevant past interactions, each with what the user answered")
    task: str = dspy.InputField(desc="the new task")
    answer: str = dspy.OutputField(desc="what this user would answer")


DEFAULT_PERSONA: str = PersonalizedTask.instructions
"""The persona every user starts from, before alignment."""


LAMP2N_LABELS = (
    "women",
    "religion",
    "politics",
    "style & beauty",
    "entertainment",
    "culture & arts",
    "sports",
    "science & technology",
    "travel",
    "business",
    "crime",
    "education",
    "healthy living",
    "parents",
    "food & drink",
)

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


@dataclass(frozen=True)
class TaskSpec:
    """A task: its signature, its answer space, and how an answer is validated and scored.

    ``score`` is in [0, 1] (1 = the user's real answer); an invalid answer scores 0, the worst,
    as LaMP does.
    """

    name: str
    signature: type[dspy.Signature]
    kind: str  # "label" | "rating" | "text"
    labels: tuple[str, ...] = ()
    scale: tuple[float, float] = (0.0, 0.0)
    step: float = 1.0
    prompt_markers: tuple[str, ...] = field(default=())

    def parse(self, answer: str | None) -> str | None:
        """The canonical form of a valid answer, or None when it is outside the contract."""
        if answer is None:
            return None
        text = str(answer).strip().strip("\"'`.").strip()
        if self.kind == "label":
            low = text.lower()
            for label in sorted(self.labels, key=len, reverse=True):
                if low == label.lower():
                    return label
            hits = [lab for lab in self.labels if lab.lower() in low]
            maximal = [h for h in hits if not any(h != o and h.lower() in o.lower() for o in hits)]
            return maximal[0] if len(maximal) == 1 else None
        if self.kind == "rating":
            m = _NUMBER.search(text)
            if not m:
                return None
            lo, hi = self.scale
            value = min(hi, max(lo, float(m.group())))
            value = round(value / self.step) * self.step
            return f"{value:.1f}" if self.step < 1 else str(int(value))
        return text or None

    def score(self, predicted: str | None, gold: str) -> float:
        """Agreement with the user's real answer, in [0, 1]."""
        p, g = self.parse(predicted), self.parse(gold)
        if p is None or g is None:
            return 0.0
        if self.kind == "rating":
            lo, hi = self.scale
            return 1.0 - abs(float(p) - float(g)) / (hi - lo)
        return float(p.lower() == g.lower())

    def compare(self, predicted: str | None, gold: str) -> str:
        """The task metric in words, for the textual loss: "match", "too high by 1.5", "wrong label"."""
        p, g = self.parse(predicted), self.parse(gold)
        if p is None:
            return "invalid answer (outside the output contract)"
        if g is None or self.kind == "text":
            return "compare by meaning"
        if self.kind == "rating":
            delta = float(p) - float(g)
            return "match" if delta == 0 else f"too {'high' if delta > 0 else 'low'} by {abs(delta):g}"
        return "match" if p.lower() == g.lower() else "wrong label"

    def compact(self, text: str) -> str:
        """The task text without its boilerplate instructions, for compact prompts and retrieval."""
        for marker in self.prompt_markers:
            idx = text.rfind(marker)
            if idx >= 0:
                return text[idx:].strip()
        return text.strip()

    def contract(self) -> str:
        """The output contract a persona must not contradict (used to constrain persona rewrites)."""
        if self.kind == "label":
            return "The answer must be exactly one of: " + ", ".join(self.labels) + "."
        if self.kind == "rating":
            lo, hi = self.scale
            return f"The answer must be a single number from {lo:g} to {hi:g}."
        return "The answer is free text."


def _task_signature(answer_desc: str, task_desc: str) -> type[dspy.Signature]:
    return PersonalizedTask.with_updated_fields("answer", desc=answer_desc).with_updated_fields("task", desc=task_desc)


TASKS: dict[str, TaskSpec] = {
    "generic": TaskSpec("generic", PersonalizedTask, "text"),
    "LaMP-2N": TaskSpec(
        "LaMP-2N",
        _task_signature("exactly one category name from: " + ", ".join(LAMP2N_LABELS), "a news article to categorize"),
        "label",
        labels=LAMP2N_LABELS,
        prompt_markers=("article:",),
    ),
    "LaMP-1": TaskSpec(
        "LaMP-1",
        _task_signature("[1] or [2]", "a paper by this user and two references; which one would the user cite?"),
        "label",
        labels=("[1]", "[2]"),
        prompt_markers=(),
    ),
    "movielens_rating": TaskSpec(
        "movielens_rating",
        _task_signature(
            "the rating as a number from 0.5 to 5.0 in half-star steps, e.g. 3.5", "a movie this user is about to rate"
        ),
        "rating",
        scale=(0.5, 5.0),
        step=0.5,
        prompt_markers=("movie:",),
    ),
    "amazon_mi_rating": TaskSpec(
        "amazon_mi_rating",
        _task_signature("the rating as one integer from 1 to 5", "a product review this user wrote"),
        "rating",
        scale=(1.0, 5.0),
        step=1.0,
        prompt_markers=("review summary:",),
    ),
}


def get_task(task: str | TaskSpec) -> TaskSpec:
    if isinstance(task, TaskSpec):
        return task
    try:
        return TASKS[task]
    except KeyError:
        raise KeyError(f"unknown task {task!r}; known tasks: {', '.join(TASKS)}") from None


MAX_EPISODE_CHARS = 220


def render_episode(task: TaskSpec, it: Interaction) -> str:
    """One past interaction as a prompt line: the compact task and what the user answered."""
    text = task.compact(it.input)
    if len(text) > MAX_EPISODE_CHARS:
        text = text[: MAX_EPISODE_CHARS - 3] + "..."
    return f"- {text} -> {it.output[:MAX_EPISODE_CHARS]}"
