"""The ``Memory`` contract, run against every implementation: Qdrant Edge (a folder, the default),
qdrant-client in memory (``:memory:``) and on a folder (``local:``), and ``UserSnapshot`` where a
read-only view applies. Real engines, the real embedder; nothing mocked."""

import math
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import persona_dspy  # noqa: F401
from persona_dspy.config import Settings
from persona_dspy.data.records import Interaction
from persona_dspy.errors import MalformedInteractionError, UnknownUserError
from persona_dspy.memory import Episode, EpisodicMemory, Memory, MemoryReader, UserSnapshot
from persona_dspy.memory.embedder import OnnxEmbedder

TOPICS = [
    "cooking pasta carbonara",
    "debugging a python import error",
    "planning a trip to Kyoto",
    "training for a marathon",
    "growing tomatoes on a balcony",
]
ENGINES = {
    "edge": lambda tmp: str(tmp / "qdrant"),
    "memory": lambda tmp: ":memory:",
    "local": lambda tmp: f"local:{tmp / 'qdrant_local'}",
}


def rec(user: str, i: int, *, output: str | None = None, ts: float | None = None) -> Interaction:
    return Interaction(
        user_id=user,
        id=f"{user}-{i}",
        input=f"Help me with {TOPICS[i % len(TOPICS)]} (note {i})",
        output=output if output is not None else f"{user} answer {i}",
        timestamp=float(i) if ts is None else ts,
    )


@pytest.fixture(params=list(ENGINES))
def mem(request: pytest.FixtureRequest, tmp_path: Path, embedder: OnnxEmbedder) -> Iterator[EpisodicMemory]:
    with EpisodicMemory(Settings(qdrant=ENGINES[request.param](tmp_path), state_dir=tmp_path), embedder=embedder) as m:
        yield m


def test_every_implementation_is_a_memory(mem: EpisodicMemory) -> None:
    mem.add([rec("alice", 0)])
    assert isinstance(mem, Memory)
    assert isinstance(mem.snapshot("alice"), MemoryReader) and not isinstance(mem.snapshot("alice"), Memory)


@pytest.mark.parametrize("engine", ["edge", "local"])
def test_no_io_until_first_use(engine: str, tmp_path: Path, embedder: OnnxEmbedder) -> None:
    location = ENGINES[engine](tmp_path)
    folder = Path(location.removeprefix("local:"))
    m = EpisodicMemory(Settings(qdrant=location), embedder=embedder)
    assert not folder.exists()
    assert m.count() == 0 and folder.exists()
    m.close()


def test_idempotent_readd(mem: EpisodicMemory) -> None:
    batch = [rec("alice", i) for i in range(6)]
    assert mem.add(batch) == 6
    assert mem.add(batch) == 0
    assert mem.add(batch + [rec("alice", 6)]) == 1
    assert mem.count() == mem.count("alice") == 7


def test_changed_record_updates_in_place(mem: EpisodicMemory) -> None:
    mem.add([rec("alice", i) for i in range(3)])
    assert mem.add([rec("alice", 1, output="revised answer")]) == 1
    assert mem.count() == 3
    assert [it.output for it in mem.history("alice")] == ["alice answer 0", "revised answer", "alice answer 2"]
    moved = rec("alice", 2).model_copy(update={"input": "Which camera lens for bird photography?"})
    assert mem.add([moved]) == 1  # a changed input is re-embedded, under the same point
    assert mem.count() == 3
    assert mem.recall("alice", "a telephoto lens to photograph birds", k=1)[0].interaction == moved


def test_user_isolation(mem: EpisodicMemory) -> None:
    mem.add([rec("alice", i) for i in range(5)] + [rec("bob", i) for i in range(5)])
    episodes = mem.recall("alice", "how do I cook pasta?", k=10)
    assert len(episodes) == 5 and all(isinstance(e, Episode) for e in episodes)
    assert {e.interaction.user_id for e in episodes} == {"alice"}
    assert episodes[0].interaction.id == "alice-0"  # the pasta one is most similar
    assert [e.score for e in episodes] == sorted((e.score for e in episodes), reverse=True)
    assert {it.user_id for it in mem.recent("alice", 10) + mem.history("alice")} == {"alice"}
    assert mem.users() == ["alice", "bob"]


def test_isolation_under_concurrent_writers(mem: EpisodicMemory) -> None:
    users = [f"user{u}" for u in range(6)]

    def work(user: str) -> list[str]:
        for start in range(0, 15, 5):
            mem.add([rec(user, i) for i in range(start, start + 5)], batch_size=3)
            assert {e.interaction.user_id for e in mem.recall(user, "pasta", k=50)} == {user}
            assert {it.user_id for it in mem.recent(user, 50)} == {user}
        return [it.id for it in mem.history(user)]

    with ThreadPoolExecutor(len(users)) as pool:
        histories = dict(zip(users, pool.map(work, users)))
    for user, ids in histories.items():
        assert ids == [f"{user}-{i}" for i in range(15)]
    assert mem.count() == 90 and mem.users() == users


