"""Invalid values are refused at the boundary, before any work: one line, an exit code, nothing written."""

from __future__ import annotations

import json

import numpy as np
import pytest

from persona_dspy import (
    ConfigurationError,
    MalformedInteractionError,
    StoreUnavailableError,
    TrackingUnavailableError,
)
from persona_dspy._values import is_number, is_whole
from persona_dspy.cli import main


def run(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("stamp", ["NaN", "Infinity", "-Infinity", "1e400", "true", "false"])
def test_a_non_finite_or_boolean_timestamp_is_rejected_at_ingest(stamp, tmp_path, capsys):
    data = tmp_path / "bad.jsonl"
    good = json.dumps({"user_id": "u", "id": "a", "input": "x", "output": "y", "timestamp": 1})
    data.write_text(good + "\n" + f'{{"user_id": "u", "id": "b", "input": "x", "output": "y", "timestamp": {stamp}}}\n')
    code, err = run(["ingest", str(data), "--state-dir", str(tmp_path)], capsys)
    assert code == MalformedInteractionError.exit_code, err
    assert "line 2" in err and "field 'timestamp'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "qdrant").exists()


def test_an_unknown_task_is_rejected_at_ingest_not_at_compile(tmp_path, capsys):
    data = tmp_path / "bad.jsonl"
    record = {"user_id": "u", "id": "a", "input": "x", "output": "y", "timestamp": 1, "task": "no-such-task"}
    data.write_text(json.dumps(record) + "\n")
    code, err = run(["ingest", str(data), "--state-dir", str(tmp_path)], capsys)
    assert code == MalformedInteractionError.exit_code, err
    assert "field 'task'" in err and "no-such-task" in err and "register_task" in err and "line 1" in err
    assert not (tmp_path / "qdrant").exists()


@pytest.mark.parametrize("answer", ["banana", "17", "-1", "", "3.3"])  # 3.3: between two half stars
def test_a_rating_off_the_tasks_scale_is_rejected_at_ingest_and_observe(answer, tmp_path, capsys):
    def record(i: int, output: str) -> dict:
        return {"user_id": "u", "id": f"r{i}", "input": f"movie: Film {i}", "output": output, "timestamp": i,
                "task": "movielens_rating"}  # fmt: skip

    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps(record(1, "4.0")) + "\n" + json.dumps(record(2, answer)) + "\n")
    code, err = run(["ingest", str(data), "--state-dir", str(tmp_path)], capsys)
    assert code == MalformedInteractionError.exit_code, err
    assert "line 2" in err and "field 'output'" in err and "from 0.5 to 5" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "qdrant").exists()

    data.write_text(json.dumps(record(1, "4.0")) + "\n")
    assert run(["ingest", str(data), "--state-dir", str(tmp_path)], capsys)[0] == 0
    argv = ["observe", "u", "--input", "movie: Heat", "--output", answer, "--timestamp", "5"]
    code, err = run([*argv, "--state-dir", str(tmp_path)], capsys)
    assert code == MalformedInteractionError.exit_code, err
    assert "field 'output'" in err and len(err.strip().splitlines()) == 1

    from persona_dspy import Settings
    from persona_dspy.memory import EpisodicMemory

    with EpisodicMemory(Settings(state_dir=tmp_path)) as memory:
        assert memory.count("u") == 1  # nothing of either was written
        with pytest.raises(MalformedInteractionError, match="not a movielens_rating rating"):
            memory.add([record(3, answer)])


def test_a_label_tasks_past_may_hold_other_text_than_a_label(tmp_path, capsys):
    """LaMP-1's past interactions are the user's own papers (title -> abstract): stored as they are."""
    paper = {"user_id": "u", "id": "p1", "input": "paper title: Convex grid drawings", "timestamp": 1,
             "output": "In a convex grid drawing of a plane graph, every edge is a straight line.", "task": "LaMP-1"}  # fmt: skip
    data = tmp_path / "papers.jsonl"
    data.write_text(json.dumps(paper) + "\n")
    code, err = run(["ingest", str(data), "--state-dir", str(tmp_path)], capsys)
    assert code == 0, err


