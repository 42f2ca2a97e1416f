"""Serving: load a user's agent from the registry, feed back what the user did, re-align when due.

Real Qdrant (``:memory:``), real sqlite MLflow, real DSPy/TextGrad objects; the scripted LM answers
``HIGH`` unless the persona says "harsh" (what the scripted compile writes), so a new production
version is visible in the answers.
"""

from __future__ import annotations

import time

import dspy
import pytest

from persona_dspy.data import Interaction
from persona_dspy.errors import (
    ConfigurationError,
    MalformedInteractionError,
    OutOfOrderObservationError,
    PersonaNotFoundError,
    UnknownUserError,
)
from persona_dspy.lm.scripted import ScriptedLM
from persona_dspy.optimizers import PersonaOptimizer
from persona_dspy.serving import RealignPolicy, compile_due, due_users, load_agent, observe, user_status
from persona_dspy.signatures import DEFAULT_PERSONA

from scripted import HIGH, LOW, rule

OPTIMIZER = PersonaOptimizer(n_recent=3, iterations=1, n_val=2)


def rating(user_id: str, i: int, output: str = "1.0", ts: float | None = None) -> Interaction:
    return Interaction(
        user_id=user_id,
        id=f"m{i}",
        input=f"movie: Film {i} genres: Comedy",
        output=output,
        timestamp=ts if ts is not None else 1000.0 + i,
        task="movielens_rating",
    )


def served(user_id, memory, tracking, **kwargs):
    return load_agent(user_id, settings=tracking.settings, memory=memory, tracking=tracking, **kwargs)


def compile_now(users, memory, tracking, realign_after: int = 1):
    """``compile_due`` on ``users`` with the scripted LM."""
    return compile_due(
        OPTIMIZER,
        settings=tracking.settings,
        policy=RealignPolicy(realign_after=realign_after),
        users=users,
        memory=memory,
        tracking=tracking,
        lm=ScriptedLM(rule),
        progress=False,
    )


def distill_calls(lm: ScriptedLM) -> int:
    return sum("previous_profile" in m[0]["content"] for m in lm.prompts)


def test_the_loop_ask_observe_become_due_compile_and_the_next_ask_serves_the_new_production(memory, tracking):
    memory.add([rating("loop", i) for i in range(6)])
    policy = RealignPolicy(realign_after=8)
    lm = ScriptedLM(rule)
    with dspy.context(lm=lm):
        agent = served("loop", memory, tracking, policy=policy)
        first = agent(task="movie: Tonight genres: Comedy")
        assert agent.persona_version is None and first.persona_version is None and first.answer == HIGH
        assert "rates low" in first.profile and "movie: Film" in first.history  # the evidence it used

        for i in (6, 7):  # the user really rated them 1.0
            seen = agent.observe({"input": f"movie: Seen {i} genres: Comedy", "output": "1.0", "timestamp": 2000.0 + i})
        assert seen.written == 1 and seen.users[0].new_since_compile == 8 and seen.users[0].due

        statuses, report = compile_due(
            OPTIMIZER,
            settings=tracking.settings,
            policy=policy,
            memory=memory,
            tracking=tracking,
            lm=lm,
            progress=False,
        )
        assert [s.user_id for s in statuses if s.due] == ["loop"]
        assert report is not None and [u.status for u in report.users] == ["promoted"]
        assert agent.status().new_since_compile == 0 and not agent.status().due

        again = served("loop", memory, tracking, policy=policy)
        answer = again(task="movie: Tonight genres: Comedy")
    assert again.persona_version == report.users[0].version == answer.persona_version
    assert answer.answer == LOW and again.persona == tracking.load_persona("loop").text


def test_a_user_never_compiled_is_served_the_default_persona(memory, tracking):
    memory.add([rating("fresh", i) for i in range(3)])
    agent = served("fresh", memory, tracking)
    assert agent.persona_version is None and agent.persona == DEFAULT_PERSONA and agent.alias == "production"
    assert agent.task.name == "movielens_rating"  # the task of the user's latest interaction


def test_loading_an_unknown_user_is_an_unknown_user_error(memory, tracking):
    with pytest.raises(UnknownUserError, match="nobody"):
        served("nobody", memory, tracking)


