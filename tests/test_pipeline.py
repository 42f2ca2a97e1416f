"""The vertical slice with the scripted LM: real Qdrant, real MLflow, real DSPy and TextGrad objects."""

from __future__ import annotations

import dspy

from persona_dspy.agent import PersonaAgent
from persona_dspy.data import Interaction, UserHistory
from persona_dspy.lm.scripted import ScriptedLM
from persona_dspy.optimizers import PersonaOptimizer
from persona_dspy.signatures import DEFAULT_PERSONA

from scripted import CRITIQUE, NEW_PERSONA, rule


def harsh_history(user_id: str, n: int = 8) -> UserHistory:
    items = [Interaction(user_id=user_id, id=f"m{i}", input=f"movie: Film {i} genres: Comedy", output="1.0",
                         timestamp=1000.0 + i, task="movielens_rating") for i in range(n)]
    return UserHistory(user_id=user_id, interactions=tuple(items))


def test_compile_moves_persona_along_the_gradient_and_promotes(memory, tracking):
    history = harsh_history("alice")
    memory.add(history.interactions)
    lm = ScriptedLM(rule)
    student = PersonaAgent("movielens_rating", user_id="alice", memory=memory)
    with dspy.context(lm=lm):
        compiled = PersonaOptimizer(n_recent=3, iterations=1, tracking=tracking).compile(student, trainset=history)
    result = compiled.compile_result
    assert student.persona == DEFAULT_PERSONA  # the student is untouched
    # the loss is the LM critique plus the task metric, stated exactly
    assert result.steps[0].loss == f"{CRITIQUE}\n- Measured: On average the assistant rated 3.0 higher than the user."
    assert compiled.persona == NEW_PERSONA == result.candidate_persona
    assert result.promoted and result.val_score_candidate > result.val_score_production
    assert tracking.load_persona("alice").text == NEW_PERSONA
    # 3 replays + loss + update + 2 x 2 gate replays
    assert result.lm_calls == len(lm.prompts) == 9


def test_replay_never_shows_the_replayed_answer(memory, tracking):
    history = harsh_history("bob")
    secret = "4.5"
    last = history.interactions[-1].model_copy(update={"output": secret, "input": "movie: Secret Film genres: Drama"})
    history = UserHistory(user_id="bob", interactions=history.interactions[:-1] + (last,))
    memory.add(history.interactions)
    lm = ScriptedLM(rule)
    agent = PersonaAgent("movielens_rating", user_id="bob", memory=memory)
    with dspy.context(lm=lm):
        agent(task=last.input, before=last.timestamp)
    assert "Secret Film" in lm.all_prompt_text()
    assert f"-> {secret}" not in lm.all_prompt_text()


def test_gate_keeps_production_when_candidate_is_worse(memory, tracking):
    # the user rates high: the "harsh" persona the optimizer proposes is worse on held-back items
    items = [Interaction(user_id="carol", id=f"m{i}", input=f"movie: Film {i} genres: Drama", output=out,
                         timestamp=2000.0 + i, task="movielens_rating")
             for i, out in enumerate(["4.0", "4.0", "4.0", "1.0", "1.0"])]
    history = UserHistory(user_id="carol", interactions=tuple(items))
    memory.add(items)
    student = PersonaAgent("movielens_rating", user_id="carol", memory=memory)
    with dspy.context(lm=ScriptedLM(rule)):
        compiled = PersonaOptimizer(n_recent=2, iterations=1, tracking=tracking).compile(student, trainset=history)
    result = compiled.compile_result
    assert result.candidate_persona == NEW_PERSONA
    assert not result.promoted
    assert compiled.persona == DEFAULT_PERSONA
    assert tracking.production_persona("carol") is None
    assert tracking.load_persona("carol", "candidate").text == NEW_PERSONA
