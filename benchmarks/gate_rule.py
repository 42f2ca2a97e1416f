"""The gate's rule, ablated: what ``trust_measured`` (the default since 2026-11-26) serves against the strict gate.

    python benchmarks/gate_rule.py             # answers the flipped cases (resumable), then reports
    python benchmarks/gate_rule.py --report    # report from stored answers only

``PersonaOptimizer(trust_measured=True)`` changes only the gate's decision: a candidate of measured facts
alone (no LM rewrite kept) is promoted unless the held-back interactions show it worse, where the strict
gate (``trust_measured=False``, the default before) needs a strict gain and more wins than losses. The
replays, the loss, the step and the gate's answers are the same, so each stored strict-gate compile
(``persona+align:trust_measured=0`` in ``benchmarks/results/quality_cases.jsonl``: its gate scores, its
better/worse counts, whether a rewrite was kept) is re-decided with the optimizer's own rule
(``PersonaOptimizer.promotes``). Where the decision flips to "promote", the candidate is re-grounded as a
promotion does (``_finalize``, no LM call) and the held-out query is answered with it: one LM call per
flipped user, stored in ``benchmarks/results/gate_rule_cases.jsonl``. Every other user is served what the
stored run served. The report pairs the result with every stored method on the same users.

Caveat (said again in the report): the rule was tried here after the stored compiles pointed at it (the
gate left most users on the default persona, whose answers were worse than the anchor's), so these users
chose the rule; users the benchmark has not run yet are the test of it.

The test (fixed before its users ran, 2026-11-26): MovieLens users 158-240 (``TEST_FROM``) are run with the
``persona+align:trust_measured=1`` arm and every non-aligned method, the strict gate derived as for the
arm. ``trust_measured`` becomes the default if, on those users alone, its MAE is no higher than the strict
gate's and its paired difference to ``trivial`` is negative (the point estimate; the interval is reported).
It passed, and the arm's rows are now ``persona+align`` (the default method), the strict gate's rows
``persona+align:trust_measured=0``.

A second test (fixed 2026-11-26 19:43 UTC, after the arm had run on MovieLens users 77-80, which it
leaves out): ``gate_replayed=True, n_val=1`` (a measured candidate gated on the 3 replayed interactions and
the one before them, 8 LM calls instead of 11) becomes the default if, on MovieLens users 81-124
(``REPLAYED_TEST``, the users where ``persona+align`` ran directly), the arm
``persona+align:gate_replayed=1,n_val=1`` has an MAE no higher than ``persona+align``'s (point estimate;
the paired interval is reported) and a mean compile cost of at most 5,000 tokens. Users the run does not
reach are left out, and how many it reached is reported.

A third test (fixed 2026-11-26 21:29 UTC, before any of its users ran): ``persona+align:gate_replayed=1,n_val=1,
lean=1`` (the second test's arm, whose persona leaves out the facts when its guidance states the anchor: shorter
prompts, the same facts in the loss and the rewrite) becomes the default if (1) on MovieLens users 126-157
(``LEAN_TEST``: their ``persona+align`` answers are the stored strict-gate compiles re-decided with today's gate,
as ``report_combined`` derives them) its MAE is no higher than ``persona+align``'s and its mean compile cost is at
most 5,000 tokens, and (2) on Amazon users 1-16 (``LEAN_AMAZON``, where the second test's arm answered worse
than ``persona+align``) its MAE is no higher than ``persona+align``'s. Point estimates; the paired intervals are
reported. Users a run does not reach are left out and counted; with fewer than 16 MovieLens or 8 Amazon users
there is no verdict. (Added after the MovieLens half ran and missed its condition: one missed condition decides
the test, so the Amazon half was not run.)

A fourth test (fixed 2026-11-27 00:55 UTC, before any of its users ran): ``min_facts=3`` (``PersonaOptimizer.windows``:
a short history's replay and gate windows narrowed so that the facts keep at least 3 interactions before them)
becomes the default if, on all 43 Amazon users (``FITTED_TEST``), the arm ``persona+align:min_facts=3`` has an MAE
no higher than ``persona+align``'s and a mean compile cost no higher in LM calls (point estimates; the paired
interval is reported). What motivated it is the split alone, counted from the data's lengths and timestamps, not
from any answer: with the windows as given (3 replayed + 4 gated), 18 of the 43 Amazon users have no facts at all,
7 have 1-2 and 7 are too short to compile; narrowed, 25 users get other windows. It changes the windows of one
MovieLens user of 240 (163, whose 14 ratings leave no facts before the 7 latest) and of no LaMP-2N query, so on those
sets the arm is the default except for that user (reported, not rerun). (Clarified at 01:45 UTC, after 15 of the 43
users had run, when a review pointed out that "mean compile cost" allows three readings: the condition is read as
the mean LM calls per compile over the users both arms compiled; the mean over every compile of each arm and the
mean per user, a user not compiled counting 0, are reported beside it.)
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import persona_dspy  # noqa: F401  (environment guards first)
from persona_dspy import Settings
from persona_dspy.agent import PersonaAgent
from persona_dspy.evaluation import _ACTIONS, load_past, metrics
from persona_dspy.lm import build_lm
from persona_dspy.memory import EpisodicMemory
from persona_dspy.optimizers import PersonaOptimizer
from persona_dspy.optimizers.persona_optimizer import MIN_FACTS
from persona_dspy.results import CompileResult
from persona_dspy.signatures import get_task

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _report import replace_section
from quality import CASES, MAIN, aligned, checks, load_cases, stored
from stats import metric_ci, paired_metric_diff

OUT = ROOT / "benchmarks" / "results" / "gate_rule_cases.jsonl"
FITTED = f"{MAIN}:min_facts={MIN_FACTS}"  # the fourth test's arm, on every Amazon user (FITTED_TEST)
FITTED_TEST = ("amazon", 43)
HEADING = "## Gate rule: trusting a measured candidate (ablation on the stored compiles)"
COUNTS = re.compile(r"\((\d+) better, (\d+) worse")


def decides(row: dict[str, Any], optimizer: PersonaOptimizer) -> bool | None:
    """What ``optimizer``'s gate decides on a stored compile (None: no gate ran, e.g. the persona did
    not change or the user was not compiled)."""
    compile_ = row.get("compile") or {}
    counts = COUNTS.search(compile_.get("reason") or "")
    if counts is None or compile_.get("val_score_candidate") is None:
        return None
    gain = compile_["val_score_candidate"] - compile_["val_score_production"]
    rewritten = compile_.get("rewritten")
    if rewritten is None:  # rows written before CompileResult.rewritten: a step was kept if the loop ran to
        # its end ("... iteration(s) done") or reached a second iteration (each starts from a kept step)
        rewritten = compile_.get("stopped", "").endswith("iteration(s) done") or len(compile_.get("steps") or []) > 1
    promoted, _ = optimizer.promotes(gain, int(counts.group(1)), int(counts.group(2)), measured=not rewritten)
    return promoted


def flips(row: dict[str, Any], optimizer: PersonaOptimizer) -> bool:
    """Whether ``optimizer``'s gate promotes a stored compile that the stored run did not."""
    return not row.get("promoted") and decides(row, optimizer) is True


