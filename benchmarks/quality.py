"""Quality of personalization on the dev sets: every method on the same users, with intervals.

    python benchmarks/quality.py --datasets movielens --users 60          # run (resumable) + report
    python benchmarks/quality.py --methods icl:k=8,persona+align:anchor=0  # more arms (an ablation), same users
    python benchmarks/quality.py --report                                 # report from stored cases only
    python benchmarks/quality.py --users 130 --start 76 --methods trivial,persona  # users 77-130 only

Each case is one user's held-out last interaction: the user's past is ingested (time-bounded), the
method answers the query. Every finished case is appended to ``benchmarks/results/quality_cases.jsonl``
and a rerun skips the cases already there (same data set, method spec and case), so a long run can be
stopped and resumed, and a larger ``--users`` only runs the new users.

The report (BENCHMARKS.md "## Quality" and ``benchmarks/results/quality.png``) gives, per data set and
method: the metric with its 95% bootstrap interval over users, LM calls / tokens / seconds per user,
and for ``persona+align`` the paired difference to every other method with its 95% paired-bootstrap
interval (the same users resampled together), on the users both methods ran; each other aligned arm
(``persona+align:<options>``) gets the same against the non-aligned methods.

Method specs: ``name[:key=value,...]``; ``k`` (episodes shown), ``chars`` (where an episode's text is cut), ``adapter=compact`` (the agent's
prompt format, ``CompactAdapter``) and ``mode=react`` (the agent chooses its
actions; e.g. ``persona:mode=react``, ``persona+align:mode=react,max_lm_calls=80``) for any method, optimizer options
(``anchor``, ``critique``, ``ground``, ``trust_measured``, ``cues``, ``confusion``, ``label_rules``, ``recent``, ``candidates``, ``iterations``, ``n_recent``, ``n_val``, ``gate_replayed``, ``lean``, ``min_facts``) for ``persona+align``;
``persona+align:mode=react,reuse=1`` serves the persona that the stored ``persona+align`` run compiled for
the case (pipeline replay) in ``react`` mode: no compile of its own, and its calls, tokens and seconds add
the stored run's (compile plus its one pipeline answer) to the react answer's; cases that run lacks are skipped.
``trivial:recent=20`` is the median rating (majority label) of the 20 latest answers, no LM: the statistic the
aligned persona anchors on, as a method of its own.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import persona_dspy  # noqa: F401  (environment guards first)
from persona_dspy import Settings
from persona_dspy.config import DEFAULT_K
from persona_dspy.data import UserHistory, load_shared
from persona_dspy.evaluation import METHODS, evaluate, metrics
from persona_dspy.lm import build_lm
from persona_dspy.memory import EpisodicMemory, SemanticMemory
from persona_dspy.optimizers import prompts
from persona_dspy.optimizers.grounding import anchor_value, contradictions, measure
from persona_dspy.signatures import DEFAULT_PERSONA, get_task
from persona_dspy.signatures.tasks import MAX_EPISODE_CHARS

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _report import replace_section
from stats import metric_ci, paired_metric_diff

SHARED = ROOT.parent / "shared" / "data"
DATASETS = {
    "movielens": ROOT / "benchmarks" / "data" / "movielens_dev.jsonl",
    "lamp2n": ROOT / "benchmarks" / "data" / "lamp2n_dev.jsonl",
    "amazon": SHARED / "amazon_musical_instruments" / "rating.jsonl",  # no license found: not bundled
}
RESULTS = ROOT / "benchmarks" / "results"
CASES = RESULTS / "quality_cases.jsonl"
MAIN = "persona+align"
STATISTIC = "trivial:recent=20"
"""No LM: the median of the user's 20 latest ratings, the typical answer a rating persona anchors on."""
DEFAULT_METHODS = "trivial,none,icl,rag,persona,persona+align"
ADAPTERS = ("chat", "compact")
INT_OPTIONS = {"k", "chars", "candidates", "iterations", "n_recent", "n_val", "recent", "max_lm_calls", "min_facts"}
MODES = ("pipeline", "react")
BOOL_OPTIONS = {
    "anchor",
    "critique",
    "ground",
    "trust_measured",
    "cues",
    "confusion",
    "label_rules",
    "gate_replayed",
    "lean",
    "reuse",
}
MIN_PAIRED = 10
"""The verdict's best non-aligned method is chosen among methods run on at least this many of the aligned
arm's users (and half of them): a method run on 5 users is in the tables, not the bar."""
MIN_PAST = 1
"""Every case with a past is kept (all 43 Amazon users, all 62 LaMP-2N queries). A past too short to
replay and gate (``n_recent + n_val``) compiles nothing: ``persona+align`` then answers with the
production persona, as serving would, and the report counts those users."""


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    name, _, rest = spec.partition(":")
    if name not in METHODS:
        raise SystemExit(f"unknown method {name!r} in {spec!r}; choose from {', '.join(METHODS)}")
    options: dict[str, Any] = {}
    for part in filter(None, rest.split(",")):
        key, _, value = part.partition("=")
        if key in INT_OPTIONS:
            options[key] = int(value)
        elif key == "mode":
            if value not in MODES:
                raise SystemExit(f"mode must be one of {', '.join(MODES)} (got {value!r} in {spec!r})")
            options[key] = value
        elif key == "adapter":
            if value not in ADAPTERS:
                raise SystemExit(f"adapter must be one of {', '.join(ADAPTERS)} (got {value!r} in {spec!r})")
            options[key] = value
        elif key in BOOL_OPTIONS:
            options[key] = value.lower() in ("1", "true", "yes")
        else:
            raise SystemExit(f"unknown option {key!r} in {spec!r}")
    if "adapter" in options and (name == "trivial" or options.get("reuse") or options.get("mode") == "react"):
        raise SystemExit(
            f"adapter= is the agent's prompt format: not for trivial (no prompt), reuse=1 (it serves a persona "
            f"compiled in the chat format) or mode=react (its calls keep the chat format) (got {spec!r})"
        )
    if options.get("reuse") and name != MAIN:  # it serves the stored aligned persona: only under that name
        raise SystemExit(f"reuse=1 serves the stored {MAIN} persona: write {MAIN}:reuse=1,... (got {spec!r})")
    return name, options


