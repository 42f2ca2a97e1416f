"""Export: a persona as a self-contained prompt (text, json, messages) that holds what the agent shows the LM;
and the serving commands of the CLI (ask, observe, compile --due, personas export) on real stores."""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path

import dspy
import pytest
from dspy.lm15 import request_from_openai_chat

from persona_dspy import cli
from persona_dspy.agent import PersonaAgent
from persona_dspy.data import Interaction
from persona_dspy.errors import (
    ConfigurationError,
    OutOfOrderObservationError,
    PersonaNotFoundError,
    UnknownUserError,
)
from persona_dspy.export import agent_messages, export_prompt, parse_reply
from persona_dspy.lm.scripted import ScriptedLM
from persona_dspy.memory import episodic
from persona_dspy.optimizers.prompts import FACTS_HEADER
from persona_dspy.serving import RealignPolicy, compile_due, load_agent
from persona_dspy.signatures.tasks import PersonalizedTask, get_task

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


def answering_prompts(lm: ScriptedLM) -> list[list[dict[str, str]]]:
    """The chats the agent's answering predictor sent (not the profile distillations)."""
    return [msgs for msgs in lm.prompts if "[[ ## task ## ]]" in msgs[-1]["content"]]


@pytest.fixture
def default_user(memory, tracking):
    """A user with a history and no compiled persona (the default persona)."""
    memory.add(ratings("uncompiled"))
    return {"settings": tracking.settings, "memory": memory, "tracking": tracking}


@pytest.mark.parametrize("before", [None, 1003.5])
@pytest.mark.parametrize(("user", "stores"), [("uncompiled", "default_user"), ("exported", "compiled")])
def test_the_messages_export_is_what_the_agents_lm_receives(user, stores, before, request):
    stores = request.getfixturevalue(stores)
    task = "movie: Film 3 genres: Comedy"
    lm = ScriptedLM(rule)
    with dspy.context(lm=lm):  # before=None: the agent first re-distills the stale profile, then answers
        agent = load_agent(user, **stores)
        assert agent(task=task, before=before).valid
    (sent,) = answering_prompts(lm)  # a valid first answer: one call
    exported = export_prompt(user, format="messages", task_text=task, before=before, **stores)
    assert exported == sent  # message for message, byte for byte
    system, message = exported
    assert system["role"] == "system" and message["role"] == "user"
    assert "[[ ## answer ## ]]" in system["content"]  # the field structure, then the persona as the objective
    assert all(line.strip() in system["content"].split("your objective is:")[1] for line in agent.persona.splitlines())
    assert agent.context(task, before)["history"] in message["content"] and task in message["content"]
    assert message["content"].endswith("ending with the marker for `[[ ## completed ## ]]`.")
    if agent.persona_version is not None:  # the aligned persona: its measured facts and its guidance
        assert FACTS_HEADER in system["content"] and scripted.NEW_PERSONA in system["content"]


def test_a_plain_chat_call_with_the_messages_export_answers_like_the_agent(compiled):
    task = "movie: Tonight genres: Comedy"
    messages = export_prompt("exported", format="messages", task_text=task, **compiled)
    lm = ScriptedLM(rule)
    with dspy.context(lm=lm):
        in_framework = load_agent("exported", **compiled)(task=task).answer
    reply = lm(request_from_openai_chat({"model": lm.model, "messages": messages}), cache=False).text
    assert reply.startswith("[[ ## answer ## ]]") and parse_reply(get_task("movielens_rating"), reply) == in_framework
    assert in_framework == scripted.LOW  # the compiled persona (harsh) reached the plain call


@pytest.mark.parametrize(
    ("reply", "answer"),
    [
        (dspy.ChatAdapter().format_assistant_message_content(PersonalizedTask, {"answer": "4"}), "4.0"),
        ("Here it is.\n[[ ## answer ## ]]\n3.5 stars\n\n[[ ## completed ## ]]", "3.5"),
        ("[[ ## answer ## ]] 2 [[ ## answer ## ]] 5", "2.0"),  # the first answer section, as ChatAdapter reads it
        ("4", "4.0"),  # a bare answer, no markers
        ("4.5\n\n[[ ## completed ## ]]", "4.5"),
    ],
)
def test_a_reply_is_read_after_its_answer_marker_by_the_tasks_contract(reply, answer):
    assert parse_reply(get_task("movielens_rating"), reply) == answer


@pytest.mark.parametrize(
    "reply",
    [
        "[[ ## answer ## ]]\nI would rather not say.\n\n[[ ## completed ## ]]",
        "[[ ## profile ## ]]\nrates 5 stars often\n\n[[ ## completed ## ]]",  # markers, but no answer
        "",
        None,
    ],
)
def test_a_reply_outside_the_contract_scores_as_invalid(reply):
    task = get_task("movielens_rating")
    assert parse_reply(task, reply) is None and task.score(parse_reply(task, reply), "4.0") == 0.0


def test_the_messages_export_of_a_react_agent_is_a_configuration_error():
    with pytest.raises(ConfigurationError, match="pipeline"):
        agent_messages(PersonaAgent("movielens_rating", user_id="u", mode="react"), "movie: X")


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


def test_cli_observe_retried_under_its_id_is_stored_once_and_compile_due_isolates_an_unknown_id(persona_cli):
    for stored in ("1 interaction(s) stored, 0", "0 interaction(s) stored, 1"):
        code, out, _ = persona_cli("observe", "USER", "--input", "movie: Seen", "--output", "1.0", "--id", "seen-1")
        assert code == 0 and stored in out
    code, out, _ = persona_cli("compile", "--due", "--users", f"{persona_cli.user},nobody", "--realign-after", "99")
    assert code == 1 and "nobody: unknown user" in out and "0 of 1 user(s) due" in out and "failed   nobody" in out


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
    assert result["identical_prompt"] == 2 and all(
        r["export_raw"].startswith("[[ ## answer ## ]]") for r in result["rows"]
    )


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
        (("ask", "USER", "some article", "--task", "LaMP-2N"), ConfigurationError),  # not a task of theirs
        (("personas", "export", "USER", "--task", "LaMP-2N"), ConfigurationError),
    ],
)
def test_cli_bad_serving_input_is_one_line_and_its_exit_code(persona_cli, argv, error):
    code, _, err = persona_cli(*argv)
    assert code == error.exit_code and err.count("\n") == 1 and err.startswith(f"persona-dspy: {error.__name__}: ")
