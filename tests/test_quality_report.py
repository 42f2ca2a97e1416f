"""The quality benchmark's verdict (benchmarks/quality.py) on stored rows with a known answer: which
method is the baseline to beat, and where an aligned arm stands against the statistic it anchors on."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from quality import (
    compact_rule,
    compile_checks,
    format_pairs,
    parse_spec,
    recheck,
    rerun_noise,
    split_methods,
    summarize,
    verdict,
)

from persona_dspy.optimizers import prompts
from persona_dspy.signatures import DEFAULT_PERSONA

GUIDANCE = "You answer.\nHow to answer for this user: For this user, answer {} for a typical movie."


def row(spec: str, user: int, prediction: str, truth: str = "4.0", promoted: bool | None = None) -> dict:
    r = {
        "dataset": "movielens",
        "spec": spec,
        "task": "movielens_rating",
        "case_id": f"q{user}",
        "user_id": f"u{user}",
        "truth": truth,
        "prediction": prediction,
        "lm_calls": 0 if spec.startswith("trivial") else 1,
        "tokens": 0,
        "seconds": 0.0,
    }
    if promoted is not None:  # an aligned row: its compile, its persona and the checks the report reads
        r.update(
            promoted=promoted,
            persona=GUIDANCE.format(prediction) if promoted else "You answer.",
            compile={"stopped": "1 iteration(s) done", "lm_calls": 11, "tokens": 7000},
            checks={"base_kept": True, "contradictions": []},
        )
    return r


def rows() -> list[dict]:
    """20 users: the aligned arm is exact where promoted (first 10) and 1 star off elsewhere; the mean
    (`trivial`) is 1 star off everywhere, the recent median exact everywhere."""
    out = []
    for u in range(20):
        out.append(row("persona+align", u, "4.0" if u < 10 else "3.0", promoted=u < 10))
        out.append(row("trivial", u, "3.0"))
        out.append(row("trivial:recent=20", u, "4.0"))
    return out


def test_the_target_is_judged_against_the_issues_methods_and_the_statistic_on_its_own_line():
    lines = verdict(summarize(rows()))
    target = next(line for line in lines if line.startswith("- movielens: `persona+align`"))
    assert "(`trivial`) 1.000" in target and "+50.0% relative" in target and "target met" in target
    statistic = next(line for line in lines if "vs `trivial:recent=20`" in line)
    assert "difference +0.500" in statistic and "-> worse." in statistic


def test_the_gap_to_the_statistic_is_split_by_promotion():
    line = next(x for x in compile_checks(summarize(rows())) if x.startswith("- movielens `persona+align`"))
    assert "promoted 10 users: 0.000 vs 0.000; not promoted 10 users: 1.000 vs 0.000" in line
    assert "answered the typical rating their guidance states in 10 of 10" in line


def test_a_label_task_target_is_not_worse_than_the_best_method():
    def label(spec: str, user: int, prediction: str) -> dict:
        r = row(spec, user, prediction, truth="sports")
        r.update(dataset="lamp2n", task="LaMP-2N")
        if spec == "persona+align":
            r.update(promoted=False, persona="You answer.", compile={"stopped": "x"}, checks={})
        return r

    tied = [label(s, u, "sports" if u < 6 else "politics") for u in range(10) for s in ("persona+align", "trivial")]
    target = next(line for line in verdict(summarize(tied)) if line.startswith("- lamp2n: `persona+align`"))
    assert "+0.0% relative" in target and "target met" in target


def test_the_report_checks_every_stored_aligned_persona_again_with_todays_checks():
    def lamp_row(guidance: str) -> dict:  # query-101 is a bundled LaMP-2N query of a style & beauty user
        persona = prompts.compose(DEFAULT_PERSONA, "", guidance)
        stale = {"base_kept": True, "contradictions": []}  # what a row written before the label check holds
        return {
            "dataset": "lamp2n",
            "method": "persona+align",
            "case_id": "query-101",
            "persona": persona,
            "checks": stale,
        }

    habit, other = (
        lamp_row("For this user, answer style & beauty for a typical article."),
        lamp_row("For this user, answer travel for a typical article."),
    )
    recheck([habit, other])
    assert habit["checks"]["contradictions"] == [] and habit["checks"]["base_kept"]
    assert "'travel' as the typical answer" in other["checks"]["contradictions"][0]


def test_a_method_run_on_a_handful_of_users_is_in_the_tables_not_the_bar():
    exact_on_six = [row("profile", u, "4.0") for u in range(6)]  # exact, but on 6 of the 20 users
    lines = verdict(summarize(rows() + exact_on_six))
    target = next(line for line in lines if line.startswith("- movielens: `persona+align`"))
    assert "(`trivial`) 1.000" in target and "target met" in target


def test_an_arm_with_several_options_is_one_method_of_the_list():
    methods = split_methods("trivial:recent=20,persona+align:gate_replayed=1,n_val=1,gepa")
    assert methods == ["trivial:recent=20", "persona+align:gate_replayed=1,n_val=1", "gepa"]
    assert parse_spec(methods[1]) == ("persona+align", {"gate_replayed": True, "n_val": 1})
    assert parse_spec("persona+align:mode=react,reuse=1") == ("persona+align", {"mode": "react", "reuse": True})
    assert parse_spec("persona:adapter=compact") == ("persona", {"adapter": "compact"})
    with pytest.raises(SystemExit, match="adapter must be one of chat, compact"):
        parse_spec("persona:adapter=xml")
    for spec in (
        "trivial:adapter=compact",
        "persona+align:adapter=compact,reuse=1",
        "persona:mode=react,adapter=compact",
    ):
        with pytest.raises(SystemExit, match="adapter= is the agent's prompt format"):
            parse_spec(spec)
    with pytest.raises(SystemExit, match="serves the stored persona\\+align persona"):
        parse_spec("persona:mode=react,reuse=1")  # it would serve the aligned persona under another name


def test_run_to_run_noise_counts_unpromoted_answers_that_differ_from_the_same_prompts_persona_answer():
    """Unpromoted compiles served the default persona: 2 of the 8 differ from `persona`'s answer. Promoted ones,
    and arms whose prompt differs from `persona`'s (other episodes), are not counted."""
    data = [row("persona", u, "4.0") for u in range(10)]
    data += [row("persona+align", u, "3.5" if u < 2 else "4.0", promoted=u >= 8) for u in range(10)]
    data += [row("persona+align:k=16", u, "2.0", promoted=False) for u in range(10)]
    (line,) = rerun_noise(summarize(data))
    assert "of 8 answers" in line and "2 (25%) differ" in line
    assert rerun_noise(summarize([r for r in data if r["spec"] != "persona"])) == []
    data += [row("persona:adapter=compact", u, "3.0") for u in range(10)]  # another prompt format: its own pair
    data += [row("persona+align:adapter=compact", u, "3.0" if u else "4.0", promoted=u >= 5) for u in range(10)]
    plain, compact = rerun_noise(summarize(data))
    assert plain == line and "of 5 answers" in compact and "1 (20%) differ from `persona:adapter=compact`" in compact


