"""Qdrant Edge as the folder engine: its indexes, one process per folder, a process killed while
writing, and the migration of a folder written by the previous engine (qdrant-client local mode)."""

import signal
import subprocess
import sys
import textwrap
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import qdrant_edge as qe

import persona_dspy  # noqa: F401
from persona_dspy.cli import main
from persona_dspy.config import Settings
from persona_dspy.data.records import Interaction
from persona_dspy.errors import StoreUnavailableError
from persona_dspy.memory import EpisodicMemory
from persona_dspy.memory.edge_engine import SHARDS, EdgeEngine, shard_of
from persona_dspy.memory.embedder import DIM, OnnxEmbedder


class HashedVectors:
    """Precomputed-style vectors (a fixed function of the text) for writes too big for the real embedder."""

    def embed(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        out = np.stack([np.random.default_rng(zlib.crc32(t.encode())).normal(size=DIM) for t in texts])
        return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)

    def embed_one(self, text: str) -> np.ndarray:
        return self.embed([text])[0]


def items(n: int, users: int = 50) -> list[Interaction]:
    return [
        Interaction(
            user_id=f"u{i % users}",
            id=str(i),
            input=f"episode {i} of user {i % users}",
            output=str(i),
            timestamp=float(i),
        )
        for i in range(n)
    ]


