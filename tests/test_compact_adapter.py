"""CompactAdapter: a one-answer signature without DSPy's protocol; the agent and evaluation use it on request."""

from __future__ import annotations

import dspy
import pytest
from dspy.utils.exceptions import AdapterParseError

from persona_dspy import Settings
from persona_dspy.agent import PersonaAgent
from persona_dspy.data import Interaction, UserHistory
from persona_dspy.evaluation import evaluate
from persona_dspy.export import agent_messages
from persona_dspy.lm.scripted import ScriptedLM
from persona_dspy.memory import EpisodicMemory
from persona_dspy.signatures import TASKS
from persona_dspy.signatures.compact import CompactAdapter

from scripted import HIGH, LOW, rule

MOVIE = TASKS["movielens_rating"].signature.with_instructions("A harsh critic of musicals.")


def ratings(user: str, n: int = 8) -> list[Interaction]:
    return [
        Interaction(
            user_id=user,
            id=f"{user}-{i}",
            input=f"movie: film {i} genres: Drama",
            output="4.0",
            timestamp=float(i),
            task="movielens_rating",
        )
        for i in range(n)
    ]


def free_text_case(u: int) -> UserHistory:
    past = [
        Interaction(user_id=f"u{u}", id=f"p{i}", input=f"question {i}", output=f"past-{i}", timestamp=i)
        for i in range(6)
    ]
    query = Interaction(user_id=f"u{u}", id="q", input="the held-out question", output="HELD-OUT-ANSWER", timestamp=10)
    return UserHistory(user_id=f"u{u}", interactions=tuple(past), query=query)


@pytest.fixture(scope="module")
def memory(tmp_path_factory, embedder):
    mem = EpisodicMemory(Settings(qdrant=":memory:", state_dir=tmp_path_factory.mktemp("compact")), embedder=embedder)
    mem.add(ratings("ann"))
    yield mem
    mem.close()


def test_a_one_answer_signature_is_the_persona_the_inputs_and_the_contract_without_markers():
    messages = CompactAdapter().format(MOVIE, [], {"profile": "8 past ratings", "history": "- a\n- b", "task": "X"})
    system, user = messages[0]["content"], messages[-1]["content"]
    assert system.startswith("A harsh critic of musicals.\n")
    assert "- profile: stable preferences and statistics of this user" in system
    assert "Reply with the answer alone: the rating as a number from 0.5 to 5.0" in system
    assert user == "profile: 8 past ratings\n\nhistory:\n- a\n- b\n\ntask: X"
    assert "[[" not in system + user and "completed" not in system + user
    chat = dspy.ChatAdapter().format(MOVIE, [], {"profile": "8 past ratings", "history": "- a\n- b", "task": "X"})
    assert len(system + user) < 0.75 * len(chat[0]["content"] + chat[-1]["content"])


def test_the_answer_is_the_whole_reply_and_stray_markers_or_a_label_are_dropped():
    adapter = CompactAdapter()
    assert adapter.parse(MOVIE, " 3.5\n") == {"answer": "3.5"}
    assert adapter.parse(MOVIE, "[[ ## answer ## ]]\n4.0\n\n[[ ## completed ## ]]") == {"answer": "4.0"}
    assert adapter.parse(MOVIE, "Answer: food & drink") == {"answer": "food & drink"}
    assert adapter.parse(
        MOVIE, "[[ ## reasoning ## ]]\nThey gave 5.\n\n[[ ## answer ## ]]\n3\n\n[[ ## completed ## ]]"
    ) == {"answer": "3"}  # the answer's section only, as ChatAdapter reads it
    assert adapter.parse(MOVIE, "[[ ## answer ## ]]\npolitics\n\n[[ ## completed ## ]]\n(not sports)") == {
        "answer": "politics"
    }
    with pytest.raises(AdapterParseError, match="empty answer"):
        adapter.parse(MOVIE, "  [[ ## completed ## ]] ")


def test_a_signature_with_several_outputs_keeps_the_chat_format():
    two = dspy.Signature("question -> reasoning, answer", "Think first.")
    adapter = CompactAdapter()
    messages = adapter.format(two, [], {"question": "why"})
    assert messages == dspy.ChatAdapter().format(two, [], {"question": "why"})
    reply = "[[ ## reasoning ## ]]\nbecause\n\n[[ ## answer ## ]]\n42\n\n[[ ## completed ## ]]"
    assert adapter.parse(two, reply) == {"reasoning": "because", "answer": "42"}


def test_the_agent_answers_through_its_adapter_and_only_inside_its_call(memory):
    lm = ScriptedLM(rule)  # answers LOW when the persona says "harsh"; ChatAdapter-formatted, which parses too
    agent = PersonaAgent("movielens_rating", user_id="ann", memory=memory, persona="A harsh critic.", adapter="compact")
    plain = PersonaAgent("movielens_rating", user_id="ann", memory=memory, persona="A fan.")
    with dspy.context(lm=lm):
        assert agent(task="movie: film 9 genres: Drama", before=9.0).answer == LOW
        assert plain(task="movie: film 9 genres: Drama", before=9.0).answer == HIGH
    compact, chat = lm.prompts
    assert compact[0]["content"].startswith("A harsh critic.") and "[[ ##" not in compact[-1]["content"]
    assert "film 7" in compact[-1]["content"]  # the history is there, bounded by time
    assert "[[ ## task ## ]]" in chat[-1]["content"]  # the other agent, and the settings, are untouched
    assert agent.deepcopy().adapter == "compact"
    assert agent_messages(agent, "movie: film 9 genres: Drama", before=9.0) == compact  # the export is the call
    with pytest.raises(ValueError, match="adapter must be 'chat' or 'compact'"):
        PersonaAgent("movielens_rating", user_id="ann", adapter="xml")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="a react agent's calls are not"):
        PersonaAgent("movielens_rating", user_id="ann", adapter="compact", mode="react")


def test_an_aligned_compact_compile_never_shows_the_held_out_answer_and_never_uses_the_markers(memory):
    lm = ScriptedLM(rule)
    report = evaluate(
        [free_text_case(0), free_text_case(1)],
        "persona+align",
        memory=memory,
        lm=lm,
        n_recent=2,
        n_val=1,
        adapter="compact",
        progress=False,
    )
    agent_prompts = [p for p in lm.prompts if "Reply with the answer alone" in p[0]["content"]]
    assert len(agent_prompts) >= 2 * 4  # replays, gate and answers of both users went through the adapter
    assert all("[[ ##" not in p[-1]["content"] for p in agent_prompts)
    assert "HELD-OUT-ANSWER" not in lm.all_prompt_text()
    assert len(report.cases) == 2 and all(c.lm_calls >= 1 for c in report.cases)
