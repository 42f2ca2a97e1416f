"""Task signatures: the shared contract of each task, and how its answers are validated and scored.

The persona is the signature's *instructions* and the only thing that differs between users;
everything task-specific (input/output fields and their descriptions, the label set or rating
scale) lives in the fields, so a persona rewrite can never break the output contract.
"""

from __future__ import annotations

import functools
import importlib
import os
import re
import typing
from dataclasses import dataclass, field

import dspy

from persona_dspy.data.records import Interaction
from persona_dspy.errors import ConfigurationError, TaskMetricError, UnknownTaskError
from persona_dspy.signatures.metrics import Metric, call_metric, rouge_l


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

_N = r"-?\d+(?:\.\d+)?"
_NUMBER = re.compile(_N)
_TO = r"\s*(?:to|-|\u2013)\s*"
_ANCHOR = r"(?:the\s+)?(?:best|worst|highest|lowest|top|excellent|awful|great|terrible|perfect|poor|max(?:imum)?|min(?:imum)?)"
_SCALE_WORDS = re.compile(
    rf"\bscale\s+(?:of\s+|from\s+)?{_N}{_TO}{_N}"  # "on a scale of 1 to 5"
    rf"|{_N}{_TO}{_N}[\s-]*(?:star\s+|point\s+)?scale"  # "a 1-5 scale"
    rf"|\b\d+(?:\.\d+)?[\s-]*(?:star|point)\s+scale"  # "a 5-point scale"
    rf"|\bwhere\s+{_N}\s+(?:is|=|means)\s+{_ANCHOR}(?:,?\s*and\s+{_N}\s+(?:(?:is|=|means)\s+)?{_ANCHOR})?"  # "where 5 is best"
    rf"|(?:/|\bout\s+of\s+)\s*\d+(?:\.\d+)?",  # "4/5", "4 out of 5"
    re.IGNORECASE,
)
"""Numbers of a reply that name the scale, not the rating: the rating is the first number left."""
_RANGE = re.compile(
    rf"\bbetween\s+({_N})\s*(?:and|to|-|\u2013)\s*({_N})|(?:\bfrom\s+)?({_N}){_TO}({_N})", re.IGNORECASE
)
"""A range ("between 1 and 5", "(1-5)"): the scale when it spans it, else the reply's answer ("3-4")."""


@functools.lru_cache(maxsize=4096)
def _as_word(label: str) -> re.Pattern[str]:
    """``label`` (lowercased) as a whole word or phrase of a text, a plural allowed ("crimes"), not inside a
    longer word ("unhappy" is not "happy", "sportsmanship" not "sports")."""
    return re.compile(rf"(?<![a-z0-9]){re.escape(label.lower())}(?:e?s)?(?![a-z0-9])")


