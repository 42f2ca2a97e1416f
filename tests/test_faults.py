"""Bad input and faults: specific errors, nothing lost, nothing written, no secrets leaked."""

from __future__ import annotations

import json
from pathlib import Path

import dspy
import pytest

from persona_dspy import ConfigurationError, LMOutputError, MalformedInteractionError, Settings, UnknownUserError
from persona_dspy.agent import PersonaAgent
from persona_dspy.cli import main
from persona_dspy.data import Interaction, load_interactions
from persona_dspy.data.loaders import MAX_LINE_BYTES
from persona_dspy.lm.scripted import ScriptedLM
from persona_dspy.memory import EpisodicMemory
from persona_dspy.optimizers import PersonaOptimizer
from persona_dspy.pipeline import align_user
from persona_dspy.tracking import Tracking

from scripted import ratings, rule


def history(user: str, n: int = 6) -> list[Interaction]:
    return ratings(user, n)


def line(i: int, ts: float, **kw) -> str:
    return json.dumps({"user_id": "u", "id": f"i{i}", "input": f"task {i}", "output": "x", "timestamp": ts, **kw})


@pytest.mark.parametrize(
    "lines, needle, lineno",
    [
        ([line(1, 1.0), line(2, 0.5)], "earlier than line 1", 2),
        ([line(1, 1.0), "x" * (MAX_LINE_BYTES + 1)], "over the", 2),
        ([line(1, 1.0), line(2, 2.0, input="y" * 30_000)], "at most", 2),
    ],
)
def test_malformed_files_name_the_line(tmp_path, lines, needle, lineno):
    path = tmp_path / "f.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(MalformedInteractionError, match=needle) as exc:
        load_interactions(path)
    assert exc.value.line == lineno


def test_ingest_of_a_bad_file_writes_nothing(tmp_path, capsys):
    path = tmp_path / "f.jsonl"
    path.write_text(line(1, 1.0) + "\n" + line(2, 2.0) + "\n{broken\n")
    state = tmp_path / "state"
    code = main(["ingest", str(path), "--state-dir", str(state)])
    assert code == MalformedInteractionError.exit_code
    assert "line 3" in capsys.readouterr().err
    with EpisodicMemory(Settings(state_dir=state)) as mem:
        assert mem.count() == 0


def test_ingest_never_overwrites_a_stored_record_silently(tmp_path, capsys):
    """A record stored under the same user and id with other content is refused (nothing written) unless
    ``--replace``; the same content again is idempotent."""
    path, state = tmp_path / "f.jsonl", tmp_path / "state"
    path.write_text(line(1, 1.0) + "\n" + line(2, 2.0) + "\n")
    assert main(["ingest", str(path), "--state-dir", str(state)]) == 0
    path.write_text(line(1, 1.0) + "\n" + line(2, 2.0, output="changed") + "\n" + line(3, 3.0) + "\n")
    code = main(["ingest", str(path), "--state-dir", str(state)])
    err = capsys.readouterr().err
    assert code == MalformedInteractionError.exit_code and "'i2'" in err and "--replace" in err, err
    with EpisodicMemory(Settings(state_dir=state)) as mem:
        assert [it.output for it in mem.history("u")] == ["x", "x"]
    assert main(["ingest", str(path), "--state-dir", str(state), "--replace"]) == 0
    assert "3 interactions read, 2 written" in capsys.readouterr().out
    with EpisodicMemory(Settings(state_dir=state)) as mem:
        assert [it.output for it in mem.history("u")] == ["x", "changed", "x"]


def test_ingest_refuses_a_milliseconds_timestamp_as_observe_does(tmp_path, capsys):
    path, state = tmp_path / "f.jsonl", tmp_path / "state"
    path.write_text(line(1, 1.0) + "\n" + line(2, 1.7e12) + "\n")
    code = main(["ingest", str(path), "--state-dir", str(state)])
    err = capsys.readouterr().err
    assert code == MalformedInteractionError.exit_code and "milliseconds" in err and "'i2'" in err, err
    with EpisodicMemory(Settings(state_dir=state)) as mem:
        assert mem.count() == 0