def answer_flipped(dataset: str, rows: list[dict[str, Any]], optimizer: PersonaOptimizer) -> None:
    done = {json.loads(line)["case_id"] for line in OUT.read_text().splitlines()} if OUT.exists() else set()
    todo = {r["case_id"]: r for r in rows if flips(r, optimizer) and r["case_id"] not in done}
    if not todo:
        return
    lm = build_lm(Settings())
    import dspy

    cases = {c.query.id: c for c in load_cases(dataset, 10_000) if c.query.id in todo}
    with EpisodicMemory(Settings(qdrant=":memory:", state_dir="/tmp/persona_gate_rule")) as memory:
        for case_id, row in todo.items():
            case = cases[case_id]
            task = get_task(row["task"])
            load_past(memory, case)
            agent = PersonaAgent(
                task,
                user_id=case.user_id,
                memory=memory,
                k=8,
                actions=_ACTIONS[MAIN],
                persona=row["compile"]["candidate_persona"],
            )
            past = sorted(case.interactions, key=lambda it: (it.timestamp, it.id))
            train, val = optimizer.split(case.user_id, past)
            result = CompileResult(
                user_id=case.user_id,
                params={},
                initial_persona=agent.persona,
                candidate_persona=agent.persona,
                production_persona="",
                val_ids=[it.id for it in val],
            )
            persona = optimizer._finalize(agent, train, result)  # what a promotion serves (no LM call)
            agent.persona = persona
            with dspy.context(lm=lm), dspy.track_usage() as usage:
                prediction = agent(task=case.query.input, before=case.query.timestamp).answer
            calls = sum(len(v) for v in usage.usage_data.values())
            out = {
                "dataset": dataset,
                "case_id": case_id,
                "user_id": case.user_id,
                "truth": row["truth"],
                "prediction": prediction,
                "persona": persona,
                "stored_prediction": row["prediction"],
                "answer_calls": calls,
                "checks": checks(case, persona),
            }
            with OUT.open("a") as f:
                f.write(json.dumps(out) + "\n")
            print(
                f"  {case.user_id:<14} truth {row['truth']:<5} stored {row['prediction']!s:<5} trusted {prediction}",
                flush=True,
            )
            memory.forget(case.user_id)


