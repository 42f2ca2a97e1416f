"""The Edge store's layout: shards by user loaded when first read, packed payloads, and folders
written before either (one shard, flat payloads) read and written as they are."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import qdrant_edge as qe
from test_memory_edge import HashedVectors, items

import persona_dspy  # noqa: F401
from persona_dspy.config import Settings
from persona_dspy.data.records import Interaction
from persona_dspy.errors import StoreUnavailableError
from persona_dspy.memory import EpisodicMemory
from persona_dspy.memory.compact import rewrite_shard
from persona_dspy.memory.edge_engine import _OPEN, SHARDS, EdgeEngine, edge_config, pack, shard_of, unpack
from persona_dspy.memory.episodic import point_id

COLLECTION = "persona_episodes"


def loaded(folder: Path) -> int:
    """How many shards of the open collection are loaded."""
    return sum(s is not None for s in _OPEN[str(folder.resolve() / COLLECTION)].shards)


def write_single_shard_store(folder: Path, records: list[Interaction]) -> None:
    """A folder as the engine wrote it before the split: one shard, eight flat payload keys."""
    shard = qe.EdgeShard.create(str(folder / COLLECTION), edge_config())
    shard.update(qe.UpdateOperation.create_field_index("user_id", qe.KeywordIndexParams(is_tenant=True)))
    shard.update(qe.UpdateOperation.create_field_index("timestamp", qe.PayloadSchemaType.Float))
    vectors = HashedVectors().embed([it.input for it in records])
    points = [
        qe.Point(point_id(it), v.tolist(), {**it.model_dump(mode="json"), "content_hash": it.content_hash})
        for it, v in zip(records, vectors)
    ]
    shard.update(qe.UpdateOperation.upsert_points(points))
    shard.flush()
    shard.close()


def test_users_are_spread_over_the_shards_by_a_stable_hash() -> None:
    assert shard_of("u1", SHARDS) == shard_of("u1", SHARDS) and shard_of("anyone", 1) == 0
    assert len({shard_of(f"user{u}", SHARDS) for u in range(200)}) == SHARDS


def test_a_reopened_store_loads_a_shard_when_first_read(tmp_path: Path) -> None:
    folder, records = tmp_path / "q", items(800, users=40)
    with EpisodicMemory(Settings(qdrant=str(folder)), embedder=HashedVectors()) as m:
        m.add(records)
    assert json.loads((folder / COLLECTION / "shards.json").read_text()) == {"shards": SHARDS, "folders": "made"}
    with EpisodicMemory(Settings(qdrant=str(folder)), embedder=HashedVectors()) as m:
        hits = m.recall("u3", "episode 43 of user 3", k=3, before=200.0)
        assert loaded(folder) == 1  # only u3's shard
        assert hits[0].interaction == records[43]
        assert all(e.interaction.user_id == "u3" and e.interaction.timestamp < 200 for e in hits)
        assert m.recent("u3", 2) == records[723::40]
        assert m.count("u5") == 20 and loaded(folder) <= 2
        assert m.count() == 800 and loaded(folder) == SHARDS
        assert m.users() == sorted(f"u{u}" for u in range(40))
        snaps = m.snapshots(["u1", "u2", "u7"])
        assert snaps["u7"].interactions == records[7::40]  # in time order
        assert m.add(records) == 0  # idempotent across shards
        assert m.forget("u3") == 20 and m.count() == 780


def test_a_lost_shard_folder_is_an_error_never_a_new_empty_shard(tmp_path: Path) -> None:
    folder, records = tmp_path / "q", items(40, users=4)
    with EpisodicMemory(Settings(qdrant=str(folder)), embedder=HashedVectors()) as m:
        m.add(records)
    lost = folder / COLLECTION / f"{shard_of('u1', SHARDS):02d}"
    shutil.rmtree(lost)
    with EpisodicMemory(Settings(qdrant=str(folder)), embedder=HashedVectors()) as m:
        with pytest.raises(StoreUnavailableError, match=f"{lost} is missing"):
            m.count("u1")
        with pytest.raises(StoreUnavailableError, match="is missing"):
            m.add([records[1].model_copy(update={"id": "new"})])
        assert not lost.exists()  # not recreated empty
        others = [u for u in ("u0", "u2", "u3") if shard_of(u, SHARDS) != shard_of("u1", SHARDS)]
        assert others and all(m.count(u) == 10 for u in others)


def test_a_layout_made_before_its_folders_were_made_up_front_creates_an_unused_shard_when_first_used(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "q"
    with EpisodicMemory(Settings(qdrant=str(folder)), embedder=HashedVectors()) as m:
        m.add(items(8, users=1))
    root = folder / COLLECTION
    (root / "shards.json").write_text(json.dumps({"shards": SHARDS}) + "\n")  # the earlier layout's file
    unused = [root / f"{i:02d}" for i in range(SHARDS) if i != shard_of("u0", SHARDS)]
    for path in unused:
        shutil.rmtree(path)
    with EpisodicMemory(Settings(qdrant=str(folder)), embedder=HashedVectors()) as m:
        assert m.count() == 8 and all((path / "edge_config.json").is_file() for path in unused)


def test_a_write_after_reopening_loads_only_the_shards_of_the_users_it_writes(tmp_path: Path) -> None:
    folder, records = tmp_path / "q", items(400, users=20)
    with EpisodicMemory(Settings(qdrant=str(folder)), embedder=HashedVectors()) as m:
        m.add(records)
    mine = [it for it in records if it.user_id == "u4"]
    with EpisodicMemory(Settings(qdrant=str(folder)), embedder=HashedVectors()) as m:
        assert m.add(mine) == 0 and loaded(folder) == 1  # the re-add is known, asked in u4's shard only
        new = mine[-1].model_copy(update={"id": "fresh", "timestamp": 10_000.0})
        assert m.add([new]) == 1 and loaded(folder) == 1
        assert m.recent("u4", 1)[0] == new and m.count("u4") == len(mine) + 1
        assert m.count() == len(records) + 1 and loaded(folder) == SHARDS


def test_payloads_are_stored_packed_and_read_back_whole(tmp_path: Path) -> None:
    folder = tmp_path / "q"
    odd = Interaction(
        user_id="ü1", id="x", input='entrée: «quoted» "text"', output="", timestamp=5.5, metadata={"a": [1, 2.5]}
    )
    with EpisodicMemory(Settings(qdrant=str(folder)), embedder=HashedVectors()) as m:
        m.add([odd])
        assert m.history("ü1") == [odd]
        engine = m.engine()
        assert isinstance(engine, EdgeEngine)
        [raw] = engine.shard("ü1").retrieve([point_id(odd)], with_payload=True, with_vector=False)
    assert sorted(raw.payload) == ["content_hash", "episode", "timestamp", "user_id"]
    payload = {**odd.model_dump(mode="json"), "content_hash": odd.content_hash}
    assert unpack(pack(payload)) == payload and unpack(payload) == payload


def test_a_store_written_before_the_split_is_read_and_written_as_one_shard(tmp_path: Path) -> None:
    folder, records = tmp_path / "q", items(120, users=6)
    folder.mkdir()
    write_single_shard_store(folder, records[:100])
    with EpisodicMemory(Settings(qdrant=str(folder)), embedder=HashedVectors()) as m:
        assert m.count() == 100 and m.history("u2") == records[2:100:6]
        assert [e.interaction for e in m.recall("u2", "episode 20 of user 2", k=1)] == [records[20]]
        assert m.add(records) == 20  # the 100 flat points are recognised (same ids and hashes)
        assert m.history("u2") == records[2::6] and m.recent("u2", 1) == [records[116]]
        assert m.forget("u0") == 20
    assert not (folder / COLLECTION / "shards.json").exists()
    assert rewrite_shard(folder, COLLECTION) == 100
    with EpisodicMemory(Settings(qdrant=str(folder)), embedder=HashedVectors()) as m:
        assert m.users() == ["u1", "u2", "u3", "u4", "u5"] and m.history("u5") == records[5::6]


def test_a_rewrite_compacts_every_shard(tmp_path: Path) -> None:
    folder, records = tmp_path / "q", items(400, users=20)
    with EpisodicMemory(Settings(qdrant=str(folder)), embedder=HashedVectors()) as m:
        m.add(records)
        assert sum(m.forget(f"u{u}") for u in range(10)) == 200
    assert rewrite_shard(folder, COLLECTION) == 200
    with EpisodicMemory(Settings(qdrant=str(folder)), embedder=HashedVectors()) as m:
        assert m.count() == 200 and m.history("u15") == records[15::20]
        vectors = [v for _, v in m.engine().scan(["u15"], None, with_vectors=True)]
        assert all(v is not None and np.isclose(np.linalg.norm(v), 1.0, atol=1e-4) for v in vectors)
