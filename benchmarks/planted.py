"""Planted preferences: synthetic users whose ratings follow known rules, so the right persona is known.

    python benchmarks/planted.py --users 8 --test 6

Each MovieLens-style user loves one genre (rates it 4.5-5), hates another (0.5-1.5) and rates the rest
around their own mean (+-0.5), over real MovieLens titles (genres as in the dev set). Each LaMP-2N-style
user (``--label-users``) files the articles of one category under another label (food & drink articles
under "healthy living", ...) and every other article under its own category, over the real articles of
the bundled LaMP-2N dev set, with 10% noise (a random label). The agent answers with the persona
alone (no memory actions), on held-out items of the planted kind and of others:

- ``default``: the task's default persona;
- ``hand``: a hand-written persona stating the planted rules (the ceiling this benchmark aims at);
- ``aligned``: the default persona after ``PersonaOptimizer`` (replay, loss, TextGrad step, gate).

Reported: MAE and mean score (1 - |error| / 4.5) per arm, the aligned arm's score as a share of the
hand-written one, and how many planted rules the aligned persona states (the genre named with the
right direction). Writes BENCHMARKS.md "## Planted preferences" and benchmarks/results/planted.json.
"""

from __future__ import annotations

import argparse
import hashlib
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
LABEL_TASK = get_task("LaMP-2N")
LAMP_DEV = ROOT / "benchmarks" / "data" / "lamp2n_dev.jsonl"
REFILED = [
    ("food & drink", "healthy living", "food"),
    ("style & beauty", "women", "style"),
    ("food & drink", "travel", "food"),
    ("style & beauty", "entertainment", "style"),
]
"""LaMP-2N-style rules: (the articles' own category, the label this user files them under, the word a
persona stating the rule names them by)."""
LABEL_NOISE = 0.1


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


def articles() -> list[tuple[str, str]]:
    """(task text, category) of every distinct article in the bundled LaMP-2N dev set."""
    seen: dict[str, tuple[str, str]] = {}
    for line in LAMP_DEV.read_text().splitlines():
        record = json.loads(line)
        for item in record["profile"]:
            seen.setdefault(item["id"], (f"article: {item.get('title', '')}. {item['text']}", item["category"]))
    return sorted(seen.values())