def test_a_shared_file_with_several_queries_of_one_user_ingests_once_and_again_writes_nothing(tmp_path, capsys):
    data, state = Path(__file__).parent / "data" / "lamp2n.jsonl", tmp_path / "state"
    assert main(["ingest", str(data), "--shared", "--state-dir", str(state)]) == 0  # 3 lines of one user
    first = capsys.readouterr().out
    assert main(["ingest", str(data), "--shared", "--state-dir", str(state)]) == 0
    assert " 0 written" in capsys.readouterr().out and " 0 written" not in first


@pytest.mark.parametrize("content", ["", "\n  \n"], ids=["empty", "blank lines"])
def test_ingest_of_a_file_with_no_interactions_is_an_error_and_opens_no_store(content, tmp_path, capsys):
    path = tmp_path / "f.jsonl"
    path.write_text(content)
    state = tmp_path / "state"
    code = main(["ingest", str(path), "--state-dir", str(state)])
    err = capsys.readouterr().err
    assert code == ConfigurationError.exit_code and len(err.strip().splitlines()) == 1, err
    assert str(path) in err and "no interactions" in err and "nothing was written" in err
    assert not state.exists()


def test_unknown_user_is_a_one_line_cli_error(tmp_path, capsys, seed_store):
    seed_store(tmp_path)
    code = main(["rollback", "nobody", "--state-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code != 0 and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_recall_for_unknown_user_raises(memory):
    memory.add(history("known"))
    with pytest.raises(UnknownUserError, match="unknown user 'ghost'"):
        memory.recall("ghost", "anything")


@pytest.mark.parametrize("failure", ["exception", "timeout"])
def test_lm_failure_during_compile_is_lm_output_error_and_moves_nothing(memory, tracking, failure):
    memory.add(history(f"lmfail-{failure}"))

    def broken(messages):
        raise (TimeoutError("LM timed out") if failure == "timeout" else RuntimeError("provider exploded"))

    student = PersonaAgent("movielens_rating", user_id=f"lmfail-{failure}", memory=memory)
    with dspy.context(lm=ScriptedLM(broken)), pytest.raises(LMOutputError, match="failed twice"):
        align_user(
            f"lmfail-{failure}",
            PersonaOptimizer(n_recent=2, iterations=1, n_val=2),
            memory=memory,
            tracking=tracking,
            student=student,
        )
    assert tracking.history(f"lmfail-{failure}") == []


def test_empty_lm_output_gives_invalid_answers_then_lm_output_error(memory, tracking):
    memory.add(history("empty"))
    lm = ScriptedLM(lambda messages: "")
    student = PersonaAgent("movielens_rating", user_id="empty", memory=memory)
    with dspy.context(lm=lm):
        assert student(task="movie: X", before=100.0).answer is None  # garbage -> retried once -> worst
        with pytest.raises(LMOutputError):
            align_user(
                "empty",
                PersonaOptimizer(n_recent=2, iterations=1, n_val=2),
                memory=memory,
                tracking=tracking,
                student=student,
            )
    assert tracking.history("empty") == []


def test_secrets_never_reach_the_tracking_store_or_logs(memory, tmp_path, caplog, seed_store):
    seed_store(tmp_path, "secret.db")
    secret_key, secret_pw = "sk-TOPSECRET-123456", "hunter2pw"
    settings = Settings(
        state_dir=tmp_path,
        api_key=secret_key,
        api_base=f"http://bob:{secret_pw}@127.0.0.1:1/v1",
        mlflow_tracking_uri=f"sqlite:///{tmp_path / 'secret.db'}",
    )
    assert secret_key not in repr(settings) and secret_key not in settings.model_dump_json()
    tracking = Tracking(settings)
    memory.add(history("sec"))
    with dspy.context(lm=ScriptedLM(rule)):
        align_user("sec", PersonaOptimizer(n_recent=2, iterations=1, n_val=2), memory=memory, tracking=tracking)
    assert tracking.history("sec")
    blobs = [p.read_bytes() for p in Path(tmp_path).rglob("*") if p.is_file()]
    assert blobs and not any(secret_key.encode() in b or secret_pw.encode() in b for b in blobs)
    assert secret_key not in caplog.text and secret_pw not in caplog.text


def test_empty_history_is_a_specific_error(memory):
    from persona_dspy import EmptyHistoryError

    with pytest.raises(EmptyHistoryError, match="empty trainset"):
        PersonaOptimizer(n_recent=1).compile(PersonaAgent(user_id="nobody", memory=memory), trainset=[])