def report(dataset: str, rows: list[dict[str, Any]], optimizer: PersonaOptimizer) -> list[str]:
    answered = {}
    if OUT.exists():
        for line in OUT.read_text().splitlines():
            r = json.loads(line)
            if r["dataset"] == dataset:
                answered[r["case_id"]] = r
    flipped = [r["case_id"] for r in rows if flips(r, optimizer)]
    missing = [c for c in flipped if c not in answered]
    if missing:
        return [f"- {dataset}: {len(missing)} flipped cases not answered yet: run without --report."]
    by_spec = stored_by_spec(dataset)
    strict_rows = strict_spec(dataset)
    main = by_spec[strict_rows]
    trusted = {cid: (answered[cid]["prediction"] if cid in answered else r["prediction"]) for cid, r in main.items()}
    ids = sorted(main)
    promoted = sum(bool(r.get("promoted")) for r in main.values())
    new = [answered[c] for c in flipped]
    others = {
        f"{strict_rows} (strict gate)" if spec == strict_rows else spec: preds
        for spec, preds in _preds(by_spec).items()
    }
    unit = "users" if get_task(rows[0]["task"]).kind == "rating" else "queries"
    return [
        f"### {dataset} ({len(ids)} {unit}: the stored strict-gate compiles, `{strict_rows}`)",
        "",
        (
            f"- Promoted: {promoted} of {len(ids)} with the strict gate; {promoted + len(flipped)} with "
            f"`trust_measured` ({len(flipped)} ties or near-ties of a measured candidate flip to promoted; "
            f"the served answer changed for {sum(n['prediction'] != n['stored_prediction'] for n in new)} of them)."
        ),
        (
            f"- Newly promoted personas that drop the base instructions: "
            f"{sum(not n['checks'].get('base_kept', True) for n in new)}; that contradict the user's statistics: "
            f"{sum(bool(n['checks'].get('contradictions')) for n in new)}."
        ),
        "",
        *paired(get_task(rows[0]["task"]), trusted, ids, others),
    ]


def stored_by_spec(dataset: str) -> dict[str, dict[str, dict]]:
    """The stored quality rows of ``dataset``: spec -> case id -> row."""
    by_spec: dict[str, dict[str, dict]] = {}
    for r in stored():
        if r["dataset"] == dataset:
            by_spec.setdefault(r["spec"], {})[r["case_id"]] = r
    return by_spec


ARM = MAIN
"""The rows run with ``trust_measured`` (the default method)."""
STRICT = f"{MAIN}:trust_measured=0"
"""The rows run with the strict gate (the default before 2026-11-26), re-decided here for ``trust_measured``."""
LABEL_STRICT = f"{MAIN}:confusion=0,trust_measured=0"
"""LaMP-2N's strict-gate rows: they ran before ``confusion`` became the default for label tasks (2026-11-27), so
they are labelled with it off. A rating task has no confusion to state: its rows keep ``STRICT``."""


def strict_spec(dataset: str) -> str:
    """The spec of ``dataset``'s stored strict-gate rows."""
    return LABEL_STRICT if dataset == "lamp2n" else STRICT


TEST_FROM = {"movielens": 157}
"""Per data set, the first case (0-based, in ``load_cases`` order) run after the rule was chosen: the test."""


def test_ids(dataset: str) -> set[str] | None:
    """The cases of the pre-registered test of the rule (None: no test for ``dataset``)."""
    if dataset not in TEST_FROM:
        return None
    return {c.query.id for c in load_cases(dataset, 10_000)[TEST_FROM[dataset] :] if c.query is not None}


REPLAYED = "persona+align:gate_replayed=1,n_val=1"
REPLAYED_TEST = slice(80, 124)
"""The second test's MovieLens cases (0-based, ``load_cases`` order): users 81-124."""


