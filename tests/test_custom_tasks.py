"""Bring your own task: a ``TaskSpec`` from any one-input, one-output ``dspy.Signature`` and a DSPy metric,
registered by name so agents, the fleet and the CLI accept it; free text scores by ROUGE-L."""

from __future__ import annotations

import sys
from typing import Literal

import dspy
import pytest

from persona_dspy.data import Interaction
from persona_dspy.errors import ConfigurationError, TaskMetricError, UnknownTaskError
from persona_dspy.fleet import compile_users
from persona_dspy.lm.scripted import ScriptedLM
from persona_dspy.optimizers import PersonaOptimizer
from persona_dspy.serving import load_agent
from persona_dspy.signatures import TASKS, TaskSpec, get_task, register_task, rouge_l

from scripted import rule


class Reply(dspy.Signature):
    """Draft the reply this user sends to an email."""

    email: str = dspy.InputField(desc="the email the user received")
    reply: str = dspy.OutputField(desc="the reply the user sends")


class Triage(dspy.Signature):
    """Route a support ticket."""

    ticket: str = dspy.InputField()
    queue: Literal["billing", "bug", "other"] = dspy.OutputField()


def starts_like(example: dspy.Example, prediction: dspy.Prediction) -> float:
    return float(prediction.reply.split()[:1] == example.reply.split()[:1])


@pytest.fixture
def registered():
    """Names registered by a test are removed after it (the registry is process-wide)."""
    names: list[str] = []
    yield names
    for name in names:
        TASKS.pop(name, None)


def test_rouge_l_is_the_lcs_f1_of_word_tokens():
    assert rouge_l("the cat sat on the mat", "the cat sat on the mat") == 1.0
    assert rouge_l("the cat sat on the mat", "the cat is on the mat") == pytest.approx(5 / 6)
    assert rouge_l("Thanks, see you", "no") == 0.0
    assert rouge_l("mat the on", "the mat") == pytest.approx(0.4)  # order matters: LCS 1 of 3 and 2


def test_free_text_tasks_score_by_rouge_l_not_exact_match():
    generic = get_task("generic")
    assert generic.score("Thanks, I will come on Monday", "thanks i will come monday") == pytest.approx(10 / 11)
    assert 0 < generic.score("I will come", "thanks i will come monday") < 1


def test_a_signature_becomes_a_task_whose_fields_carry_its_contract(registered):
    spec = register_task("reply-draft", Reply, starts_like)
    registered.append("reply-draft")
    assert get_task("reply-draft") is spec and spec.kind == "text"
    fields = spec.signature.fields
    assert "Draft the reply this user sends" in fields["task"].json_schema_extra["desc"]
    assert fields["answer"].json_schema_extra["desc"] == "the reply the user sends"
    assert spec.score("Sure thing, Monday works", "Sure thing", "can we meet?") == 1.0  # the metric, by field names
    assert spec.score("No", "Sure thing") == 0.0


def test_a_literal_output_makes_a_label_task_scored_by_exact_match(registered):
    spec = register_task("triage", Triage)
    registered.append("triage")
    assert spec.kind == "label" and spec.labels == ("billing", "bug", "other")
    assert spec.score("Bug", "bug") == 1.0 and spec.parse("refund please") is None
    assert "billing, bug, other" in spec.signature.fields["answer"].json_schema_extra["desc"]


@pytest.mark.parametrize(
    ("metric", "problem"),
    [
        (lambda example, prediction: 1 / 0, "raised ZeroDivisionError"),
        (lambda example, prediction: "good", "returned 'good'"),
        (lambda example, prediction: float("nan"), "returned nan"),
        (lambda example, prediction: None, "returned None"),
        (lambda example, prediction: 5.0, r"returned 5.0, outside \[0, 1\]"),
        (lambda example, prediction: -3, r"returned -3, outside \[0, 1\]"),
    ],
)
def test_a_metric_that_raises_or_returns_a_non_number_is_refused_and_nothing_is_registered(metric, problem):
    with pytest.raises(TaskMetricError, match=problem):
        register_task("bad-metric", Reply, metric)
    assert "bad-metric" not in TASKS


def test_a_metric_returning_a_bool_is_scored_0_or_1(registered):
    import numpy as np

    spec = register_task("boolean", Reply, lambda example, prediction: prediction.reply == example.reply)
    registered.append("boolean")
    assert (spec.score("same", "same"), spec.score("same", "other")) == (1.0, 0.0)
    numpy_bool = register_task("np-bool", Reply, lambda example, prediction: np.bool_(True))
    registered.append("np-bool")
    assert numpy_bool.score("a", "b") == 1.0
    rounding = register_task("rounding", Reply, lambda example, prediction: 1.0000001)  # a cosine's rounding
    registered.append("rounding")
    assert rounding.score("a", "b") == 1.0


def test_a_metric_failing_later_is_a_task_metric_error_not_a_silent_zero(registered):
    def picky(example, prediction):
        if "boom" in prediction.reply:
            raise ValueError("cannot score this")
        return 1.0

    spec = register_task("picky", Reply, picky)
    registered.append("picky")
    with pytest.raises(TaskMetricError, match="picky.*ValueError: cannot score this"):
        spec.score("boom", "fine")


def test_a_signature_with_two_inputs_or_a_built_in_name_is_a_configuration_error():
    class TwoInputs(dspy.Signature):
        subject: str = dspy.InputField()
        body: str = dspy.InputField()
        reply: str = dspy.OutputField()

    with pytest.raises(ConfigurationError, match="one input and one output"):
        TaskSpec.from_signature("two", TwoInputs)
    with pytest.raises(ConfigurationError, match="built-in"):
        register_task("generic", Reply)


def test_an_unknown_task_name_is_an_unknown_task_error_naming_the_known_ones():
    with pytest.raises(UnknownTaskError, match="known tasks: generic"):
        get_task("no-such-task")


def test_a_task_module_named_in_the_environment_is_imported_on_first_use(tmp_path, monkeypatch, registered):
    (tmp_path / "my_tasks_mod.py").write_text(
        "import dspy, persona_dspy as pd\n"
        "class Tip(dspy.Signature):\n"
        "    '''Suggest a tip.'''\n"
        "    bill: str = dspy.InputField()\n"
        "    tip: str = dspy.OutputField()\n"
        "pd.register_task('tip-from-env', Tip)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PERSONA_DSPY_TASK_MODULES", "my_tasks_mod")
    registered.append("tip-from-env")
    assert get_task("tip-from-env").name == "tip-from-env"
    sys.modules.pop("my_tasks_mod", None)


def test_a_registered_task_runs_through_the_fleet_and_serving(memory, tracking, registered):
    register_task("reply-fleet", Reply, starts_like)
    registered.append("reply-fleet")
    memory.add(
        [
            Interaction(
                user_id="replier",
                id=f"e{i}",
                input=f"email {i}: can we meet?",
                output="1.0 works for me",
                timestamp=100.0 + i,
                task="reply-fleet",
            )
            for i in range(6)
        ]
    )
    report = compile_users(
        ["replier"],
        PersonaOptimizer(n_recent=3, iterations=1, n_val=2),
        memory=memory,
        tracking=tracking,
        lm=ScriptedLM(rule),
        progress=False,
    )
    assert report.users[0].status in ("promoted", "kept"), report.users[0].reason
    agent = load_agent("replier", settings=tracking.settings, memory=memory, tracking=tracking)
    assert agent.task.name == "reply-fleet" and agent.persona_version == report.users[0].version
