"""Export: a persona as a self-contained prompt (text, json, messages) that holds what the agent shows the LM;
and the serving commands of the CLI (ask, observe, compile --due, personas export) on real stores."""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path

import dspy
import pytest

from persona_dspy import cli
from persona_dspy.data import Interaction
from persona_dspy.errors import (
    ConfigurationError,
    OutOfOrderObservationError,
    PersonaNotFoundError,
    UnknownUserError,
)
from persona_dspy.export import export_prompt
from persona_dspy.lm.scripted import ScriptedLM
from persona_dspy.memory import episodic
from persona_dspy.optimizers.prompts import FACTS_HEADER
from persona_dspy.serving import RealignPolicy, compile_due, load_agent

import scripted
from scripted import rule


def ratings(user_id: str, n: int = 6) -> list[Interaction]:
    return scripted.ratings(user_id, n, genres="Comedy", start=1000.0)


@pytest.fixture
def compiled(memory, tracking):
    """A user with a promoted persona (v1 of the scripted compile)."""
    from persona_dspy.optimizers import PersonaOptimizer

    memory.add(ratings("exported"))
    compile_due(
        PersonaOptimizer(n_recent=3, iterations=1, n_val=2),
        settings=tracking.settings,
        policy=RealignPolicy(realign_after=1),
        users=["exported"],
        memory=memory,
        tracking=tracking,
        lm=ScriptedLM(rule),
        progress=False,
    )
    return {"settings": tracking.settings, "memory": memory, "tracking": tracking}


def test_the_text_export_holds_the_persona_the_profile_and_the_output_contract(compiled):
    text = export_prompt("exported", **compiled)
    persona = compiled["tracking"].load_persona("exported").text
    assert text.startswith(persona) and FACTS_HEADER in text
    assert "6 past ratings, mean 1.00" in text  # what is known about the user
    assert "from 0.5 to 5.0 in half-star steps" in text and "single number from 0.5 to 5" in text


def test_the_json_export_names_each_part_and_the_version(compiled):
    exported = export_prompt("exported", format="json", **compiled)
    assert exported["persona_version"] == compiled["tracking"].load_persona("exported").version
    assert exported["persona"]["facts"] and exported["persona"]["guidance"].startswith("For this user")
    assert exported["system"] == export_prompt("exported", **compiled)


def test_the_messages_export_is_a_chat_with_the_episodes_the_agent_retrieves(compiled):
    task = "movie: Film 3 genres: Comedy"
    system, user = export_prompt("exported", format="messages", task_text=task, **compiled)
    agent = load_agent("exported", **compiled)
    assert system["role"] == "system" and user["role"] == "user"
    assert agent.context(task)["history"] in user["content"] and user["content"].endswith(task)


def test_a_plain_chat_call_with_the_messages_export_answers_like_the_agent(compiled):
    task = "movie: Tonight genres: Comedy"
    messages = export_prompt("exported", format="messages", task_text=task, **compiled)
    lm = ScriptedLM(lambda msgs: "1.0" if "harsh" in msgs[0]["content"] else "4.0")
    with dspy.context(lm=ScriptedLM(rule)):
        in_framework = load_agent("exported", **compiled)(task=task).answer
    assert lm(messages=messages)[0] == in_framework == "1.0"


def test_exporting_messages_without_a_task_or_in_an_unknown_format_is_a_configuration_error(compiled):
    with pytest.raises(ConfigurationError, match="task text"):
        export_prompt("exported", format="messages", **compiled)
    with pytest.raises(ConfigurationError, match="unknown export format"):
        export_prompt("exported", format="yaml", **compiled)


def test_exporting_an_unknown_user_or_alias_is_a_specific_error(compiled):
    with pytest.raises(UnknownUserError):
        export_prompt("nobody-to-export", **compiled)
    with pytest.raises(PersonaNotFoundError):
        export_prompt("exported", alias=99, **compiled)


# -- the CLI -----------------------------------------------------------------------------------


