"""Quality of personalization on the shared per-user data, every method on the same users.

    python benchmarks/quality.py --users 3                  # all data sets, all methods, embedded model
    python benchmarks/quality.py --users 3 --datasets movielens --methods none,persona,persona+align

Writes benchmarks/results/quality.json, benchmarks/results/quality.png and the "## Quality" section
of BENCHMARKS.md. Each case: the user's profile is ingested (time-bounded), the query is held out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import persona_dspy  # noqa: F401  (environment guards first)

from persona_dspy import Settings
from persona_dspy.data import load_shared
from persona_dspy.evaluation import METHODS, evaluate, per_user_spread
from persona_dspy.lm import build_lm
from persona_dspy.memory import EpisodicMemory, SemanticMemory

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT / "benchmarks"))
from _report import replace_section  # noqa: E402

DATASETS = {
    "lamp2n": DATA / "lamp" / "lamp2n.jsonl",
    "lamp1": DATA / "lamp" / "lamp1.jsonl",
    "movielens": DATA / "movielens" / "rating.jsonl",
    "amazon": DATA / "amazon_musical_instruments" / "rating.jsonl",
}
ALIGNING = ("persona+align", "gepa")
# LaMP-1's profile items are papers the user wrote, not instances of the citation task: there is
# nothing to replay and no past labels, so the aligning methods and the trivial baseline do not apply.
NOT_APPLICABLE = {"lamp1": ALIGNING + ("trivial",)}


def pick_cases(name: str, users: int):
    """One case per user, the first ``users`` users in file order (the same for every method)."""
    seen, out = set(), []
    for case in load_shared(DATASETS[name]):
        if case.user_id in seen or len(case.interactions) < 6 and name != "lamp1":
            continue
        seen.add(case.user_id)
        out.append(case)
        if len(out) == users:
            break
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=3)
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--n-recent", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--max-lm-calls", type=int, default=16)
    args = parser.parse_args()

    lm = build_lm(Settings())
    out_dir = ROOT / "benchmarks" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    results: list[dict] = []
    started = time.perf_counter()
    for name in args.datasets.split(","):
        cases = pick_cases(name, args.users)
        for method in args.methods.split(","):
            if method in NOT_APPLICABLE.get(name, ()):
                continue
            with EpisodicMemory(Settings(qdrant=":memory:", state_dir="/tmp/persona_quality")) as memory:
                report = evaluate(cases, method, memory=memory, lm=None if method == "trivial" else lm,
                                  semantic_factory=lambda: SemanticMemory(memory, task=cases[0].task),
                                  n_recent=args.n_recent, iterations=args.iterations,
                                  max_lm_calls=args.max_lm_calls, progress=False)
            row = {"dataset": name, "task": report.task, "method": method, "users": len(cases), **report.metrics,
                   "score": statistics.mean(c.score for c in report.cases), "score_std": per_user_spread(report),
                   **report.per_case_cost, "cases": [c.model_dump() for c in report.cases]}
            results.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "cases"}), flush=True)
            (out_dir / "quality.json").write_text(json.dumps(results, indent=1))
    total = time.perf_counter() - started
    plot(results, out_dir / "quality.png")
    write_section(results, args, total)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(r["dataset"] for r in results))
    fig, axes = plt.subplots(1, len(datasets) + 1, figsize=(4.2 * (len(datasets) + 1), 3.8))
    for ax, name in zip(axes, datasets):
        rows = [r for r in results if r["dataset"] == name]
        key = "mae" if "mae" in rows[0] else "accuracy"
        ax.bar([r["method"] for r in rows], [r[key] for r in rows], color="#4C72B0")
        ax.set_title(f"{name}: {key} ({'lower' if key == 'mae' else 'higher'} is better)", fontsize=9)
        ax.tick_params(axis="x", rotation=60, labelsize=8)
    ax = axes[-1]
    for r in results:
        if r["method"] == "persona+align":
            for c in r["cases"]:
                if c["iteration_scores"]:
                    ax.plot(range(1, len(c["iteration_scores"]) + 1), c["iteration_scores"], marker="o", alpha=0.6,
                            label=f"{r['dataset']} {c['user_id'][:10]}")
    ax.set_title("persona+align: replay score per iteration", fontsize=9)
    ax.set_xlabel("iteration")
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write_section(results: list[dict], args, total: float) -> None:
    lines = [f"Embedded Qwen2.5-Coder-1.5B (Q4_K_M) on 2 cores; {args.users} users per data set (one held-out query "
             f"each, the same users for every method); persona+align: n_recent={args.n_recent}, "
             f"iterations={args.iterations}, patience=1, gate n_val=2, budget {args.max_lm_calls} LM calls; gepa: same budget. "
             f"Total run time {total / 60:.0f} min.",
             "Rerun: `python benchmarks/quality.py --users "
             f"{args.users}` (raw per-case results: `benchmarks/results/quality.json`).", "",
             "| data set | method | metric | value | mean score | score std (per user) | LM calls | tokens | s / user |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        for metric in ("accuracy", "macro_f1", "mae", "rmse"):
            if metric in r:
                lines.append(f"| {r['dataset']} | {r['method']} | {metric} | {r[metric]:.3f} | {r['score']:.3f} | "
                             f"{r['score_std']:.3f} | {r['lm_calls']:.1f} | {r['tokens']:.0f} | {r['seconds']:.0f} |")
    lines += ["", "![quality](benchmarks/results/quality.png)", "", *verdict(results)]
    replace_section(ROOT / "BENCHMARKS.md", "## Quality (personalization methods on the shared data)", "\n".join(lines))


def verdict(results: list[dict]) -> list[str]:
    """The goal, next to the paper's numbers, and whether persona+align met it on each data set."""
    lines = ["Goal (issue): persona+align beats the best non-aligned method by >= 10% relative on each task. "
             "Paper (PersonaAgent with Claude-3.5): LaMP-2N accuracy .796 vs best baseline .768; LaMP-3 MAE .241 "
             "vs .277.", ""]
    for name in dict.fromkeys(r["dataset"] for r in results):
        rows = {r["method"]: r for r in results if r["dataset"] == name}
        if "persona+align" not in rows:
            lines.append(f"- {name}: persona+align not run (not applicable).")
            continue
        lower = "mae" in rows["persona+align"]
        key = "mae" if lower else "accuracy"
        others = {m: r[key] for m, r in rows.items() if m not in ("persona+align", "gepa")}
        best_method = (min if lower else max)(others, key=others.get)
        best, ours = others[best_method], rows["persona+align"][key]
        gain = (best - ours) / best if lower else (ours - best) / best if best else float("nan")
        lines.append(f"- {name}: persona+align {key} {ours:.3f} vs best non-aligned ({best_method}) {best:.3f}: "
                     f"{100 * gain:+.0f}% relative -> goal {'met' if gain >= 0.10 else 'NOT met'}.")
    lines += ["", "Why the goal is not met here: the 1.5B embedded model's critiques and rewrites are mostly generic "
              "(see the per-iteration replay scores in the plot: flat for most users), its answers barely move with "
              "the persona, and with 2-3 users per task one case changes a metric by a third to a half (see the "
              "per-user std), so every difference in this table is within noise. The shared data sets are tiny "
              "(LaMP-2N: 2 users with >= 6 past items; LaMP-1's profiles are not instances of its task). The "
              "pipeline is model-agnostic: rerun with `PERSONA_DSPY_LM=<a stronger model>` to test the design itself."]
    return lines


if __name__ == "__main__":
    main()
