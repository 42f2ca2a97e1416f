"""Build the quality benchmark's dev sets into ``benchmarks/data/`` (deterministic; reruns give the same bytes).

    python benchmarks/build_devsets.py                      # reads ../shared/data
    python benchmarks/build_devsets.py --shared /path/to/shared/data --extra 180

- ``movielens_dev.jsonl``: the 60 users of ``movielens/rating.jsonl``, copied as they are, then ``--extra``
  more users built from ``movielens/raw/{ratings,movies}.csv.gz`` with the rule of ``rating.jsonl``
  (``shared/data/README.md``): query = the user's last event by (timestamp, movieId); profile = the events
  strictly earlier than the query, ascending, capped at the 100 most recent. The 100 users that rule
  selected (``ids[::6][:100]``: 60 shared, 40 held out and absent from ``raw/``) are never extra users;
  the extra ones are the next users in id order whose profile has at least ``MIN_PROFILE`` items.
  Before writing, the builder rebuilds the 60 shared users from ``raw/`` and fails unless it reproduces
  their lines byte for byte: that is the check that the extra users follow the same rule.
- ``lamp2n_dev.jsonl``: the 62 queries of ``lamp/lamp2n.jsonl``, copied.
- ``LICENSE.movielens`` and ``LICENSE.lamp``: the sources' license texts, verbatim.

The Amazon subset is not bundled (no license found); the benchmark reads it from ``../shared/data`` when present.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import json
import shutil
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "data"
TASK = "movielens_rating"
PROMPT = (
    "What rating would this user give the following movie, on MovieLens's 5-star scale with half-star steps "
    "(0.5, 1.0, ..., 5.0)? Just answer with the number without further explanation. movie: {movie} genres: {genres}"
)
PROFILE_CAP = 100
MIN_PROFILE = 15
NEWLINE = b"\n"
ALL_USER_IDS = range(1, 611)  # ml-latest-small: userIds 1..610 (raw/ lacks the 40 held-out ones)


def selected_by_shared_rule() -> set[int]:
    """The 100 users of the shared rule: 60 in ``rating.jsonl``, 40 held out (their rows are not in ``raw/``)."""
    return set(list(ALL_USER_IDS)[::6][:100])


def read_raw(raw: Path) -> tuple[dict[int, list[tuple[int, int, float]]], dict[int, tuple[str, str]]]:
    """Per user, events ``(timestamp, movieId, rating)``; per movie, ``(title, genres as in the prompt)``."""
    movies = {}
    with gzip.open(raw / "movies.csv.gz", "rt", encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            movies[int(row["movieId"])] = (row["title"], ", ".join(row["genres"].split("|")))
    events: dict[int, list[tuple[int, int, float]]] = defaultdict(list)
    with gzip.open(raw / "ratings.csv.gz", "rt", encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            events[int(row["userId"])].append((int(row["timestamp"]), int(row["movieId"]), float(row["rating"])))
    return events, movies


def build_record(user_id: int, events: list[tuple[int, int, float]], movies: dict[int, tuple[str, str]]) -> dict:
    """One query per user with the ``rating.jsonl`` rule (same keys, key order and prompt)."""
    events = sorted(events, key=lambda e: (e[0], e[1]))
    q_time, q_movie, q_rating = events[-1]
    earlier = [e for e in events[:-1] if e[0] < q_time][-PROFILE_CAP:]
    title, genres = movies[q_movie]
    return {
        "id": f"{TASK}_u{user_id}",
        "task": TASK,
        "user_id": str(user_id),
        "input": PROMPT.format(movie=title, genres=genres),
        "output": str(q_rating),
        "profile": [
            {"movie": movies[m][0], "genres": movies[m][1], "rating": r, "timestamp": t} for t, m, r in earlier
        ],
        "timestamp": q_time,
    }


def dumps(record: dict) -> str:
    return json.dumps(record, ensure_ascii=False)


def build_movielens(shared: Path, extra: int) -> tuple[list[str], list[int]]:
    """The shared lines (checked against a rebuild from ``raw/``) followed by ``extra`` new users' lines."""
    shared_lines = (shared / "movielens" / "rating.jsonl").read_text(encoding="utf-8").splitlines()
    events, movies = read_raw(shared / "movielens" / "raw")
    for line in shared_lines:
        user = int(json.loads(line)["user_id"])
        rebuilt = dumps(build_record(user, events[user], movies))
        if rebuilt != line:
            raise SystemExit(f"the rule does not reproduce shared user {user}: refusing to build extra users")
    excluded = selected_by_shared_rule()
    extra_users, lines = [], []
    for user in sorted(events):
        if len(extra_users) == extra:
            break
        if user in excluded:
            continue
        record = build_record(user, events[user], movies)
        if len(record["profile"]) >= MIN_PROFILE:
            extra_users.append(user)
            lines.append(dumps(record))
    if len(extra_users) < extra:
        raise SystemExit(f"only {len(extra_users)} eligible extra users, {extra} asked")
    return shared_lines + lines, extra_users


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--extra", type=int, default=180, help="MovieLens users to build beyond the 60 shared")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    lines, extra_users = build_movielens(args.shared, args.extra)
    (args.out / "movielens_dev.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    shutil.copyfile(args.shared / "lamp" / "lamp2n.jsonl", args.out / "lamp2n_dev.jsonl")
    shutil.copyfile(args.shared / "movielens" / "LICENSE", args.out / "LICENSE.movielens")
    shutil.copyfile(args.shared / "lamp" / "LICENSE", args.out / "LICENSE.lamp")

    print(
        f"movielens_dev.jsonl: 60 shared users (reproduced byte for byte from raw/) + {len(extra_users)} extra "
        f"(userIds {extra_users[0]}..{extra_users[-1]})"
    )
    for name in ("movielens_dev.jsonl", "lamp2n_dev.jsonl"):
        data = (args.out / name).read_bytes()
        print(
            f"{name}: {data.count(NEWLINE)} lines, {len(data) / 1e3:.0f} kB, sha256 {hashlib.sha256(data).hexdigest()[:16]}"
        )


if __name__ == "__main__":
    main()