@dataclass(frozen=True)
class TaskSpec:
    """A task: its signature, its answer space, and how an answer is validated and scored.

    ``score`` is in [0, 1] (1 = the user's real answer); an invalid answer scores 0, the worst,
    as LaMP does. Labels score by exact match, ratings by distance on the scale, free text by
    ROUGE-L; a ``metric`` (DSPy's ``metric(example, prediction) -> float``) replaces all three.
    ``TaskSpec.from_signature`` builds one from any ``dspy.Signature``; ``register_task`` names it.
    """

    name: str
    signature: type[dspy.Signature]
    kind: str  # "label" | "rating" | "text"
    labels: tuple[str, ...] = ()
    scale: tuple[float, float] = (0.0, 0.0)
    step: float = 1.0
    prompt_markers: tuple[str, ...] = field(default=())
    metric: Metric | None = None
    input_field: str = "task"
    output_field: str = "answer"
    """The names of the original signature's fields: what the metric's example and prediction hold."""

    @classmethod
    def from_signature(cls, name: str, signature: type[dspy.Signature], metric: Metric | None = None) -> TaskSpec:
        """A task from any one-input, one-output ``dspy.Signature``: its docstring and field descriptions
        become the task's contract (the persona stays the per-user instructions), a ``Literal[...]``
        output makes it a label task, and ``metric`` scores it (default: exact label match, or ROUGE-L).
        """
        if not (isinstance(signature, type) and issubclass(signature, dspy.Signature)):
            raise ConfigurationError(f"task {name!r}: expected a dspy.Signature class, got {signature!r}")
        if metric is not None and not callable(metric):
            raise TaskMetricError(f"task {name!r}: the metric must be callable as metric(example, prediction)")
        inputs, outputs = list(signature.input_fields), list(signature.output_fields)
        if len(inputs) != 1 or len(outputs) != 1:
            raise ConfigurationError(
                f"task {name!r}: a persona task has one input and one output field; {signature.__name__} has "
                f"inputs {inputs} and outputs {outputs}. Combine the inputs into one text field."
            )
        (in_name, in_field), (out_name, out_field) = (
            next(iter(signature.input_fields.items())),
            next(iter(signature.output_fields.items())),
        )

        def desc(f, fallback: str) -> str:
            text = str((f.json_schema_extra or {}).get("desc") or "")
            return fallback if not text or text.startswith("${") else text

        annotation = out_field.annotation
        labels = (
            tuple(str(a) for a in typing.get_args(annotation))
            if typing.get_origin(annotation) is typing.Literal
            else ()
        )
        answer_desc = desc(out_field, out_name) + (" (exactly one of: " + ", ".join(labels) + ")" if labels else "")
        task_desc = f"{signature.instructions.strip()} The input ({in_name}): {desc(in_field, in_name)}"
        return cls(
            name,
            _task_signature(answer_desc, task_desc),
            "label" if labels else "text",
            labels=labels,
            metric=metric,
            input_field=in_name,
            output_field=out_name,
        )

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
            hits = [lab for lab in self.labels if _as_word(lab).search(low)]  # "unhappy" is not "happy"
            maximal = [h for h in hits if not any(h != o and h.lower() in o.lower() for o in hits)]
            return maximal[0] if len(maximal) == 1 else None
        if self.kind == "rating":
            lo, hi = self.scale

            def scale_range(m: re.Match[str]) -> str:
                low, high = (float(g) for g in m.groups() if g is not None)
                return " " if low <= max(lo, 1.0) and high >= hi else m.group()

            rest = _RANGE.sub(scale_range, _SCALE_WORDS.sub(" ", text))
            m = _NUMBER.search(rest) or _NUMBER.search(text)
            if not m:
                return None
            value = min(hi, max(lo, float(m.group())))
            value = round(value / self.step) * self.step
            return f"{value:.1f}" if self.step < 1 else str(int(value))
        return text or None

    def score(self, predicted: str | None, gold: str, input: str = "") -> float:
        """Agreement with the user's real answer, in [0, 1]; ``input`` (the task text) reaches a custom
        metric's example. A custom metric that raises or returns a non-number: ``TaskMetricError``."""
        p, g = self.parse(predicted), self.parse(gold)
        if p is None or g is None:
            return 0.0
        if self.metric is not None:
            fields = {"task": input, "answer": gold, self.input_field: input, self.output_field: gold}
            example = dspy.Example(**fields).with_inputs("task", self.input_field)
            prediction = dspy.Prediction(**{"answer": p, self.output_field: p})
            return call_metric(self.metric, self.name, example, prediction)
        if self.kind == "rating":
            lo, hi = self.scale
            return 1.0 - abs(float(p) - float(g)) / (hi - lo)
        if self.kind == "text":
            return rouge_l(p, g)
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


BUILTIN_TASKS: frozenset[str] = frozenset(TASKS)

TASK_MODULES_ENV = "PERSONA_DSPY_TASK_MODULES"
"""Comma-separated modules that call ``register_task`` when imported: how the CLI (and any process
that only sees a task's name, e.g. in stored interactions) finds custom tasks."""


