"""Evaluation on per-user data: methods (baselines and PersonaAgent), LaMP's metrics, and a leakage guard.

Each case is a ``UserHistory`` with a held-out ``query``: its past interactions are ingested
(time-bounded), the method answers the query, and nothing of the query's answer may reach memory,
persona or prompt (checked at run time, see ``LeakageError``).
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import dspy
from pydantic import BaseModel, Field
from tqdm.auto import tqdm

from persona_dspy.agent import AdapterName, Mode, PersonaAgent
from persona_dspy.config import DEFAULT_K
from persona_dspy.data.records import UserHistory
from persona_dspy.errors import (
    BudgetExceededError,
    ConfigurationError,
    EmptyHistoryError,
    LeakageError,
    LMOutputError,
    MalformedInteractionError,
    UnknownUserError,
)
from persona_dspy.signatures.tasks import MAX_EPISODE_CHARS, TaskSpec, get_task

logger = logging.getLogger(__name__)

METHODS = ("none", "icl", "rag", "profile", "persona", "persona+align", "gepa", "trivial")
"""``trivial`` is the user's majority label (label tasks) or mean past rating (rating tasks); no LM.
With ``recent=N`` it is the most frequent label or the median rating of the user's N latest answers
(the statistic ``PersonaOptimizer`` anchors a rating persona on, as a method of its own)."""

_ACTIONS = {
    "none": (),
    "icl": ("recent_interactions",),
    "rag": ("recall_episodes",),
    "profile": ("read_profile",),
    "persona": ("read_profile", "answer_statistics", "recall_episodes"),
    "persona+align": ("read_profile", "answer_statistics", "recall_episodes"),
    "gepa": ("read_profile", "answer_statistics", "recall_episodes"),
}


class CaseResult(BaseModel):
    case_id: str
    user_id: str
    method: str
    truth: str
    prediction: str | None
    score: float
    lm_calls: int = 0
    tokens: int = 0
    seconds: float = 0.0
    iteration_scores: list[float] = Field(default_factory=list)
    promoted: bool | None = None
    persona: str | None = Field(None, description="the persona that answered the query")
    compile: dict[str, Any] | None = Field(
        None, description="the aligning methods' compile: stopped, reason, gate scores, candidate persona"
    )


class EvaluationReport(BaseModel):
    task: str
    method: str
    metrics: dict[str, float]
    cases: list[CaseResult]

    @property
    def per_case_cost(self) -> dict[str, float]:
        n = max(1, len(self.cases))
        return {
            "lm_calls": sum(c.lm_calls for c in self.cases) / n,
            "tokens": sum(c.tokens for c in self.cases) / n,
            "seconds": sum(c.seconds for c in self.cases) / n,
        }


# -- metrics -------------------------------------------------------------------------------------
def true_value(task: TaskSpec, truth: str) -> float:
    """The rating a true answer states; an unparsable one is bad data, not a wrong prediction."""
    value = task.parse(truth)
    if value is None:
        raise MalformedInteractionError(f"the true answer {truth!r} is not a valid {task.name} answer", field="output")
    return float(value)


def worst_error(task: TaskSpec, truth: str) -> float:
    g = true_value(task, truth)
    lo, hi = task.scale
    return max(abs(g - lo), abs(hi - g))


def metrics(task: TaskSpec, truths: Sequence[str], predictions: Sequence[str | None]) -> dict[str, float]:
    """LaMP's metrics: accuracy and macro-F1 over the whole label set; MAE and RMSE for ratings
    (an invalid answer counts as the worst possible error)."""
    if not truths:
        return {}
    if task.kind == "rating":
        errors = [
            abs(float(p) - true_value(task, t)) if p is not None else worst_error(task, t)
            for t, p in zip(truths, (task.parse(x) for x in predictions))
        ]
        return {"mae": sum(errors) / len(errors), "rmse": math.sqrt(sum(e * e for e in errors) / len(errors))}
    gold = [task.parse(t) for t in truths]
    pred = [task.parse(p) for p in predictions]
    out = {"accuracy": sum(g == p for g, p in zip(gold, pred)) / len(gold)}
    if task.kind == "label":
        f1s = []
        for label in task.labels:
            tp = sum(g == label and p == label for g, p in zip(gold, pred))
            fp = sum(g != label and p == label for g, p in zip(gold, pred))
            fn = sum(g == label and p != label for g, p in zip(gold, pred))
            f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
        out["macro_f1"] = sum(f1s) / len(f1s)
    return out


def load_past(memory: Any, case: UserHistory) -> None:
    """Make the memory hold exactly ``case``'s past for its user. Re-ingested (forget, then add) only
    when what is stored differs, so methods evaluated one after another on a case embed it once."""
    try:
        stored = {(it.id, it.content_hash) for it in memory.history(case.user_id)}
    except UnknownUserError:
        stored = set()
    if stored != {(it.id, it.content_hash) for it in case.interactions}:
        memory.forget(case.user_id)
        memory.add(case.interactions)


def trivial_answer(task: TaskSpec, case: UserHistory, recent: int = 0) -> str | None:
    """The user's mean past rating or majority label; with ``recent > 0``, the median rating (as
    ``PersonaOptimizer``'s anchor) or the majority label of the ``recent`` latest answers."""
    if recent < 0:
        raise ConfigurationError(f"recent must be >= 0 (got {recent})")
    items = sorted(case.interactions, key=lambda it: (it.timestamp, it.id)) if recent else case.interactions
    answers = [a for a in (task.parse(it.output) for it in items) if a is not None][-recent:]
    if not answers:
        return None
    if task.kind == "rating":
        values = [float(a) for a in answers]
        return task.parse(f"{statistics.median(values):.3f}") if recent else task.parse(str(sum(values) / len(values)))
    return Counter(answers).most_common(1)[0][0]