def split_methods(methods: str) -> list[str]:
    """``"icl,persona+align:n_val=1,trust_measured=0"`` -> ``["icl", "persona+align:n_val=1,trust_measured=0"]``:
    a part with ``=`` and no method name is one more option of the spec before it."""
    specs: list[str] = []
    for part in filter(None, methods.split(",")):
        if specs and "=" in part and ":" not in part and part.partition("=")[0] not in METHODS:
            specs[-1] += "," + part
        else:
            specs.append(part)
    return specs


def load_cases(name: str, users: int) -> list[UserHistory]:
    path = DATASETS[name]
    if not path.exists():
        print(f"[{name}] {path} is absent: skipped (the Amazon subset is read from ../shared/data only)", flush=True)
        return []
    picked, seen = [], set()
    for case in load_shared(path):
        key = case.query.id if name == "lamp2n" else case.user_id  # LaMP-2N: every query is a case
        if key in seen or len(case.interactions) < MIN_PAST:
            continue
        seen.add(key)
        picked.append(case)
        if len(picked) == users:
            break
    return picked


def stored() -> list[dict[str, Any]]:
    if not CASES.exists():
        return []
    return [json.loads(line) for line in CASES.read_text().splitlines() if line.strip()]


def checks(case: UserHistory, persona: str | None) -> dict[str, Any]:
    """For an aligned persona: are the base instructions kept, and does it contradict the user's facts?"""
    if not persona:
        return {}
    task = get_task(case.task)
    base, _, guidance = prompts.decompose(persona)
    return {
        "base_kept": persona.startswith(DEFAULT_PERSONA) or base == DEFAULT_PERSONA,
        "contradictions": contradictions(guidance, measure(task, case.interactions)) if guidance else [],
    }


def recheck(rows: list[dict[str, Any]]) -> None:
    """Every aligned row's checks computed again with today's ``checks`` (a check added after a row was
    run then applies to it too: the label-habit contradiction, say); rows of an absent data set keep theirs."""
    cases: dict[str, UserHistory] = {}
    for name in {r["dataset"] for r in rows if r["method"] == MAIN}:
        if DATASETS[name].exists():
            cases.update({(name, c.query.id): c for c in load_shared(DATASETS[name]) if c.query is not None})
    for r in rows:
        case = cases.get((r["dataset"], r["case_id"]))
        if r["method"] == MAIN and case is not None:
            r["checks"] = checks(case, r["persona"])


def profile_factory(memory: EpisodicMemory, case: UserHistory, method: str) -> Any:
    """Only the ``profile`` method reads a semantic profile here (distilled from the case's past: one LM
    call, up to 3 on unusable output; a fresh store per case). The persona arms' numbers were measured
    without one, so the profile's worth is the ``profile`` arm's own line, not a confound of the others."""
    if method != "profile":
        return None
    return lambda: SemanticMemory(memory, task=case.task)


