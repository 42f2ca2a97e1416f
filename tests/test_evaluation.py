"""Evaluation: metrics on known inputs, malformed files, and the leakage guard (scripted LM)."""

from __future__ import annotations

import json
import math

import pytest

from persona_dspy import ConfigurationError, MalformedInteractionError
from persona_dspy.cli import main
from persona_dspy.data import Interaction, UserHistory
from persona_dspy.evaluation import LeakageError, check_no_leak, evaluate, metrics, trivial_answer
from persona_dspy.lm.scripted import ScriptedLM
from persona_dspy.signatures import TASKS

from scripted import react_rule, rule


def test_label_metrics_on_known_inputs():
    task = TASKS["LaMP-1"]
    m = metrics(task, ["[1]", "[1]", "[2]", "[2]"], ["[1]", "[2]", "[2]", None])
    assert m["accuracy"] == 0.5
    # [1]: tp=1 fp=0 fn=1 -> 2/3 ; [2]: tp=1 fp=1 fn=1 -> 1/2
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1 / 2) / 2)


def test_macro_f1_averages_over_the_whole_label_set():
    m = metrics(TASKS["LaMP-2N"], ["sports"], ["sports"])
    assert m["accuracy"] == 1.0 and m["macro_f1"] == pytest.approx(1 / 15)


def test_rating_metrics_count_invalid_answers_as_worst():
    task = TASKS["movielens_rating"]
    m = metrics(task, ["4.0", "2.0", "5.0"], ["3.0", "2.0", "garbage"])
    errors = [1.0, 0.0, 4.5]
    assert m["mae"] == pytest.approx(sum(errors) / 3)
    assert m["rmse"] == pytest.approx(math.sqrt(sum(e * e for e in errors) / 3))


def test_trivial_baseline_is_majority_or_mean():
    def hist(task, outs):
        items = tuple(
            Interaction(user_id="u", id=str(i), input="x", output=o, timestamp=i, task=task) for i, o in enumerate(outs)
        )
        return UserHistory(user_id="u", interactions=items)

    assert trivial_answer(TASKS["LaMP-2N"], hist("LaMP-2N", ["sports", "politics", "sports"])) == "sports"
    assert trivial_answer(TASKS["movielens_rating"], hist("movielens_rating", ["1.0", "2.0", "2.5"])) == "2.0"
    # recent=N: the median rating / majority label of the N latest answers only
    drift = hist("movielens_rating", ["1.0", "1.0", "1.0", "4.0", "5.0", "3.0"])
    assert trivial_answer(TASKS["movielens_rating"], drift, recent=3) == "4.0"
    assert trivial_answer(TASKS["movielens_rating"], drift) == "2.5"
    labels = hist("LaMP-2N", ["sports", "sports", "sports", "politics", "politics", "not a label"])
    assert trivial_answer(TASKS["LaMP-2N"], labels, recent=2) == "politics"  # the 2 latest *answers*
    with pytest.raises(ConfigurationError, match="recent must be >= 0"):
        trivial_answer(TASKS["LaMP-2N"], labels, recent=-1)


def free_text_cases(n_users: int = 2) -> list[UserHistory]:
    cases = []
    for u in range(n_users):
        past = tuple(
            Interaction(
                user_id=f"u{u}",
                id=f"p{i}",
                input=f"question {i} of user {u}",
                output=f"past-answer-{u}-{i}",
                timestamp=float(i),
            )
            for i in range(6)
        )
        query = Interaction(
            user_id=f"u{u}",
            id="q",
            input=f"the held-out question of user {u}",
            output=f"HELD-OUT-ANSWER-{u}",
            timestamp=10.0,
        )
        cases.append(UserHistory(user_id=f"u{u}", interactions=past, query=query))
    return cases


@pytest.mark.parametrize("method", ["none", "icl", "rag", "persona", "persona+align"])
def test_held_out_answer_never_reaches_a_prompt(memory, method):
    cases = free_text_cases()
    lm = ScriptedLM(rule)
    report = evaluate(cases, method, memory=memory, lm=lm, n_recent=2, iterations=1, n_val=1, progress=False)
    prompts = lm.all_prompt_text()
    assert "HELD-OUT-ANSWER" not in prompts
    assert "the held-out question of user 0" in prompts  # the query itself was asked
    if method in ("icl", "rag", "persona"):
        assert "past-answer-0-" in prompts  # personalization did read the past
    assert len(report.cases) == 2 and all(c.lm_calls >= 1 for c in report.cases)
    assert memory.count() == 0  # every case's past is forgotten after it


