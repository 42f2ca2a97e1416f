"""Invalid values are refused at the boundary, before any work: one line, an exit code, nothing written."""

from __future__ import annotations

import json

import pytest

from persona_dspy import (
    ConfigurationError,
    MalformedInteractionError,
    StoreUnavailableError,
    TrackingUnavailableError,
)
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
    assert "field 'task'" in err and "no-such-task" in err and "register_task" in err
    assert not (tmp_path / "qdrant").exists()


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


def test_log_records_are_redacted_once_the_cli_has_set_up_logging(caplog):
    import logging

    from persona_dspy.redaction import redact_logs

    redact_logs()
    logging.getLogger("httpx").warning("request to %s failed", "http://alice:S3CRET@host:5000/api?token=abc")
    assert "S3CRET" not in caplog.text and "token=abc" not in caplog.text and "http://***@host:5000" in caplog.text
