"""GEPA and MIPROv2 optimize the persona of a PersonaAgent (scripted LM), through the same gate."""

from __future__ import annotations

import dspy
import pytest

from persona_dspy import Settings
from persona_dspy.agent import PersonaAgent
from persona_dspy.data import Interaction
from persona_dspy.errors import BudgetExceededError
from persona_dspy.lm.scripted import ScriptedLM
from persona_dspy.memory import EpisodicMemory
from persona_dspy.optimizers.baselines import GEPABaseline, MIPROv2Baseline
from persona_dspy.signatures import DEFAULT_PERSONA

from scripted import NEW_PERSONA, rule_with_dspy_optimizers
from scripted import ratings as scripted_ratings


@pytest.fixture
def harsh_user(tmp_path, embedder):
    items = [
        Interaction(
            user_id="h",
            id=f"m{i}",
            input=f"movie: Film {i} genres: Comedy",
            output="1.0",
            timestamp=50.0 + i,
            task="movielens_rating",
        )
        for i in range(7)
    ]
    mem = EpisodicMemory(Settings(qdrant=":memory:", state_dir=tmp_path), embedder=embedder)
    mem.add(items)
    yield mem, items
    mem.close()


@pytest.mark.parametrize("optimizer_cls", [GEPABaseline, MIPROv2Baseline])
def test_dspy_optimizer_rewrites_only_the_persona(harsh_user, optimizer_cls):
    memory, items = harsh_user
    student = PersonaAgent("movielens_rating", user_id="h", memory=memory)
    lm = ScriptedLM(rule_with_dspy_optimizers)
    with dspy.context(lm=lm):
        compiled = optimizer_cls(n_recent=3, n_val=2, max_lm_calls=60).compile(student, trainset=items)
    result = compiled.compile_result
    assert student.persona == DEFAULT_PERSONA
    assert result.optimizer == optimizer_cls.name
    assert result.candidate_persona == NEW_PERSONA and compiled.persona == NEW_PERSONA
    assert result.promoted and result.val_score_candidate == 1.0
    # the task contract (fields) is untouched: only the instructions changed
    assert compiled.respond.signature.fields.keys() == student.respond.signature.fields.keys()
    assert result.lm_calls == len(lm.prompts) <= 60


@pytest.mark.parametrize("max_lm_calls", [17, 20, 30, 60])
@pytest.mark.parametrize("ratings", [["1.0"] * 7, ["1.0", "4.0"] * 3 + ["4.0"]])
def test_gepa_stops_within_its_budget_with_the_gate(tmp_path, embedder, max_lm_calls, ratings):
    """dspy.GEPA counts metric calls, not its reflections, and checks its stoppers only before an
    iteration; the compile's budget stops it so that the gate still fits, whether its first proposal
    is perfect (a harsh user) or proposals keep losing their minibatch (a mixed user)."""
    items = scripted_ratings("g", genres="Comedy", start=50.0, outputs=ratings)
    lm = ScriptedLM(rule_with_dspy_optimizers)
    with EpisodicMemory(Settings(qdrant=":memory:", state_dir=tmp_path), embedder=embedder) as memory:
        memory.add(items)
        student = PersonaAgent("movielens_rating", user_id="g", memory=memory)
        with dspy.context(lm=lm):
            result = GEPABaseline(n_recent=3, n_val=2, max_lm_calls=max_lm_calls).compile(student, trainset=items)
    compiled = result.compile_result
    assert compiled.lm_calls == len(lm.prompts) <= max_lm_calls
    if len(set(ratings)) == 1:  # the harsh user's proposal wins: the gate ran and promoted it
        assert compiled.promoted and compiled.val_score_candidate == 1.0
    else:  # proposals lost for as long as the budget allowed: nothing changed, nothing to gate
        worst = GEPABaseline.iteration_cost(3, 3) + 2 * 2  # one more iteration at worst, then the gate
        assert compiled.reason == "the persona did not change" and max_lm_calls - len(lm.prompts) < worst


def test_gepa_refuses_a_budget_without_room_for_one_proposal_before_any_lm_call(harsh_user):
    memory, items = harsh_user
    lm = ScriptedLM(rule_with_dspy_optimizers)
    student = PersonaAgent("movielens_rating", user_id="h", memory=memory)
    with dspy.context(lm=lm), pytest.raises(BudgetExceededError, match="needs 13 LM calls"):
        GEPABaseline(n_recent=3, n_val=2, max_lm_calls=12).compile(student, trainset=items)
    assert lm.prompts == []
