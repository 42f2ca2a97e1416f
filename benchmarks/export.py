"""Export fidelity: the exported prompt through a plain chat call vs the in-framework agent, same dev cases.

    python benchmarks/export.py --users 12 [--align]       # the configured LM (PERSONA_DSPY_LM)
    python benchmarks/export.py --users 3 --scripted       # a smoke run with a scripted LM (no model)

stanfordnlp/dspy#8042 reports an optimized prompt, extracted from its program, scoring far below the
program. Here, per MovieLens dev case (``benchmarks/data/movielens_dev.jsonl``, read with
``persona_dspy.data.load_shared``): the user's profile items are ingested (the query never is), the
user's agent is loaded with ``load_agent`` (the default persona, or with ``--align`` the persona a
``PersonaOptimizer`` compile promoted), its semantic profile distilled once, and the held-out rating
is asked twice (in alternating order, so neither arm always finds the other's prompt in the model's
KV cache):

- ``agent``: ``agent(task=..., before=query time)``: DSPy's adapter, its JSON fallback on an
  unparsable reply, and the agent's one retry on an invalid answer;
- ``export``: ``export_prompt(format="messages")`` (built by the agent's own adapter: exactly the
  chat the agent sends) as one plain chat call: a ``dspy.lm15.Request`` of those messages with the
  LM's own generation options, ``cache=False`` so the reply never comes from DSPy's cache of the
  agent's identical call (no adapter, no fallback, no retry); the reply is read after its
  ``[[ ## answer ## ]]`` marker by the task's own contract (``persona_dspy.export.parse_reply``).

Reported: mean score (1 - |error| / 4.5, an invalid answer scores 0), MAE (an invalid answer counts
as the worst error, 4.5), valid answers, how many exported chats were identical to the agent's first
call (from the LM's history), and whether the export's mean score is within 2% of the agent's.
Writes BENCHMARKS.md "## Export" and benchmarks/results/export.json (not with ``--scripted``: a
scripted run checks the plumbing, it measures nothing).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import dspy
from dspy.clients.backend_selection import CLIENT_KEYS
from dspy.lm15 import request_from_openai_chat

import persona_dspy  # noqa: F401  (environment guards first)
from persona_dspy import Settings
from persona_dspy.data import load_shared
from persona_dspy.export import agent_prompt, parse_reply
from persona_dspy.lm import build_lm
from persona_dspy.lm.scripted import ScriptedLM
from persona_dspy.memory import EpisodicMemory
from persona_dspy.optimizers import PersonaOptimizer
from persona_dspy.serving import RealignPolicy, compile_due, load_agent
from persona_dspy.tracking import Tracking

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _report import replace_section

DEV = ROOT / "benchmarks" / "data" / "movielens_dev.jsonl"
HEADING = "## Export"
WORST_ERROR = 4.5
_NOT_GENERATION = CLIENT_KEYS | {"n", "rollout_id", "num_generations", "prompt_cache"}  # DSPy's, not the Request's
_MOVIE = re.compile(r"movie:\s*(.+?)\s+genres:")


def scripted_rule(messages: list[dict[str, str]]) -> str | dict[str, str]:
    """A rating that depends only on the movie asked: both arms send the same chat and must agree."""
    system = messages[0]["content"] if messages and messages[0]["role"] == "system" else ""
    if "previous_profile" in system:
        return {"profile": "- rates comedies high\n- rarely gives 5 stars"}
    movie = _MOVIE.findall(messages[-1]["content"])
    digest = int(hashlib.sha256((movie[-1] if movie else "").encode()).hexdigest(), 16)
    return {"answer": f"{1 + (digest % 9) / 2:.1f}"}


def plain_call(lm: dspy.LM, messages: list[dict[str, Any]]) -> str:
    """One chat call with ``messages`` as they are: the LM's own generation options (as the agent's first
    call gets them), no adapter, and no response cache (a real LM call, never the agent's cached reply)."""
    options = {k: v for k, v in lm.kwargs.items() if k not in _NOT_GENERATION and v is not None}
    request = request_from_openai_chat({"model": lm.model, "messages": messages, **options})
    return lm(request, cache=False).text or ""


def first_answering_call(entries: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """The messages of the agent's first answering call among LM history ``entries`` (not a profile distillation)."""
    for entry in entries:
        messages = entry.get("messages") or []
        if messages and "[[ ## task ## ]]" in str(messages[-1].get("content", "")):
            return messages
    return None


def run(args: argparse.Namespace) -> dict:
    cases = load_shared(args.data, limit_users=args.users)
    with tempfile.TemporaryDirectory(prefix="persona_export_") as tmp:
        settings = Settings(state_dir=Path(tmp), qdrant=str(Path(tmp) / "qdrant"), lm=args.lm or Settings().lm)
        lm = ScriptedLM(scripted_rule) if args.scripted else build_lm(settings)
        tracking = Tracking(settings)
        with EpisodicMemory(settings) as memory:
            memory.add([it for case in cases for it in case.interactions], progress=True)
            if args.align:
                compile_due(
                    PersonaOptimizer(n_recent=args.n_recent, n_val=args.n_val),
                    settings=settings,
                    policy=RealignPolicy(realign_after=1),
                    users=[c.user_id for c in cases],
                    memory=memory,
                    tracking=tracking,
                    lm=lm,
                    workers=1,
                )
            rows = []
            for case in cases:
                q = case.query
                agent = load_agent(case.user_id, q.task, settings=settings, memory=memory, tracking=tracking)
                with dspy.context(lm=lm):
                    agent.refresh_profile()
                    messages = agent_prompt(agent, "messages", q.input, before=q.timestamp)
                    arms: dict[str, Any] = {}
                    for arm in ("agent", "export") if len(rows) % 2 == 0 else ("export", "agent"):
                        seen = len(lm.history)
                        started = time.perf_counter()
                        if arm == "agent":
                            arms["agent"] = agent(task=q.input, before=q.timestamp).answer
                            arms["agent_prompt"] = first_answering_call(lm.history[seen:])
                        else:
                            arms["export_raw"] = plain_call(lm, messages)
                            arms["export"] = parse_reply(agent.task, arms["export_raw"])
                        arms[f"{arm}_seconds"] = time.perf_counter() - started
                rows.append(
                    {
                        "user_id": case.user_id,
                        "gold": q.output,
                        "persona_version": agent.persona_version,
                        "agent": arms["agent"],
                        "export": arms["export"],
                        "export_raw": arms["export_raw"],
                        "identical_prompt": arms["agent_prompt"] == messages,
                        "agent_seconds": arms["agent_seconds"],
                        "export_seconds": arms["export_seconds"],
                    }
                )
                print(f"{case.user_id}: gold {q.output} agent {arms['agent']} export {arms['export']}", file=sys.stderr)
    task = agent.task
    summary = {}
    for arm in ("agent", "export"):
        scores = [task.score(r[arm], r["gold"]) for r in rows]
        errors = [abs(float(r[arm]) - float(r["gold"])) if r[arm] is not None else WORST_ERROR for r in rows]
        summary[arm] = {
            "score": sum(scores) / len(scores),
            "mae": sum(errors) / len(errors),
            "valid": sum(r[arm] is not None for r in rows),
            "seconds_per_case": sum(r[f"{arm}_seconds"] for r in rows) / len(rows),
        }
    agent_score = summary["agent"]["score"]
    gap = (summary["export"]["score"] - agent_score) / agent_score if agent_score else 0.0
    return {
        "lm": "scripted" if args.scripted else settings.lm,
        "cases": len(rows),
        "aligned": args.align,
        "same_answer": sum(r["agent"] == r["export"] for r in rows),
        "identical_prompt": sum(r["identical_prompt"] for r in rows),
        "relative_gap": gap,
        "within_2pct": abs(gap) <= 0.02,
        "summary": summary,
        "rows": rows,
    }


def report(result: dict, command: str) -> str:
    s = result["summary"]
    persona = "personas compiled first (`--align`)" if result["aligned"] else "default persona, profile distilled once"
    lines = [
        f"`{command}` ({result['cases']} MovieLens dev cases, LM `{result['lm']}`, {persona}).",
        "",
        "| path | mean score | MAE | valid | s / case |",
        "|---|---|---|---|---|",
    ]
    names = {"agent": "in-framework agent (DSPy adapter)", "export": "exported prompt, plain chat call"}
    for arm, name in names.items():
        lines.append(
            f"| {name} | {s[arm]['score']:.3f} | {s[arm]['mae']:.2f} | {s[arm]['valid']}/{result['cases']} | "
            f"{s[arm]['seconds_per_case']:.1f} |"
        )
    verdict = "within" if result["within_2pct"] else "NOT within"
    lines += [
        "",
        (
            f"The exported chat was identical to the agent's first LM call on {result['identical_prompt']}/"
            f"{result['cases']} cases. Same answer on {result['same_answer']}/{result['cases']} cases; the export's "
            f"mean score is {result['relative_gap']:+.1%} relative to the agent's: {verdict} 2%."
        ),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEV)
    parser.add_argument("--users", type=int, default=20, help="the first N dev cases (one per user)")
    parser.add_argument("--align", action="store_true", help="compile each user's persona first")
    parser.add_argument("--n-recent", type=int, default=3)
    parser.add_argument("--n-val", type=int, default=4)
    parser.add_argument("--lm", help="LiteLLM model string (default: PERSONA_DSPY_LM, the embedded model)")
    parser.add_argument("--scripted", action="store_true", help="a scripted LM: checks the plumbing, writes nothing")
    parser.add_argument("--out", type=Path, help="per-case results as JSON (default: benchmarks/results/export.json)")
    args = parser.parse_args(argv)
    result = run(args)
    command = "python benchmarks/export.py " + " ".join(argv if argv is not None else sys.argv[1:])
    body = report(result, command.strip())
    print(body)
    out = args.out or (None if args.scripted else ROOT / "benchmarks" / "results" / "export.json")
    if out is not None:
        out.write_text(json.dumps(result, indent=1))
    if not args.scripted:
        replace_section(ROOT / "BENCHMARKS.md", HEADING, body)
    return result


if __name__ == "__main__":
    main()
