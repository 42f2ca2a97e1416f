"""The Ray backend end to end: a local Ray cluster, a real ``mlflow server``, the scripted LM in the workers."""

from __future__ import annotations

import functools
import os

import pytest
from test_fleet import TESTS, active_runs, fleet_rule, history

from persona_dspy import Settings
from persona_dspy.fleet import compile_users
from persona_dspy.lm.scripted import ScriptedLM
from persona_dspy.memory import EpisodicMemory
from persona_dspy.optimizers import PersonaOptimizer
from persona_dspy.tracking import PRODUCTION, Tracking

ray = pytest.importorskip("ray", reason="the Ray backend needs the 'ray' extra: pip install -e '.[ray]'")


def test_ray_tasks_compile_each_user_into_the_tracking_server(tmp_path, mlflow_server, embedder, monkeypatch):
    uri = mlflow_server.wait().uri
    users = ["ray-a", "ray-b", "ray-c"]
    settings = Settings(state_dir=tmp_path, qdrant=":memory:", mlflow_tracking_uri=uri)
    # workers unpickle fleet_rule by reference: they import test_fleet from the tests folder
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with EpisodicMemory(settings, embedder=embedder) as memory:
            memory.add([it for u in users for it in history(u)])
            report = compile_users(
                users,
                PersonaOptimizer(n_recent=2, iterations=1, n_val=2),
                memory=memory,
                workers=2,
                lm=functools.partial(ScriptedLM, fleet_rule),
                backend="ray",
                ship_histories=True,
                progress=False,
            )
    finally:
        ray.shutdown()
    assert [u.status for u in report.users] == ["promoted"] * 3, report.format()
    tracking = Tracking(settings)
    for u in users:
        production = tracking.load_persona(u, PRODUCTION)
        assert production.text.endswith(f"Written for user={u}.")
        assert tracking.client.get_run(production.tags["run_id"]).data.tags["user_id"] == u
        assert len(active_runs(tracking, u)) == 1