@pytest.mark.parametrize("alias", ["candidate", 7, "bogus"])
def test_loading_an_alias_or_version_the_user_does_not_have_is_persona_not_found(memory, tracking, alias):
    memory.add([rating("noalias", i) for i in range(3)])
    with pytest.raises(PersonaNotFoundError, match="noalias"):
        served("noalias", memory, tracking, alias=alias)


def test_load_agent_by_version_serves_that_version(memory, tracking):
    memory.add([rating("byversion", i) for i in range(6)])
    _, report = compile_now(["byversion"], memory, tracking)
    version = report.users[0].version
    agent = served("byversion", memory, tracking, alias=version)
    assert agent.persona_version == version and agent.alias == str(version)


def test_observing_the_same_interaction_twice_stores_it_once(memory, tracking):
    memory.add([rating("twice", i) for i in range(3)])
    agent = served("twice", memory, tracking)
    truth = {"input": "movie: Again genres: Drama", "output": "2.0", "timestamp": 5000.0}
    assert agent.observe(truth).written == 1
    repeat = agent.observe(truth)
    assert (repeat.written, repeat.already_stored) == (0, 1) and memory.count("twice") == 4
    for several in ([truth], "hello"):
        with pytest.raises(MalformedInteractionError, match="observe takes one interaction"):
            agent.observe(several)


def test_an_observation_older_than_the_stored_history_writes_nothing_of_its_batch(memory, tracking):
    memory.add([rating("order", i) for i in range(3)])
    batch = [rating("order", 10, ts=3000.0), rating("order", 11, ts=1000.5)]
    with pytest.raises(OutOfOrderObservationError, match=r"'m11'.*older than the latest stored one \('m2'") as exc:
        observe(batch, memory=memory, tracking=tracking)
    assert str(exc.value).startswith("out-of-order observation")  # not "malformed interaction": nothing is
    assert memory.count("order") == 3


def test_an_observation_reusing_an_id_with_other_content_is_rejected(memory, tracking):
    memory.add([rating("immutable", i) for i in range(3)])
    with pytest.raises(MalformedInteractionError, match="immutable"):
        observe([rating("immutable", 2, output="5.0")], memory=memory)
    assert memory.history("immutable")[-1].output == "1.0"


def test_an_observation_from_the_future_is_refused_before_it_locks_the_user_out(memory, tracking):
    """A milliseconds timestamp would be every later observation's "latest": all of them out of order."""
    memory.add([rating("clock", i) for i in range(3)])
    with pytest.raises(MalformedInteractionError, match="days ahead of this machine.s clock.*milliseconds") as exc:
        observe([rating("clock", 9, ts=time.time() * 1000)], memory=memory, tracking=tracking)
    assert exc.value.field == "timestamp" and memory.count("clock") == 3
    assert observe([rating("clock", 10, ts=time.time() + 60)], memory=memory).written == 1  # clock skew is fine


def test_observing_an_unknown_user_is_an_unknown_user_error(memory):
    with pytest.raises(UnknownUserError):
        observe([rating("stranger", 0)], memory=memory)


def test_observe_makes_no_lm_call_and_the_next_answer_refreshes_the_profile_once(memory, tracking):
    memory.add([rating("lazy", i) for i in range(4)])
    lm = ScriptedLM(rule)
    with dspy.context(lm=lm):
        agent = served("lazy", memory, tracking)
        agent(task="movie: One genres: Comedy")
        assert distill_calls(lm) == 1 and not agent.profile_is_stale()
        calls = len(lm.prompts)
        for i in range(3):
            agent.observe({"input": f"movie: Seen {i}", "output": "1.0", "timestamp": 3000.0 + i})
        assert len(lm.prompts) == calls and agent.profile_is_stale()
        agent(task="movie: Two genres: Comedy")
        agent(task="movie: Three genres: Comedy")
    assert distill_calls(lm) == 2  # one refresh for the three observations, none for an up-to-date profile
    assert agent.semantic.get("lazy").watermark == 3002.0


def test_a_user_is_due_by_age_after_news_since_the_last_compile(memory, tracking):
    memory.add([rating("aged", i) for i in range(6)])
    compile_now(["aged"], memory, tracking)
    policy = RealignPolicy(realign_after=100, max_age=3600)
    later = time.time() + 7200
    assert not user_status("aged", memory=memory, tracking=tracking, policy=policy, now=later).due  # no news
    observe([rating("aged", 6, ts=4000.0)], memory=memory)
    assert not user_status("aged", memory=memory, tracking=tracking, policy=policy).due  # news, but recent
    status = user_status("aged", memory=memory, tracking=tracking, policy=policy, now=later)
    assert status.due and status.new_since_compile == 1 and "max_age" in status.reason