def report_replayed(dataset: str) -> list[str]:
    """The second test (module docstring): ``REPLAYED`` against ``persona+align`` on the ``REPLAYED_TEST`` users
    both ran, with its verdict; every user the arm ran on is paired against every method too."""
    by_spec = stored_by_spec(dataset)
    arm, main = by_spec.get(REPLAYED, {}), by_spec.get(ARM, {})
    if dataset != "movielens" or len(arm) < 5:
        return []
    planned = [c.query.id for c in load_cases(dataset, 10_000)[REPLAYED_TEST] if c.query is not None]
    ids = [i for i in planned if i in arm and i in main]
    task = get_task(next(iter(arm.values()))["task"])
    calls = [r["compile"]["lm_calls"] for r in arm.values() if r.get("compile")]
    tokens = [r["compile"]["tokens"] for r in arm.values() if r.get("compile")]
    test_tokens = [arm[i]["compile"]["tokens"] for i in ids if arm[i].get("compile")]
    lines = [
        f"### {dataset}: `{REPLAYED}` (a measured candidate gated on the replayed interactions too; {len(arm)} users)",
        "",
        (
            f"- Compile cost: {sum(calls) / max(len(calls), 1):.1f} LM calls and {sum(tokens) / max(len(tokens), 1):,.0f} "
            f"tokens on average ({len(calls)} compiles; `persona+align`: about 11 and 7,100). Promoted: "
            f"{sum(bool(r.get('promoted')) for r in arm.values())} of {len(arm)}."
        ),
        "",
        *paired_arm(task, by_spec, REPLAYED),
    ]
    if len(ids) >= 5:
        truth = [arm[i]["truth"] for i in ids]
        ours, theirs = (metrics(task, truth, [rows[i]["prediction"] for i in ids])["mae"] for rows in (arm, main))
        cost = sum(test_tokens) / max(len(test_tokens), 1)
        no_higher, cheap = ours <= theirs + 1e-9, cost <= 5000
        lines += [
            "",
            (
                f"**The second pre-registered test** (users 81-124; the run reached {len(ids)} of {len(planned)}): "
                f"`{REPLAYED}` MAE {ours:.3f} vs `{ARM}` {theirs:.3f} "
                f"({'no higher' if no_higher else 'higher'}), {cost:,.0f} tokens per compile "
                f"({'within' if cheap else 'over'} 5,000): "
                + ("passed." if no_higher and cheap else "failed, today's gate stays the default.")
            ),
        ]
    return lines


LEAN = "persona+align:gate_replayed=1,n_val=1,lean=1"
LEAN_TEST = {"movielens": slice(125, 157), "amazon": slice(0, 16)}
"""The third test's cases per data set (0-based, ``load_cases`` order): MovieLens users 126-157, Amazon users 1-16."""
LEAN_MIN = {"movielens": 16, "amazon": 8}
"""Fewer users reached than this on a data set: no verdict."""


def default_answers(
    dataset: str, by_spec: dict[str, dict[str, dict]] | None = None
) -> tuple[dict[str, Any], list[str]]:
    """``persona+align``'s answer per case, and the cases it cannot give yet. A direct row of the default
    method wins (it is the method as it runs today); on the users run only with the strict gate, the stored
    compile re-decided with today's gate (``report_combined``'s derivation), the flipped users' answers read
    from ``OUT``: a flipped user not answered there yet is returned as missing, never silently dropped.
    ``by_spec``: ``dataset``'s rows as ``stored_by_spec`` gives them (default: read them)."""
    trust = PersonaOptimizer(n_recent=3, n_val=4, trust_measured=True, confusion=False)  # as the stored rows ran
    by_spec = stored_by_spec(dataset) if by_spec is None else by_spec
    answered = {r["case_id"]: r for r in map(json.loads, OUT.read_text().splitlines())} if OUT.exists() else {}
    out = {i: r["prediction"] for i, r in by_spec.get(ARM, {}).items()}
    missing = []
    for i, r in by_spec.get(strict_spec(dataset), {}).items():
        if i in out:
            continue
        if not flips(r, trust):
            out[i] = r["prediction"]
        elif i in answered:
            out[i] = answered[i]["prediction"]
        else:
            missing.append(i)
    return out, missing