def run(args: argparse.Namespace) -> None:
    """User-major: each case runs every method before the next case starts, so a run stopped at any
    point leaves every method on the same users (a paired comparison)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    rows = stored()
    done = {(r["dataset"], r["spec"], r["case_id"]) for r in rows}
    aligned = {(r["dataset"], r["case_id"]): r for r in rows if r["spec"] == MAIN}  # for ``reuse``
    specs = [(spec, *parse_spec(spec)) for spec in split_methods(args.methods)]
    lm = None
    with EpisodicMemory(Settings(qdrant=":memory:", state_dir="/tmp/persona_quality")) as memory:
        for name in args.datasets.split(","):
            cases = load_cases(name, args.users)[args.start :]
            print(f"[{name}] {len(cases)} cases", flush=True)
            for case in cases:
                for spec, method, spec_options in specs:
                    if (name, spec, case.query.id) in done:
                        continue
                    reused = aligned.get((name, case.query.id)) if spec_options.get("reuse") else None
                    if spec_options.get("reuse") and reused is None:
                        print(f"  {case.user_id:<14} {spec:<22.22} skipped: no stored {MAIN} run to reuse", flush=True)
                        continue
                    if method != "trivial" and lm is None:
                        lm = build_lm(Settings())
                    options = dict(spec_options)
                    k = options.pop("k", args.k)
                    chars = options.pop("chars", MAX_EPISODE_CHARS)
                    mode = options.pop("mode", "pipeline")
                    adapter = options.pop("adapter", "chat")
                    max_lm_calls = options.pop("max_lm_calls", args.max_lm_calls)
                    opt = {key: options.pop(key) for key in ("iterations", "n_recent", "n_val") if key in options}
                    recent = options.pop("recent", 0) if method == "trivial" else 0
                    options.pop("reuse", None)
                    report = evaluate(
                        [case],
                        "persona" if reused else method,
                        memory=memory,
                        lm=None if method == "trivial" else lm,
                        k=k,
                        n_recent=opt.get("n_recent", args.n_recent),
                        iterations=opt.get("iterations", args.iterations),
                        n_val=opt.get("n_val", args.n_val),
                        max_lm_calls=max_lm_calls,
                        optimizer_options=options,
                        mode=mode,
                        recent=recent,
                        episode_chars=chars,
                        adapter=adapter,
                        semantic_factory=profile_factory(memory, case, method),
                        progress=False,
                        keep_memory=True,  # the next method on this case embeds nothing
                        personas={case.query.id: reused["persona"]} if reused else None,
                    )
                    row = report.cases[0].model_dump()
                    if reused:  # the stored compile's cost and outcome, under the aligned method's name
                        row.update(method=MAIN, promoted=reused["promoted"], compile=reused["compile"])
                        for key in ("lm_calls", "tokens", "seconds"):
                            row[key] += reused[key]
                    row.update(
                        dataset=name,
                        spec=spec,
                        task=report.task,
                        checks=checks(case, row["persona"]) if method == MAIN else {},
                    )
                    with CASES.open("a") as f:
                        f.write(json.dumps(row) + "\n")
                    print(
                        f"  {case.user_id:<14} {spec:<22.22} truth {row['truth']:<12.12} "
                        f"pred {row['prediction']!s:<12.12} calls {row['lm_calls']:>2} {row['seconds']:.0f} s",
                        flush=True,
                    )


# -- the report ----------------------------------------------------------------------------------


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One summary per (data set, method spec), with intervals and paired differences to persona+align."""
    by: dict[tuple[str, str], dict[str, dict]] = defaultdict(dict)
    for r in rows:
        by[(r["dataset"], r["spec"])][r["case_id"]] = r
    out = []
    for (dataset, spec), cases in by.items():
        task = get_task(next(iter(cases.values()))["task"])
        metric_names = ("mae", "rmse") if task.kind == "rating" else ("accuracy", "macro_f1")
        ids = sorted(cases)
        value = task_value(task)
        kw = {"scale": task.scale} if task.kind == "rating" else {"labels": task.labels}
        gold_v = [value(cases[i]["truth"]) for i in ids]
        pred_v = [value(cases[i]["prediction"]) for i in ids]
        summary = {
            "dataset": dataset,
            "spec": spec,
            "n": len(ids),
            "kind": task.kind,
            "cases": cases,
            "gold": dict(zip(ids, gold_v)),
            "pred": dict(zip(ids, pred_v)),
            "kw": kw,
            "lm_calls": _mean(c["lm_calls"] for c in cases.values()),
            "tokens": _mean(c["tokens"] for c in cases.values()),
            "seconds": _mean(c["seconds"] for c in cases.values()),
        }
        for m in metric_names:
            summary[m] = metric_ci(m, gold_v, pred_v, **kw)
        out.append(summary)
    for s in out:
        if not aligned(s["spec"]):
            continue
        s["paired"] = {}
        for other in out:
            if other["dataset"] != s["dataset"] or other is s:
                continue
            if s["spec"] != MAIN and aligned(other["spec"]):
                continue  # an arm against the baselines; MAIN against the arms is in MAIN's rows
            common = sorted(set(s["gold"]) & set(other["gold"]))
            if len(common) < 5:
                continue
            metric = "mae" if s["kind"] == "rating" else "accuracy"
            s["paired"][other["spec"]] = (
                len(common),
                paired_metric_diff(
                    metric,
                    [s["gold"][i] for i in common],
                    [s["pred"][i] for i in common],
                    [other["pred"][i] for i in common],
                    **s["kw"],
                ),
            )
    return out


def task_value(task: Any) -> Any:
    """How the report reads an answer of ``task``: a rating as a float, a label as the label (None: invalid)."""
    if task.kind != "rating":
        return task.parse
    return lambda answer: None if (parsed := task.parse(answer)) is None else float(parsed)