@pytest.fixture
def persona_cli(tmp_path, mlflow_uri, embedder, monkeypatch, capsys):
    """``persona-dspy`` on an Edge folder and the session's sqlite store, answering with the scripted LM."""
    import persona_dspy.lm

    monkeypatch.setattr(episodic, "OnnxEmbedder", lambda: embedder)
    monkeypatch.setattr(persona_dspy.lm, "build_lm", lambda settings: ScriptedLM(rule))
    stores = ["--state-dir", str(tmp_path / "state"), "--mlflow-tracking-uri", mlflow_uri]

    def run(*argv: str) -> tuple[int, str, str]:
        code = cli.main([argv[0], *stores, *argv[1:]] if argv[0] != "personas" else [*argv[:2], *stores, *argv[2:]])
        out = capsys.readouterr()
        return code, out.out, out.err

    user = f"cli-{uuid.uuid4().hex[:8]}"  # the MLflow store is the session's: one user per test
    data = tmp_path / "history.jsonl"
    data.write_text("\n".join(it.model_dump_json() for it in ratings(user)) + "\n")
    assert run("ingest", str(data))[0] == 0

    def as_user(*argv: str) -> tuple[int, str, str]:
        return run(*(user if a == "USER" else a for a in argv))

    as_user.user = user  # type: ignore[attr-defined]
    return as_user


def test_cli_ask_prints_the_answer_the_persona_version_and_the_evidence(persona_cli):
    code, out, _ = persona_cli("ask", "USER", "movie: Tonight genres: Comedy", "--json")
    answer = json.loads(out)
    assert code == 0 and answer["answer"] == "4.0" and answer["persona_version"] is None
    assert "movie: Film" in answer["evidence"]["episodes"] and "rates low" in answer["evidence"]["profile"]
    code, out, _ = persona_cli("ask", "USER", "movie: Tonight genres: Comedy")
    assert code == 0 and "answer: 4.0" in out and "never compiled" in out and "episodes used:" in out


def test_cli_observe_then_compile_due_then_ask_serves_the_new_version(persona_cli):
    code, out, _ = persona_cli(
        "observe", "USER", "--input", "movie: Seen genres: Comedy", "--output", "1.0", "--realign-after", "7"
    )
    assert code == 0 and "1 interaction(s) stored" in out and "7 new since last compile; due" in out
    code, out, _ = persona_cli("compile", "--due", "--realign-after", "7", "--n-recent", "3", "--n-val", "2")
    assert code == 0 and "1 of 1 user(s) due" in out and "promoted" in out
    code, out, _ = persona_cli("compile", "--due", "--realign-after", "7")
    assert code == 0 and "0 of 1 user(s) due" in out
    code, out, _ = persona_cli("ask", "USER", "movie: Tonight genres: Comedy", "--json")
    assert json.loads(out)["persona_version"] is not None and json.loads(out)["answer"] == "1.0"
    code, out, _ = persona_cli("personas", "export", "USER", "--format", "json")
    assert code == 0 and "harsh" in json.loads(out)["persona"]["guidance"]


def test_cli_observe_a_batch_from_a_jsonl_file_is_idempotent(persona_cli, tmp_path):
    batch = tmp_path / "outcomes.jsonl"
    user = persona_cli.user
    batch.write_text(
        "\n".join(
            it.model_copy(update={"timestamp": 9000.0 + i}).model_dump_json() for i, it in enumerate(ratings(user, 2))
        )
        .replace('"m0"', '"new0"')
        .replace('"m1"', '"new1"')
    )
    code, out, _ = persona_cli("observe", "--file", str(batch))
    assert code == 0 and "2 interaction(s) stored, 0 already stored" in out and "8 new since last compile" in out
    code, out, _ = persona_cli("observe", "--file", str(batch))
    assert code == 0 and "0 interaction(s) stored, 2 already stored" in out


def test_the_export_benchmark_runs_on_the_scripted_lm(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from export import main as benchmark

    result = benchmark(["--scripted", "--users", "2", "--out", str(tmp_path / "export.json")])
    assert result["cases"] == 2 and result["within_2pct"] and result["summary"]["export"]["valid"] == 2


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (("ask", "nobody", "movie: X"), UnknownUserError),
        (("ask", "USER", "movie: X", "--alias", "candidate"), PersonaNotFoundError),
        (("ask", "USER", "movie: X", "--alias", "42"), PersonaNotFoundError),
        (
            ("observe", "USER", "--input", "movie: Old", "--output", "2.0", "--timestamp", "5"),
            OutOfOrderObservationError,
        ),
        (("personas", "export", "USER", "--format", "messages"), ConfigurationError),
        (("observe", "USER", "--input", "movie: Only input"), ConfigurationError),
    ],
)
def test_cli_bad_serving_input_is_one_line_and_its_exit_code(persona_cli, argv, error):
    code, _, err = persona_cli(*argv)
    assert code == error.exit_code and err.count("\n") == 1 and err.startswith(f"persona-dspy: {error.__name__}: ")