def report_lean(datasets: list[str]) -> list[str]:
    """The third test (module docstring): ``LEAN`` against ``persona+align`` on the ``LEAN_TEST`` users, per data
    set, with the verdict once both data sets have their users; every user the arm ran on is paired too."""
    lines: list[str] = []
    outcome: dict[str, bool] = {}
    for dataset in datasets:
        if dataset not in LEAN_TEST:
            continue
        by_spec = stored_by_spec(dataset)
        arm = by_spec.get(LEAN, {})
        if not arm:
            continue
        main, unanswered = default_answers(dataset)
        planned = [c.query.id for c in load_cases(dataset, 10_000)[LEAN_TEST[dataset]] if c.query is not None]
        if set(planned) & set(unanswered):
            lines += [f"- {dataset}: flipped strict-gate compiles not answered yet: run without --report.", ""]
            continue
        ids = [i for i in planned if i in arm and i in main]
        task = get_task(next(iter(arm.values()))["task"])
        compiled = [r["compile"] for r in arm.values() if r.get("compile")]
        test_tokens = [arm[i]["compile"]["tokens"] for i in ids if arm[i].get("compile")]
        lines += [
            f"### {dataset}: `{LEAN}` (the second test's arm with the facts left out of the persona; {len(arm)} users)",
            "",
            (
                f"- Compile cost: {sum(c['lm_calls'] for c in compiled) / max(len(compiled), 1):.1f} LM calls and "
                f"{sum(c['tokens'] for c in compiled) / max(len(compiled), 1):,.0f} tokens on average ({len(compiled)} "
                f"compiles). Promoted: {sum(bool(r.get('promoted')) for r in arm.values())} of {len(arm)}."
            ),
            "",
            *paired_arm(task, by_spec, LEAN, {f"{ARM} (direct or derived)": main}),
            "",
        ]
        if len(ids) < LEAN_MIN[dataset]:
            lines += [f"Test users reached on {dataset}: {len(ids)} of {len(planned)}, too few for a verdict.", ""]
            continue
        truth = [arm[i]["truth"] for i in ids]
        ours = metrics(task, truth, [arm[i]["prediction"] for i in ids])["mae"]
        theirs = metrics(task, truth, [main[i] for i in ids])["mae"]
        cost = sum(test_tokens) / max(len(test_tokens), 1)
        ok = ours <= theirs + 1e-9 and (dataset != "movielens" or cost <= 5000)
        outcome[dataset] = ok
        lines += [
            (
                f"Third test on {dataset} ({len(ids)} of {len(planned)} users reached): MAE {ours:.3f} vs `{ARM}` "
                f"{theirs:.3f} ({'no higher' if ours <= theirs + 1e-9 else 'higher'})"
                + (
                    f", {cost:,.0f} tokens per compile ({'within' if cost <= 5000 else 'over'} 5,000)"
                    if dataset == "movielens"
                    else ""
                )
                + f": {'met' if ok else 'not met'}."
            ),
            "",
        ]
    if outcome and not all(outcome.values()):  # one condition missed decides: the rest need not run
        missed = ", ".join(d for d, ok in outcome.items() if not ok)
        unrun = [d for d in LEAN_TEST if d not in outcome]
        lines.append(
            f"**The third pre-registered test:** failed ({missed}), today's optimizer stays the default"
            + (f" ({', '.join(unrun)} not run: one missed condition decides)." if unrun else ".")
        )
    elif set(outcome) == set(LEAN_TEST):
        lines.append("**The third pre-registered test:** passed.")
    return lines