def test_leakage_guard_fires_when_the_answer_is_in_memory(memory):
    case = free_text_cases(1)[0]
    memory.add(case.interactions)
    memory.add([case.query])  # the mistake the guard exists for
    with pytest.raises(LeakageError, match="at/after the query"):
        check_no_leak(case, memory, [])
    with pytest.raises(LeakageError, match="prompt"):
        memory.forget(case.user_id)
        memory.add(case.interactions)
        check_no_leak(case, memory, [f"... {case.query.output} ..."])


def test_evaluate_command_rejects_a_malformed_file_with_its_line(tmp_path, capsys):
    good = json.dumps({"id": "1", "task": "LaMP-1", "user_id": "u", "input": "x", "output": "[1]", "profile": []})
    path = tmp_path / "bad.jsonl"
    path.write_text(good + "\n" + '{"id": "2", "task": "LaMP-1"\n')
    code = main(["evaluate", "--data", str(path), "--method", "none", "--state-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == MalformedInteractionError.exit_code
    assert "line 2" in err and "Traceback" not in err


def test_kept_memory_is_reused_by_the_next_method_and_replaced_when_the_case_differs(memory):
    cases = free_text_cases(1)
    lm = ScriptedLM(rule)
    calls = []
    embed = memory.embedder.embed
    memory.embedder.embed = lambda texts: calls.append(len(texts)) or embed(texts)
    evaluate(cases, "rag", memory=memory, lm=lm, keep_memory=True, progress=False)
    assert calls == [6] and memory.count("u0") == 6  # the past was embedded once and kept
    evaluate(cases, "icl", memory=memory, lm=lm, keep_memory=True, progress=False)
    assert calls == [6]  # the same past is found: nothing embedded again
    shorter = UserHistory(user_id="u0", interactions=cases[0].interactions[:4], query=cases[0].query)
    evaluate([shorter], "rag", memory=memory, lm=lm, progress=False)
    assert memory.count() == 0  # a different past replaced the kept one, then was forgotten


def test_a_past_too_short_to_gate_compiles_nothing_and_production_answers(memory):
    """6 past interactions, n_recent=3 + n_val=4 needs 7: the user is evaluated, not dropped, with the
    production persona answering (what serving would do) and the compile's reason recorded."""
    cases = free_text_cases(1)
    lm = ScriptedLM(rule)
    aligned = evaluate(cases, "persona+align", memory=memory, lm=lm, n_recent=3, n_val=4, progress=False).cases[0]
    plain = evaluate(cases, "persona", memory=memory, lm=ScriptedLM(rule), progress=False).cases[0]
    assert aligned.promoted is False and aligned.compile is not None
    assert aligned.compile["stopped"].startswith("not compiled") and "needs 7" in aligned.compile["stopped"]
    assert aligned.lm_calls == 1 and aligned.persona == plain.persona and aligned.prediction == plain.prediction
    compiled = evaluate(cases, "persona+align", memory=memory, lm=ScriptedLM(rule), n_recent=3, n_val=2, progress=False)
    assert compiled.cases[0].lm_calls > 1 and not compiled.cases[0].compile["stopped"].startswith("not compiled")


@pytest.mark.parametrize("method", ["persona", "persona+align"])
def test_react_mode_is_a_method_option_and_its_tools_stay_before_the_query(memory, method):
    cases = free_text_cases(1)
    lm = ScriptedLM(react_rule("recent_interactions", {}, lambda system: "harsh" if "harsh" in system else "kind"))
    report = evaluate(
        cases, method, memory=memory, lm=lm, mode="react", n_recent=2, n_val=1, max_lm_calls=40, progress=False
    )
    case = report.cases[0]
    prompts = lm.all_prompt_text()
    assert "next_tool_name" in prompts and "past-answer-0-5" in prompts  # the agent chose an action and read the past
    assert "HELD-OUT-ANSWER" not in prompts
    assert case.prediction in ("harsh", "kind") and case.lm_calls >= 3  # tool step, finish, extract
    if method == "persona+align":
        assert case.compile is not None and case.compile["lm_calls"] > 0


def test_a_given_persona_answers_its_case_in_react_mode_and_an_aligning_method_refuses_one(memory):
    """``personas=``: an aligned run's stored persona served in another mode answers its case only."""
    cases = free_text_cases(2)
    given = "You answer on behalf of one specific user. This user is harsh."
    lm = ScriptedLM(react_rule("recent_interactions", {}, lambda system: "harsh" if "harsh" in system else "kind"))
    report = evaluate(cases, "persona", memory=memory, lm=lm, mode="react", personas={"q": given}, progress=False)
    assert [c.persona for c in report.cases] == [given, given]  # both cases' query id is "q"
    assert [c.prediction for c in report.cases] == ["harsh", "harsh"]
    plain = evaluate(
        cases[:1], "persona", memory=memory, lm=lm, mode="react", personas={"other": given}, progress=False
    )
    assert plain.cases[0].persona != given and plain.cases[0].prediction == "kind"
    for method in ("persona+align", "gepa", "trivial"):
        with pytest.raises(ConfigurationError, match="personas="):
            evaluate(cases, method, memory=memory, lm=lm, personas={"q": given}, progress=False)


def test_gepa_is_a_method_compiled_under_the_same_split_and_budget(memory):
    """``gepa`` (dspy.GEPA on the persona) runs through ``evaluate`` with the aligned method's budget."""
    from scripted import rule_with_dspy_optimizers

    lm = ScriptedLM(rule_with_dspy_optimizers)
    case = evaluate(
        free_text_cases(1), "gepa", memory=memory, lm=lm, n_recent=2, n_val=1, max_lm_calls=12, progress=False
    ).cases[0]
    assert "HELD-OUT-ANSWER" not in lm.all_prompt_text()
    assert case.compile is not None and 0 < case.compile["lm_calls"] <= 12
    assert case.lm_calls == case.compile["lm_calls"] + 1  # the compile, then the held-out answer
    short = evaluate(
        free_text_cases(1), "gepa", memory=memory, lm=lm, n_recent=2, n_val=1, max_lm_calls=8, progress=False
    )
    assert short.cases[0].compile["stopped"].startswith("over budget") and short.cases[0].lm_calls == 1
    assert short.cases[0].compile["lm_calls"] == 0  # refused before any LM call
    stopped = evaluate(
        free_text_cases(1),
        "persona+align",
        memory=memory,
        lm=ScriptedLM(rule),
        n_recent=2,
        n_val=1,
        max_lm_calls=2,
        progress=False,
    ).cases[0]
    assert stopped.compile["stopped"].startswith("over budget") and stopped.compile["lm_calls"] == 2  # the replay


def test_trivial_reads_no_memory_and_no_lm(memory):
    report = evaluate(free_text_cases(1), "trivial", memory=memory, lm=None, recent=2, progress=False, keep_memory=True)
    assert report.cases[0].lm_calls == 0 and memory.count() == 0  # nothing was embedded for a statistic


def test_profile_method_answers_from_a_profile_of_the_past_only_and_survives_a_failed_distillation(memory, caplog):
    from persona_dspy.memory import SemanticMemory

    def profile_case(profile: str, retries: int = 2):
        """The ``profile`` method on one user, with a distiller that returns ``profile``; the case and its LM."""

        def respond(messages):
            if "previous_profile" in messages[0]["content"]:
                return {"profile": profile}
            return rule(messages)

        lm = ScriptedLM(respond)
        semantic = lambda: SemanticMemory(memory, task="generic", retries=retries)
        case = evaluate(free_text_cases(1), "profile", memory=memory, lm=lm, progress=False, semantic_factory=semantic)
        return case.cases[0], lm

    case, lm = profile_case("- answers tersely\n- asks about gardens")
    answer_prompt = lm.history[-1]["messages"][-1]["content"]
    assert "asks about gardens" in answer_prompt and "past-answer-0-3" not in answer_prompt  # a profile, not episodes
    assert "HELD-OUT-ANSWER" not in lm.all_prompt_text() and case.lm_calls == 2  # distill, answer
    case, _ = profile_case("no bullet points at all", retries=1)
    assert case.prediction is not None and case.lm_calls == 3  # two failed distillations, then the answer
    assert "without a fresh profile" in caplog.text