def test_a_compact_arm_is_paired_with_the_same_arm_in_the_chat_format_on_the_cases_both_ran():
    data = [row("persona+align:n_val=1", u, "3.0", promoted=False) for u in range(12)]
    data += [
        row("persona+align:adapter=compact,n_val=1", u, "4.0" if u < 8 else "3.0", promoted=u < 8) for u in range(10)
    ]
    for r in data:
        r["tokens"] = 700 if "compact" in r["spec"] else 1000
        r["compile"]["tokens"] = r["tokens"] - 100
    data += [row("persona", u, "4.0") for u in range(10)]  # no compact arm of its own: no line
    title, line = format_pairs(summarize(data))
    assert title.startswith("Prompt format")
    assert line.startswith(
        "- movielens: `persona+align:adapter=compact,n_val=1` vs `persona+align:n_val=1` on 10 cases"
    )
    assert "mae 0.200 vs 1.000, difference -0.800" in line and "(better)" in line
    assert "600 tokens per compile (10 compiled)" in line and "900 tokens per compile (10 compiled)" in line


def test_the_compact_default_is_paired_with_the_chat_default_derived_from_its_strict_gate_compiles(
    tmp_path, monkeypatch
):
    """Where `persona+align` ran only as the strict gate, its answer is derived as BENCHMARKS *Gate rule* does:
    the stored answer unless today's gate flips the decision, then the answer `gate_rule.py` stored for it; a
    flipped user it has not answered is left out, and said so. A derived user's cost is its strict compile's."""
    import json

    import gate_rule

    tie = {"reason": "(1 better, 1 worse", "val_score_candidate": 0.5, "val_score_production": 0.5, "rewritten": False}
    data = [row("persona+align", u, "4.0", promoted=True) for u in range(10, 15)]  # run directly
    strict = [row("persona+align:trust_measured=0", u, "4.0" if u < 6 else "3.0", promoted=u < 6) for u in range(10)]
    for r in strict:
        r["compile"].update(tie if r["case_id"] in ("q6", "q7") else {})  # today's gate promotes these two
        r["compile"]["tokens"] = 5000
    out = tmp_path / "gate_rule_cases.jsonl"
    out.write_text(json.dumps({"case_id": "q6", "prediction": "4.0"}) + "\n")  # q7 not answered yet
    monkeypatch.setattr(gate_rule, "OUT", out)
    data += strict + [row("persona+align:adapter=compact", u, "4.0", promoted=True) for u in range(15)]
    _, line = format_pairs(summarize(data))
    assert line.startswith("- movielens: `persona+align:adapter=compact` vs `persona+align` on 14 cases (on 9 of them")
    assert "1 more users left out" in line
    assert "mae 0.000 vs 0.143" in line  # q8 and q9 keep the strict gate's 3.0; q6 is served its flipped answer
    assert "vs 0 tokens, 0 s per case, 5714 tokens per compile (14 compiled)" in line  # (9 x 5000 + 5 x 7000) / 14