def report_fitted() -> list[str]:
    """The fourth test (module docstring): ``FITTED`` against ``persona+align`` on the ``FITTED_TEST`` users,
    with the verdict once every one of them has run; every other stored method is paired too."""
    dataset, users = FITTED_TEST
    by_spec = stored_by_spec(dataset)
    arm, main = by_spec.get(FITTED, {}), by_spec.get(ARM, {})
    if not arm:
        return []
    ids = sorted(i for i in arm if i in main)
    task = get_task(next(iter(arm.values()))["task"])

    def compiled(row: dict) -> bool:
        return bool(row.get("compile")) and not row["compile"].get("stopped", "").startswith("not ")

    def cost(rows: list[dict], per_user: bool = False) -> tuple[float, float, int]:
        done = [r["compile"] for r in rows if compiled(r)]
        n = max(len(rows) if per_user else len(done), 1)
        return sum(c["lm_calls"] for c in done) / n, sum(c["tokens"] for c in done) / n, len(done)

    both = [i for i in ids if compiled(arm[i]) and compiled(main[i])]
    ours, theirs = cost([arm[i] for i in both]), cost([main[i] for i in both])
    every = cost([arm[i] for i in ids]), cost([main[i] for i in ids])
    user = cost([arm[i] for i in ids], per_user=True), cost([main[i] for i in ids], per_user=True)
    lines = [
        f"### {dataset}: `{FITTED}` (a short history's windows narrowed so the facts keep 3 interactions; {len(arm)} users)",
        "",
        (
            f"- Compile cost on the {len(both)} users both arms compiled: {ours[0]:.1f} LM calls and {ours[1]:,.0f} tokens "
            f"per compile vs `{ARM}` {theirs[0]:.1f} and {theirs[1]:,.0f}. Over every compile of each arm: {every[0][0]:.1f} "
            f"calls ({every[0][2]} users compiled) vs {every[1][0]:.1f} ({every[1][2]} compiled); per user (not compiled: 0): "
            f"{user[0][0]:.1f} vs {user[1][0]:.1f} calls, {user[0][1]:,.0f} vs {user[1][1]:,.0f} tokens. Promoted: "
            f"{sum(bool(arm[i].get('promoted')) for i in ids)} vs {sum(bool(main[i].get('promoted')) for i in ids)}."
        ),
        "",
        *paired_arm(task, by_spec, FITTED),
        "",
    ]
    if len(ids) < users:
        return [*lines, f"Test users reached: {len(ids)} of {users}; the verdict needs all of them.", ""]
    truth = [arm[i]["truth"] for i in ids]
    mae = metrics(task, truth, [arm[i]["prediction"] for i in ids])["mae"]
    base = metrics(task, truth, [main[i]["prediction"] for i in ids])["mae"]
    ok = mae <= base + 1e-9 and ours[0] <= theirs[0] + 1e-9
    return [
        *lines,
        (
            f"**The fourth pre-registered test** ({len(ids)} users): MAE {mae:.3f} vs `{ARM}` {base:.3f} "
            f"({'no higher' if mae <= base + 1e-9 else 'higher'}), {ours[0]:.1f} vs {theirs[0]:.1f} LM calls per compile on "
            f"the users both compiled ({'no more' if ours[0] <= theirs[0] + 1e-9 else 'more'}): {'passed' if ok else 'failed'}."
        ),
        "",
    ]


def report_arm(dataset: str, strict: PersonaOptimizer, only: set[str] | None = None, title: str = "") -> list[str]:
    """The ``trust_measured`` arm run in full (users the rule was not chosen on), with the strict gate
    derived from it: where the strict gate would not have promoted, production (the default persona, the
    ``persona`` method's agent) answers, so its stored answer is the strict gate's. No LM call.
    ``only``: these cases alone (the pre-registered test), under ``title``."""
    by_spec = stored_by_spec(dataset)
    arm, plain = by_spec.get(ARM, {}), by_spec.get("persona", {})
    ids = sorted(i for i in arm if i in plain and (only is None or i in only))
    if len(ids) < 5:
        return []
    task = get_task(arm[ids[0]]["task"])
    demoted = [i for i in ids if arm[i].get("promoted") and decides(arm[i], strict) is False]
    derived = {i: plain[i]["prediction"] if i in demoted else arm[i]["prediction"] for i in ids}
    # where production served in the arm too, how often it answered as the `persona` method did
    # (the same prompt; llama.cpp's prompt-cache state changes some answers at temperature 0)
    served = [i for i in ids if not arm[i].get("promoted")]
    agree = sum(arm[i]["prediction"] == plain[i]["prediction"] for i in served)
    trusted = {i: arm[i]["prediction"] for i in ids}
    promoted = sum(bool(arm[i].get("promoted")) for i in ids)
    unit = "users" if task.kind == "rating" else "queries"
    lines = [
        f"### {dataset}: {title or f'`{ARM}` (`trust_measured`) run in full'} ({len(ids)} {unit})",
        "",
        (
            f"- Promoted: {promoted} of {len(ids)} with `trust_measured`; {promoted - len(demoted)} with the strict "
            f"gate (derived: where it would not promote, the `persona` method's stored answer stands for production's; "
            f"where production served in this arm, it answered as `persona` did for {agree} of {len(served)} {unit})."
        ),
        (
            f"- Promoted personas that drop the base instructions: "
            f"{sum(not arm[i]['checks'].get('base_kept', True) for i in ids if arm[i].get('promoted'))}; that "
            f"contradict the user's statistics: "
            f"{sum(bool(arm[i]['checks'].get('contradictions')) for i in ids if arm[i].get('promoted'))}."
        ),
        "",
        *paired(task, trusted, ids, {f"{STRICT} (strict gate, derived)": derived, **_preds(by_spec, skip=ARM)}),
    ]
    if only is not None and task.kind == "rating":
        baselines = {spec: preds for spec, preds in _preds(by_spec).items() if not aligned(spec)}
        lines += [
            "",
            "The strict gate (derived) on the same users:",
            "",
            *paired(task, derived, ids, baselines, name=f"`{STRICT}` (strict gate, derived)"),
            "",
            verdict(task, {i: arm[i]["truth"] for i in ids}, trusted, derived, by_spec.get("trivial", {})),
        ]
    return lines


