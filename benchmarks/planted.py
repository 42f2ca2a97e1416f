"""Planted preferences: synthetic users whose ratings follow known rules, so the right persona is known.

    python benchmarks/planted.py --users 8 --test 6

Each user loves one genre (rates it 4.5-5), hates another (0.5-1.5) and rates the rest around their
own mean (+-0.5), over real MovieLens titles (genres as in the dev set). The agent answers with the
persona alone (no memory actions), on held-out movies of both planted genres and of others:

- ``default``: the task's default persona;
- ``hand``: a hand-written persona stating the planted rules (the ceiling this benchmark aims at);
- ``aligned``: the default persona after ``PersonaOptimizer`` (replay, loss, TextGrad step, gate).

Reported: MAE and mean score (1 - |error| / 4.5) per arm, the aligned arm's score as a share of the
hand-written one, and how many planted rules the aligned persona states (the genre named with the
right direction). Writes BENCHMARKS.md "## Planted preferences" and benchmarks/results/planted.json.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from pathlib import Path

import dspy

import persona_dspy  # noqa: F401  (environment guards first)
from persona_dspy import Settings
from persona_dspy.agent import PersonaAgent
from persona_dspy.data import Interaction
from persona_dspy.lm import build_lm
from persona_dspy.memory import EpisodicMemory
from persona_dspy.optimizers import PersonaOptimizer
from persona_dspy.signatures import DEFAULT_PERSONA, get_task

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _report import replace_section

DEV = ROOT / "benchmarks" / "data" / "movielens_dev.jsonl"
PAIRS = [
    ("Comedy", "Horror"),
    ("Drama", "Action"),
    ("Animation", "Thriller"),
    ("Romance", "Sci-Fi"),
    ("Crime", "Children"),
    ("Adventure", "Drama"),
    ("Horror", "Romance"),
    ("Sci-Fi", "Comedy"),
]
TASK = get_task("movielens_rating")


def movies() -> list[tuple[str, list[str]]]:
    seen: dict[str, list[str]] = {}
    for line in DEV.read_text().splitlines():
        for item in json.loads(line)["profile"]:
            seen.setdefault(item["movie"], item["genres"].split(", "))
    return sorted(seen.items())


def planted_user(
    index: int, pool: list[tuple[str, list[str]]], n_past: int, n_test: int, rng: random.Random
) -> tuple[str, tuple[str, str], float, list[Interaction], list[Interaction]]:
    love, hate = PAIRS[index % len(PAIRS)]
    mean = rng.choice([2.5, 3.0, 3.5])
    loved = [m for m in pool if love in m[1] and hate not in m[1]]
    hated = [m for m in pool if hate in m[1] and love not in m[1]]
    other = [m for m in pool if love not in m[1] and hate not in m[1]]

    def rating(genres: list[str]) -> float:
        if love in genres:
            return rng.choice([4.5, 5.0])
        if hate in genres:
            return rng.choice([0.5, 1.0, 1.5])
        return min(5.0, max(0.5, mean + rng.choice([-0.5, 0.0, 0.5])))

    n_love_test = n_hate_test = n_test // 3
    loved_s = rng.sample(loved, n_past // 4 + n_love_test)
    hated_s = rng.sample(hated, n_past // 4 + n_hate_test)
    other_s = rng.sample(other, n_past - 2 * (n_past // 4) + n_test - n_love_test - n_hate_test)
    test = loved_s[:n_love_test] + hated_s[:n_hate_test] + other_s[: n_test - n_love_test - n_hate_test]
    past = loved_s[n_love_test:] + hated_s[n_hate_test:] + other_s[n_test - n_love_test - n_hate_test :]
    rng.shuffle(past)
    ordered = past + test
    uid = f"planted{index}"
    items = [
        Interaction(
            user_id=uid,
            id=f"{uid}-{i}",
            input=f"movie: {title} genres: {', '.join(g)}",
            output=f"{rating(g):.1f}",
            timestamp=1000.0 + i,
            task="movielens_rating",
        )
        for i, (title, g) in enumerate(ordered)
    ]
    return uid, (love, hate), mean, items[:-n_test], items[-n_test:]


def hand_persona(love: str, hate: str, mean: float) -> str:
    return (
        f"{DEFAULT_PERSONA}\nThis user rates {love} movies 4.5 to 5 stars and {hate} movies 0.5 to 1.5 stars; "
        f"other movies get about {mean:.1f} stars."
    )


_UP = re.compile(r"\b(higher|like|love|enjoy|favou?rite|4\.5|5(?:\.0)? stars)\b", re.I)
_DOWN = re.compile(r"\b(lower|dislike|hate|avoid|0\.5|1(?:\.0)? stars?|1\.5)\b", re.I)


def states(persona: str, genre: str, up: bool) -> bool:
    """The persona names ``genre`` in a sentence that says the right direction."""
    for sentence in re.split(r"(?<=[.;!?])\s+|\n", persona):
        if re.search(rf"\b{re.escape(genre)}\b", sentence, re.I) and (_UP if up else _DOWN).search(sentence):
            return True
    return False


def answer_all(agent: PersonaAgent, items: list[Interaction]) -> list[float]:
    scores = []
    for it in items:
        scores.append(TASK.score(agent(task=it.input, before=it.timestamp).answer, it.output))
    return scores


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--past", type=int, default=40)
    parser.add_argument("--test", type=int, default=6)
    parser.add_argument(
        "--report", action="store_true", help="rewrite the section from benchmarks/results/planted.json"
    )
    args = parser.parse_args()
    if args.report:
        rows = json.loads((ROOT / "benchmarks" / "results" / "planted.json").read_text())
        for r in rows:
            r["rules_stated"] = int(states(r["candidate"], r["love"], True)) + int(
                states(r["candidate"], r["hate"], False)
            )
        write_section(rows, args, float("nan"))
        return
    rng = random.Random(0)
    pool = movies()
    lm = build_lm(Settings())
    rows = []
    started = time.perf_counter()
    with EpisodicMemory(Settings(qdrant=":memory:", state_dir="/tmp/persona_planted")) as memory, dspy.context(lm=lm):
        for i in range(args.users):
            uid, (love, hate), mean, past, test = planted_user(i, pool, args.past, args.test, rng)
            memory.add(past)
            row = {"user": uid, "love": love, "hate": hate, "mean": mean}
            for arm, persona in (("default", DEFAULT_PERSONA), ("hand", hand_persona(love, hate, mean))):
                agent = PersonaAgent(TASK, user_id=uid, memory=memory, persona=persona, actions=())
                row[arm] = answer_all(agent, test)
            student = PersonaAgent(TASK, user_id=uid, memory=memory, actions=())
            with dspy.track_usage():
                aligned = PersonaOptimizer().compile(student, trainset=past)
            result = aligned.compile_result
            row["aligned"] = answer_all(aligned, test)
            row.update(
                persona=aligned.persona,
                candidate=result.candidate_persona,
                promoted=result.promoted,
                lm_calls=result.lm_calls,
                tokens=result.tokens,
                reason=result.reason,
                rules_stated=int(states(result.candidate_persona, love, True))
                + int(states(result.candidate_persona, hate, False)),
            )
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k not in ("persona", "candidate")}), flush=True)
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "planted.json").write_text(json.dumps(rows, indent=1))
    write_section(rows, args, time.perf_counter() - started)


def write_section(rows: list[dict], args: argparse.Namespace, seconds: float) -> None:
    def mean_score(arm: str) -> float:
        return sum(sum(r[arm]) for r in rows) / sum(len(r[arm]) for r in rows)

    def mae(arm: str) -> float:
        return (1 - mean_score(arm)) * 4.5

    from stats import paired_bootstrap_diff

    stated = sum(r["rules_stated"] for r in rows)
    flat = {arm: [x for r in rows for x in r[arm]] for arm in ("default", "hand", "aligned")}
    diffs = {other: paired_bootstrap_diff(flat["aligned"], flat[other]) for other in ("default", "hand")}
    lines = [
        (
            f"{len(rows)} synthetic users x {args.test} held-out movies, {args.past} past ratings each (rules in "
            "`benchmarks/planted.py`); persona alone, no memory actions; embedded model. "
            f"Rerun: `python benchmarks/planted.py --users {args.users} --test {args.test}` (about 6 min here; "
            "`--report` rewrites this section from `benchmarks/results/planted.json`)."
        ),
        "",
        "| arm | MAE | mean score | share of the hand-written persona's score |",
        "|---|---|---|---|",
    ]
    for arm in ("default", "hand", "aligned"):
        lines.append(f"| {arm} | {mae(arm):.3f} | {mean_score(arm):.3f} | {mean_score(arm) / mean_score('hand'):.0%} |")
    lines += [
        "",
        (
            f"Planted rules stated by the aligned candidate persona: {stated} of {2 * len(rows)} "
            f"({stated / (2 * len(rows)):.0%}); promoted: {sum(r['promoted'] for r in rows)} of {len(rows)}; "
            f"LM calls per compile: {sum(r['lm_calls'] for r in rows) / len(rows):.1f}, tokens "
            f"{sum(r['tokens'] for r in rows) / len(rows):.0f}."
        ),
    ]
    lines += [
        "",
        "Mean score of `aligned` minus each arm over the held-out movies (paired bootstrap over movies; movies of "
        "one user are not independent, so this interval is optimistic): "
        + "; ".join(f"vs {o}: {d[0]:+.3f} [{d[1]:+.3f}, {d[2]:+.3f}]" for o, d in diffs.items())
        + ".",
    ]
    hand_vs_default = mean_score("hand") - mean_score("default")
    if abs(hand_vs_default) < 0.01:
        lines.append(
            f"The hand-written persona scores what the default persona scores ({mean_score('hand'):.3f}): the 1.5B "
            "model does not act on rules it is told in words. What moves its answers is the number the aligned "
            'guidance states ("answer 4.5 for a typical movie"), so `aligned` clears the 90% target against this '
            "ceiling only because the ceiling does not move the model."
        )
    else:
        lines.append(f"The hand-written persona scores {hand_vs_default:+.3f} against the default persona.")
    replace_section(ROOT / "BENCHMARKS.md", "## Planted preferences (the right persona is known)", "\n".join(lines))


if __name__ == "__main__":
    main()
