"""On the REAL embedded model (runs in CI; one LM call): ``ask`` through ``load_agent`` on a bundled user.

Deselect it (with tests/test_end_to_end_embedded.py and tests/test_lm_embedded.py) when the model is
busy; everything else of serving runs on the scripted LM (tests/test_serving.py, tests/test_export.py).
"""

from __future__ import annotations

import dspy

from persona_dspy import Settings
from persona_dspy.data import load_sample_users
from persona_dspy.lm import build_lm
from persona_dspy.memory import EpisodicMemory
from persona_dspy.serving import load_agent
from persona_dspy.tracking import Tracking


def test_ask_a_never_compiled_user_on_the_embedded_model(tmp_path, embedder, mlflow_uri):
    history = load_sample_users()[3]  # user 163's 14 past ratings, under an id no other test compiles
    settings = Settings(qdrant=":memory:", state_dir=tmp_path)
    with EpisodicMemory(settings, embedder=embedder) as memory:
        memory.add(it.model_copy(update={"user_id": "served-163"}) for it in history.interactions)
        agent = load_agent(
            "served-163", settings=settings, memory=memory, tracking=Tracking(settings, tracking_uri=mlflow_uri)
        )
        with dspy.context(lm=build_lm(Settings())):
            # before= the query's time: the answer reads the stored profile (none yet), so one LM call
            answer = agent(task=history.query.input, before=history.query.timestamp)
    assert agent.persona_version is None and answer.persona_version is None
    assert answer.valid, answer.raw_answer  # the real model keeps the rating contract
    assert "->" in answer.history  # the episodes it used