# -- the leakage guard ---------------------------------------------------------------------------
def check_no_leak(case: UserHistory, memory: Any, prompts: list[str], persona: str | None = None) -> None:
    """Memory holds nothing at or after the query, nor the query; free-text answers appear in no prompt."""
    q = case.query
    if q is None:
        raise ConfigurationError(f"user {case.user_id!r} has no held-out query to check for leakage")
    stored = memory.history(case.user_id)
    late = [it.id for it in stored if it.timestamp >= q.timestamp or it.id == q.id]
    if late:
        raise LeakageError(f"memory of {case.user_id!r} holds interactions at/after the query {q.id!r}: {late[:3]}")
    if get_task(q.task).kind == "text" and len(q.output) >= 8:
        if persona and q.output in persona:
            raise LeakageError(f"the persona contains the held-out answer of {q.id!r}")
        if any(q.output in p for p in prompts):
            raise LeakageError(f"the held-out answer of {q.id!r} appeared in an LM prompt")


def _prompt_texts(entries: list[dict[str, Any]]) -> list[str]:
    texts = []
    for entry in entries:
        for m in entry.get("messages") or []:
            content = m.get("content") if isinstance(m, dict) else None
            texts.append(content if isinstance(content, str) else str(content))
        if entry.get("prompt"):
            texts.append(str(entry["prompt"]))
    return texts


# -- running a method ----------------------------------------------------------------------------
def evaluate(
    cases: Sequence[UserHistory],
    method: str,
    *,
    memory: Any,
    lm: dspy.BaseLM | None,
    semantic_factory: Callable[[], Any] | None = None,
    k: int = DEFAULT_K,
    n_recent: int = 3,
    iterations: int = 1,
    n_val: int = 4,
    max_lm_calls: int = 20,
    progress: bool = True,
    optimizer_options: dict[str, Any] | None = None,
    keep_memory: bool = False,
    mode: Mode = "pipeline",
    recent: int = 0,
    episode_chars: int = MAX_EPISODE_CHARS,
    personas: Mapping[str, str] | None = None,
    adapter: AdapterName = "chat",
) -> EvaluationReport:
    """Run ``method`` on every case; each case's past is ingested just before and forgotten after.

    ``optimizer_options`` go to the aligning method's optimizer (e.g. ``{"critique": True}`` for an
    ablation of ``PersonaOptimizer``). ``keep_memory=True`` leaves each case's past in memory: the
    next evaluation of the same case (another method) then finds it there and embeds nothing.
    ``mode="react"``: the agent chooses its personalized actions (``dspy.ReAct``) instead of running the
    method's fixed ones; several LM calls per answer, so an aligning method needs a larger ``max_lm_calls``.
    ``recent=N``: ``trivial`` answers from the N latest past answers only (``trivial_answer``).
    ``episode_chars``: where a past interaction's text is cut in the agent's prompt.
    ``adapter``: the agent's prompt format (``PersonaAgent``'s ``adapter``: ``"chat"`` or ``"compact"``).
    ``personas``: query id -> the persona that answers that case instead of the default (one compiled
    elsewhere, e.g. an aligned run's stored persona served in another ``mode``); not with an aligning method."""
    from persona_dspy.optimizers import usage_totals

    if method not in METHODS:
        raise ConfigurationError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if not cases:
        raise ConfigurationError("no cases to evaluate")
    if personas and method in ("persona+align", "gepa", "trivial"):
        raise ConfigurationError(f"personas= gives a compiled persona to answer with; {method!r} makes or needs none")
    task = get_task(cases[0].task)
    results: list[CaseResult] = []
    for case in tqdm(cases, desc=f"{task.name} {method}", disable=not progress):
        q = case.query
        if q is None:
            raise ConfigurationError(f"user {case.user_id!r} has no held-out query to evaluate on")
        started = time.perf_counter()
        if method != "trivial":  # a statistic of case.interactions: it reads no memory
            load_past(memory, case)
        history_mark = len(lm.history) if lm is not None else 0
        result = CaseResult(
            case_id=q.id, user_id=case.user_id, method=method, truth=q.output, prediction=None, score=0.0
        )
        persona = None
        with dspy.context(lm=lm), dspy.track_usage() as usage:
            if method == "trivial":
                result.prediction = trivial_answer(task, case, recent)
            else:
                semantic = semantic_factory() if semantic_factory and "read_profile" in _ACTIONS[method] else None
                if semantic is not None:
                    try:
                        semantic.update(case.user_id, before=q.timestamp)
                    except LMOutputError as exc:  # as serving does: answer without a new profile
                        logger.warning("user %r answered without a fresh profile: %s", case.user_id, exc)
                agent = PersonaAgent(
                    task,
                    user_id=case.user_id,
                    memory=memory,
                    semantic=semantic,
                    k=k,
                    actions=_ACTIONS[method],
                    mode=mode,
                    episode_chars=episode_chars,
                    adapter=adapter,
                )
                if personas and q.id in personas:
                    agent.persona = personas[q.id]
                if method in ("persona+align", "gepa"):
                    agent = _compiled(
                        agent,
                        method,
                        result,
                        memory=memory,
                        n_recent=n_recent,
                        n_val=n_val,
                        max_lm_calls=max_lm_calls,
                        options={"iterations": iterations, **(optimizer_options or {})},
                    )
                persona = result.persona = agent.persona
                result.prediction = agent(task=q.input, before=q.timestamp).answer
        result.lm_calls, result.tokens = usage_totals(usage)
        result.score = task.score(result.prediction, q.output)
        result.seconds = time.perf_counter() - started
        if method != "trivial":
            check_no_leak(case, memory, _prompt_texts(lm.history[history_mark:]) if lm is not None else [], persona)
        if not keep_memory:
            memory.forget(case.user_id)
        results.append(result)
    return EvaluationReport(
        task=task.name,
        method=method,
        cases=results,
        metrics=metrics(task, [c.truth for c in results], [c.prediction for c in results]),
    )


