"""SemanticMemory with the scripted LM: real embedded Qdrant, real DSPy predictor, profiles on disk."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import dspy
import pytest

from persona_dspy.config import Settings
from persona_dspy.data.records import Interaction
from persona_dspy.errors import EmptyHistoryError, LMOutputError, UnknownUserError
from persona_dspy.lm.scripted import ScriptedLM
from persona_dspy.memory import EpisodicMemory, SemanticMemory
from persona_dspy.memory.embedder import OnnxEmbedder
from persona_dspy.signatures.tasks import get_task
from persona_dspy.tools import UserTools


def episode(user: str, i: int) -> Interaction:
    return Interaction(
        user_id=user,
        id=f"{user}-{i}",
        input=f"{user} watched film-{i:02d}",
        output=f"rating-{i:02d}",
        timestamp=float(i),
    )


class ProfileLM(ScriptedLM):
    """Answers profile prompts with ``profiles[n]`` for the n-th call (the last one repeats)."""

    def __init__(self, *profiles: str | dict[str, str]) -> None:
        self.answers = list(profiles)
        super().__init__(self._answer)

    def _answer(self, messages: list[dict[str, str]]) -> str | dict[str, str]:
        assert "previous_profile" in messages[0]["content"]
        return self.answers[min(len(self.prompts), len(self.answers)) - 1]

    def user_text(self, call: int) -> str:
        return "\n".join(m["content"] for m in self.prompts[call] if m["role"] == "user")


FIRST = {"profile": "- rates dramas high\n- watches on weekends"}
SECOND = {"profile": "- rates dramas high\n- now also likes comedies"}


@pytest.fixture
def episodic(tmp_path: Path, embedder: OnnxEmbedder) -> Iterator[EpisodicMemory]:
    with EpisodicMemory(Settings(qdrant=str(tmp_path / "qdrant"), state_dir=tmp_path), embedder=embedder) as mem:
        mem.add([episode("alice", i) for i in range(10)] + [episode("bob", i) for i in range(3)])
        yield mem


def test_profile_is_built_only_from_episodes_strictly_before(episodic: EpisodicMemory) -> None:
    lm = ProfileLM(FIRST)
    with dspy.context(lm=lm):
        profile = SemanticMemory(episodic).update("alice", before=5.0)
    prompt = lm.user_text(0)
    assert all(f"film-{i:02d}" in prompt for i in range(5))
    assert not any(f"film-{i:02d}" in prompt or f"rating-{i:02d}" in prompt for i in range(5, 10))
    assert "bob" not in prompt
    assert (profile.version, profile.watermark, profile.n_episodes) == (1, 4.0, 5)
    assert profile.text == FIRST["profile"]


def test_get_never_returns_a_profile_built_from_the_future(episodic: EpisodicMemory) -> None:
    semantic = SemanticMemory(episodic)
    with dspy.context(lm=ProfileLM(FIRST)):
        semantic.update("alice", before=5.0)  # watermark 4.0
    assert semantic.get("alice", before=4.0) is None  # built from the episode at 4.0 itself
    assert semantic.get("alice", before=4.5).version == 1
    tools = UserTools("alice", get_task("generic"), memory=episodic, semantic=semantic, before=4.0)
    assert tools.read_profile() == ""
    tools.before = 100.0
    assert tools.read_profile() == FIRST["profile"]


def test_incremental_update_sends_only_new_episodes_and_the_previous_profile(episodic: EpisodicMemory) -> None:
    lm = ProfileLM(FIRST, SECOND)
    semantic = SemanticMemory(episodic)
    with dspy.context(lm=lm):
        semantic.update("alice", before=5.0)
        second = semantic.update("alice")
        again = semantic.update("alice")
    prompt = lm.user_text(1)
    assert FIRST["profile"] in prompt
    assert all(f"film-{i:02d}" in prompt for i in range(5, 10))
    assert not any(f"film-{i:02d}" in prompt for i in range(5))
    assert (second.version, second.watermark, second.text) == (2, 9.0, SECOND["profile"])
    assert again == second and len(lm.prompts) == 2  # nothing new: no LM call, no new version
    assert semantic.get("alice", before=9.0).version == 1 and semantic.get("alice").version == 2


def test_an_older_episode_added_since_the_profile_is_news(episodic: EpisodicMemory) -> None:
    lm = ProfileLM(FIRST, SECOND)
    semantic = SemanticMemory(episodic)
    with dspy.context(lm=lm):
        semantic.update("bob")  # episodes 0-2: watermark 2.0
        episodic.add([episode("bob", i) for i in (-2, -1)])  # a backfill: older than the watermark
        second = semantic.update("bob")
    assert len(lm.prompts) == 2 and "film--1" in lm.user_text(1)
    assert FIRST["profile"] not in lm.user_text(1)  # rebuilt, not extended: which episodes are new is unknown
    assert (second.version, second.watermark, second.n_episodes) == (2, 2.0, 5)


def test_versions_and_watermarks_persist_in_store_dir(episodic: EpisodicMemory, tmp_path: Path) -> None:
    store = tmp_path / "profiles"
    with dspy.context(lm=ProfileLM(FIRST, SECOND)):
        writer = SemanticMemory(episodic, store)
        writer.update("alice", before=5.0)
        writer.update("alice")
    reader = SemanticMemory(episodic, store)
    assert reader.versions("alice") == writer.versions("alice")
    assert [(p.version, p.watermark) for p in reader.versions("alice")] == [(1, 4.0), (2, 9.0)]
    assert reader.get("alice", before=6.0).text == FIRST["profile"]
    with dspy.context(lm=ProfileLM(FIRST)):  # a third version continues the numbering read from disk
        episodic.add([episode("alice", 10)])
        assert reader.update("alice").version == 3


@pytest.mark.parametrize(
    "garbage",
    [{"profile": "I cannot summarise this user."}, "no fields at all, just prose"],
    ids=["no-bullets", "unparseable"],
)
def test_garbage_output_is_retried_then_raises_and_keeps_the_previous_profile(
    episodic: EpisodicMemory, tmp_path: Path, garbage: str | dict[str, str]
) -> None:
    store = tmp_path / "profiles"
    semantic = SemanticMemory(episodic, store, retries=2)
    with dspy.context(lm=ProfileLM(FIRST)):
        previous = semantic.update("alice", before=5.0)
    on_disk = {f.name: f.read_text() for f in store.iterdir()}
    lm = ProfileLM(garbage)
    with dspy.context(lm=lm), pytest.raises(LMOutputError, match="alice"):
        semantic.update("alice")
    attempts = [p for p in lm.prompts if p[0]["role"] == "system"]
    # 3 attempts; an unparseable answer may add DSPy's JSON-adapter fallback call per attempt
    assert 3 <= len(attempts) <= 6 if isinstance(garbage, str) else len(attempts) == 3
    assert semantic.versions("alice") == [previous] and semantic.get("alice") == previous
    assert {f.name: f.read_text() for f in store.iterdir()} == on_disk


def test_forget_user_clears_profiles_and_episodes_of_one_user(episodic: EpisodicMemory, tmp_path: Path) -> None:
    store = tmp_path / "profiles"
    semantic = SemanticMemory(episodic, store)
    with dspy.context(lm=ProfileLM(FIRST)):
        semantic.update("alice", before=5.0)
        semantic.update("bob")
    assert semantic.forget_user("alice") == {"profile_versions": 1, "qdrant_points": 10}
    assert SemanticMemory(episodic, store).versions("alice") == []
    assert semantic.get("alice") is None and not episodic.has_user("alice")
    assert semantic.get("bob").text == FIRST["profile"] and episodic.count("bob") == 3
    assert json.loads(next(store.iterdir()).read_text())[0]["user_id"] == "bob"
    with pytest.raises(UnknownUserError):
        semantic.update("alice")


def test_no_episodes_before_the_bound_is_an_empty_history(episodic: EpisodicMemory) -> None:
    lm = ProfileLM(FIRST)
    with dspy.context(lm=lm), pytest.raises(EmptyHistoryError):
        SemanticMemory(episodic).update("alice", before=0.0)
    assert lm.prompts == []