def test_before_bound_is_strict_at_the_boundary(mem: EpisodicMemory) -> None:
    just_below, just_above = math.nextafter(5.0, 0.0), math.nextafter(5.0, 10.0)
    stamps = [1.0, 2.0, just_below, 5.0, just_above, 9.0]
    mem.add([rec("alice", i, ts=ts) for i, ts in enumerate(stamps)])
    expected = [1.0, 2.0, just_below]
    assert sorted(e.interaction.timestamp for e in mem.recall("alice", "pasta", k=100, before=5.0)) == expected
    assert [it.timestamp for it in mem.history("alice", before=5.0)] == expected
    assert [it.timestamp for it in mem.recent("alice", 2, before=5.0)] == [2.0, just_below]
    assert [it.timestamp for it in mem.recent("alice", 2, before=just_above)] == [just_below, 5.0]
    assert [it.timestamp for it in mem.recent("alice", 2)] == [just_above, 9.0]
    assert mem.recall("alice", "anything", before=1.0) == []  # known user, nothing earlier: empty, no error


def test_forget_leaves_zero_points_of_that_user(mem: EpisodicMemory) -> None:
    mem.add([rec("alice", i) for i in range(4)] + [rec("bob", i) for i in range(3)])
    assert mem.forget("alice") == 4
    assert mem.count("alice") == 0 and mem.count() == mem.count("bob") == 3
    assert not mem.has_user("alice") and mem.has_user("bob") and mem.users() == ["bob"]
    assert mem.snapshots(["alice", "bob"]).keys() == {"bob"}
    assert mem.forget("alice") == 0
    with pytest.raises(UnknownUserError):
        mem.recall("alice", "pasta")


def test_malformed_batch_writes_nothing(mem: EpisodicMemory) -> None:
    good = [rec("alice", i) for i in range(300)]  # more than one write batch before the bad record
    with pytest.raises(MalformedInteractionError) as err:
        mem.add(good + [rec("alice", 0, output="other")])
    assert err.value.record_id == "alice-0" and err.value.field == "id"
    with pytest.raises(MalformedInteractionError) as err:
        mem.add(good + [{"user_id": "alice", "id": "x", "input": "", "output": "", "timestamp": 1}])
    assert err.value.record_id == "x" and err.value.field == "input"
    with pytest.raises(MalformedInteractionError):
        mem.add([rec("alice", 0), "not a record"])  # type: ignore[list-item]
    assert mem.count() == 0


def test_bad_read_arguments_are_configuration_errors_before_the_engine(mem: EpisodicMemory) -> None:
    """A NaN ``before`` made Qdrant Edge panic (a BaseException, past ``except Exception``)."""
    from persona_dspy.errors import ConfigurationError

    mem.add([rec("u", i) for i in range(3)])
    reads = {
        "nan": lambda: mem.history("u", before=math.nan),
        "nan recent": lambda: mem.recent("u", 2, before=math.nan),
        "nan recall": lambda: mem.recall("u", "x", before=math.nan),
        "str before": lambda: mem.history("u", before="100"),
        "int user": lambda: mem.recall(5, "x"),  # type: ignore[arg-type]
        "no query": lambda: mem.recall("u", None),  # type: ignore[arg-type]
        "str n": lambda: mem.recent("u", "3"),  # type: ignore[arg-type]
    }
    for name, read in reads.items():
        with pytest.raises(ConfigurationError):
            read()
            pytest.fail(name)
    assert len(mem.history("u", before=math.inf)) == 3 and len(mem.recent("u", 2, before=2)) == 2
    for bad in (rec("u", 9), None, {"user_id": "u"}):
        with pytest.raises(MalformedInteractionError, match="list of interactions"):
            mem.add(bad)  # type: ignore[arg-type]


def test_unknown_user(mem: EpisodicMemory) -> None:
    mem.add([rec("alice", 0)])
    for call in (
        lambda: mem.recall("nobody", "pasta"),
        lambda: mem.recent("nobody", 3),
        lambda: mem.history("nobody"),
        lambda: mem.snapshot("nobody"),
    ):
        with pytest.raises(UnknownUserError, match="nobody"):
            call()


def test_snapshot_answers_like_the_store(mem: EpisodicMemory) -> None:
    mem.add([rec(u, i, ts=10.0 * i) for u in ("ann", "ben") for i in range(12)])
    snap = mem.snapshot("ann")
    assert isinstance(snap, UserSnapshot)
    for before in (None, 0.0, 30.0, math.nextafter(30.0, 0.0), 115.0, 1e9):
        assert snap.history("ann", before) == mem.history("ann", before)
        assert snap.recent("ann", 4, before) == mem.recent("ann", 4, before)
        for query in ("Help me with planning a trip to Kyoto", "marathon training plan"):
            direct, copied = mem.recall("ann", query, k=3, before=before), snap.recall("ann", query, k=3, before=before)
            assert [e.interaction for e in copied] == [e.interaction for e in direct]
            assert [e.score for e in copied] == pytest.approx([e.score for e in direct], abs=1e-5)
    assert snap.count("ann") == snap.count() == mem.count("ann") == 12 and snap.count("ben") == 0
    assert snap.has_user("ann") and not snap.has_user("ben") and snap.users() == ["ann"]
    assert snap.snapshot("ann") is snap
    with pytest.raises(UnknownUserError):
        snap.history("ben")  # a snapshot answers for its own user only


def test_snapshots_of_many_users_in_one_read_equal_single_snapshots(mem: EpisodicMemory) -> None:
    mem.add([rec(u, i) for u in ("ann", "ben", "cy") for i in range(4)])
    many = mem.snapshots(["ann", "cy", "nobody"])
    assert set(many) == {"ann", "cy"}  # a user with no episodes is left out, not an empty snapshot
    for user in ("ann", "cy"):
        one = mem.snapshot(user)
        assert many[user].history(user) == one.history(user) == mem.history(user)
        assert (many[user].vectors == one.vectors).all()