def _compiled(
    agent: PersonaAgent,
    method: str,
    result: CaseResult,
    *,
    memory: Any,
    n_recent: int,
    n_val: int,
    max_lm_calls: int,
    options: dict[str, Any],
) -> PersonaAgent:
    """The agent ``method``'s optimizer compiles (untracked), its compile recorded in ``result``. A past
    too short to replay and gate, or a compile over its LM-call budget, moves nothing: production (the
    student) answers, as in serving."""
    from persona_dspy.optimizers import PersonaOptimizer
    from persona_dspy.optimizers.baselines import GEPABaseline
    from persona_dspy.pipeline import align_user

    if method == "persona+align":
        optimizer: Any = PersonaOptimizer(n_recent=n_recent, n_val=n_val, max_lm_calls=max_lm_calls, **options)
    else:
        optimizer = GEPABaseline(n_recent=n_recent, n_val=n_val, max_lm_calls=max_lm_calls)
    from persona_dspy.optimizers import usage_totals

    result.promoted = False
    with dspy.track_usage() as usage:
        try:
            aligned = align_user(agent.user_id, optimizer, memory=memory, student=agent)
        except EmptyHistoryError as exc:
            result.compile = {"stopped": f"not compiled: {exc}", "lm_calls": 0, "tokens": 0}
            return agent
        except BudgetExceededError as exc:  # production was not moved: it answers, as in serving
            calls, tokens = usage_totals(usage)  # what the compile spent before it stopped
            result.compile = {"stopped": f"over budget: {exc}", "lm_calls": calls, "tokens": tokens}
            return agent
    assert aligned.agent is not None and aligned.result is not None  # untracked: never skipped
    result.iteration_scores = [s.train_score for s in aligned.result.steps]
    result.promoted = aligned.result.promoted
    result.compile = aligned.result.model_dump(
        include={
            "stopped",
            "reason",
            "val_score_production",
            "val_score_candidate",
            "candidate_persona",
            "rewritten",
            "lm_calls",
            "tokens",
            "steps",
        }
    )
    return aligned.agent


def per_user_spread(report: EvaluationReport) -> float:
    """Standard deviation of the per-case score (the per-user variance the benchmark reports)."""
    scores = [c.score for c in report.cases]
    return statistics.pstdev(scores) if len(scores) > 1 else 0.0


def format_report(report: EvaluationReport) -> str:
    lines = [f"{report.task} / {report.method}: {len(report.cases)} cases"]
    lines += [f"  {name}: {value:.3f}" for name, value in report.metrics.items()]
    cost = report.per_case_cost
    lines.append(f"  per user: {cost['lm_calls']:.1f} LM calls, {cost['tokens']:.0f} tokens, {cost['seconds']:.1f} s")
    lines.append(f"  per-user score spread (std): {per_user_spread(report):.3f}")
    for c in report.cases:
        lines.append(
            f"    {c.user_id:<24} truth {c.truth!s:<16.16} pred {c.prediction!s:<16.16} score {c.score:.2f} "
            f"calls {c.lm_calls} tokens {c.tokens} {c.seconds:.1f} s"
        )
    return "\n".join(lines)