def test_compile_due_compiles_only_the_due_users(memory, tracking):
    memory.add([rating("due-a", i) for i in range(6)] + [rating("due-b", i) for i in range(2)])
    statuses, report = compile_now(["due-a", "due-b"], memory, tracking, realign_after=5)
    assert {s.user_id: s.due for s in statuses} == {"due-a": True, "due-b": False}
    assert [u.user_id for u in report.users] == ["due-a"]


def test_a_user_of_two_tasks_is_served_either_and_not_a_third(memory, tracking):
    article = Interaction(user_id="two", id="a1", input="article: Dinner", output="food & drink", timestamp=2000.0,
                          task="LaMP-2N")  # fmt: skip
    memory.add([rating("two", i) for i in range(3)] + [article])
    assert served("two", memory, tracking).task.name == "LaMP-2N"  # the latest interaction's
    assert served("two", memory, tracking, task="movielens_rating").task.name == "movielens_rating"
    with pytest.raises(ConfigurationError, match="no interactions of task 'amazon_mi_rating'.*LaMP-2N, movielens"):
        served("two", memory, tracking, task="amazon_mi_rating")


def test_an_older_interaction_added_or_rewritten_since_a_compile_is_news(memory, tracking):
    """The watermark (latest time) misses a backfill and a rewrite; the compile's data count and digest see them."""
    from persona_dspy.data.records import data_digest
    from persona_dspy.pipeline import align_user, unchanged_since_last_compile

    memory.add([rating("backfill", i) for i in range(8) if i != 3])
    with dspy.context(lm=ScriptedLM(rule)):
        first = align_user("backfill", OPTIMIZER, memory=memory, tracking=tracking)
        assert align_user("backfill", OPTIMIZER, memory=memory, tracking=tracking).status == "skipped"
    policy = RealignPolicy(realign_after=1)
    status = user_status("backfill", memory=memory, tracking=tracking, policy=policy)
    assert (status.new_since_compile, status.due) == (0, False)
    assert status.last_compile_at is not None  # read with the last compile, with or without max_age

    memory.add([rating("backfill", 3)])  # older than the watermark
    assert user_status("backfill", memory=memory, tracking=tracking, policy=policy).new_since_compile == 1
    with dspy.context(lm=ScriptedLM(rule)):
        second = align_user("backfill", OPTIMIZER, memory=memory, tracking=tracking)
    assert second.status != "skipped" and second.result.data_count == 8 != first.result.data_count
    assert user_status("backfill", memory=memory, tracking=tracking, policy=policy).new_since_compile == 0

    memory.add([rating("backfill", 2, output="4.5")])  # same id, other answer: rewritten in place
    status = user_status("backfill", memory=memory, tracking=tracking, policy=policy)
    assert (status.new_since_compile, status.due) == (1, True)
    history, last = memory.history("backfill"), tracking.last_compile("backfill")
    assert not unchanged_since_last_compile(last, OPTIMIZER, history[-1].timestamp, data_digest(history))
    assert unchanged_since_last_compile(last, OPTIMIZER, history[-1].timestamp)  # what the watermark alone saw
    before_digests = {k: v for k, v in last.items() if k != "data_digest"}  # a run recorded before digests were
    assert unchanged_since_last_compile(before_digests, OPTIMIZER, history[-1].timestamp, data_digest(history))


def test_users_may_be_any_collection_of_ids(memory, tracking):
    import numpy as np

    memory.add([rating("arr", i) for i in range(2)])
    assert [s.user_id for s in due_users(np.array(["arr"]), memory=memory, tracking=tracking)] == ["arr"]
    assert [s.user_id for s in due_users(("arr",), memory=memory, tracking=tracking)] == ["arr"]


@pytest.mark.parametrize("users", ["43", [43], ["ok", "  "], 7])
def test_users_is_a_list_of_ids_not_a_lone_string(users, memory, tracking):
    """Iterated, the string "43" was the users "4" and "3": compiled and recorded without a word."""
    from persona_dspy.fleet import compile_users

    with pytest.raises(ConfigurationError, match="user"):
        due_users(users, memory=memory, tracking=tracking)
    with pytest.raises(ConfigurationError, match="user"):
        compile_users(users, memory=memory, tracking=tracking, lm=ScriptedLM(rule), progress=False)


