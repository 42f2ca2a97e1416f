"""PersonaOptimizer with the scripted LM: leakage, budget, garbage output, determinism, baselines."""

from __future__ import annotations

import re

import dspy
import pytest

from persona_dspy import BudgetExceededError, LMOutputError
from persona_dspy.agent import PersonaAgent
from persona_dspy.data import Interaction, UserHistory
from persona_dspy.lm.scripted import ScriptedLM
from persona_dspy.optimizers import PersonaOptimizer, prompts
from persona_dspy.pipeline import align_user
from persona_dspy.signatures import DEFAULT_PERSONA

from scripted import NEW_PERSONA, rule

TASK_FIELD = re.compile(r"\[\[ ## task ## \]\]\n(.*?)\n", re.S)


def free_text_history(user_id: str, n: int = 7) -> UserHistory:
    items = [Interaction(user_id=user_id, id=f"q{i}", input=f"question number {i} about topic {i}",
                         output=f"SECRET-ANSWER-{user_id}-{i}", timestamp=100.0 + i) for i in range(n)]
    return UserHistory(user_id=user_id, interactions=tuple(items))


def test_no_replayed_interaction_sees_its_own_or_a_later_answer(memory):
    history = free_text_history("leaky")
    memory.add(history.interactions)
    lm = ScriptedLM(rule)
    student = PersonaAgent("generic", user_id="leaky", memory=memory, k=10)
    with dspy.context(lm=lm):
        PersonaOptimizer(n_recent=3, iterations=2, n_val=2).compile(student, trainset=history)
    by_input = {it.input: it for it in history.interactions}
    replays = 0
    for messages in lm.prompts:
        text = "\n".join(m["content"] for m in messages)
        match = TASK_FIELD.search(messages[-1]["content"])
        if not match or match.group(1).strip() not in by_input:
            continue
        replays += 1
        current = by_input[match.group(1).strip()]
        for it in history.interactions:
            if it.timestamp >= current.timestamp:
                assert it.output not in text, f"{it.id}'s answer leaked into the replay of {current.id}"
        assert any(it.output in text for it in history.interactions if it.timestamp < current.timestamp)
    assert replays == 3 * 2 + 2 * 2  # two iterations of 3 replays, then the gate


def test_budget_exceeded_stops_and_moves_nothing(memory, tracking):
    history = free_text_history("budget")
    memory.add(history.interactions)
    lm = ScriptedLM(rule)
    student = PersonaAgent("movielens_rating", user_id="budget", memory=memory)
    with dspy.context(lm=lm), pytest.raises(BudgetExceededError, match="max_lm_calls=4"):
        align_user("budget", PersonaOptimizer(n_recent=3, iterations=3, max_lm_calls=4), memory=memory,
                   tracking=tracking, student=student)
    assert len(lm.prompts) <= 4
    assert tracking.history("budget") == []


def test_garbage_update_raises_lm_output_error_and_moves_nothing(memory, tracking):
    history = free_text_history("garbage")
    memory.add(history.interactions)

    def garbage(messages):
        if messages[0]["content"].startswith(prompts.TGD_SYSTEM[:40]):
            return "I cannot help with that."
        return rule(messages)

    lm = ScriptedLM(garbage)
    student = PersonaAgent("movielens_rating", user_id="garbage", memory=memory)
    with dspy.context(lm=lm), pytest.raises(LMOutputError, match="unusable twice"):
        align_user("garbage", PersonaOptimizer(n_recent=2, iterations=1), memory=memory, tracking=tracking,
                   student=student)
    assert sum(m[0]["content"].startswith(prompts.TGD_SYSTEM[:40]) for m in lm.prompts) == 2  # one retry
    assert tracking.history("garbage") == [] and student.persona == DEFAULT_PERSONA


def test_compile_is_deterministic_with_a_scripted_lm(memory):
    history = free_text_history("det")
    memory.add(history.interactions)
    results = []
    for _ in range(2):
        with dspy.context(lm=ScriptedLM(rule)):
            compiled = PersonaOptimizer(n_recent=2, iterations=2).compile(
                PersonaAgent("movielens_rating", user_id="det", memory=memory), trainset=history)
        r = compiled.compile_result
        results.append((r.candidate_persona, [s.model_dump() for s in r.steps], r.lm_calls, r.tokens))
    assert results[0] == results[1]
    assert results[0][0] == NEW_PERSONA


def test_early_stop_when_every_replay_matches(memory):
    items = [Interaction(user_id="easy", id=f"m{i}", input=f"movie: Film {i} genres: Drama", output="4.0",
                         timestamp=10.0 + i, task="movielens_rating") for i in range(6)]
    memory.add(items)
    lm = ScriptedLM(rule)  # answers 4.0 with the default persona: already right
    with dspy.context(lm=lm):
        compiled = PersonaOptimizer(n_recent=3, iterations=3).compile(
            PersonaAgent("movielens_rating", user_id="easy", memory=memory), trainset=items)
    result = compiled.compile_result
    assert len(result.steps) == 1 and result.steps[0].train_score == 1.0
    assert result.lm_calls == 3 and result.reason == "the persona did not change"