def _compact_arms(compact_answer: str, users: int, persona_users: int = 10, dataset: str = "movielens") -> list[dict]:
    """The four arms of the compact rule: chat arms 1 star off on 10 users, compact arms answering
    ``compact_answer`` (the truth is 4.0), the aligned one on ``users``, the other on ``persona_users``."""
    data = [row("persona+align", u, "3.0", promoted=False) for u in range(10)]
    data += [row("persona", u, "3.0") for u in range(10)]
    data += [row("persona:adapter=compact", u, compact_answer) for u in range(persona_users)]
    data += [row("persona+align:adapter=compact", u, compact_answer, promoted=True) for u in range(users)]
    for r in data:
        r["dataset"] = dataset
        if "compile" in r:
            r["compile"]["tokens"] = 600 if "compact" in r["spec"] else 900
    return data


@pytest.fixture
def rule_sets(monkeypatch, tmp_path):
    """The compact rule over the given data sets, whose dev files are absent (their cases: every stored one)."""
    import quality

    def use(*names: str) -> None:
        monkeypatch.setattr(quality, "COMPACT_RULE_SETS", names)
        monkeypatch.setattr(quality, "DATASETS", {n: tmp_path / f"{n}.jsonl" for n in names})

    return use


def test_the_compact_rule_decides_only_on_data_sets_run_in_full(rule_sets):
    rule_sets("movielens")
    *lines, verdict = compact_rule(summarize(_compact_arms("4.0", 6)))  # closer to the truth, but 6 of 10 users
    assert "(1) mae 0.000 vs 1.000 on 6 (holds)" in lines[-2]
    assert "600 vs 900 tokens per compile on the 6 both compiled (holds)" in lines[-2]
    assert "not run in full**: `persona+align:adapter=compact` on 6 of 10 cases." in lines[-2]
    assert verdict.endswith("no verdict yet, the default stays chat.")
    assert compact_rule(summarize(_compact_arms("4.0", 10)))[-1].endswith("compact becomes the default.")
    short = compact_rule(summarize(_compact_arms("4.0", 10, persona_users=7)))
    assert "not run in full**: `persona:adapter=compact` on 7 of 10 cases." in short[-3]  # the short arm is named
    *lines, verdict = compact_rule(summarize(_compact_arms("1.0", 10)))  # further from the truth: (1) and (3) fail
    assert "(1) mae 3.000 vs 1.000 on 10 (fails)" in lines[-2] and "(3) mae 3.000 vs 1.000 on 10 (fails)" in lines[-2]
    assert verdict.endswith("compact stays an option.")


def test_the_compact_rule_needs_every_data_set_and_evidence_of_cost(rule_sets):
    rule_sets("movielens", "amazon")
    passing, partial = _compact_arms("4.0", 10), _compact_arms("4.0", 6, dataset="amazon")
    lines = compact_rule(summarize(passing + partial))
    assert lines[-1].endswith("no verdict yet, the default stays chat.")  # amazon has not run in full
    failing = _compact_arms("1.0", 10, dataset="amazon")
    assert compact_rule(summarize(passing + failing))[-1].endswith("compact stays an option.")
    assert "- amazon: not run (an arm is missing)." in compact_rule(summarize(passing))
    for r in passing:  # no compile to compare: (2) has no evidence, so no verdict
        if "compile" in r:
            r["compile"]["stopped"] = "not compiled: too few interactions"
    rule_sets("movielens")
    *lines, verdict = compact_rule(summarize(passing))
    assert "(2) no case compiled by both: no verdict" in lines[-2] and verdict.endswith(
        "no verdict yet, the default stays chat."
    )


def test_the_best_method_is_the_one_the_aligned_arm_fares_worst_against_on_the_cases_both_ran():
    """`none` ran only on the 10 users where the aligned arm is 2 stars off, and is 1 off there (MAE 1.0 on
    10); `trivial` is half a star off everywhere (0.5 on 20). Their MAEs are on different users: what counts
    is how the aligned arm fares against each on the users both ran, 1.0 worse than `none`, 0.5 than `trivial`."""
    data = [row("persona+align", u, "4.0" if u < 10 else "2.0", promoted=u < 10) for u in range(20)]
    data += [row("trivial", u, "3.5") for u in range(20)] + [row("none", u, "3.0") for u in range(10, 20)]
    target = next(line for line in verdict(summarize(data)) if line.startswith("- movielens: `persona+align`"))
    assert "(`none`) 1.000 on the same 10 users" in target and "target NOT met" in target
