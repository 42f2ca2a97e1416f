"""Episodic-memory benchmark: ingest rate, user-filtered top-k latency and RSS at 1k / 10k / 100k points.

    python benchmarks/memory.py [--users 1000 --episodes 100] [--engines local,shards,edge]

What it does (everything in-process, nothing fetched):
1. Embeds a pool of real texts (MovieLens / Amazon / LaMP inputs from /work/shared/data, else the
   bundled MovieLens samples) with the real ``OnnxEmbedder``: embedding rate in texts/s.
2. Ingests real episodes end to end with ``EpisodicMemory.add`` into an embedded Qdrant folder
   (real embedder): episodes/s with the embedding and store time split; also the raw store rate
   of the folder with sqlite's default journal (what local mode does without our WAL setting).
3. For each engine, in its own subprocess (clean RSS): ingests ``users x episodes`` episodes whose
   texts are pool texts and whose vectors are pool vectors plus small Gaussian noise (re-normalised),
   so the store side is measured without re-embedding 100k texts; at 1k / 10k / 100k points it
   measures user- and time-filtered top-5 latency (p50 / p95) and RSS.
   Engines: ``local`` = ``EpisodicMemory`` on a Qdrant local folder (the default), ``shards`` = the
   same with users hashed into N collections, ``edge`` = Qdrant Edge (``qdrant-edge-py``), the
   in-process Rust engine with a tenant keyword index on ``user_id`` and a float index on ``timestamp``.
Prints a markdown report and writes the raw numbers as JSON (``--json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import zlib
from pathlib import Path

import numpy as np

DATA = Path("/work/shared/data")
NOISE = 0.02  # per-dimension std of the noise added to pool vectors (cosine to the original ~0.93)
CHECKPOINTS = (1_000, 10_000, 100_000)
K = 5
T0 = 1_600_000_000.0  # timestamps: T0 + episode index hours
MAX_REVIEWS = 100


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q))


# -- the text pool --------------------------------------------------------------------------------

def real_texts(limit: int) -> tuple[list[str], str]:
    """Episode-like texts from the shared datasets (profile items rendered as the tasks render inputs)."""
    from persona_dspy.data import load_shared

    def inputs(name: str) -> list[str]:  # profile items rendered by the project's own loader
        path = DATA / name
        return [it.input for case in load_shared(path) for it in case.interactions] if path.exists() else []

    texts: list[str] = []
    sources = []
    if movies := inputs("movielens/rating.jsonl"):
        texts.extend(movies)
        sources.append("movielens profile items")
    if reviews := inputs("amazon_musical_instruments/rating.jsonl"):
        # long texts embed ~10x slower: a sample keeps the pool's embedding time short
        texts.extend(reviews[:MAX_REVIEWS])
        sources.append(f"{min(len(reviews), MAX_REVIEWS)} amazon reviews")
    if articles := inputs("lamp/lamp2n.jsonl"):
        texts.extend(articles)
        sources.append("LaMP-2N articles")
    if not texts:  # no shared data: the bundled samples
        from persona_dspy.data import load_sample_users
        texts = [it.input for u in load_sample_users() for it in u.interactions]
        sources.append("bundled MovieLens samples")
    texts = list(dict.fromkeys(texts))  # unique, order kept
    rng = np.random.default_rng(0)
    rng.shuffle(texts)
    return texts[:limit], " + ".join(sources)


# -- the workers (one subprocess per engine) -------------------------------------------------------

class PoolEmbedder:
    """Stand-in for the embedder in store-side runs: returns the precomputed vector of each text."""

    dim = 384

    def __init__(self, table: dict[str, np.ndarray]) -> None:
        self.table = table

    def embed(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        return np.stack([self.table[t] for t in texts]) if texts else np.zeros((0, self.dim), np.float32)


def synthetic(pool_texts: list[str], pool_vecs: np.ndarray, users: int, episodes: int, seed: int = 1):
    """Episodes user by user: (user, i, text, vector); text unique, vector = noisy pool vector."""
    rng = np.random.default_rng(seed)
    n = len(pool_texts)
    for u in range(users):
        idx = rng.integers(0, n, size=episodes)
        vecs = pool_vecs[idx] + rng.normal(0, NOISE, size=(episodes, pool_vecs.shape[1])).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        for i in range(episodes):
            yield f"user{u:05d}", i, f"{pool_texts[idx[i]]} [u{u} #{i}]", vecs[i]


def queries(pool_vecs: np.ndarray, users: int, episodes: int, n: int, seed: int = 2):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        v = pool_vecs[rng.integers(0, len(pool_vecs))] + rng.normal(0, NOISE, size=pool_vecs.shape[1])
        out.append((f"user{int(rng.integers(0, users)):05d}", (v / np.linalg.norm(v)).astype(np.float32),
                    T0 + 3600.0 * float(rng.integers(episodes // 2, episodes + 1))))
    return out


class LocalEngine:
    """``EpisodicMemory`` itself on a local folder; ``shards > 1`` hashes users into that many collections."""

    def __init__(self, folder: str, shards: int = 1) -> None:
        from persona_dspy.config import Settings
        from persona_dspy.memory.episodic import EpisodicMemory

        self.table: dict[str, np.ndarray] = {}
        emb = PoolEmbedder(self.table)
        self.shards = shards
        self.mems = [EpisodicMemory(Settings(qdrant=folder, collection=f"episodes_{s:03d}"), embedder=emb)
                     for s in range(shards)]
        self.folder = folder

    def mem(self, user: str):
        return self.mems[zlib.crc32(user.encode()) % self.shards]

    def add(self, batch) -> None:
        from persona_dspy.data.records import Interaction

        by_shard: dict[int, list] = {}
        for user, i, text, vec in batch:
            self.table[text] = vec
            it = Interaction(user_id=user, id=str(i), input=text, output=f"{1 + i % 5}.0", timestamp=T0 + 3600.0 * i)
            by_shard.setdefault(zlib.crc32(user.encode()) % self.shards, []).append(it)
        for s, items in by_shard.items():
            self.mems[s].add(items)
        self.table.clear()

    def query(self, user: str, vec: np.ndarray, before: float) -> list:
        mem = self.mem(user)
        self.table["q"] = vec
        return mem.recall(user, "q", k=K, before=before)

    def reopen_seconds(self) -> float:
        for m in self.mems:
            m.close()
        t = time.perf_counter()
        self.mems[0].count()
        return time.perf_counter() - t


class EdgeEngine:
    """Qdrant Edge shard with the indexes a Qdrant server would get (tenant user_id, float timestamp)."""

    def __init__(self, folder: str) -> None:
        import qdrant_edge as qe

        self.qe = qe
        config = qe.EdgeConfig(vectors=qe.EdgeVectorParams(size=384, distance=qe.Distance.Cosine))
        self.folder = folder
        self.shard = qe.EdgeShard.create(folder, config)
        self.shard.update(qe.UpdateOperation.create_field_index("user_id", qe.KeywordIndexParams(is_tenant=True)))
        self.shard.update(qe.UpdateOperation.create_field_index("timestamp", qe.PayloadSchemaType.Float))

    def add(self, batch) -> None:
        qe = self.qe
        points = [qe.Point(str(uuid.uuid5(uuid.NAMESPACE_URL, f"{u}/{i}")), vec.tolist(),
                           {"user_id": u, "id": str(i), "input": text, "output": f"{1 + i % 5}.0",
                            "timestamp": T0 + 3600.0 * i}) for u, i, text, vec in batch]
        self.shard.update(qe.UpdateOperation.upsert_points(points))

    def query(self, user: str, vec: np.ndarray, before: float) -> list:
        qe = self.qe
        flt = qe.Filter(must=[qe.FieldCondition(key="user_id", match=qe.MatchValue(user)),
                              qe.FieldCondition(key="timestamp", range=qe.RangeFloat(lt=before))])
        return self.shard.query(qe.QueryRequest(limit=K, query=qe.Query.Nearest(vec.tolist()), filter=flt,
                                                with_payload=True))

    def reopen_seconds(self) -> float:
        self.shard.flush()
        self.shard.close()
        t = time.perf_counter()
        self.shard = self.qe.EdgeShard.load(self.folder)
        self.shard.info()
        return time.perf_counter() - t


def worker(engine: str, data_dir: Path, users: int, episodes: int, shards: int) -> dict:
    import persona_dspy  # noqa: F401  (environment guards)

    pool_texts = json.loads((data_dir / "texts.json").read_text())
    pool_vecs = np.load(data_dir / "vectors.npy")
    folder = tempfile.mkdtemp(prefix=f"bench_{engine}_", dir=data_dir)
    base_rss = rss_mb()
    store = EdgeEngine(folder) if engine == "edge" else LocalEngine(folder, shards if engine == "shards" else 1)
    total = users * episodes
    checkpoints = [c for c in CHECKPOINTS if c <= total] or [total]
    results: dict = {"engine": engine, "shards": shards if engine == "shards" else None, "rss_base_mb": base_rss,
                     "points": []}
    stream = synthetic(pool_texts, pool_vecs, users, episodes)
    done, ingest_s, batch_size = 0, 0.0, 256
    for target in checkpoints:
        while done < target:
            batch = [next(stream) for _ in range(min(batch_size, target - done))]
            t = time.perf_counter()
            store.add(batch)
            ingest_s += time.perf_counter() - t
            done += len(batch)
        n_users = -(-done // episodes)
        slow = engine == "local" and done > 10_000  # brute force in Python: ~1 s per query at 100k
        qs = queries(pool_vecs, n_users, episodes, 20 if slow else 200)
        store.query(*qs[0])  # warm-up
        lat = []
        for user, vec, before in qs:
            t = time.perf_counter()
            hits = store.query(user, vec, before)
            lat.append((time.perf_counter() - t) * 1000)
            assert 0 < len(hits) <= K
        results["points"].append({"points": done, "ingest_eps": done / ingest_s, "p50_ms": pct(lat, 50),
                                  "p95_ms": pct(lat, 95), "queries": len(lat), "rss_mb": rss_mb()})
        print(f"  [{engine}] {done:>7} points: ingest {done / ingest_s:8.0f} eps/s, top-{K} p50 "
              f"{pct(lat, 50):8.2f} ms p95 {pct(lat, 95):8.2f} ms ({len(lat)} q), RSS {rss_mb():6.0f} MB",
              file=sys.stderr, flush=True)
    results["reopen_s"] = store.reopen_seconds()
    results["disk_mb"] = sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file()) / 2**20
    return results


# -- the parent: embedding, end-to-end ingest, then one worker per engine --------------------------

def embed_pool(pool: int, data_dir: Path) -> dict:
    from persona_dspy.memory.embedder import OnnxEmbedder

    texts, source = real_texts(pool)
    embedder = OnnxEmbedder()
    embedder.embed(texts[:8])  # load the session outside the timing
    t = time.perf_counter()
    vecs = embedder.embed(texts)
    dt = time.perf_counter() - t
    np.save(data_dir / "vectors.npy", vecs)
    (data_dir / "texts.json").write_text(json.dumps(texts))
    chars = statistics.mean(len(x) for x in texts)
    return {"texts": len(texts), "source": source, "mean_chars": chars, "seconds": dt, "texts_per_s": len(texts) / dt}


def end_to_end(data_dir: Path, n_users: int, episodes: int) -> dict:
    """Real ``EpisodicMemory.add`` with the real embedder into a folder; embed vs store time."""
    from qdrant_client import QdrantClient
    from qdrant_client.http import models as qm

    from persona_dspy.config import Settings
    from persona_dspy.data.records import Interaction
    from persona_dspy.memory.embedder import OnnxEmbedder
    from persona_dspy.memory.episodic import EpisodicMemory

    texts = json.loads((data_dir / "texts.json").read_text())
    real = OnnxEmbedder()
    real.embed(["warm up"])
    spent = {"embed": 0.0}

    class Timed:
        dim = 384

        def embed(self, batch: list[str], batch_size: int = 64) -> np.ndarray:
            t = time.perf_counter()
            out = real.embed(batch, batch_size)
            spent["embed"] += time.perf_counter() - t
            return out

    items = [Interaction(user_id=f"user{u:03d}", id=str(i), input=texts[(u * episodes + i) % len(texts)],
                         output="4.0", timestamp=T0 + 3600.0 * i) for u in range(n_users) for i in range(episodes)]
    folder = tempfile.mkdtemp(prefix="bench_e2e_", dir=data_dir)
    with EpisodicMemory(Settings(qdrant=folder), embedder=Timed()) as mem:  # type: ignore[arg-type]
        t = time.perf_counter()
        written = mem.add(items)
        total = time.perf_counter() - t
        t = time.perf_counter()
        assert mem.add(items) == 0
        readd = time.perf_counter() - t
    # the same store without our WAL setting: local mode's default journal, one fsync per point
    rollback_n = 300
    client = QdrantClient(path=tempfile.mkdtemp(prefix="bench_journal_", dir=data_dir))
    client.create_collection("x", vectors_config=qm.VectorParams(size=384, distance=qm.Distance.COSINE))
    vecs = np.load(data_dir / "vectors.npy")
    pts = [qm.PointStruct(id=str(uuid.uuid4()), vector=vecs[i % len(vecs)].tolist(), payload={"user_id": "u"})
           for i in range(rollback_n)]
    t = time.perf_counter()
    for s in range(0, rollback_n, 100):
        client.upsert("x", pts[s:s + 100])
    rollback_eps = rollback_n / (time.perf_counter() - t)
    client.close()
    return {"episodes": written, "seconds": total, "embed_s": spent["embed"], "store_s": total - spent["embed"],
            "eps": written / total, "store_eps": written / (total - spent["embed"]),
            "reingest_s": readd, "default_journal_store_eps": rollback_eps}


def report(args: argparse.Namespace, emb: dict, e2e: dict, runs: list[dict], wall: float) -> str:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    cmd = "python benchmarks/memory.py " + " ".join(sys.argv[1:])
    lines = [
        "## Memory (episodic store)", "",
        f"Machine: {os.cpu_count()} cores ({cpu}), shared with other jobs; Python {platform.python_version()}, "
        f"qdrant-client {version('qdrant-client')}, qdrant-edge-py {version('qdrant-edge-py')}. "
        f"Rerun: `{cmd.strip()}` (total {wall / 60:.1f} min here).", "",
        "### Embedding and end-to-end ingest (real texts, real embedder)", "",
        "| measure | value |", "|---|---|",
        f"| embedder (MiniLM int8 ONNX), {emb['texts']} real texts ({emb['source']}, mean {emb['mean_chars']:.0f} chars) "
        f"| **{emb['texts_per_s']:.0f} texts/s** |",
        f"| `EpisodicMemory.add` into a folder, {e2e['episodes']} episodes, embedding included "
        f"| **{e2e['eps']:.0f} episodes/s** ({e2e['embed_s']:.1f} s embedding + {e2e['store_s']:.1f} s store) |",
        f"| same, store side only (WAL journal, set by `EpisodicMemory`) | {e2e['store_eps']:.0f} episodes/s |",
        f"| local folder with sqlite's default journal (one fsync per point, before this change) "
        f"| {e2e['default_journal_store_eps']:.0f} points/s |",
        f"| re-adding the same {e2e['episodes']} episodes (idempotent: hash check, no embedding) "
        f"| {e2e['reingest_s']:.2f} s |", "",
        f"### Store side at 1k / 10k / 100k points ({args.users} users x {args.episodes} episodes)", "",
        f"Vectors: the pool's real embeddings plus Gaussian noise (std {NOISE}/dim, re-normalised), so "
        "100k points need no re-embedding; texts are pool texts tagged per user. Query: top-5 of one user "
        "with a `before` bound (as the agent calls it), query vector = a noisy pool vector; p50/p95 over "
        "200 queries (20 for `local` above 10k: each one scans every point in Python). Ingest = store time "
        "only, in batches of 256. RSS = resident memory of the engine's process (fresh per engine).", "",
        "| engine | points | ingest (episodes/s) | top-5 p50 (ms) | top-5 p95 (ms) | RSS (MB) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    names = {"local": "Qdrant local folder (`EpisodicMemory`, default)",
             "shards": f"local folder, users hashed into {args.shards} collections",
             "edge": "Qdrant Edge (`qdrant-edge-py`), tenant + float indexes"}
    for run in runs:
        for p in run["points"]:
            lines.append(f"| {names[run['engine']]} | {p['points']:,} | {p['ingest_eps']:,.0f} | {p['p50_ms']:.2f} "
                         f"| {p['p95_ms']:.2f} | {p['rss_mb']:.0f} |")
    lines += ["", "| engine | reopen at full size (s) | on disk (MB) | RSS before ingest (MB) |", "|---|---:|---:|---:|"]
    for run in runs:
        lines.append(f"| {names[run['engine']]} | {run['reopen_s']:.2f} | {run['disk_mb']:.0f} | {run['rss_base_mb']:.0f} |")
    return "\n".join(lines)


def version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version as v
    try:
        return v(dist)
    except PackageNotFoundError:
        return "not installed"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--pool", type=int, default=2100, help="real texts to embed")
    parser.add_argument("--e2e-users", type=int, default=10, help="users ingested end to end with the real embedder")
    parser.add_argument("--engines", default="local,shards,edge")
    parser.add_argument("--shards", type=int, default=256)
    parser.add_argument("--json", type=Path, help="also write the raw numbers here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        print(json.dumps(worker(args.worker, args.data_dir, args.users, args.episodes, args.shards)))
        return

    import persona_dspy  # noqa: F401

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="persona_bench_") as tmp:
        data_dir = Path(tmp)
        emb = embed_pool(args.pool, data_dir)
        print(f"embedded {emb['texts']} texts at {emb['texts_per_s']:.0f}/s", file=sys.stderr, flush=True)
        e2e = end_to_end(data_dir, args.e2e_users, args.episodes)
        print(f"end to end: {e2e['eps']:.0f} episodes/s", file=sys.stderr, flush=True)
        runs = []
        for engine in args.engines.split(","):
            if engine == "edge" and version("qdrant-edge-py") == "not installed":
                print("skipping edge: pip install qdrant-edge-py==0.9.0", file=sys.stderr)
                continue
            out = subprocess.run([sys.executable, __file__, "--worker", engine, "--data-dir", str(data_dir),
                                  "--users", str(args.users), "--episodes", str(args.episodes),
                                  "--shards", str(args.shards)], check=True, stdout=subprocess.PIPE, text=True)
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    text = report(args, emb, e2e, runs, time.perf_counter() - start)
    print(text)
    if args.json:
        args.json.write_text(json.dumps({"embedding": emb, "end_to_end": e2e, "engines": runs}, indent=2))


if __name__ == "__main__":
    main()