def verdict(task: Any, truth: dict[str, str], trusted: dict[str, Any], default: dict[str, Any], trivial: dict) -> str:
    """The pre-registered test's outcome (module docstring): ``trust_measured``'s MAE no higher than the
    strict gate's, and its paired difference to ``trivial`` negative (point estimates). ``truth``: the test
    cases' true answers."""
    ids = sorted(truth)
    common = [i for i in ids if i in trivial]

    def mae(preds: dict[str, Any], on: list[str]) -> float:  # an invalid answer: the worst error, as evaluate
        return metrics(task, [truth[i] for i in on], [preds[i] for i in on])["mae"]

    reference = {i: trivial[i]["prediction"] for i in common}
    ok_gate = mae(trusted, ids) <= mae(default, ids) + 1e-9
    ok_trivial = mae(trusted, common) < mae(reference, common) - 1e-9
    return (
        f"**The pre-registered test:** `trust_measured` MAE {mae(trusted, ids):.3f} vs the strict gate "
        f"{mae(default, ids):.3f} ({'no higher' if ok_gate else 'higher'}), vs `trivial` {mae(reference, common):.3f} "
        f"on {len(common)} users ({'lower' if ok_trivial else 'not lower'}): "
        + (
            "passed, `trust_measured` is the default since."
            if ok_gate and ok_trivial
            else "failed, the strict gate stays the default."
        )
    )


def report_combined(dataset: str, strict: PersonaOptimizer, trust: PersonaOptimizer) -> list[str]:
    """Both gate rules on every user either run covers: the stored strict-gate compiles (re-decided for
    ``trust_measured``, the flipped users answered in ``OUT``) and the ``trust_measured`` arm (the strict
    gate derived as in ``report_arm``), each paired against the non-aligned methods."""
    by_spec = stored_by_spec(dataset)
    strict_rows = strict_spec(dataset)
    main, arm, plain = by_spec.get(strict_rows, {}), by_spec.get(ARM, {}), by_spec.get("persona", {})
    answered = {r["case_id"]: r for r in map(json.loads, OUT.read_text().splitlines())} if OUT.exists() else {}
    default: dict[str, Any] = {}
    trusted: dict[str, Any] = {}
    for i, r in main.items():
        if flips(r, trust) and i not in answered:
            return []
        default[i] = r["prediction"]
        trusted[i] = answered[i]["prediction"] if flips(r, trust) else r["prediction"]
    for i, r in arm.items():
        if i in plain and i not in main:
            trusted[i] = r["prediction"]
            demoted = r.get("promoted") and decides(r, strict) is False
            default[i] = plain[i]["prediction"] if demoted else r["prediction"]
    ids = sorted(default)
    if not main or not arm or len(ids) < 5:
        return []
    task = get_task(next(iter(main.values()))["task"])
    baselines = {spec: preds for spec, preds in _preds(by_spec).items() if not aligned(spec)}
    return [
        (
            f"### {dataset}: both gate rules on all {len(ids)} users ({len(main)} strict-gate compiles, "
            f"{len(ids) - len(main)} `trust_measured` compiles, each with the other rule derived)"
        ),
        "",
        *paired(task, trusted, ids, {f"{strict_rows} (strict gate)": default, **baselines}),
        "",
        "The strict gate on the same users:",
        "",
        *paired(task, default, ids, baselines, name=f"`{strict_rows}` (strict gate)"),
    ]


def _preds(by_spec: dict[str, dict[str, dict]], skip: str = "") -> dict[str, dict[str, Any]]:
    return {spec: {i: r["prediction"] for i, r in rows.items()} for spec, rows in by_spec.items() if spec != skip}


def paired_arm(
    task: Any, by_spec: dict[str, dict[str, dict]], spec: str, extra: dict[str, dict[str, Any]] | None = None
) -> list[str]:
    """The stored arm ``spec`` against ``extra`` and every other stored method, as ``paired`` shows them."""
    arm = by_spec[spec]
    others = {**(extra or {}), **_preds(by_spec, skip=spec)}
    return paired(task, {i: r["prediction"] for i, r in arm.items()}, sorted(arm), others, name=f"`{spec}`")