def label_user(
    index: int, pool: list[tuple[str, str]], n_past: int, n_test: int, rng: random.Random
) -> tuple[str, tuple[str, str], list[Interaction], list[Interaction]]:
    """A user who files the articles of one category under another label; half of the held-out
    articles are of that category. Returns (id, (category, label), past, test)."""
    source, label, _ = REFILED[index % len(REFILED)]
    planted = [a for a in pool if a[1] == source]
    other = [a for a in pool if a[1] != source]
    n_planted_test = n_test // 2
    n_planted_past = min(len(planted) - n_planted_test, n_past // 2)
    picked = rng.sample(planted, n_planted_past + n_planted_test)
    rest = rng.sample(other, min(len(other), n_past - n_planted_past + n_test - n_planted_test))
    test = picked[:n_planted_test] + rest[: n_test - n_planted_test]
    past = picked[n_planted_test:] + rest[n_test - n_planted_test :]
    rng.shuffle(past)

    def filed(category: str) -> str:
        if rng.random() < LABEL_NOISE:
            return rng.choice(LABEL_TASK.labels)
        return label if category == source else category

    uid = f"planted-label{index}"
    items = [
        Interaction(user_id=uid, id=f"{uid}-{i}", input=text, output=filed(cat), timestamp=1000.0 + i, task="LaMP-2N")
        for i, (text, cat) in enumerate(past + test)
    ]
    return uid, (source, label), items[: len(past)], items[len(past) :]


def _word(source: str) -> str:
    return next(w for s, _, w in REFILED if s == source)


def hand_label_persona(source: str, label: str) -> str:
    return (
        f"{DEFAULT_PERSONA}\nThis user files every {_word(source)} article ({source}) under {label}; "
        "other articles under their own category."
    )


def states_label(persona: str, source: str, label: str) -> bool:
    """The persona names the planted label and the refiled articles (by their word) in one sentence
    that is not a list of answer frequencies ("healthy living (45%), food & drink (5%)")."""
    for sentence in re.split(r"(?<=[.;!?])\s+|\n", persona):
        low = sentence.lower()
        if label in low and _word(source) in low.replace(label, "") and "%" not in low:
            return True
    return False


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
    return [agent.task.score(agent(task=it.input, before=it.timestamp).answer, it.output) for it in items]


def stated(row: dict, arm: str = "aligned") -> int:
    """How many of the row's planted rules the candidate persona of ``arm`` states."""
    candidate = (
        row.get("compiles", {}).get(arm, {}).get("candidate", row.get("candidate", "") if arm == "aligned" else "")
    )
    if row.get("kind") == "label":
        return int(states_label(candidate, row["source"], row["label"]))
    return int(states(candidate, row["love"], True)) + int(states(candidate, row["hate"], False))


def parse_arm(spec: str) -> dict[str, bool | int]:
    """``aligned:cues=1`` -> ``{"cues": True}``: the options of an extra aligned arm."""
    options: dict[str, bool | int] = {}
    for part in filter(None, spec.partition(":")[2].split(",")):
        key, _, value = part.partition("=")
        flags = ("cues", "confusion", "label_rules", "trust_measured", "anchor")
        options[key] = value.lower() in ("1", "true") if key in flags else int(value)
    return options


def run_arms(
    memory: EpisodicMemory,
    task,
    uid: str,
    hand: str,
    past: list[Interaction],
    test: list[Interaction],
    row: dict,
    arms: list[str],
) -> dict:
    """The default and hand-written personas, then each aligned arm (``aligned``, ``aligned:cues=1``, ...), on
    the held-out items (no memory actions); arms already in ``row`` (a stored run of this user) are kept."""
    data = hashlib.sha256(json.dumps([(it.input, it.output) for it in past + test]).encode()).hexdigest()[:16]
    if row.get("data") != data:
        row = {}  # a stored row of another user under this id (other rules or sizes): run it again
    memory.forget(uid)
    memory.add(past)
    row.update(user=uid, data=data)
    for arm, persona in (("default", DEFAULT_PERSONA), ("hand", hand)):
        if arm not in row:
            row[arm] = answer_all(PersonaAgent(task, user_id=uid, memory=memory, persona=persona, actions=()), test)
    for arm in arms:
        if arm in row:
            continue
        student = PersonaAgent(task, user_id=uid, memory=memory, actions=())
        with dspy.track_usage():
            aligned = PersonaOptimizer(**parse_arm(arm)).compile(student, trainset=past)
        result = aligned.compile_result
        row[arm] = answer_all(aligned, test)
        row.setdefault("compiles", {})[arm] = {
            "persona": aligned.persona,
            "candidate": result.candidate_persona,
            "promoted": result.promoted,
            "lm_calls": result.lm_calls,
            "tokens": result.tokens,
            "reason": result.reason,
        }
        if arm == "aligned":  # the main arm's compile, where the report reads it
            row.update(row["compiles"][arm])
    return row


def keep(rows: list[dict], row: dict) -> None:
    row["rules_stated"] = stated(row)
    rows.append(row)
    print(json.dumps({k: v for k, v in row.items() if k not in ("persona", "candidate", "compiles")}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--past", type=int, default=40)
    parser.add_argument("--test", type=int, default=6)
    parser.add_argument("--label-users", type=int, default=4, help="LaMP-2N-style users (one refiled category each)")
    parser.add_argument("--label-past", type=int, default=30)
    parser.add_argument(
        "--arms", default="aligned", help="aligned arms, e.g. aligned,aligned:cues=1 (stored arms of a user are kept)"
    )
    parser.add_argument("--fresh", action="store_true", help="run every arm again (after a change to the method)")
    parser.add_argument(
        "--report", action="store_true", help="rewrite the section from benchmarks/results/planted.json"
    )
    args = parser.parse_args()
    if args.report:
        rows = json.loads((ROOT / "benchmarks" / "results" / "planted.json").read_text())
        for r in rows:
            r["rules_stated"] = stated(r)
        write_section(rows, args, float("nan"))
        return
    arms = args.arms.split(",")
    path = ROOT / "benchmarks" / "results" / "planted.json"
    stored = {r["user"]: r for r in json.loads(path.read_text())} if path.exists() and not args.fresh else {}
    rng, label_rng = random.Random(0), random.Random(1)  # each kind's users do not depend on the other's count
    pool = movies()
    lm = build_lm(Settings())
    rows: list[dict] = []
    started = time.perf_counter()
    with EpisodicMemory(Settings(qdrant=":memory:", state_dir="/tmp/persona_planted")) as memory, dspy.context(lm=lm):
        for i in range(args.users):
            uid, (love, hate), mean, past, test = planted_user(i, pool, args.past, args.test, rng)
            row = run_arms(memory, TASK, uid, hand_persona(love, hate, mean), past, test, stored.get(uid, {}), arms)
            row.update(kind="rating", love=love, hate=hate, mean=mean)
            keep(rows, row)
        label_pool = articles()
        for i in range(args.label_users):
            uid, (source, label), past, test = label_user(i, label_pool, args.label_past, args.test, label_rng)
            hand = hand_label_persona(source, label)
            row = run_arms(memory, LABEL_TASK, uid, hand, past, test, stored.get(uid, {}), arms)
            row.update(kind="label", source=source, label=label)
            keep(rows, row)
    ran = {r["user"] for r in rows}
    rows += [r for uid, r in stored.items() if uid not in ran]  # users not run this time (--users 0) stay
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=1))
    write_section(rows, args, time.perf_counter() - started)


def write_section(rows: list[dict], args: argparse.Namespace, seconds: float) -> None:
    from stats import paired_bootstrap_diff

    lines = [
        (
            "Synthetic users whose answers follow planted rules (`benchmarks/planted.py`); the agent answers with "
            "the persona alone (no memory actions); embedded model. Rerun: `python benchmarks/planted.py --users "
            f"{args.users} --label-users {args.label_users} --test {args.test}` (`--report` rewrites this section "
            "from `benchmarks/results/planted.json`)."
        )
    ]
    for kind in ("rating", "label"):
        group = [r for r in rows if r.get("kind", "rating") == kind]
        if group:
            lines += ["", *kind_section(kind, group, args, paired_bootstrap_diff)]
    replace_section(ROOT / "BENCHMARKS.md", "## Planted preferences (the right persona is known)", "\n".join(lines))


def kind_section(kind: str, rows: list[dict], args: argparse.Namespace, paired_bootstrap_diff) -> list[str]:
    """One table per kind of user: the arms' scores, the share of the hand-written persona's, the rules stated."""
    n_test = len(rows[0]["default"])

    def mean_score(arm: str) -> float:
        return sum(sum(r[arm]) for r in rows) / sum(len(r[arm]) for r in rows)

    rating = kind == "rating"
    title = (
        f"### MovieLens-style: {len(rows)} users x {n_test} held-out movies, {args.past} past ratings each "
        "(a loved and a hated genre)"
        if rating
        else f"### LaMP-2N-style: {len(rows)} users x {n_test} held-out articles, {args.label_past} past "
        "articles each (one category filed under another label, 10% noise)"
    )
    first = "MAE" if rating else "accuracy"
    lines = [
        title,
        "",
        f"| arm | {first} | mean score | share of the hand-written persona's score |",
        "|---|---|---|---|",
    ]
    aligned_arms = sorted({a for r in rows for a in r if a.startswith("aligned") and all(a in x for x in rows)})
    for arm in ("default", "hand", *aligned_arms):
        value = (1 - mean_score(arm)) * 4.5 if rating else mean_score(arm)
        lines.append(f"| {arm} | {value:.3f} | {mean_score(arm):.3f} | {mean_score(arm) / mean_score('hand'):.0%} |")
    per_user = 2 if rating else 1
    flat = {arm: [x for r in rows for x in r[arm]] for arm in ("default", "hand", *aligned_arms)}
    for arm in aligned_arms:
        compiles = [r.get("compiles", {}).get(arm) or r for r in rows]
        rules = sum(stated(r, arm) for r in rows)
        diffs = {other: paired_bootstrap_diff(flat[arm], flat[other]) for other in ("default", "hand")}
        lines += [
            "",
            (
                f"`{arm}`: planted rules stated by the candidate persona: {rules} of {per_user * len(rows)} "
                f"({rules / (per_user * len(rows)):.0%}); promoted: {sum(c['promoted'] for c in compiles)} of "
                f"{len(rows)}; LM calls per compile: {sum(c['lm_calls'] for c in compiles) / len(rows):.1f}, tokens "
                f"{sum(c['tokens'] for c in compiles) / len(rows):.0f}. Mean score minus each arm over the held-out "
                "items (paired bootstrap over items; items of one user are not independent, so this interval is "
                "optimistic): "
                + "; ".join(f"vs {o}: {d[0]:+.3f} [{d[1]:+.3f}, {d[2]:+.3f}]" for o, d in diffs.items())
                + "."
            ),
        ]
    hand_vs_default = mean_score("hand") - mean_score("default")
    if abs(hand_vs_default) < 0.01:
        lines.append(
            f"The hand-written persona scores what the default persona scores ({mean_score('hand'):.3f}): the 1.5B "
            "model does not act on the rules it is told in words here"
            + (
                '; what moves its answers is the number the aligned guidance states ("answer 4.5 for a typical '
                'movie"), so `aligned` clears the 90% target against this ceiling only because the ceiling does not '
                "move the model."
                if rating
                else "."
            )
        )
    else:
        lines.append(f"The hand-written persona scores {hand_vs_default:+.3f} against the default persona.")
    return lines


if __name__ == "__main__":
    main()
