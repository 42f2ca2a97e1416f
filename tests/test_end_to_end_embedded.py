"""End to end on the REAL embedded model: a tiny compile (n=1, one iteration) with real stores."""

from __future__ import annotations

import dspy

from persona_dspy import Settings
from persona_dspy.agent import PersonaAgent
from persona_dspy.data import load_sample_users
from persona_dspy.lm import build_lm
from persona_dspy.memory import EpisodicMemory
from persona_dspy.optimizers import PersonaOptimizer
from persona_dspy.pipeline import align_user
from persona_dspy.tracking import Tracking


def test_tiny_compile_on_the_embedded_model(tmp_path, embedder, mlflow_uri):
    history = load_sample_users()[3]  # user 163: 14 past ratings
    settings = Settings(qdrant=":memory:", state_dir=tmp_path)
    tracking = Tracking(settings, tracking_uri=mlflow_uri)
    with EpisodicMemory(settings, embedder=embedder) as memory:
        memory.add(history.interactions)
        student = PersonaAgent(history.task, user_id=history.user_id, memory=memory)
        optimizer = PersonaOptimizer(n_recent=1, iterations=1, n_val=1, max_lm_calls=12)
        with dspy.context(lm=build_lm(Settings())):
            compiled = align_user(history.user_id, optimizer, memory=memory, tracking=tracking, student=student).agent
            answer = compiled(task=history.query.input, before=history.query.timestamp)
    result = compiled.compile_result
    assert result.lm_calls >= 2 and result.tokens > 0
    assert len(result.steps) == 1 and result.steps[0].predictions[0] is not None
    assert answer.valid, answer.raw_answer  # the real model keeps the rating contract
    assert result.version is not None
    assert tracking.load_persona(history.user_id, "candidate").text == result.candidate_persona
    if result.promoted:
        assert tracking.load_persona(history.user_id).text == result.candidate_persona


def test_embedded_model_answers_a_lamp2n_query_with_a_valid_label(tmp_path, embedder):
    from pathlib import Path

    from persona_dspy.data import load_shared
    from persona_dspy.signatures import LAMP2N_LABELS

    case = load_shared(Path(__file__).parent / "data" / "lamp2n.jsonl")[0]  # bundled: tests/data/README.md
    with EpisodicMemory(Settings(qdrant=":memory:", state_dir=tmp_path), embedder=embedder) as memory:
        memory.add(case.interactions)
        agent = PersonaAgent("LaMP-2N", user_id=case.user_id, memory=memory)
        with dspy.context(lm=build_lm(Settings())):
            pred = agent(task=case.query.input, before=case.query.timestamp)
    assert pred.answer in LAMP2N_LABELS, pred.raw_answer
