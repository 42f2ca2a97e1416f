"""The demo's flow with the scripted LM: one run and one registered persona version per demo user."""

from __future__ import annotations

from persona_dspy import Settings
from persona_dspy.demo import format_table, run_demo
from persona_dspy.lm.scripted import ScriptedLM
from persona_dspy.tracking import Tracking

from scripted import rule


def test_demo_records_one_run_and_one_version_per_user(tmp_path, embedder, monkeypatch, seed_store):
    from persona_dspy.memory import episodic

    monkeypatch.setattr(episodic, "OnnxEmbedder", lambda: embedder)  # reuse the session's loaded model
    settings = Settings(state_dir=seed_store(tmp_path))
    lines: list[str] = []
    rows = run_demo(settings, users=2, lm=ScriptedLM(rule), echo=lines.append)
    assert [r.user_id for r in rows] == ["517", "481"]
    tracking = Tracking(settings)
    client = tracking.client
    runs = client.search_runs([tracking.experiment_id()])
    assert sorted(r.data.tags["user_id"] for r in runs) == ["481", "517"]
    for row in rows:
        assert len(tracking.history(row.user_id)) == 1 and row.version == 1
        assert row.lm_calls > 0
    table = format_table(rows)
    assert "517" in table and "mean" in table
    assert any("held-out queries are not ingested" in line for line in lines)
