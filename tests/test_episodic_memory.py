import persona_dspy  # noqa: F401

import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from persona_dspy.config import Settings
from persona_dspy.data.records import Interaction
from persona_dspy.errors import MalformedInteractionError, StoreUnavailableError, UnknownUserError
from persona_dspy.memory.embedder import OnnxEmbedder
from persona_dspy.memory.episodic import Episode, EpisodicMemory

TOPICS = ["cooking pasta carbonara", "debugging a python import error", "planning a trip to Kyoto",
          "training for a marathon", "growing tomatoes on a balcony"]


def rec(user: str, i: int, *, output: str | None = None, ts: float | None = None) -> Interaction:
    return Interaction(user_id=user, id=f"{user}-{i}", input=f"Help me with {TOPICS[i % len(TOPICS)]} (note {i})",
                       output=output if output is not None else f"{user} answer {i}",
                       timestamp=float(i) if ts is None else ts)


@pytest.fixture(params=["folder", "memory"])
def mem(request: pytest.FixtureRequest, tmp_path: Path, embedder: OnnxEmbedder) -> Iterator[EpisodicMemory]:
    location = str(tmp_path / "qdrant") if request.param == "folder" else ":memory:"
    with EpisodicMemory(Settings(qdrant=location, state_dir=tmp_path), embedder=embedder) as m:
        yield m


def test_no_io_until_first_use(tmp_path: Path, embedder: OnnxEmbedder) -> None:
    folder = tmp_path / "qdrant"
    m = EpisodicMemory(Settings(qdrant=str(folder)), embedder=embedder)
    assert not folder.exists()
    assert m.count() == 0 and folder.exists()
    m.close()


def test_idempotent_reingest(mem: EpisodicMemory) -> None:
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


def test_time_bound_is_strict(mem: EpisodicMemory) -> None:
    mem.add([rec("alice", i) for i in range(10)])  # timestamps 0.0 .. 9.0
    before = 5.0
    recalled = [e.interaction.timestamp for e in mem.recall("alice", "cooking pasta", k=100, before=before)]
    assert sorted(recalled) == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert [it.timestamp for it in mem.recent("alice", 3, before=before)] == [2.0, 3.0, 4.0]
    assert [it.timestamp for it in mem.history("alice", before=before)] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert [it.timestamp for it in mem.recent("alice", 2)] == [8.0, 9.0]
    assert mem.recall("alice", "anything", before=0.0) == []  # known user, nothing earlier: empty, no error


def test_forget_removes_exactly_one_user(mem: EpisodicMemory) -> None:
    mem.add([rec("alice", i) for i in range(4)] + [rec("bob", i) for i in range(3)])
    assert mem.forget("alice") == 4
    assert mem.count() == mem.count("bob") == 3
    assert not mem.has_user("alice") and mem.has_user("bob")
    assert mem.forget("alice") == 0
    with pytest.raises(UnknownUserError):
        mem.recall("alice", "pasta")


def test_malformed_batch_writes_nothing(mem: EpisodicMemory) -> None:
    with pytest.raises(MalformedInteractionError) as err:
        mem.add([rec("alice", 0), rec("alice", 1), rec("alice", 0, output="other")])
    assert err.value.record_id == "alice-0" and err.value.field == "id"
    with pytest.raises(MalformedInteractionError) as err:
        mem.add([rec("alice", 0), {"user_id": "alice", "id": "x", "input": "", "output": "", "timestamp": 1}])
    assert err.value.record_id == "x" and err.value.field == "input"
    assert mem.count() == 0


def test_unknown_user(mem: EpisodicMemory) -> None:
    mem.add([rec("alice", 0)])
    for call in (lambda: mem.recall("nobody", "pasta"), lambda: mem.recent("nobody", 3),
                 lambda: mem.history("nobody")):
        with pytest.raises(UnknownUserError, match="nobody"):
            call()


