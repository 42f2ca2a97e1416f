"""The vertical slice with the scripted LM: real Qdrant, real MLflow, real DSPy and TextGrad objects.

``compile`` is pure (memory and LM only); ``align_user`` reads production, compiles and records.
"""

from __future__ import annotations

import dspy

from persona_dspy.agent import PersonaAgent
from persona_dspy.data import UserHistory
from persona_dspy.lm.scripted import ScriptedLM
from persona_dspy.optimizers import PersonaOptimizer
from persona_dspy.pipeline import align_user
from persona_dspy.signatures import DEFAULT_PERSONA

from scripted import NEW_PERSONA, ratings, rule


def harsh_history(user_id: str, n: int = 8) -> UserHistory:
    items = ratings(user_id, n, genres="Comedy", start=1000.0)
    return UserHistory(user_id=user_id, interactions=tuple(items))


def test_align_user_compiles_records_and_promotes_a_better_persona(memory, tracking):
    history = harsh_history("alice")
    memory.add(history.interactions)
    lm = ScriptedLM(rule)
    student = PersonaAgent("movielens_rating", user_id="alice", memory=memory)
    with dspy.context(lm=lm):
        aligned = align_user(
            "alice",
            PersonaOptimizer(n_recent=3, iterations=1, n_val=2),
            memory=memory,
            tracking=tracking,
            student=student,
        )
    compiled, result = aligned.agent, aligned.result
    assert aligned.status == "promoted" and compiled.compile_result is result and result.version == aligned.version
    assert student.persona == DEFAULT_PERSONA  # the student is untouched
    assert NEW_PERSONA in compiled.persona and compiled.persona == result.candidate_persona
    assert result.promoted and result.val_score_candidate > result.val_score_production
    assert tracking.load_persona("alice").text == result.candidate_persona
    assert result.lm_calls == len(lm.prompts) > 0  # every LM call of the compile is counted


def test_a_promotion_skipped_because_production_moved_during_the_compile_is_kept_everywhere(memory, tracking):
    """Another process promotes a persona while this compile runs: the gate never compared with it."""
    from persona_dspy.tracking import compare_runs, compile_id

    memory.add(harsh_history("racer").interactions)

    class Raced(PersonaOptimizer):
        def compile(self, student, **kwargs):
            compiled = super().compile(student, **kwargs)
            other = compiled.compile_result.model_copy(update={"candidate_persona": "Moved meanwhile.", "steps": []})
            tracking.record(other)  # gated against the same default persona: promoted
            return compiled

    with dspy.context(lm=ScriptedLM(rule)):
        aligned = align_user("racer", Raced(n_recent=3, iterations=1, n_val=2), memory=memory, tracking=tracking)
    result = aligned.result
    assert aligned.status == "kept" and "promotion skipped" in aligned.reason and not result.promoted
    assert tracking.load_persona("racer").text == "Moved meanwhile." == aligned.agent.persona  # what serves
    cid = compile_id(result)
    assert tracking.record(result) == result.version and compile_id(result) == cid  # a retry finds its run
    assert len(compare_runs(tracking, "racer")) == 2  # the other compile's and this one's, no third


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
    items = ratings("carol", start=2000.0, outputs=["4.0", "4.0", "4.0", "1.0", "1.0"])
    memory.add(items)
    student = PersonaAgent("movielens_rating", user_id="carol", memory=memory)
    with dspy.context(lm=ScriptedLM(rule)):
        compiled = align_user(
            "carol",
            PersonaOptimizer(n_recent=2, iterations=1, n_val=2, min_facts=0),  # 5 past: the windows as given
            memory=memory,
            tracking=tracking,
            student=student,
        ).agent
    result = compiled.compile_result
    assert NEW_PERSONA in result.candidate_persona
    assert not result.promoted
    assert compiled.persona == DEFAULT_PERSONA
    assert tracking.production_persona("carol") is None
    assert tracking.load_persona("carol", "candidate").text == result.candidate_persona


def test_compile_records_nothing_and_gates_against_the_production_it_is_given(memory, tracking):
    history = harsh_history("pure")
    memory.add(history.interactions)
    student = PersonaAgent("movielens_rating", user_id="pure", memory=memory)
    with dspy.context(lm=ScriptedLM(rule)):
        compiled = PersonaOptimizer(n_recent=2, iterations=1, n_val=2, margin=-0.01).compile(
            student, trainset=history, production="This user is a harsh rater."
        )
    result = compiled.compile_result
    assert result.production_persona == "This user is a harsh rater." and result.version is None
    # the given production (not the student's default) answers like the user: the candidate only ties it
    assert result.val_score_production == result.val_score_candidate == 1.0
    assert not result.promoted and compiled.persona == "This user is a harsh rater."
    assert tracking.history("pure") == [] and tracking.last_compile("pure") is None


def test_align_user_reads_each_fact_once_and_records_once(memory, tracking, monkeypatch):
    history = harsh_history("once")
    memory.add(history.interactions)
    calls: dict[str, int] = {}

    def counted(obj, name):
        real = getattr(obj, name)

        def wrapper(*args, **kwargs):
            calls[name] = calls.get(name, 0) + 1
            return real(*args, **kwargs)

        monkeypatch.setattr(obj, name, wrapper)

    for name in ("production_persona", "last_compile", "record"):
        counted(tracking, name)
    counted(memory, "snapshot")
    with dspy.context(lm=ScriptedLM(rule)):
        first = align_user(
            "once", PersonaOptimizer(n_recent=2, iterations=1, n_val=2), memory=memory, tracking=tracking
        )
    assert calls == {"snapshot": 1, "last_compile": 1, "production_persona": 1, "record": 1}
    assert first.status == "promoted" and first.version == 1 and first.agent.memory is memory
    assert set(first.timings) == {"memory", "tracking", "compile"}
    with dspy.context(lm=ScriptedLM(rule)):
        again = align_user(
            "once", PersonaOptimizer(n_recent=2, iterations=1, n_val=2), memory=memory, tracking=tracking
        )
    assert again.status == "skipped" and again.agent is None and calls["record"] == 1