def register_task(
    task: str | TaskSpec, signature: type[dspy.Signature] | None = None, metric: Metric | None = None
) -> TaskSpec:
    """Register a task by name so agents, the fleet and the CLI accept it; returns its ``TaskSpec``.

    ``register_task("reply", ReplySignature, metric)`` builds it with ``TaskSpec.from_signature``;
    ``register_task(spec)`` registers a spec. The metric is tried once on a trivial case (the user's
    answer against itself): a metric that raises or returns a non-number is a ``TaskMetricError``
    and nothing is registered. A built-in name cannot be replaced; a custom one can (re-running a
    notebook cell).
    """
    if isinstance(task, TaskSpec):
        spec = task
    elif signature is None:
        raise ConfigurationError(f"register_task({task!r}, ...) needs the task's dspy.Signature")
    else:
        spec = TaskSpec.from_signature(task, signature, metric)
    if spec.name in BUILTIN_TASKS and TASKS.get(spec.name) is not spec:
        raise ConfigurationError(f"{spec.name!r} is a built-in task; register yours under another name")
    if spec.metric is not None:
        probe = spec.labels[0] if spec.labels else "an answer"
        spec.score(probe, probe, "a task")
    TASKS[spec.name] = spec
    return spec


_imported_task_modules: set[str] = set()


def _import_task_modules() -> None:
    for module in filter(None, (m.strip() for m in os.environ.get(TASK_MODULES_ENV, "").split(","))):
        if module in _imported_task_modules:
            continue
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ConfigurationError(f"{TASK_MODULES_ENV} names {module!r}, which cannot be imported: {exc}") from exc
        _imported_task_modules.add(module)


def answer_problem(task: str | TaskSpec, output: str) -> str | None:
    """Why ``output`` cannot be stored as a user's answer to ``task`` (``None``: it can). A rating task's
    answers are ratings on its scale and its steps, past and held out alike. A label task's past interactions may hold
    other text than a label (LaMP-1's are the user's own papers), and free text is free: neither is checked.
    Raises ``UnknownTaskError`` for an unregistered task."""
    spec = get_task(task)
    if spec.kind != "rating":
        return None
    try:  # a stored answer is exact: no clamping or number-in-text as for the LM's answers (``parse``)
        value = float(output)
    except ValueError:
        value = float("nan")
    lo, hi = spec.scale
    off_step = abs(value / spec.step - round(value / spec.step)) > 1e-6 if lo <= value <= hi else True
    if off_step:  # out of range, not a number, or between two steps (3.3 on a half-star scale)
        return f"the answer {output!r} is not a {spec.name} rating: a number from {lo:g} to {hi:g} in steps of {spec.step:g}"
    return None


def record_problem(record: Interaction) -> tuple[str, str] | None:
    """What makes ``record`` unfit to store, as ``(field, problem)``: an unregistered task, or an answer
    ``answer_problem`` refuses; ``None`` when it is fit. The loaders' ``check``."""
    try:
        problem = answer_problem(record.task, record.output)
    except UnknownTaskError as exc:
        return "task", str(exc).strip("'\"")
    return ("output", problem) if problem else None


def get_task(task: str | TaskSpec) -> TaskSpec:
    """The registered task of that name (importing ``PERSONA_DSPY_TASK_MODULES`` first if needed)."""
    if isinstance(task, TaskSpec):
        return task
    if task not in TASKS:
        _import_task_modules()
    try:
        return TASKS[task]
    except KeyError:
        raise UnknownTaskError(
            f"unknown task {task!r}; known tasks: {', '.join(TASKS)}. Register yours with "
            f"persona_dspy.register_task (and name its module in {TASK_MODULES_ENV} for the CLI)."
        ) from None


MAX_EPISODE_CHARS = 220


def render_episode(task: TaskSpec, it: Interaction, max_chars: int = MAX_EPISODE_CHARS) -> str:
    """One past interaction as a prompt line: the compact task (cut at ``max_chars``) and what the user answered."""
    text = task.compact(it.input)
    if len(text) > max_chars:
        text = text[: max_chars - 3] + "..."
    return f"- {text} -> {it.output[:max_chars]}"
