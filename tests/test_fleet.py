"""Fleet compiles with the scripted LM on real stores: isolation, idempotence, resume after a kill, threads."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.entities import ViewType

from persona_dspy import Settings
from persona_dspy.data import Interaction
from persona_dspy.errors import ConfigurationError, UnknownUserError
from persona_dspy.fleet import FleetJournal, FleetReport, compile_users, fleet_id
from persona_dspy.lm.scripted import ScriptedLM
from persona_dspy.memory import EpisodicMemory
from persona_dspy.optimizers import PersonaOptimizer, prompts
from persona_dspy.tracking import PRODUCTION, Tracking, prompt_name

from scripted import NEW_PERSONA, rule

TESTS = Path(__file__).parent
USER_MARK = re.compile(r"user=([\w-]+)")


# -- scripted rules (module level: a subprocess and Ray workers import them from here) ------------


def fleet_rule(messages: list[dict[str, str]]) -> str | dict[str, str]:
    """``rule``, but a rewritten persona names the user whose replay it saw (``user=<id>`` in the inputs)."""
    if messages[0]["content"].startswith(prompts.TGD_SYSTEM[:40]):
        user = USER_MARK.search("\n".join(m["content"] for m in messages)).group(1)
        return f"<IMPROVED_VARIABLE>{NEW_PERSONA} Written for user={user}.</IMPROVED_VARIABLE>"
    return rule(messages)


def faulty_rule(messages: list[dict[str, str]]) -> str | dict[str, str]:
    """``fleet_rule`` except for three users: the LM raises, the update is garbage, answers never parse."""
    text = "\n".join(m["content"] for m in messages)
    if "user=boom" in text:
        raise RuntimeError("LM endpoint down for boom")
    if "user=garbage" in text and messages[0]["content"].startswith(prompts.TGD_SYSTEM[:40]):
        return "I cannot help with that."
    if "user=spendy" in text and "[[ ## task ## ]]" in text:
        return {"answer": "no idea"}
    return fleet_rule(messages)


def history(user: str, n: int = 5, start: float = 100.0, rating: str = "1.0") -> list[Interaction]:
    return [
        Interaction(
            user_id=user,
            id=f"m{i}",
            input=f"movie: Film {i} of user={user} genres: Drama",
            output=rating,
            timestamp=start + i,
            task="movielens_rating",
        )
        for i in range(n)
    ]


def active_runs(tracking: Tracking, user: str) -> list:
    runs = tracking.client.search_runs(
        [tracking.experiment_id()],
        filter_string=f"tags.user_id = '{user}'",
        run_view_type=ViewType.ACTIVE_ONLY,
        max_results=1000,
    )
    return list(runs)


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture
def settings(tmp_path, mlflow_uri) -> Settings:
    return Settings(state_dir=tmp_path, qdrant=":memory:", mlflow_tracking_uri=mlflow_uri)


@pytest.fixture
def memory(settings, embedder):
    mem = EpisodicMemory(settings, embedder=embedder)
    yield mem
    mem.close()


@pytest.fixture
def tracking(settings) -> Tracking:
    return Tracking(settings)


def optimizer(**kw) -> PersonaOptimizer:
    """Windows as given (``min_facts=0``): the 5-item histories here test isolation, not grounding."""
    return PersonaOptimizer(**{"n_recent": 2, "iterations": 1, "n_val": 2, "min_facts": 0, **kw})


# -- tests --------------------------------------------------------------------------------------


def test_one_users_failure_is_recorded_and_the_others_compile(memory, tracking):
    users = ["iso-a", "iso-b", "boom", "garbage", "spendy"]
    for u in users:
        memory.add(history(u))
    report = compile_users(
        users,
        optimizer(max_lm_calls=12),
        memory=memory,
        tracking=tracking,
        lm=ScriptedLM(faulty_rule),
        workers=3,
        progress=False,
    )
    by = {u.user_id: u for u in report.users}
    assert by["iso-a"].status == by["iso-b"].status == "promoted"
    assert by["garbage"].error_type == "LMOutputError" and "unusable twice" in by["garbage"].reason
    assert by["spendy"].error_type == "BudgetExceededError" and "max_lm_calls=12" in by["spendy"].reason
    assert by["boom"].status == "failed" and "LM endpoint down for boom" in by["boom"].traceback
    assert {u.user_id for u in report.failed} == {"boom", "garbage", "spendy"}
    assert tracking.history("garbage") == [] and tracking.history("spendy") == []
    assert "3 failed" in report.format() and "BudgetExceededError" in report.format()
    assert (
        "Traceback" not in report.format() and "the last frames of 3 failure(s) are in the journal" in report.format()
    )
    assert "LM endpoint down for boom" in report.format(tracebacks=True)


def test_an_unknown_user_fails_alone(memory, tracking):
    users = [f"chunk-{i}" for i in range(5)]
    for u in users:
        memory.add(history(u))
    report = compile_users(
        [*users, "never-ingested"],
        optimizer(),
        memory=memory,
        tracking=tracking,
        lm=ScriptedLM(rule),
        workers=2,
        progress=False,
    )
    by = {u.user_id: u for u in report.users}
    assert by["never-ingested"].error_type == "UnknownUserError"
    assert all(by[u].status == "promoted" and by[u].version == 1 for u in users)
    assert all(tracking.production_persona(u) for u in users)


def test_rerun_skips_unchanged_users_and_registers_nothing_twice(memory, tracking):
    users = ["same-a", "same-b", "same-c"]
    for u in users:
        memory.add(history(u))
    lm = ScriptedLM(fleet_rule)
    first = compile_users(users, optimizer(), memory=memory, tracking=tracking, lm=lm, workers=2, progress=False)
    assert [u.status for u in first.users] == ["promoted"] * 3
    calls = len(lm.prompts)
    second = compile_users(users, optimizer(), memory=memory, tracking=tracking, lm=lm, workers=2, progress=False)
    assert [u.status for u in second.users] == ["skipped"] * 3
    assert all("unchanged" in u.reason for u in second.users)
    assert len(lm.prompts) == calls  # no LM call for a skipped user
    for u in users:
        assert len(active_runs(tracking, u)) == 1 and len(tracking.history(u)) == 1


def test_new_data_or_new_params_recompile_only_what_changed(memory, tracking):
    users = ["chg-a", "chg-b"]
    for u in users:
        memory.add(history(u))
    lm = ScriptedLM(fleet_rule)
    compile_users(users, optimizer(), memory=memory, tracking=tracking, lm=lm, workers=2, progress=False)
    memory.add(
        [
            Interaction(
                user_id="chg-b",
                id="new",
                input="movie: Film new of user=chg-b genres: Drama",
                output="1.0",
                timestamp=500.0,
                task="movielens_rating",
            )
        ]
    )
    report = compile_users(users, optimizer(), memory=memory, tracking=tracking, lm=lm, workers=2, progress=False)
    by = {u.user_id: u for u in report.users}
    assert by["chg-a"].status == "skipped" and by["chg-b"].status == "kept"  # production already fits
    assert len(active_runs(tracking, "chg-b")) == 2 and len(tracking.history("chg-b")) == 1
    report = compile_users(users, optimizer(margin=0.1), memory=memory, tracking=tracking, lm=lm, progress=False)
    assert [u.status for u in report.users] == ["kept", "kept"]


def test_threads_keep_every_persona_and_run_with_its_own_user(memory, tracking):
    users = [f"conc-{i:02d}" for i in range(24)]
    memory.add([it for u in users for it in history(u)])
    report = compile_users(
        users,
        optimizer(n_val=1),
        memory=memory,
        tracking=tracking,
        lm=ScriptedLM(fleet_rule),
        workers=8,
        progress=False,
    )
    assert report.counts()["promoted"] == 24, report.format()
    for u in users:
        production = tracking.load_persona(u, PRODUCTION)
        assert production.text.endswith(f"Written for user={u}.")
        run = tracking.client.get_run(production.tags["run_id"])
        assert run.data.tags["user_id"] == u and run.data.tags["persona_prompt"] == prompt_name(u)
        assert len(active_runs(tracking, u)) == 1


def test_resume_after_a_kill_compiles_only_the_rest(tmp_path, mlflow_uri, embedder):
    """A fleet process is SIGKILLed mid-fleet; ``resume=True`` finishes it: one run and one version per user."""
    users = [f"crash-{i}" for i in range(5)]
    settings = Settings(state_dir=tmp_path, qdrant=str(tmp_path / "qdrant"), mlflow_tracking_uri=mlflow_uri)
    with EpisodicMemory(settings, embedder=embedder) as memory:
        memory.add([it for u in users for it in history(u)])
    journal = FleetJournal(tmp_path / "fleet" / f"{fleet_id(optimizer(), users)}.jsonl")
    script = tmp_path / "fleet_run.py"
    script.write_text(
        "import json, sys\n"
        f"sys.path.insert(0, {str(TESTS)!r})\n"
        "from persona_dspy import Settings\n"
        "from persona_dspy.fleet import compile_users\n"
        "from persona_dspy.lm.scripted import ScriptedLM\n"
        "from persona_dspy.optimizers import PersonaOptimizer\n"
        "from test_fleet import fleet_rule\n"
        "settings = Settings.model_validate_json(sys.argv[1])\n"
        "report = compile_users('all', PersonaOptimizer(n_recent=2, iterations=1, n_val=2), settings=settings,\n"
        "                       lm=ScriptedLM(fleet_rule, latency=0.05), workers=2, resume=sys.argv[2] == 'resume',\n"
        "                       progress=False)\n"
        "print(report.model_dump_json())\n"
    )
    args = [sys.executable, str(script), settings.model_dump_json()]

    first = subprocess.Popen([*args, "fresh"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    while len(journal.read()) < 2 and first.poll() is None:
        time.sleep(0.01)
    assert first.poll() is None, f"the fleet ended before it could be killed: {first.communicate()[1][-2000:]!r}"
    first.send_signal(signal.SIGKILL)
    first.wait()
    done_before = set(journal.read())
    assert 2 <= len(done_before) < len(users)

    second = subprocess.run([*args, "resume"], check=False, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    report = FleetReport.model_validate_json(second.stdout.strip().splitlines()[-1])
    assert {u.user_id for u in report.users if u.from_journal} == done_before
    redone = {u.user_id: u.status for u in report.users if not u.from_journal}
    assert set(redone) == set(users) - done_before
    # a compile killed after its run finished but before its journal line is skipped, not redone
    assert set(redone.values()) <= {"promoted", "kept", "skipped"}
    tracking = Tracking(settings)
    for u in users:
        assert len(active_runs(tracking, u)) == 1, u
        versions = tracking.history(u)
        assert len(versions) == 1 and PRODUCTION in versions[0].aliases, u
        assert versions[0].text.endswith(f"Written for user={u}.")


def test_resume_without_a_journal_and_a_concurrent_fleet_are_handled(settings, memory, tracking):
    memory.add(history("lock-a"))
    journal = FleetJournal(settings.state_dir / "fleet" / f"{fleet_id(optimizer(), ['lock-a'])}.jsonl")
    with journal.open(resume=False), pytest.raises(ConfigurationError, match="already running"):
        compile_users(
            ["lock-a"], optimizer(), memory=memory, tracking=tracking, lm=ScriptedLM(fleet_rule), progress=False
        )
    report = compile_users(
        ["lock-a"],
        optimizer(),
        memory=memory,
        tracking=tracking,
        lm=ScriptedLM(fleet_rule),
        resume=True,
        progress=False,
    )
    assert [u.status for u in report.users] == ["promoted"]


def test_a_fleet_without_configuration_is_refused_before_opening_anything():
    with pytest.raises(ConfigurationError, match="settings="):
        compile_users(["u"], optimizer(), progress=False)


def test_ray_backend_refuses_an_embedded_qdrant_before_starting(tmp_path, mlflow_uri):
    settings = Settings(state_dir=tmp_path, qdrant=str(tmp_path / "qdrant"), mlflow_tracking_uri=mlflow_uri)
    with pytest.raises(ConfigurationError, match="scale-out needs a Qdrant server"):
        compile_users(["u"], optimizer(), settings=settings, backend="ray", progress=False)
    assert not (tmp_path / "qdrant").exists()


def test_cli_compile_prints_the_report_and_fails_when_a_user_fails(tmp_path, mlflow_uri, capsys):
    from persona_dspy.cli import main

    code = main(
        [
            "compile",
            "--users",
            "ghost",
            "--workers",
            "1",
            "--lm",
            "openai/unused",
            "--state-dir",
            str(tmp_path),
            "--qdrant",
            ":memory:",
            "--mlflow-tracking-uri",
            mlflow_uri,
            "--n-recent",
            "2",
            "--iterations",
            "1",
        ]
    )
    out = capsys.readouterr().out
    assert code == 1
    assert "failed   ghost" in out and "UnknownUserError" in out and "1 users: 0 promoted" in out


def test_fleet_id_depends_on_params_and_users_not_their_order():
    assert fleet_id(optimizer(), ["a", "b"]) == fleet_id(optimizer(), ["b", "a"])
    assert fleet_id(optimizer(), ["a", "b"]) != fleet_id(optimizer(), ["a"])
    assert fleet_id(optimizer(), ["a"]) != fleet_id(optimizer(margin=0.5), ["a"])
    assert json.loads(json.dumps(optimizer().params))  # params are what the journal id and the skip compare
    assert os.sep not in fleet_id(optimizer(), ["a/b"])


def test_the_fleet_reads_each_users_snapshot_lazily_and_an_unknown_user_as_its_error(memory):
    from persona_dspy.fleet import reads

    users = [f"read-{i}" for i in range(3)]
    for u in users:
        memory.add(history(u))
    asked = []
    queue = reads.snapshots(lambda uid: asked.append(uid) or memory.snapshot(uid), [*users, "nobody"])
    first, view, seconds = next(queue)
    assert asked == [first] == ["read-0"] and seconds >= 0  # read as the workers take it, not all ahead
    got = {first: view, **{uid: view for uid, view, _ in queue}}
    assert asked == [*users, "nobody"]
    assert all(got[u].history(u) == memory.history(u) for u in users)
    assert isinstance(got["nobody"], UnknownUserError)


def test_a_traced_fleet_keeps_each_users_lm_calls_under_its_own_run(settings, memory):
    users = ["trace-a", "trace-b", "trace-c"]
    memory.add([it for u in users for it in history(u)])
    traced = Tracking(settings, trace=True)
    report = compile_users(
        users, optimizer(), memory=memory, tracking=traced, lm=ScriptedLM(fleet_rule), workers=2, progress=False
    )
    assert report.counts()["promoted"] == 3, report.format()
    for u in users:
        (run,) = active_runs(traced, u)
        traces = traced.client.search_traces(locations=[traced.experiment_id()], run_id=run.info.run_id)
        assert len(traces) == report.users[users.index(u)].lm_calls > 0
        assert all(f"user={u}" in str(t.data.spans[0].inputs) for t in traces)
