"""Episodic-memory benchmark: Qdrant Edge vs qdrant-client local mode vs the in-process snapshot.

    python benchmarks/memory.py --users 10000 --episodes 100 [--engines edge,local] [--json FILE]

What it does (everything in-process, nothing fetched):
1. Embeds a pool of real texts (MovieLens / Amazon / LaMP inputs from /work/shared/data, else the
   bundled MovieLens samples) with the real ``OnnxEmbedder``: embedding rate in texts/s.
2. Ingests real episodes end to end with ``EpisodicMemory.add`` (real embedder) into the default
   store, a Qdrant Edge folder: episodes/s with the embedding and store time split.
3. For each engine, in its own subprocess (clean RSS), ingests ``users x episodes`` episodes through
   ``EpisodicMemory.add`` whose texts are pool texts and whose vectors are SYNTHETIC: pool vectors
   plus small Gaussian noise (re-normalised), so the store side is measured without re-embedding a
   million texts. At 1k / 10k / 100k / 1M points it measures the user- and time-filtered top-5
   (``recall``) p50 / p95, the store-side ingest rate, RSS, the time to reopen and the disk size.
   Engines: ``edge`` = ``EpisodicMemory`` on a folder (Qdrant Edge, the default), also timing the
   ``UserSnapshot`` of each queried user (one store read, then recall in process); ``local`` = the
   same on ``local:<folder>`` (qdrant-client local mode, the previous default), up to ``--local-max``.
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
from pathlib import Path

import numpy as np

DATA = Path("/work/shared/data")
NOISE = 0.02  # per-dimension std of the noise added to pool vectors (cosine to the original ~0.93)
CHECKPOINTS = (1_000, 10_000, 100_000, 1_000_000)
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

    def embed_one(self, text: str) -> np.ndarray:
        return self.table[text]


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
        out.append(
            (
                f"user{int(rng.integers(0, users)):05d}",
                (v / np.linalg.norm(v)).astype(np.float32),
                T0 + 3600.0 * float(rng.integers(episodes // 2, episodes + 1)),
            )
        )
    return out


class Store:
    """``EpisodicMemory`` itself on ``location`` (an Edge folder or ``local:<folder>``), fed pool vectors."""

    def __init__(self, location: str) -> None:
        from persona_dspy.config import Settings
        from persona_dspy.memory.episodic import EpisodicMemory

        self.table: dict[str, np.ndarray] = {}
        self.mem = EpisodicMemory(Settings(qdrant=location), embedder=PoolEmbedder(self.table))  # type: ignore[arg-type]
        self.mem.count()  # open (create) outside the ingest timing

    def add(self, batch) -> tuple[float, float]:
        """Store seconds of one ``add``, wall and CPU (this process, all threads; the Interactions are
        built outside the timing). CPU time is what the code costs whatever else the machine runs."""
        from persona_dspy.data.records import Interaction

        items = []
        for user, i, text, vec in batch:
            self.table[text] = vec
            items.append(
                Interaction(user_id=user, id=str(i), input=text, output=f"{1 + i % 5}.0", timestamp=T0 + 3600.0 * i)
            )
        t, c = time.perf_counter(), time.process_time()
        self.mem.add(items)
        dt, dc = time.perf_counter() - t, time.process_time() - c
        self.table.clear()
        return dt, dc

    def query(self, user: str, vec: np.ndarray, before: float) -> list:
        self.table["q"] = vec
        return self.mem.recall(user, "q", k=K, before=before)

    def reopen_seconds(self, user: str, vec: np.ndarray, before: float) -> tuple[float, float]:
        """Close, then time (open + the first recall of one user, full load): a store loads a shard
        when it first reads it, so the first answer waits for that user's shard only; ``count()``
        then loads the others."""
        self.mem.close()
        t = time.perf_counter()
        self.query(user, vec, before)
        first = time.perf_counter() - t
        self.mem.count()
        return first, time.perf_counter() - t


def disk_mb(folder: Path) -> float:
    """Allocated size (Edge preallocates sparse WAL files: their apparent size would overstate it)."""
    return sum(f.stat().st_blocks * 512 for f in folder.rglob("*") if f.is_file()) / 2**20


def timed(call, *args) -> tuple[float, object]:
    t = time.perf_counter()
    out = call(*args)
    return (time.perf_counter() - t) * 1000, out


def measure_snapshots(store: Store, qs: list) -> dict:
    """``UserSnapshot``: one store read per user, then recall in process (what a compile does)."""
    reads, lat = [], []
    snaps = {}
    for user, _, _ in qs:
        if user not in snaps:
            ms, snaps[user] = timed(store.mem.snapshot, user)
            reads.append(ms)
    for user, vec, before in qs:
        store.table["q"] = vec
        ms, hits = timed(snaps[user].recall, user, "q", K, before)
        lat.append(ms)
        assert 0 < len(hits) <= K
    return {
        "read_p50_ms": pct(reads, 50),
        "read_p95_ms": pct(reads, 95),
        "p50_ms": pct(lat, 50),
        "p95_ms": pct(lat, 95),
        "queries": len(lat),
        "users": len(snaps),
    }


def worker(engine: str, data_dir: Path, users: int, episodes: int, max_points: int) -> dict:
    import persona_dspy  # noqa: F401  (environment guards)

    pool_texts = json.loads((data_dir / "texts.json").read_text())
    pool_vecs = np.load(data_dir / "vectors.npy")
    folder = Path(tempfile.mkdtemp(prefix=f"bench_{engine}_", dir=data_dir)) / "qdrant"
    base_rss = rss_mb()
    store = Store(f"local:{folder}" if engine == "local" else str(folder))
    total = min(users * episodes, max_points)
    checkpoints = [c for c in CHECKPOINTS if c <= total] or [total]
    results: dict = {"engine": engine, "rss_base_mb": base_rss, "points": []}
    stream = synthetic(pool_texts, pool_vecs, users, episodes)
    done, last, batch_size = 0, 0, 256
    for target in checkpoints:
        ingest_s = ingest_cpu = 0.0
        while done < target:
            batch = [next(stream) for _ in range(min(batch_size, target - done))]
            wall, cpu = store.add(batch)
            ingest_s, ingest_cpu = ingest_s + wall, ingest_cpu + cpu
            done += len(batch)
        n_users = -(-done // episodes)
        slow = engine == "local" and done > 10_000  # brute force in Python: ~2 s per query at 100k
        qs = queries(pool_vecs, n_users, episodes, 20 if slow else 200)
        store.query(*qs[0])  # warm-up
        lat = []
        for user, vec, before in qs:
            ms, hits = timed(store.query, user, vec, before)
            lat.append(ms)
            assert 0 < len(hits) <= K and {e.interaction.user_id for e in hits} == {user}
        row = {
            "points": done,
            "ingest_eps": (done - last) / ingest_s,
            "ingest_cpu_eps": (done - last) / ingest_cpu,
            "p50_ms": pct(lat, 50),
            "p95_ms": pct(lat, 95),
            "queries": len(lat),
            "rss_mb": rss_mb(),
        }
        if engine == "edge":
            row["snapshot"] = measure_snapshots(store, qs)
        row["reopen_first_s"], row["reopen_s"] = store.reopen_seconds(*qs[-1])
        row["disk_mb"] = disk_mb(folder)
        reopened = [timed(store.query, user, vec, before)[0] for user, vec, before in qs]
        row["p50_reopened_ms"], row["p95_reopened_ms"] = pct(reopened, 50), pct(reopened, 95)
        row["rss_reopened_mb"] = rss_mb()
        results["points"].append(row)
        last = done
        print(
            f"  [{engine}] {done:>8} points: ingest {row['ingest_eps']:8.0f} points/s "
            f"({row['ingest_cpu_eps']:.0f} per CPU-s), top-{K} p50 "
            f"{row['p50_ms']:8.3f} ms p95 {row['p95_ms']:8.3f} ms ({len(lat)} q), RSS {row['rss_mb']:6.0f} MB, "
            f"reopen {row['reopen_first_s']:.2f} s to a first answer, {row['reopen_s']:.2f} s in full (then p50 {row['p50_reopened_ms']:.3f} ms), disk {row['disk_mb']:.0f} MB"
            + (
                f", snapshot read {row['snapshot']['read_p50_ms']:.2f} ms recall {row['snapshot']['p50_ms']:.3f} ms"
                if "snapshot" in row
                else ""
            ),
            file=sys.stderr,
            flush=True,
        )
    store.mem.close()
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
    """Real ``EpisodicMemory.add`` with the real embedder into an Edge folder; embed vs store time."""
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

    items = [
        Interaction(
            user_id=f"user{u:03d}",
            id=str(i),
            input=texts[(u * episodes + i) % len(texts)],
            output="4.0",
            timestamp=T0 + 3600.0 * i,
        )
        for u in range(n_users)
        for i in range(episodes)
    ]
    folder = tempfile.mkdtemp(prefix="bench_e2e_", dir=data_dir)
    with EpisodicMemory(Settings(qdrant=folder), embedder=Timed()) as mem:  # type: ignore[arg-type]
        mem.count()
        t = time.perf_counter()
        written = mem.add(items)
        total = time.perf_counter() - t
        t = time.perf_counter()
        assert mem.add(items) == 0
        readd = time.perf_counter() - t
    return {
        "episodes": written,
        "seconds": total,
        "embed_s": spent["embed"],
        "store_s": total - spent["embed"],
        "eps": written / total,
        "store_eps": written / (total - spent["embed"]),
        "reingest_s": readd,
    }


def report(args: argparse.Namespace, emb: dict, e2e: dict, runs: list[dict], wall: float) -> str:
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    cmd = "python benchmarks/memory.py " + " ".join(sys.argv[1:])
    lines = [
        (
            f"Machine: {os.cpu_count()} cores ({cpu}), shared with other jobs; Python {platform.python_version()}, "
            f"qdrant-client {version('qdrant-client')}, qdrant-edge-py {version('qdrant-edge-py')}. "
            f"Rerun: `{cmd.strip()}` (total {wall / 60:.1f} min here)."
        ),
        "",
        "| measure | value |",
        "|---|---|",
        (
            f"| embedder (MiniLM int8 ONNX), {emb['texts']} real texts ({emb['source']}, mean {emb['mean_chars']:.0f} chars) "
            f"| {emb['texts_per_s']:.0f} texts/s |"
        ),
        (
            f"| `EpisodicMemory.add` into an Edge folder, {e2e['episodes']} episodes, embedding included "
            f"| {e2e['eps']:.0f} episodes/s ({e2e['embed_s']:.1f} s embedding + {e2e['store_s']:.2f} s store) |"
        ),
        (
            f"| re-adding the same {e2e['episodes']} episodes (idempotent: hash check, no embedding) "
            f"| {e2e['reingest_s']:.2f} s |"
        ),
        "",
        (
            "| engine | points | top-5 p50 (ms) | top-5 p95 (ms) | ingest (points/s; per CPU-s) | RSS (MB) "
            "| reopen: first answer / full (s) | p50 / p95 after reopen (ms) | disk (MB) |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    names = {"edge": "Qdrant Edge folder (default)", "local": "qdrant-client local mode (`local:`)"}
    for run in runs:
        for p in run["points"]:
            lines.append(
                f"| {names[run['engine']]} | {p['points']:,} | {p['p50_ms']:.3f} | {p['p95_ms']:.3f} "
                f"| {p['ingest_eps']:,.0f}; {p.get('ingest_cpu_eps', float('nan')):,.0f} | {p['rss_mb']:.0f} | {p.get('reopen_first_s', float('nan')):.2f} / {p['reopen_s']:.2f} "
                f"| {p['p50_reopened_ms']:.3f} / {p['p95_reopened_ms']:.3f} | {p['disk_mb']:.0f} |"
            )
    for run in runs:
        for p in run["points"]:
            if snap := p.get("snapshot"):
                lines.append(
                    f"| `UserSnapshot` (from the Edge store) | {p['points']:,} | {snap['p50_ms']:.3f} "
                    f"| {snap['p95_ms']:.3f} | - | - | read {snap['read_p50_ms']:.2f} ms "
                    f"(p95 {snap['read_p95_ms']:.2f}) | - | - |"
                )
    return "\n".join(lines)


def version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as v

    try:
        return v(dist)
    except PackageNotFoundError:
        return "not installed"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--pool", type=int, default=2100, help="real texts to embed")
    parser.add_argument("--e2e-users", type=int, default=10, help="users ingested end to end with the real embedder")
    parser.add_argument("--engines", default="edge,local")
    parser.add_argument("--local-max", type=int, default=100_000, help="points at which local mode stops")
    parser.add_argument("--json", type=Path, help="also write the raw numbers here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--max-points", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        print(json.dumps(worker(args.worker, args.data_dir, args.users, args.episodes, args.max_points)))
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
            cap = args.local_max if engine == "local" else args.users * args.episodes
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--worker",
                    engine,
                    "--data-dir",
                    str(data_dir),
                    "--users",
                    str(args.users),
                    "--episodes",
                    str(args.episodes),
                    "--max-points",
                    str(cap),
                ],
                check=True,
                stdout=subprocess.PIPE,
                text=True,
            )
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
            if args.json:  # partial results survive a later failure
                args.json.write_text(json.dumps({"embedding": emb, "end_to_end": e2e, "engines": runs}, indent=2))
    text = report(args, emb, e2e, runs, time.perf_counter() - start)
    print(text)


if __name__ == "__main__":
    main()