def test_same_folder_shared_in_process_and_persisted(tmp_path: Path, embedder: OnnxEmbedder) -> None:
    settings = Settings(qdrant=str(tmp_path / "q"))
    a, b = EpisodicMemory(settings, embedder=embedder), EpisodicMemory(settings, embedder=embedder)
    a.add([rec("alice", 0)])
    assert b.count("alice") == 1
    a.close()
    assert b.recent("alice", 1)[0].id == "alice-0"  # b still open after a closed
    b.close()
    with EpisodicMemory(settings, embedder=embedder) as c:
        assert c.history("alice")[0] == rec("alice", 0)


def test_folder_commits_in_wal_mode(tmp_path: Path, embedder: OnnxEmbedder) -> None:
    # the default rollback journal fsyncs once per point (~70 points/s): see _fast_local_commits
    folder = tmp_path / "q"
    with EpisodicMemory(Settings(qdrant=str(folder)), embedder=embedder) as m:
        m.add([rec("alice", i) for i in range(3)])
        (db,) = folder.glob("collection/*/storage.sqlite")
        with sqlite3.connect(db) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with EpisodicMemory(Settings(qdrant=str(folder)), embedder=embedder) as m:
        assert m.count("alice") == 3


def test_folder_locked_by_another_process(tmp_path: Path, embedder: OnnxEmbedder) -> None:
    folder = tmp_path / "locked"
    script = textwrap.dedent(f"""
        import time
        from qdrant_client import QdrantClient
        client = QdrantClient(path={str(folder)!r})
        print("ready", flush=True)
        time.sleep(60)
    """)
    with subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) as holder:
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
            with pytest.raises(StoreUnavailableError, match="one process") as err:
                EpisodicMemory(Settings(qdrant=str(folder)), embedder=embedder).count()
            assert str(folder) in str(err.value) and "PERSONA_DSPY_QDRANT" in str(err.value)
        finally:
            holder.kill()


def test_unreachable_server(embedder: OnnxEmbedder) -> None:
    with pytest.raises(StoreUnavailableError, match="127.0.0.1:9"):
        EpisodicMemory(Settings(qdrant="http://127.0.0.1:9"), embedder=embedder).count()


def test_concurrent_writers_keep_isolation(tmp_path: Path, embedder: OnnxEmbedder) -> None:
    settings = Settings(qdrant=str(tmp_path / "q"))
    users = [f"user{u}" for u in range(6)]

    def work(user: str) -> list[str]:
        with EpisodicMemory(settings, embedder=embedder) as m:
            for start in range(0, 20, 5):
                m.add([rec(user, i) for i in range(start, start + 5)], batch_size=3)
                assert {e.interaction.user_id for e in m.recall(user, "pasta", k=50)} == {user}
            return [it.id for it in m.history(user)]

    with ThreadPoolExecutor(len(users)) as pool:
        histories = dict(zip(users, pool.map(work, users)))
    for user, ids in histories.items():
        assert ids == [f"{user}-{i}" for i in range(20)]
    with EpisodicMemory(settings, embedder=embedder) as m:
        assert m.count() == 120 and m.users() == users


def test_snapshots_of_many_users_in_one_read_equal_single_snapshots(mem: EpisodicMemory) -> None:
    mem.add([rec(u, i) for u in ("ann", "ben", "cy") for i in range(4)])
    many = mem.snapshots(["ann", "cy", "nobody"])
    assert set(many) == {"ann", "cy"}  # a user with no episodes is left out, not an empty snapshot
    for user in ("ann", "cy"):
        one = mem.snapshot(user)
        assert many[user].history(user) == one.history(user) == mem.history(user)
        query = "Help me with planning a trip to Kyoto"
        assert [e.interaction.id for e in many[user].recall(user, query, k=3, before=3.0)] == \
            [e.interaction.id for e in mem.recall(user, query, k=3, before=3.0)]
    with pytest.raises(UnknownUserError):
        many["ann"].history("cy")  # a snapshot answers for its own user only