def paired(
    task: Any, preds: dict[str, Any], ids: list[str], others: dict[str, dict[str, Any]], name: str = "`trust_measured`"
) -> list[str]:
    """``preds`` (``name``) minus each of ``others`` on the cases both have, with intervals: MAE for a rating
    task (negative: ``name`` better), accuracy for a label task (positive: ``name`` better)."""
    rating = task.kind == "rating"
    metric, kw = ("mae", {"scale": task.scale}) if rating else ("accuracy", {"labels": task.labels})
    shown = "MAE" if rating else "accuracy"
    truths = {r["case_id"]: r["truth"] for r in stored()}

    def value(answer: Any) -> Any:
        parsed = task.parse(answer)
        return float(parsed) if rating and parsed is not None else parsed

    gold_of = {i: value(truths[i]) for i in ids}

    def values(p: dict[str, Any], ids: list[str]) -> list[Any]:
        return [value(p[i]) for i in ids]

    level = metric_ci(metric, [gold_of[i] for i in ids], values(preds, ids), **kw)
    lines = [
        f"{name} {shown} {level[0]:.3f} [{level[1]:.3f}, {level[2]:.3f}] on {len(ids)} {'users' if rating else 'queries'}.",
        "",
        f"| {name} vs | cases | {shown} difference [95% CI] | relative | interval excludes 0 |",
        "|---|---|---|---|---|",
    ]
    for label, other in sorted(others.items()):
        common = [i for i in ids if i in other]
        if len(common) < 5:
            continue
        gold = [gold_of[i] for i in common]
        ref = values(other, common)
        diff = paired_metric_diff(metric, gold, values(preds, common), ref, **kw)
        base = metric_ci(metric, gold, ref, n=10, **kw)[0]
        relative = (-1 if rating else 1) * 100 * diff[0] / base if base else float("nan")
        lines.append(
            f"| {label} | {len(common)} | {diff[0]:+.3f} [{diff[1]:+.3f}, {diff[2]:+.3f}] | "
            f"{relative:+.1f}% | {'yes' if diff[1] > 0 or diff[2] < 0 else 'no'} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default="movielens,lamp2n")
    parser.add_argument("--report", action="store_true", help="only write the report from stored answers")
    args = parser.parse_args()
    # the stored runs' n_recent / n_val, and confusion off as LaMP-2N's strict-gate rows ran (no effect on ratings)
    optimizer = PersonaOptimizer(n_recent=3, n_val=4, trust_measured=True, confusion=False)
    strict = PersonaOptimizer(n_recent=3, n_val=4, trust_measured=False, confusion=False)
    body = [
        (
            "`PersonaOptimizer(trust_measured=True)` (the default since 2026-11-26) changes only the gate's "
            "decision against the strict gate (`trust_measured=False`, the default before), so each stored "
            f"strict-gate compile of the *Quality* table (`{STRICT}` in `{CASES.relative_to(ROOT)}`) is re-decided "
            "with the optimizer's own rule; where it flips to promoted, the candidate is re-grounded as a promotion "
            "does and the held-out query is answered with it (one LM call per flipped user, embedded model); and the "
            "strict gate is derived on the users run with `trust_measured`. Rerun: `python benchmarks/gate_rule.py` "
            "(`--report` from the stored answers). **Caveat: the first 157 MovieLens users chose the rule** (the "
            "stored compiles showed the strict gate keeping most users on the default persona, which answered worse "
            "than the anchor); users 158 on, run after the test was fixed (the rule in `benchmarks/gate_rule.py`), "
            "are its test, reported on their own below."
        ),
        "",
    ]
    for dataset in args.datasets.split(","):
        rows = [r for r in stored() if r["dataset"] == dataset and r["spec"] == strict_spec(dataset)]
        if not rows:
            continue
        if not args.report:
            answer_flipped(dataset, rows, optimizer)
        body += [
            *report(dataset, rows, optimizer),
            "",
            *report_arm(dataset, strict),
            "",
            *(
                report_arm(
                    dataset,
                    strict,
                    only=test,
                    title=f"the test, users {TEST_FROM[dataset] + 1} on, run after the rule was chosen",
                )
                if (test := test_ids(dataset))
                else []
            ),
            "",
            *report_combined(dataset, strict, optimizer),
            "",
            *report_replayed(dataset),
            "",
        ]
    body += report_lean(list(LEAN_TEST))
    body += report_fitted()
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(body))  # a data set without a section leaves no gap
    replace_section(ROOT / "BENCHMARKS.md", HEADING, text)
    print(text)


if __name__ == "__main__":
    main()