def aligned(spec: str) -> bool:
    """``persona+align`` or one of its arms (``persona+align:<options>``)."""
    return spec == MAIN or spec.startswith(MAIN + ":")


def metric_on(s: dict[str, Any], ids: list[str], key: str) -> float:
    """``s``'s metric on the cases ``ids`` only (a paired comparison's own users)."""
    return metric_ci(key, [s["gold"][i] for i in ids], [s["pred"][i] for i in ids], n=10, **s["kw"])[0]


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0


def _ci(t: tuple[float, float, float]) -> str:
    return f"{t[0]:.3f} [{t[1]:.3f}, {t[2]:.3f}]"


def report(summaries: list[dict[str, Any]], note: str) -> None:
    lines = [
        note,
        "",
        "| data set | method | users | metric [95% CI] | second metric [95% CI] | LM calls | tokens | s / user |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in sorted(summaries, key=lambda s: (s["dataset"], s["spec"])):
        m1, m2 = ("mae", "rmse") if s["kind"] == "rating" else ("accuracy", "macro_f1")
        lines.append(
            f"| {s['dataset']} | {s['spec']} | {s['n']} | {m1} {_ci(s[m1])} | {m2} {_ci(s[m2])} | "
            f"{s['lm_calls']:.1f} | {s['tokens']:.0f} | {s['seconds']:.0f} |"
        )
    lines += [
        "",
        (
            f"Paired differences, each aligned arm minus each method on the users both ran (MAE: negative = "
            f"the aligned arm better; accuracy: positive = better), 95% paired-bootstrap interval, 10,000 resamples; "
            f"`{MAIN}` against every method, its arms against the non-aligned ones:"
        ),
        "",
        "| data set | aligned arm | vs method | users | difference [95% CI] | relative | interval excludes 0 |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in sorted(summaries, key=lambda s: (s["dataset"], s["spec"] != MAIN, s["spec"])):
        for other, (n, diff) in sorted(s.get("paired", {}).items()):
            base = next(o for o in summaries if o["dataset"] == s["dataset"] and o["spec"] == other)
            common = sorted(set(s["gold"]) & set(base["gold"]))
            ref = metric_on(base, common, "mae" if s["kind"] == "rating" else "accuracy")
            rel = (-diff[0] if s["kind"] == "rating" else diff[0]) / ref if ref else float("nan")
            excludes = diff[1] > 0 or diff[2] < 0
            lines.append(
                f"| {s['dataset']} | {s['spec']} | {other} | {n} | {_ci(diff)} | {100 * rel:+.1f}% | "
                f"{'yes' if excludes else 'no'} |"
            )
    lines += ["", *verdict(summaries), "", *compile_checks(summaries), "", *rerun_noise(summaries)]
    lines += ["", *format_pairs(summaries), "", *compact_rule(summaries)]
    lines += ["", "![quality](benchmarks/results/quality.png)"]
    replace_section(ROOT / "BENCHMARKS.md", "## Quality (personalization methods on the dev sets)", "\n".join(lines))


def verdict(summaries: list[dict[str, Any]]) -> list[str]:
    """The issue's targets on this run: beat the best non-aligned method (of the issue's list: none,
    icl, rag, profile, persona, trivial, at any k) by >= 10% relative with the paired interval
    excluding zero on a rating task, be no less accurate than it on a label task (LaMP-2N); <= 15 LM
    calls and <= 5k tokens per compile. Then each GEPA arm and each
    ``trivial:<options>`` reference statistic (not in the issue's list), paired, on their own lines."""
    out = ["Targets (issue 19), on the users of this run:"]
    for s in sorted(summaries, key=lambda s: (s["dataset"], s["spec"] != MAIN, s["spec"])):
        if not aligned(s["spec"]):
            continue
        lower = s["kind"] == "rating"
        key = "mae" if lower else "accuracy"
        others = [
            o
            for o in summaries
            if o["dataset"] == s["dataset"]
            and not aligned(o["spec"])
            and o["spec"].split(":")[0] != "gepa"
            and not o["spec"].startswith("trivial:")
            and o["spec"] in s.get("paired", {})
            and s["paired"][o["spec"]][0] >= max(MIN_PAIRED, s["n"] // 2)  # not a best on a handful of users
        ]
        if not others:
            continue
        on_common = {o["spec"]: metric_on(o, sorted(set(s["gold"]) & set(o["gold"])), key) for o in others}
        # the best is the one the aligned arm fares worst against, each on the cases both ran (methods run on
        # different cases are compared through their paired differences, not their metrics on different cases)
        best = (max if lower else min)(others, key=lambda o: s["paired"][o["spec"]][1][0])
        n, diff = s["paired"][best["spec"]]
        best_value = on_common[best["spec"]]
        rel = (-diff[0] if lower else diff[0]) / best_value if best_value else float("nan")
        excludes = diff[2] < 0 if lower else diff[1] > 0
        # ratings: >= 10% better with the paired interval excluding zero; labels (LaMP-2N): not worse
        met = rel >= 0.10 and excludes if lower else diff[0] >= 0
        compiled = [c["compile"] for c in s["cases"].values() if not not_compiled(c)]
        compile_calls = _mean(c.get("lm_calls", 0) for c in compiled)
        compile_tokens = _mean(c.get("tokens", 0) for c in compiled)
        unit = "users" if lower else "cases"  # LaMP-2N: several queries per user
        out.append(
            f"- {s['dataset']}: `{s['spec']}` {key} {s[key][0]:.3f} ({s['n']} {unit}) vs the best non-aligned method "
            f"(`{best['spec']}`) {best_value:.3f} on the same {n} {unit}: {100 * rel:+.1f}% relative, paired 95% interval "
            f"of the difference [{diff[1]:.3f}, {diff[2]:.3f}] -> target {'met' if met else 'NOT met'}. "
            f"Compile cost: {compile_calls:.1f} LM calls (target <= 15), {compile_tokens:.0f} tokens "
            f"(target <= 5,000) per compile, gate included"
            + (f" ({len(compiled)} {unit} compiled)." if len(compiled) < s["n"] else ".")
        )
        for spec, (n, diff) in sorted(s.get("paired", {}).items()):
            what = {"gepa": "GEPA at the same max_lm_calls", "trivial": "no LM: a statistic of the user's answers"}
            if spec.split(":")[0] == "gepa" or spec.startswith("trivial:"):
                better = diff[2] < 0 if lower else diff[1] > 0
                worse = diff[1] > 0 if lower else diff[2] < 0
                out.append(
                    f"  - vs `{spec}` ({what[spec.split(':')[0]]}) on {n} {unit}: difference {diff[0]:+.3f} "
                    f"[{diff[1]:.3f}, {diff[2]:.3f}] -> "
                    + ("better" if better else "worse" if worse else "not shown better or worse")
                    + "."
                )
    return out


def not_compiled(row: dict[str, Any]) -> bool:
    return (row.get("compile") or {}).get("stopped", "").startswith("not compiled")


def stop_reason(stopped: str) -> str:
    """Why a compile's loop ended, without its numbers. Both no-step stops are one reason: the rows of
    the first recent=20 run were written before its message said "weighed", not "cancel out"."""
    if stopped.startswith("not compiled"):
        return "not compiled (a past shorter than n_recent + n_val: production answers)"
    if stopped.startswith("the replay's errors"):
        return "no step (the replay's mean error under 0.25; with recent > 0, weighed against the ratings behind the anchor)"
    return stopped.split(" (")[0].split(" in iteration")[0]


def against_statistic(s: dict[str, Any], summaries: list[dict[str, Any]]) -> str:
    """Where a rating arm's error against the statistic its persona anchors on (``STATISTIC``) comes
    from: users whose compile was promoted (does the LM answer the number the persona states?) and
    users it was not (production answers). Empty when the statistic was not run on the data set."""
    ref = next((o for o in summaries if o["dataset"] == s["dataset"] and o["spec"] == STATISTIC), None)
    if ref is None or s["kind"] != "rating":
        return ""
    task = get_task(next(iter(s["cases"].values()))["task"])

    def mae(rows: list[dict[str, Any]]) -> float:
        return metrics(task, [r["truth"] for r in rows], [r["prediction"] for r in rows])["mae"]

    parts = []
    for label, want in (("promoted", True), ("not promoted", False)):
        rows = [r for cid, r in s["cases"].items() if bool(r.get("promoted")) == want and cid in ref["cases"]]
        if not rows:
            continue
        mine, theirs = mae(rows), mae([ref["cases"][r["case_id"]] for r in rows])
        parts.append(f"{label} {len(rows)} users: {mine:.3f} vs {theirs:.3f}")
    promoted = [r for r in s["cases"].values() if r.get("promoted") and r["case_id"] in ref["cases"]]
    copied = sum(
        r["prediction"] is not None and anchor_value(prompts.decompose(r["persona"])[2]) == float(r["prediction"])
        for r in promoted
    )
    return (
        f" Against `{STATISTIC}` (MAE, same users): "
        + "; ".join(parts)
        + f". Promoted personas answered the typical rating their guidance states in {copied} of {len(promoted)}."
    )


def rerun_noise(summaries: list[dict[str, Any]]) -> list[str]:
    """How often the same prompt gets another answer in another run: where an aligned or GEPA compile was not
    promoted, its answer is the default persona's to the same prompt as the ``persona`` method's (the same
    actions, episodes, prompt format and memory), so every difference between the two is the embedded runtime's
    noise. Each ``persona`` arm is paired with the arms of the same prompt options (``PROMPT_OPTIONS``)."""
    out = []
    for plain in (s for s in summaries if parse_spec(s["spec"])[0] == "persona"):
        options = parse_spec(plain["spec"])[1]
        if set(options) - PROMPT_OPTIONS:
            continue
        pairs = [
            (r["prediction"], plain["cases"][i]["prediction"])
            for s in summaries
            if s["dataset"] == plain["dataset"]
            and (aligned(s["spec"]) or parse_spec(s["spec"])[0] == "gepa")
            and _prompt_options(s["spec"]) == options  # the same prompt as this `persona` arm's
            for i, r in s["cases"].items()
            if i in plain["cases"] and not r.get("promoted")
        ]
        if pairs:
            changed = sum(a != b for a, b in pairs)
            out.append(
                f"- {plain['dataset']}: run-to-run noise: of {len(pairs)} answers an unpromoted compile served (the "
                f"default persona, the same prompt as `{plain['spec']}`'s), {changed} ({100 * changed / len(pairs):.0f}%) "
                f"differ from `{plain['spec']}`'s answer (llama.cpp at temperature 0 is not deterministic across "
                "prompt-cache states): paired differences of a few users are within it."
            )
    return out


def _arm(spec: str, drop: str = "") -> tuple[str, frozenset]:
    """A spec as (method, its options but ``drop``), whatever order the options were written in."""
    name, options = parse_spec(spec)
    return name, frozenset((k, v) for k, v in options.items() if k != drop)


def format_pairs(summaries: list[dict[str, Any]]) -> list[str]:
    """Each ``adapter=compact`` arm against the same arm in DSPy's chat format (its spec without ``adapter``),
    paired on the cases both ran: the metric's difference with its 95% paired-bootstrap interval, tokens and
    seconds per case, and an aligned arm's tokens per compile."""
    by_arm = {(s["dataset"], *_arm(s["spec"])): s for s in summaries}
    out = []
    for s in sorted(summaries, key=lambda s: (s["dataset"], s["spec"])):
        name, options = parse_spec(s["spec"])
        if options.get("adapter") != "compact":
            continue
        chat = by_arm.get((s["dataset"], name, _arm(s["spec"], drop="adapter")[1]))
        if chat is not None and chat["spec"] == MAIN:
            chat = with_derived_default(chat, summaries)
        common = sorted(set(s["gold"]) & set(chat["gold"])) if chat else []
        missing = sorted(set(s["gold"]) & set(chat.get("missing", ()))) if chat else []
        if chat is None or len(common) < 5:
            continue
        key = "mae" if s["kind"] == "rating" else "accuracy"
        diff = paired_metric_diff(
            key,
            [s["gold"][i] for i in common],
            [s["pred"][i] for i in common],
            [chat["pred"][i] for i in common],
            **s["kw"],
        )

        def cost(summary: dict[str, Any], common: list[str] = common) -> str:
            rows = [summary["cases"][i] for i in common if i in summary["cases"]]
            if not rows:
                return "not recorded"
            text = f"{_mean(r['tokens'] for r in rows):.0f} tokens, {_mean(r['seconds'] for r in rows):.0f} s per case"
            compiled = [r["compile"] for r in rows if aligned(summary["spec"]) and not not_compiled(r)]
            if compiled:
                text += (
                    f", {_mean(c.get('tokens', 0) for c in compiled):.0f} tokens per compile ({len(compiled)} compiled)"
                )
            return text

        better = diff[2] < 0 if key == "mae" else diff[1] > 0
        worse = diff[1] > 0 if key == "mae" else diff[2] < 0
        derived = sum(chat["cases"].get(i, {}).get("spec", chat["spec"]) != chat["spec"] for i in common)
        on = f"{len(common)} cases" + (
            f" (on {derived} of them `{MAIN}` is derived from its strict-gate compile, BENCHMARKS *Gate rule*)"
            if derived
            else ""
        )
        if missing:
            on += (
                f"; {len(missing)} more users left out: the re-decided gate promotes their compile and "
                "`benchmarks/gate_rule.py` has not answered with it yet"
            )
        out.append(
            f"- {s['dataset']}: `{s['spec']}` vs `{chat['spec']}` on {on}: {key} "
            f"{metric_on(s, common, key):.3f} vs {metric_on(chat, common, key):.3f}, difference {diff[0]:+.3f} "
            f"[{diff[1]:.3f}, {diff[2]:.3f}] ({'better' if better else 'worse' if worse else 'not shown better or worse'}); "
            f"cost {cost(s)} vs {cost(chat)}."
        )
    if out:
        out.insert(
            0, "Prompt format: each `adapter=compact` arm against the same arm in DSPy's chat format, same cases:"
        )
    return out


COMPACT = "adapter=compact"
COMPACT_RULE_SETS = ("amazon", "lamp2n", "movielens")


def compact_rule(summaries: list[dict[str, Any]]) -> list[str]:
    """The pre-registered rule for the agent's default prompt format (commit b9fcee2, before any compact run):
    compact becomes the default only if on every data set run in full (1) ``persona+align:adapter=compact``
    scores no worse than ``persona+align`` on the same users, (2) its tokens per compile are lower, and (3)
    ``persona:adapter=compact`` scores no worse than ``persona`` (point estimates). Read as: all of
    ``COMPACT_RULE_SETS``, each with both compact arms on every case of the data set. Per data set, each
    criterion on the cases run so far; (2) on the cases both aligned arms compiled (none: no verdict)."""
    out = []
    verdicts = []
    for dataset in COMPACT_RULE_SETS:
        mine = {s["spec"]: s for s in summaries if s["dataset"] == dataset}
        arms = [mine.get(f"{MAIN}:{COMPACT}"), mine.get(MAIN), mine.get(f"persona:{COMPACT}"), mine.get("persona")]
        if any(a is None for a in arms):
            out.append(f"- {dataset}: not run (an arm is missing).")
            verdicts.append(None)
            continue
        aligned_c, main, persona_c, persona = arms
        main = with_derived_default(main, summaries)
        cases = data_set_cases(dataset, summaries)
        lower = aligned_c["kind"] == "rating"
        key = "mae" if lower else "accuracy"

        def no_worse(a: dict[str, Any], b: dict[str, Any], key: str = key, lower: bool = lower) -> tuple[bool, str]:
            common = sorted(set(a["gold"]) & set(b["gold"]))
            x, y = metric_on(a, common, key), metric_on(b, common, key)
            return (x <= y if lower else x >= y), f"{key} {x:.3f} vs {y:.3f} on {len(common)}"

        one, one_text = no_worse(aligned_c, main)
        compiled = [
            i
            for i in sorted(set(aligned_c["gold"]) & set(main["gold"]))
            if not not_compiled(aligned_c["cases"][i]) and i in main["cases"] and not not_compiled(main["cases"][i])
        ]
        tokens = [_mean(s["cases"][i]["compile"].get("tokens", 0) for i in compiled) for s in (aligned_c, main)]
        two: bool | None = tokens[0] < tokens[1] if compiled else None
        three, three_text = no_worse(persona_c, persona)
        short = [
            f"`{s['spec']}` on {len(set(s['gold']) & cases)} of {len(cases)} cases"
            for s in (aligned_c, persona_c)
            if not cases <= set(s["gold"])
        ]
        verdicts.append(None if short or two is None else one and two and three)
        two_text = (
            f"{tokens[0]:,.0f} vs {tokens[1]:,.0f} tokens per compile on the {len(compiled)} both compiled "
            f"({'holds' if two else 'fails'})"
            if two is not None
            else "no case compiled by both: no verdict"
        )
        out.append(
            f"- {dataset}: (1) {one_text} ({'holds' if one else 'fails'}); (2) {two_text}; (3) {three_text} "
            f"({'holds' if three else 'fails'}); "
            + ("run in full." if not short else f"**not run in full**: {', '.join(short)}.")
        )
    if all(v is True for v in verdicts):
        verdict = "every data set has run in full and passes: compact becomes the default."
    elif any(v is False for v in verdicts):
        verdict = "a data set run in full fails a criterion: compact stays an option."
    else:
        verdict = "not every data set has run in full: no verdict yet, the default stays chat."
    return [
        (
            "The pre-registered rule for the default prompt format (fixed before any compact run): compact becomes "
            "the default only if on every data set run in full (1) `persona+align:adapter=compact` scores no worse "
            "than `persona+align` on the same users, (2) with fewer tokens per compile, and (3) "
            "`persona:adapter=compact` no worse than `persona` (point estimates; `persona+align` derived where it "
            f"ran as the strict gate). Read as: {', '.join(COMPACT_RULE_SETS)}, each with both compact arms on "
            "every case; a data set run in full that fails decides at once."
        ),
        "",
        *out,
        "",
        f"Verdict: {verdict}",
    ]


def data_set_cases(dataset: str, summaries: list[dict[str, Any]]) -> set[str]:
    """The case ids of ``dataset``: its dev file's (``load_cases``, every user), or when the file is absent here,
    every case any stored method ran on."""
    if DATASETS[dataset].exists():
        return {c.query.id for c in load_cases(dataset, 10**9) if c.query is not None}
    return {i for s in summaries if s["dataset"] == dataset for i in s["gold"]}


def with_derived_default(main: dict[str, Any], summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """``MAIN``'s summary with its answers extended to the users it ran on only as the strict gate, re-decided
    with today's gate (``gate_rule.default_answers`` on ``summaries``' rows, the derivation the report's *Gate
    rule* section uses). A derived user's costs are its strict-gate compile's (the same replays, loss, step and
    gate answers; a flipped user's one extra answer is not counted). The users whose re-decision flips but whose
    answer ``gate_rule`` has not stored yet cannot be derived: they are left out and listed under ``"missing"``."""
    from gate_rule import default_answers, strict_spec  # gate_rule imports this module

    dataset = main["dataset"]
    by_spec = {s["spec"]: s["cases"] for s in summaries if s["dataset"] == dataset}
    strict = next((s for s in summaries if s["dataset"] == dataset and s["spec"] == strict_spec(dataset)), None)
    if strict is None:
        return main
    answers, missing = default_answers(dataset, by_spec)
    extra = {i: a for i, a in answers.items() if i not in main["pred"] and i in strict["gold"]}
    parse = task_value(get_task(next(iter(strict["cases"].values()))["task"]))
    return {
        **main,
        "cases": {**{i: strict["cases"][i] for i in extra}, **main["cases"]},
        "gold": {**main["gold"], **{i: strict["gold"][i] for i in extra}},
        "pred": {**main["pred"], **{i: parse(a) for i, a in extra.items()}},
        "missing": sorted(set(missing) - set(main["pred"])),
    }


PROMPT_OPTIONS = {"k", "chars", "mode", "adapter"}
"""Spec options that change the agent's prompt for the same persona."""


def _prompt_options(spec: str) -> dict[str, Any]:
    return {k: v for k, v in parse_spec(spec)[1].items() if k in PROMPT_OPTIONS}


def compile_checks(summaries: list[dict[str, Any]]) -> list[str]:
    out = []
    for s in summaries:
        if not aligned(s["spec"]):
            continue
        rows = list(s["cases"].values())
        promoted = [r for r in rows if r.get("promoted")]
        dropped = sum(not r["checks"].get("base_kept", True) for r in promoted)
        contra = sum(bool(r["checks"].get("contradictions")) for r in promoted)
        stops = defaultdict(int)
        for r in rows:
            stops[stop_reason((r.get("compile") or {}).get("stopped", ""))] += 1
        out.append(
            f"- {s['dataset']} `{s['spec']}`: {len(promoted)} of {len(rows)} compiles promoted; promoted "
            f"personas that drop the base instructions: {dropped}; that contradict the user's statistics: "
            f"{contra}. Loop ends: "
            + "; ".join(f"{k or '?'}: {v}" for k, v in sorted(stops.items()))
            + "."
            + against_statistic(s, summaries)
        )
    return out


def plot(summaries: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted({s["dataset"] for s in summaries})
    counts = [sum(s["dataset"] == name for s in summaries) for name in datasets]
    # one panel per data set, stacked, one horizontal bar per method: the method specs are long labels
    fig, axes = plt.subplots(
        len(datasets), 1, figsize=(10, 1.2 + 0.28 * sum(counts)), squeeze=False, height_ratios=counts
    )
    for ax, name in zip(axes[:, 0], datasets):
        rows = sorted((s for s in summaries if s["dataset"] == name), key=lambda s: s["spec"], reverse=True)
        key = "mae" if rows[0]["kind"] == "rating" else "accuracy"
        values = [r[key] for r in rows]
        ax.barh(
            [f"{r['spec']} (n={r['n']})" for r in rows],
            [v[0] for v in values],
            xerr=[[v[0] - v[1] for v in values], [v[2] - v[0] for v in values]],
            capsize=3,
            color=["#C44E52" if r["spec"] == MAIN else "#DD8452" if aligned(r["spec"]) else "#4C72B0" for r in rows],
        )
        ax.set_title(
            f"{name}: {key} with 95% CI ({'lower' if key == 'mae' else 'higher'} is better; n: users or queries)",
            fontsize=9,
        )
        ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default="movielens,amazon,lamp2n")
    parser.add_argument("--methods", default=DEFAULT_METHODS)
    parser.add_argument("--users", type=int, default=60, help="cases per data set (the first N in file order)")
    parser.add_argument(
        "--start",
        type=int,
        default=0,
        help="skip the first START of those cases (an arm on users a choice was not made on)",
    )
    parser.add_argument("--k", type=int, default=DEFAULT_K, help="episodes shown (icl, rag, persona)")
    parser.add_argument("--n-recent", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=1)
    parser.add_argument("--n-val", type=int, default=4)
    parser.add_argument("--max-lm-calls", type=int, default=20)
    parser.add_argument("--report", action="store_true", help="only write the report from stored cases")
    args = parser.parse_args()
    if not args.report:
        run(args)
    rows = stored()
    recheck(rows)
    summaries = summarize(rows)
    if not summaries:
        raise SystemExit("no stored cases: run without --report first")
    plot(summaries, RESULTS / "quality.png")
    users: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        users[r["dataset"]].add(r["user_id"])
    hours = sum(r.get("seconds") or 0.0 for r in rows) / 3600
    note = (
        f"Embedded Qwen2.5-Coder-1.5B (Q4_K_M) on 2 cores. One case per user (its held-out last interaction; "
        f"LaMP-2N: one case per query). Rerun (resumable, user-major; a larger `--users` runs only the new users): "
        f"`python benchmarks/quality.py --datasets {','.join(sorted(users))} --users "
        f"{max(len(u) for u in users.values())}`, and an extra arm of the table with `--methods <its spec>`; "
        f"`--report` rewrites this section from `benchmarks/results/quality_cases.jsonl`. "
        f"The stored cases took {hours:.1f} h of compute in all."
    )
    report(summaries, note)


if __name__ == "__main__":
    main()