@pytest.mark.parametrize("how", ["environment", "flag"])
def test_a_qdrant_address_without_scheme_is_a_configuration_error(how, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "ok.jsonl"
    data.write_text(json.dumps({"user_id": "u", "id": "a", "input": "x", "output": "y", "timestamp": 1}) + "\n")
    argv = ["ingest", str(data), "--state-dir", str(tmp_path / "state")]
    if how == "flag":
        argv += ["--qdrant", "localhost:6333"]
    else:
        monkeypatch.setenv("PERSONA_DSPY_QDRANT", "localhost:6333")
    code, err = run(argv, capsys)
    assert code == ConfigurationError.exit_code, err
    assert "http://localhost:6333" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.jsonl"]  # no folder named localhost:6333


@pytest.mark.parametrize(
    "argv, error",
    [
        (["compile", "--qdrant", ":memory:"], ConfigurationError),
        (["ingest", "{data}"], StoreUnavailableError),
        (["personas", "history", "u"], TrackingUnavailableError),
    ],
    ids=["compile", "ingest", "history"],
)
def test_a_state_dir_that_cannot_be_written_is_one_line_naming_it(argv, error, tmp_path, capsys):
    data = tmp_path / "ok.jsonl"
    data.write_text(json.dumps({"user_id": "u", "id": "a", "input": "x", "output": "y", "timestamp": 1}) + "\n")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")  # a state dir below a file cannot be created, even by root
    state = blocker / "state"
    code, err = run([*(a.format(data=data) for a in argv), "--state-dir", str(state)], capsys)
    assert code == error.exit_code, err
    assert str(blocker) in err and len(err.strip().splitlines()) == 1 and "unexpected" not in err
    if argv[0] == "personas":  # a read: its error does not speak of aliases it never meant to move
        assert "Nothing was changed" in err and "alias was moved" not in err, err


def test_log_records_are_redacted_once_the_cli_has_set_up_logging(caplog):
    import logging

    from persona_dspy.redaction import redact_logs

    redact_logs()
    logging.getLogger("httpx").warning("request to %s failed", "http://alice:S3CRET@host:5000/api?token=abc")
    assert "S3CRET" not in caplog.text and "token=abc" not in caplog.text and "http://***@host:5000" in caplog.text


def test_evaluate_names_the_line_of_a_true_answer_off_the_scale(tmp_path, capsys):
    profile = [{"movie": f"Film {i}", "genres": "Drama", "rating": 4.0, "timestamp": i} for i in range(3)]
    row = {"user_id": "u", "id": "q", "task": "movielens_rating", "input": "movie: Heat", "output": "banana"}
    data = tmp_path / "cases.jsonl"
    data.write_text(
        json.dumps({**row, "output": "4.0", "profile": profile})
        + "\n"
        + json.dumps({**row, "id": "q2", "profile": profile})
        + "\n"
    )
    code, err = run(["evaluate", "--data", str(data), "--method", "trivial", "--state-dir", str(tmp_path)], capsys)
    assert code == MalformedInteractionError.exit_code, err
    assert "line 2" in err and "field 'output'" in err and "banana" in err and len(err.strip().splitlines()) == 1


def test_observe_file_lines_without_a_task_take_the_users_stored_task(tmp_path, capsys, seed_store):
    """As a single ``observe`` without ``--task``: not ``generic``, which would switch the user's task and let
    an answer off the task's scale in."""
    from persona_dspy import Settings
    from persona_dspy.memory import EpisodicMemory

    def line(i: int, output: str, **extra) -> str:
        return json.dumps({"user_id": "u", "id": f"r{i}", "input": f"movie: Film {i}", "output": output,
                           "timestamp": i, **extra}) + "\n"  # fmt: skip

    seed_store(tmp_path)  # observe reads each user's status from the MLflow store
    (tmp_path / "past.jsonl").write_text(line(1, "4.0", task="movielens_rating"))
    assert run(["ingest", str(tmp_path / "past.jsonl"), "--state-dir", str(tmp_path)], capsys)[0] == 0
    (tmp_path / "new.jsonl").write_text(line(2, "banana"))
    code, err = run(["observe", "--file", str(tmp_path / "new.jsonl"), "--state-dir", str(tmp_path)], capsys)
    assert code == MalformedInteractionError.exit_code and "field 'output'" in err and "'r2'" in err, err
    (tmp_path / "new.jsonl").write_text(line(2, "3.5"))
    code, err = run(["observe", "--file", str(tmp_path / "new.jsonl"), "--state-dir", str(tmp_path)], capsys)
    assert code == 0, err
    with EpisodicMemory(Settings(state_dir=tmp_path)) as memory:
        assert [it.task for it in memory.history("u")] == ["movielens_rating", "movielens_rating"]


def test_a_rating_must_sit_on_one_of_the_tasks_steps():
    from persona_dspy.signatures.tasks import answer_problem

    assert answer_problem("movielens_rating", "3.5") is None and answer_problem("movielens_rating", "5") is None
    assert "in steps of 0.5" in answer_problem("movielens_rating", "3.3")
    assert answer_problem("amazon_mi_rating", "4.0") is None
    assert "in steps of 1" in answer_problem("amazon_mi_rating", "4.5")


def test_settings_refuse_a_misspelt_argument_and_a_store_that_names_no_folder(monkeypatch):
    from pydantic import ValidationError

    from persona_dspy import Settings

    with pytest.raises(ValidationError, match="qdrnt"):
        Settings(qdrnt=":memory:")  # was ignored: the default store was used
    for empty in ("edge:", "local: ", "  "):
        with pytest.raises(ValidationError, match="names no folder"):
            Settings(qdrant=empty)
    monkeypatch.setenv("PERSONA_DSPY_QDRANT", "")  # an empty variable is the default store, as an unset one
    assert Settings().qdrant is None and Settings(qdrant="edge").qdrant_folder.name == "edge"


@pytest.mark.parametrize(
    ("value", "whole", "number"),
    [
        (3, True, True),
        (np.int64(3), True, True),
        (2.5, False, True),
        (np.float32(2.5), False, True),
        (float("inf"), False, True),
        (float("nan"), False, False),
        (True, False, False),
        (np.bool_(True), False, False),
        ("3", False, False),
        (None, False, False),
    ],
)
def test_one_rule_says_what_a_whole_number_and_a_number_are(value, whole, number):
    assert (is_whole(value), is_number(value)) == (whole, number)
