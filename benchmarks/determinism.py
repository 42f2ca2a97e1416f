"""Does the embedded model give the same prompt the same answer? With llama.cpp's prompt cache and without.

    python benchmarks/determinism.py [--users 20]    # about 30 s per user; rewrites BENCHMARKS.md's section

For each of the first ``--users`` MovieLens users, the ``persona`` method's prompt for the held-out query (the
default persona, the episodes memory recalls before it: 4 when the section was measured, the agent's
default ``k`` now) is answered twice in a row: first right after another
user's prompt (the single slot's cache holds only the instructions both share), then right after itself (the
cache holds all of it). An answer that differs between the two is the run-to-run noise the quality benchmark
sees between arms (``quality.py``'s "run-to-run noise" line). The same again with the prompt cache off
(``PERSONA_DSPY_EMBEDDED_CACHE_PROMPT=0``), with the seconds per call of both. Results:
``benchmarks/results/determinism.json``; ``--report`` rewrites the section from it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import dspy

import persona_dspy  # noqa: F401  (environment guards first)
from persona_dspy import Settings
from persona_dspy.agent import PersonaAgent
from persona_dspy.evaluation import _ACTIONS, load_past
from persona_dspy.lm import LlamaCppEngine, model_path
from persona_dspy.memory import EpisodicMemory
from persona_dspy.signatures import get_task

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _report import replace_section
from quality import load_cases

OUT = ROOT / "benchmarks" / "results" / "determinism.json"
HEADING = "## Determinism of the embedded model (the prompt cache)"


def run(users: int) -> dict[str, Any]:
    settings = Settings()
    cases = load_cases("movielens", users)
    out: dict[str, Any] = {"users": len(cases), "modes": {}}
    with EpisodicMemory(Settings(qdrant=":memory:", state_dir="/tmp/persona_determinism")) as memory:
        for case in cases:
            load_past(memory, case)
        for cache_prompt in (True, False):
            engine = LlamaCppEngine(
                model_path(settings.cache_dir),
                n_threads=settings.embedded_threads,
                n_ctx=settings.embedded_ctx,
                cache_prompt=cache_prompt,
            )
            name = settings.lm.split("/", 1)[1]
            lm = dspy.LM(
                f"local/{name}",
                engine=engine,
                cache=False,
                num_retries=0,
                temperature=settings.lm_temperature,
                max_tokens=settings.lm_max_tokens,
            )
            rows, seconds = [], {"after_other": [], "after_itself": []}
            with dspy.context(lm=lm):
                lm("Say OK.")  # load the model and fill the cache with an unrelated prompt: not timed
                for case in cases:
                    q = case.query
                    agent = PersonaAgent(
                        get_task(case.task), user_id=case.user_id, memory=memory, actions=_ACTIONS["persona"]
                    )
                    answers = []
                    for spent in seconds.values():  # after another user's prompt (or the warm-up's), then after itself
                        started = time.perf_counter()
                        answers.append(agent(task=q.input, before=q.timestamp).answer)
                        spent.append(time.perf_counter() - started)
                    rows.append({"user_id": case.user_id, "after_other": answers[0], "after_itself": answers[1]})
                    print(f"cache_prompt={cache_prompt} {case.user_id:<6} {answers}", flush=True)
            engine.close()
            out["modes"]["on" if cache_prompt else "off"] = {
                "rows": rows,
                "differ": sum(r["after_other"] != r["after_itself"] for r in rows),
                "seconds_after_other": statistics.mean(seconds["after_other"]),
                "seconds_after_itself": statistics.mean(seconds["after_itself"]),
            }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(out, indent=1))
    return out


def report(out: dict[str, Any]) -> str:
    on, off = out["modes"].get("on"), out["modes"].get("off")
    lines = [
        (
            "Embedded Qwen2.5-Coder-1.5B (Q4_K_M) on 2 cores, temperature 0. The `persona` method's prompt for each of "
            f"the first {out['users']} MovieLens users' held-out query, answered twice in a row: after another user's "
            "prompt, then after itself (the single slot's prompt cache then holds all of it). Rerun: "
            f"`python benchmarks/determinism.py --users {out['users']}` (about 30 s per user). Twelve users show the "
            "mechanism, not its rate; the quality benchmarks ran with the cache on."
        ),
        "",
        "| prompt cache | users | answers that differ between the two | seconds per call after another prompt | after itself |",
        "|---|---|---|---|---|",
    ]
    for label, mode in (("on (the default)", on), ("off (`PERSONA_DSPY_EMBEDDED_CACHE_PROMPT=0`)", off)):
        if mode:
            lines.append(
                f"| {label} | {len(mode['rows'])} | {mode['differ']} | {mode['seconds_after_other']:.1f} | "
                f"{mode['seconds_after_itself']:.1f} |"
            )
    if on and off:
        same = sum(a["after_other"] == b["after_other"] for a, b in zip(on["rows"], off["rows"]))
        lines += [
            "",
            (
                f"The first answers (after another prompt) agree between the two modes on {same} of {len(on['rows'])} "
                "users: without the cache the model computes the prompt in other batches, so its answer may differ "
                "from the cached run's too; what the mode buys is that it repeats."
            ),
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--report", action="store_true", help="only rewrite the section from the stored results")
    args = parser.parse_args()
    out = json.loads(OUT.read_text()) if args.report else run(args.users)
    text = report(out)
    replace_section(ROOT / "BENCHMARKS.md", HEADING, text)
    print(text)


if __name__ == "__main__":
    main()