def test_an_observation_retried_under_its_id_at_another_time_is_stored_once(memory, tracking):
    memory.add([rating("retry", i) for i in range(3)])
    agent = served("retry", memory, tracking)
    click = {"id": "click-1", "input": "movie: Clicked genres: Drama", "output": "2.0"}  # its time defaults to now
    assert agent.observe(click).written == 1
    again = agent.observe(click)
    assert (again.written, again.already_stored) == (0, 1) and memory.count("retry") == 4
    with pytest.raises(MalformedInteractionError, match="other content"):
        agent.observe({**click, "output": "4.0"})


def test_observe_keeps_what_it_stored_when_the_status_cannot_be_read(memory, tracking, monkeypatch):
    from persona_dspy.errors import TrackingUnavailableError
    from persona_dspy.tracking import Tracking

    memory.add([rating("down", i) for i in range(3)])

    def down(self, user_id):
        raise TrackingUnavailableError("injected: the tracking store is down")

    monkeypatch.setattr(Tracking, "last_compile", down)
    seen = observe([rating("down", 5, ts=3000.0)], memory=memory, tracking=tracking)
    assert seen.written == 1 and seen.users == [] and "could not be read" in seen.status_error
    assert memory.count("down") == 4
    assert observe([rating("down", 5, ts=3000.0)], memory=memory).already_stored == 1


def test_a_user_due_again_is_compiled_again_by_a_resumed_due_fleet(memory, tracking):
    memory.add([rating("again", i) for i in range(6)])
    resumed = {"resume": True}
    statuses, first = compile_due(
        OPTIMIZER, settings=tracking.settings, policy=RealignPolicy(realign_after=1), users=["again"],
        memory=memory, tracking=tracking, lm=ScriptedLM(rule), progress=False, **resumed,
    )  # fmt: skip
    assert [u.status for u in first.users] == ["promoted"] and not first.users[0].from_journal
    observe([rating("again", 9, ts=3000.0)], memory=memory)
    statuses, second = compile_due(
        OPTIMIZER, settings=tracking.settings, policy=RealignPolicy(realign_after=1), users=["again"],
        memory=memory, tracking=tracking, lm=ScriptedLM(rule), progress=False, **resumed,
    )  # fmt: skip
    assert statuses[0].due and second.fleet_id != first.fleet_id
    assert not second.users[0].from_journal and second.users[0].lm_calls > 0  # compiled, not read back
    assert not user_status("again", memory=memory, tracking=tracking).due


def test_an_unknown_id_in_a_due_fleet_fails_alone(memory, tracking):
    memory.add([rating("known", i) for i in range(6)])
    with pytest.raises(UnknownUserError):
        due_users(["known", "nobody"], memory=memory, tracking=tracking)
    statuses, report = compile_now(["known", "nobody"], memory, tracking)
    assert [s.user_id for s in statuses] == ["known"]
    assert {u.user_id: u.status for u in report.users} == {"known": "promoted", "nobody": "failed"}


def test_a_user_of_two_tasks_is_compiled_on_their_latest_task_and_served_the_other_by_default(memory, tracking):
    def article(i: int) -> Interaction:
        return Interaction(
            user_id="both", id=f"a{i}", input=f"article: Dinner {i}", output="food & drink", timestamp=500.0 + i,
            task="LaMP-2N",
        )  # fmt: skip

    history = [article(i) for i in range(3)] + [rating("both", i) for i in range(6)]
    memory.add(history)
    train, val = OPTIMIZER.split("both", history[::-1], task="movielens_rating")
    assert [it.id for it in val + train] == [f"m{i}" for i in range(1, 6)]  # no article replayed or gated
    _, report = compile_now(["both"], memory, tracking)
    assert [u.status for u in report.users] == ["promoted"]
    version = tracking.load_persona("both")
    assert version.tags["task"] == "movielens_rating"
    assert served("both", memory, tracking).persona_version == version.version
    other = served("both", memory, tracking, task="LaMP-2N")
    assert other.persona_version is None and other.persona == DEFAULT_PERSONA
    with pytest.raises(ConfigurationError, match="compiled for task 'movielens_rating'"):
        served("both", memory, tracking, task="LaMP-2N", alias=version.version)