def hold(script: str) -> subprocess.Popen:
    """A child process that runs ``script`` (which prints "ready" once it holds what it opened)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)], stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parent
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def test_folder_and_edge_prefix_name_the_same_store(tmp_path: Path, embedder: OnnxEmbedder) -> None:
    with EpisodicMemory(Settings(qdrant=str(tmp_path / "q")), embedder=embedder) as m:
        m.add(items(3))
    with EpisodicMemory(Settings(qdrant=f"edge:{tmp_path / 'q'}"), embedder=embedder) as m:
        assert m.count() == 3 and m.users() == ["u0", "u1", "u2"]


def test_default_store_is_an_edge_folder_in_the_state_dir(tmp_path: Path, embedder: OnnxEmbedder) -> None:
    with EpisodicMemory(Settings(state_dir=tmp_path), embedder=embedder) as m:
        m.add(items(2))
    root = tmp_path / "qdrant" / "persona_episodes"
    assert (root / "shards.json").is_file()
    assert (root / f"{shard_of('u1', SHARDS):02d}" / "edge_config.json").is_file()


def test_indexes_a_tenant_keyword_user_id_and_a_float_timestamp(tmp_path: Path) -> None:
    engine = EdgeEngine(tmp_path / "q", "episodes")
    try:
        schema = engine.shard("anyone").info().payload_schema
        assert schema["user_id"].data_type == qe.PayloadSchemaType.Keyword and schema["user_id"].params.is_tenant
        assert schema["timestamp"].data_type == qe.PayloadSchemaType.Float
    finally:
        engine.close()


def test_same_folder_shared_in_process_and_persisted(tmp_path: Path, embedder: OnnxEmbedder) -> None:
    settings = Settings(qdrant=str(tmp_path / "q"))
    a, b = EpisodicMemory(settings, embedder=embedder), EpisodicMemory(settings, embedder=embedder)
    a.add(items(1))
    assert b.count("u0") == 1
    a.close()
    assert b.recent("u0", 1)[0].id == "0"  # b still open after a closed
    b.close()
    with EpisodicMemory(settings, embedder=embedder) as c:
        assert c.history("u0") == items(1)


def test_concurrent_writers_each_with_their_own_memory_on_one_folder(tmp_path: Path) -> None:
    settings = Settings(qdrant=str(tmp_path / "q"))
    users = [f"w{u}" for u in range(8)]

    def work(user: str) -> list[str]:
        with EpisodicMemory(settings, embedder=HashedVectors()) as m:  # opens and closes the shared shard
            for start in range(0, 200, 50):
                m.add(
                    [
                        Interaction(user_id=user, id=str(i), input=f"{user} {i}", output="", timestamp=float(i))
                        for i in range(start, start + 50)
                    ],
                    batch_size=16,
                )
                assert {e.interaction.user_id for e in m.recall(user, f"{user} 3", k=100)} == {user}
            return [it.id for it in m.history(user)]

    with ThreadPoolExecutor(len(users)) as pool:
        histories = dict(zip(users, pool.map(work, users)))
    assert all(ids == [str(i) for i in range(200)] for ids in histories.values())
    with EpisodicMemory(settings, embedder=HashedVectors()) as m:
        assert m.count() == 1_600 and m.users() == users


def test_second_process_on_the_folder_fails_clearly(tmp_path: Path, embedder: OnnxEmbedder) -> None:
    folder = tmp_path / "q"
    holder = hold(f"""
        import time
        from persona_dspy import Settings
        from persona_dspy.memory import EpisodicMemory
        EpisodicMemory(Settings(qdrant={str(folder)!r})).count()
        print("ready", flush=True)
        time.sleep(60)
    """)
    try:
        with pytest.raises(StoreUnavailableError, match=f"in use by process {holder.pid}") as err:
            EpisodicMemory(Settings(qdrant=str(folder)), embedder=embedder).count()
        assert str(folder) in str(err.value) and "PERSONA_DSPY_QDRANT=http://" in str(err.value)
    finally:
        holder.kill()
        holder.wait()
    with EpisodicMemory(Settings(qdrant=str(folder)), embedder=embedder) as m:  # the kernel dropped its lock
        assert m.count() == 0


def test_shard_held_by_a_bare_edge_process_fails_clearly(tmp_path: Path, embedder: OnnxEmbedder) -> None:
    engine = EdgeEngine(tmp_path / "q", "persona_episodes")
    engine.count(None)  # creates every shard
    engine.close()
    holder = hold(f"""
        import time
        import qdrant_edge
        shard = qdrant_edge.EdgeShard.load({str(tmp_path / "q" / "persona_episodes" / "03")!r})
        print("ready", flush=True)
        time.sleep(60)
    """)
    try:
        with pytest.raises(StoreUnavailableError, match="open in another process"):
            EpisodicMemory(Settings(qdrant=str(tmp_path / "q")), embedder=embedder).count()
    finally:
        holder.kill()
        holder.wait()


def test_process_killed_while_adding_leaves_an_openable_store_that_a_readd_completes(tmp_path: Path) -> None:
    folder, total = tmp_path / "q", 60_000
    writer = hold(f"""
        from persona_dspy import Settings
        from persona_dspy.memory import EpisodicMemory
        from test_memory_edge import HashedVectors, items
        with EpisodicMemory(Settings(qdrant={str(folder)!r}), embedder=HashedVectors()) as m:
            m.add(items(500))
            print("ready", flush=True)
            m.add(items({total}))
        print("finished", flush=True)
    """)
    try:
        writer.wait(timeout=1.5)
    except subprocess.TimeoutExpired:
        writer.send_signal(signal.SIGKILL)
    assert writer.wait() == -signal.SIGKILL, "the writer finished before it was killed: make the batch bigger"
    with EpisodicMemory(Settings(qdrant=str(folder)), embedder=HashedVectors()) as m:
        stored = m.count()
        assert 500 <= stored < total
        assert all(it.user_id == "u7" for it in m.history("u7"))
        assert m.add(items(total)) == total - stored
        assert m.count() == total and m.history("u7") == items(total)[7::50]
    with EpisodicMemory(Settings(qdrant=str(folder)), embedder=HashedVectors()) as m:
        assert m.count() == total


def test_forget_vacuums_on_close_once_edge_finds_it_worth_it(tmp_path: Path) -> None:
    settings = Settings(qdrant=str(tmp_path / "q"))
    root = tmp_path / "q" / "persona_episodes"
    segments = lambda: sorted(p.relative_to(root).as_posix() for p in root.glob("*/segments/*"))
    with EpisodicMemory(settings, embedder=HashedVectors()) as m:  # ~4,000 points in each of the 4 shards
        m.add(items(16_000, users=160))
    written = segments()
    with EpisodicMemory(settings, embedder=HashedVectors()) as m:
        assert m.forget("u0") == 100  # ~5% of its shard deleted: below Edge's vacuum threshold (20%)
    assert segments() == written
    with EpisodicMemory(settings, embedder=HashedVectors()) as m:
        assert sum(m.forget(f"u{u}") for u in range(1, 80)) == 7_900  # half deleted: vacuumed into new segments
    assert segments() != written
    with EpisodicMemory(settings, embedder=HashedVectors()) as m:
        assert m.count() == 8_000 and m.users() == sorted(f"u{u}" for u in range(80, 160))
        assert m.history("u81") == items(16_000, users=160)[81::160]


def test_legacy_local_folder_is_detected_and_migrated(
    tmp_path: Path, embedder: OnnxEmbedder, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "qdrant"
    old = items(40, users=4)
    with EpisodicMemory(Settings(qdrant=f"local:{folder}"), embedder=embedder) as m:
        m.add(old)
        before = [e.interaction for e in m.recall("u1", "episode 13 of user 1", k=3)]
    with pytest.raises(StoreUnavailableError, match=f"persona-dspy memory migrate {folder}"):
        EpisodicMemory(Settings(qdrant=str(folder)), embedder=embedder).count()

    assert main(["memory", "migrate", str(folder)]) == 0
    assert "persona_episodes: 40 points copied" in capsys.readouterr().out
    backup = folder.with_name("qdrant.local-backup")
    assert (backup / "meta.json").is_file() and (backup / "collection").is_dir()  # the old folder is kept
    with EpisodicMemory(Settings(qdrant=str(folder)), embedder=embedder) as m:
        assert m.count() == 40 and m.users() == ["u0", "u1", "u2", "u3"]
        assert m.history("u1") == old[1::4]
        assert [e.interaction for e in m.recall("u1", "episode 13 of user 1", k=3)] == before
        assert m.add(old) == 0  # same ids: the migrated points are the same points
    capsys.readouterr()
    assert main(["memory", "migrate", str(folder)]) == 7  # StoreUnavailableError: nothing to migrate
    assert "is already a Qdrant Edge folder" in capsys.readouterr().err


def test_forget_removes_the_user_from_the_migrate_backup_too(
    tmp_path: Path, embedder: OnnxEmbedder, seed_store
) -> None:
    from persona_dspy.forget import forget_user

    folder = tmp_path / "qdrant"
    with EpisodicMemory(Settings(qdrant=f"local:{folder}"), embedder=embedder) as m:
        m.add(items(40, users=4))
    assert main(["memory", "migrate", str(folder)]) == 0
    backup = folder.with_name("qdrant.local-backup")

    def held(text: bytes) -> bool:
        return any(text in p.read_bytes() for p in backup.rglob("*") if p.is_file())

    assert held(b"of user 1") and held(b"of user 2")
    report = forget_user(Settings(qdrant=str(folder), state_dir=seed_store(tmp_path / "state")), "u1")
    assert report.complete and report.removed["qdrant"]["points in the migrate backup"] == 10
    assert not held(b"of user 1") and held(b"of user 2")  # the others' episodes stay in the backup