def test_history_shorter_than_n_is_a_specific_error(memory):
    from persona_dspy import EmptyHistoryError

    items = free_text_history("short", n=3).interactions
    with pytest.raises(EmptyHistoryError, match="n_recent=3"):
        PersonaOptimizer(n_recent=3).compile(PersonaAgent(user_id="short", memory=memory), trainset=items)


def test_persona_memorizing_an_answer_is_redacted(memory):
    history = free_text_history("memo")
    memory.add(history.interactions)
    leaked = history.interactions[-1].output

    def memorize(messages):
        if messages[0]["content"].startswith(prompts.TGD_SYSTEM[:40]):
            return f"<IMPROVED_VARIABLE>The user answered {leaked} last time.</IMPROVED_VARIABLE>"
        return rule(messages)

    with dspy.context(lm=ScriptedLM(memorize)):
        compiled = PersonaOptimizer(n_recent=2, iterations=1).compile(
            PersonaAgent("generic", user_id="memo", memory=memory), trainset=history)
    assert leaked not in compiled.compile_result.candidate_persona


def test_compile_on_a_memory_snapshot_sends_exactly_the_same_prompts(memory, embedder):
    history = free_text_history("snap")
    other = free_text_history("other")
    memory.add(history.interactions + other.interactions)
    prompts_by_mode = []
    for snapshot in (True, False):
        lm = ScriptedLM(rule)
        with dspy.context(lm=lm):
            PersonaOptimizer(n_recent=3, iterations=2, snapshot_memory=snapshot).compile(
                PersonaAgent("generic", user_id="snap", memory=memory, k=3), trainset=history)
        prompts_by_mode.append(lm.prompts)
    assert prompts_by_mode[0] == prompts_by_mode[1]
    assert "SECRET-ANSWER-other" not in str(prompts_by_mode[0])


# -- early stopping: the replay that starts an iteration judges the previous update ------------------

def rating_history(user_id: str, outputs: list[str]) -> UserHistory:
    items = [Interaction(user_id=user_id, id=f"m{i}", input=f"movie: Film {i} (1999) genres: Drama", output=out,
                         timestamp=100.0 + i, task="movielens_rating") for i, out in enumerate(outputs)]
    return UserHistory(user_id=user_id, interactions=tuple(items))


def compile_with(memory, history, rule_fn, persona=DEFAULT_PERSONA, **kw):
    memory.add(history.interactions)
    lm = ScriptedLM(rule_fn)
    student = PersonaAgent("movielens_rating", user_id=history.user_id, memory=memory, persona=persona)
    with dspy.context(lm=lm):
        compiled = PersonaOptimizer(**{"n_recent": 3, "iterations": 3, "n_val": 2, **kw}).compile(
            student, trainset=history)
    return compiled.compile_result, lm


def deaf(messages):
    """The agent answers HIGH whatever its persona says: updates never change a replay."""
    answer = rule(messages)
    return {"answer": "4.0"} if isinstance(answer, dict) and "answer" in answer else answer


def test_a_plateau_stops_after_patience_and_the_gate_still_runs(memory):
    result, lm = compile_with(memory, rating_history("flat", ["1.0"] * 6), deaf)
    assert [s.train_score for s in result.steps] == [result.steps[0].train_score] * 2 < [1.0] * 2
    assert "patience 1" in result.stopped and result.candidate_persona == NEW_PERSONA
    assert result.lm_calls == len(lm.prompts) == 3 + 2 + 3 + 2 * 2  # replay, loss+update, replay, gate
    rewrites = iter(range(100))

    def deaf_rewriting(messages):  # every update writes a new persona, none changes an answer
        answer = deaf(messages)
        return answer.replace("</IMPROVED", f" Note {next(rewrites)}.</IMPROVED") if isinstance(answer, str) else answer

    result, lm = compile_with(memory, rating_history("flat2", ["1.0"] * 6), deaf_rewriting, patience=None)
    assert len(result.steps) == 3 and result.lm_calls == 3 * (3 + 2) + 2 * 2 and "3 iteration" in result.stopped


def test_an_update_that_makes_the_replay_worse_is_undone(memory, tracking):
    # the default persona answers HIGH (4.0): right on 2 of 3; the "harsh" update answers 1.0: worse
    history = rating_history("worse", ["4.0", "4.0", "4.0", "4.0", "3.0"])
    memory.add(history.interactions)
    lm = ScriptedLM(rule)
    student = PersonaAgent("movielens_rating", user_id="worse", memory=memory)
    with dspy.context(lm=lm):
        compiled = align_user("worse", PersonaOptimizer(n_recent=3, iterations=3), memory=memory, tracking=tracking,
                              student=student).agent
    result = compiled.compile_result
    assert result.steps[1].train_score < result.steps[0].train_score < 1.0
    assert "worse" in result.stopped and result.candidate_persona == DEFAULT_PERSONA == compiled.persona
    assert result.lm_calls == 3 + 2 + 3 and not result.promoted  # no gate: the persona did not change
    assert tracking.production_persona("worse") in (None, DEFAULT_PERSONA)


def test_an_update_that_returns_the_same_persona_ends_the_loop(memory):
    result, lm = compile_with(memory, rating_history("same", ["4.0"] * 6), rule, persona=NEW_PERSONA)
    assert len(result.steps) == 1 and result.steps[0].updated_persona == NEW_PERSONA
    assert "unchanged" in result.stopped and result.lm_calls == 3 + 2