def test_align_user_without_tracking_keeps_the_students_persona_as_production(memory):
    history = harsh_history("untracked")
    memory.add(history.interactions)
    with dspy.context(lm=ScriptedLM(rule)):
        aligned = align_user("untracked", PersonaOptimizer(n_recent=2, iterations=1, n_val=2), memory=memory)
    assert aligned.result.production_persona == DEFAULT_PERSONA
    assert aligned.status == "promoted" and aligned.version is None
    assert NEW_PERSONA in aligned.agent.persona and aligned.agent.persona == aligned.result.candidate_persona


def test_a_traced_align_user_puts_the_compiles_lm_calls_under_its_run(memory, mlflow_uri, tmp_path):
    from persona_dspy import Settings
    from persona_dspy.tracking import Tracking

    traced = Tracking(Settings(state_dir=tmp_path), tracking_uri=mlflow_uri, trace=True)
    memory.add(harsh_history("traced").interactions)
    with dspy.context(lm=ScriptedLM(rule)):
        aligned = align_user(
            "traced", PersonaOptimizer(n_recent=2, iterations=1, n_val=2), memory=memory, tracking=traced
        )
    run_id = traced.load_persona("traced", "candidate").tags["run_id"]
    assert traced.client.get_run(run_id).data.tags["persona_version"] == str(aligned.version)
    traces = traced.client.search_traces(locations=[traced.experiment_id()], run_id=run_id)
    assert len(traces) >= aligned.result.lm_calls > 0


def test_the_optimizer_base_is_abstract_and_takes_no_tracking():
    import pytest

    from persona_dspy.optimizers import GatedPersonaOptimizer

    with pytest.raises(TypeError, match="abstract"):
        GatedPersonaOptimizer()
    with pytest.raises(TypeError, match="tracking"):
        PersonaOptimizer(tracking=None)


def test_a_persona_is_recorded_and_served_with_the_agent_settings_it_was_gated_with(memory, tracking):
    """A persona gated in the compact format with k=6 is served so (``load_agent``), and a student with
    other settings is compiled again rather than skipped as unchanged."""
    from persona_dspy.serving import load_agent

    memory.add(harsh_history("dana").interactions)
    optimizer = PersonaOptimizer(n_recent=3, iterations=1, n_val=2)
    compact = PersonaAgent("movielens_rating", user_id="dana", memory=memory, adapter="compact", k=6)
    with dspy.context(lm=ScriptedLM(rule)):
        first = align_user("dana", optimizer, memory=memory, tracking=tracking, student=compact)
        again = align_user("dana", optimizer, memory=memory, tracking=tracking, student=compact)
        chat = align_user("dana", optimizer, memory=memory, tracking=tracking)
    assert first.status == "promoted" and first.result.agent["adapter"] == "compact"
    version = tracking.load_persona("dana")
    assert version.tags["agent.adapter"] == "compact" and version.tags["agent.k"] == "6"
    run = tracking.store.client.get_run(version.tags["run_id"])
    assert run.data.params["agent.adapter"] == "compact" and run.data.params["agent.mode"] == "pipeline"
    assert again.status == "skipped" and "agent settings" in again.reason
    assert chat.status != "skipped" and chat.result.agent["adapter"] == "chat"
    served = load_agent("dana", memory=memory, tracking=tracking, alias=first.version)
    assert (served.adapter, served.k, served.persona) == ("compact", 6, version.text)
    assert load_agent("dana", memory=memory, tracking=tracking, alias=first.version, k=2).k == 2


def test_a_compile_recorded_before_agent_settings_counts_as_the_defaults_of_that_time():
    """A compile without ``agent.*`` params (recorded before settings were) is unchanged for a default
    student and changed for any other: a user moved to the compact format after the upgrade is compiled."""
    from persona_dspy.pipeline import LEGACY_AGENT, unchanged_since_last_compile

    optimizer = PersonaOptimizer(n_recent=3, iterations=1, n_val=2)
    params = {k: str(v)[:6000] for k, v in optimizer.params.items()}
    last = {"optimizer": optimizer.name, "data_watermark": "5.0", "params": params}
    then = {
        "adapter": "chat",
        "k": 4,
        "episode_chars": 220,
        "actions": ("read_profile", "answer_statistics", "recall_episodes"),
    }
    default = PersonaAgent("movielens_rating", user_id="u", **then).settings()  # the defaults then
    compact = PersonaAgent("movielens_rating", user_id="u", adapter="compact").settings()
    assert default == LEGACY_AGENT
    assert unchanged_since_last_compile(last, optimizer, 5.0, agent=default)
    assert not unchanged_since_last_compile(last, optimizer, 5.0, agent=compact)
    recorded = {**params, **{f"agent.{k}": v for k, v in compact.items()}}
    assert unchanged_since_last_compile({**last, "params": recorded}, optimizer, 5.0, agent=compact)
    assert not unchanged_since_last_compile({**last, "params": recorded}, optimizer, 5.0, agent=default)
