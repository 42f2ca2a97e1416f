"""Faults of the stores themselves: an unreachable or broken MLflow store, a broken Qdrant folder, a copied
state dir, an interrupted fleet. Each is a specific error with its exit code, and the state after is checked."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import dspy
import pytest

from persona_dspy import Settings, config
from persona_dspy.cli import main
from persona_dspy.config import STATE_VARIABLES
from persona_dspy.data import Interaction
from persona_dspy.errors import PersonaNotFoundError, StoreUnavailableError, TrackingUnavailableError
from persona_dspy.fleet import compile_users
from persona_dspy.lm.scripted import ScriptedLM
from persona_dspy.optimizers import PersonaOptimizer
from persona_dspy.pipeline import align_user
from persona_dspy.tracking import Tracking
from persona_dspy.tracking.server import free_port

from scripted import CRITIQUE, NEW_PERSONA, ratings, rule


def history(user: str, n: int = 6) -> list[Interaction]:
    return ratings(user, n)


@pytest.fixture(autouse=True)
def own_lm_caches(tmp_path, monkeypatch):
    """``forget`` empties DSPy's disk cache and TextGrad's logs: never the machine's while testing."""
    monkeypatch.setenv("DSPY_CACHEDIR", str(tmp_path / "lm-cache"))
    monkeypatch.setenv("TEXTGRAD_LOG_DIR", str(tmp_path / "textgrad-logs"))


@pytest.fixture
def dead_uri(monkeypatch) -> str:
    """A tracking URI nothing listens on (no retries: the refusal is immediate)."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    return f"http://127.0.0.1:{free_port()}"


@pytest.mark.parametrize("argv", [["personas", "history", "alice"], ["rollback", "alice"]])
def test_an_unreachable_registry_is_tracking_unavailable_not_no_personas(argv, dead_uri, tmp_path, capsys):
    code = main([*argv, "--state-dir", str(tmp_path), "--mlflow-tracking-uri", dead_uri])
    out, err = capsys.readouterr()
    assert code == TrackingUnavailableError.exit_code == 8, err
    assert err.startswith("persona-dspy: TrackingUnavailableError: ") and "no persona versions" not in out


def test_registry_reads_tell_absent_from_unreachable(dead_uri, tmp_path, mlflow_uri):
    down = Tracking(Settings(state_dir=tmp_path), tracking_uri=dead_uri)
    for read in (down.history, down.production_persona, lambda u: down.load_persona(u, 3)):
        with pytest.raises(TrackingUnavailableError):
            read("alice")
    up = Tracking(Settings(state_dir=tmp_path), tracking_uri=mlflow_uri)
    assert up.history("never-compiled") == [] and up.production_persona("never-compiled") is None
    with pytest.raises(PersonaNotFoundError):
        up.rollback("never-compiled")


def test_credentials_never_reach_the_journal_the_report_or_the_cli(dead_uri, tmp_path, memory, capsys):
    uri = dead_uri.replace("http://", "http://alice:TRACKPW@")
    settings = Settings(state_dir=tmp_path, mlflow_tracking_uri=uri, api_base="http://bob:LMPW@127.0.0.1:1/v1")
    memory.add(history("leaky"))
    report = compile_users(
        ["leaky"],
        PersonaOptimizer(n_recent=2, iterations=1, n_val=2),
        settings=settings,
        memory=memory,
        lm=ScriptedLM(rule),
        progress=False,
    )
    assert [u.error_type for u in report.failed] == ["TrackingUnavailableError"]
    code = main(["personas", "history", "leaky", "--state-dir", str(tmp_path), "--mlflow-tracking-uri", uri])
    printed = capsys.readouterr()
    assert code == 8
    written = [p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()]
    assert any(b"alice:***@" in b or b"***@" in b for b in written)  # the journal names the store, redacted
    for text in [report.format(), printed.out, printed.err, *map(bytes.decode, written)]:
        assert "TRACKPW" not in text and "LMPW" not in text


def compile_one(user: str, settings: Settings, memory) -> Tracking:
    tracking = Tracking(settings)
    memory.add(history(user))
    with dspy.context(lm=ScriptedLM(rule)):
        align_user(user, PersonaOptimizer(n_recent=2, iterations=1, n_val=2), memory=memory, tracking=tracking)
    return tracking


def test_a_copied_state_dir_refuses_to_touch_the_originals_artifacts(tmp_path, memory, capsys, seed_store):
    original = seed_store(tmp_path / "state")
    compile_one("copied", Settings(state_dir=original), memory)
    before = sorted(p for p in (original / "mlartifacts").rglob("*") if p.is_file())
    assert before
    shutil.copytree(original, tmp_path / "copy")
    code = main(["forget", "copied", "--state-dir", str(tmp_path / "copy"), "--qdrant", ":memory:"])
    err = capsys.readouterr().err
    assert code == TrackingUnavailableError.exit_code, err
    assert "copied or moved" in err and str(original / "mlartifacts") in err and "PERSONA_DSPY_EXPERIMENT" in err
    assert sorted(p for p in (original / "mlartifacts").rglob("*") if p.is_file()) == before


@pytest.mark.parametrize(
    "damage, says",
    [
        (lambda db: db.write_bytes(b""), "is empty (0 bytes)"),
        (lambda db: db.write_bytes(db.read_bytes()[: db.stat().st_size // 3]), "truncated"),
        (lambda db: db.write_bytes(b"{not sqlite}" * 20), "is not a readable sqlite database"),
    ],
    ids=["zero-byte", "truncated", "garbage"],
)
def test_a_damaged_sqlite_registry_is_tracking_unavailable_naming_the_file(damage, says, tmp_path, mlflow_uri, capsys):
    db = tmp_path / "mlflow.db"
    Tracking(Settings(state_dir=tmp_path / "other"), tracking_uri=mlflow_uri).history("u")  # the store exists
    with (  # a real, migrated store, copied by sqlite (a plain file copy would drop this process's locks on it)
        contextlib.closing(sqlite3.connect(mlflow_uri.removeprefix("sqlite:///"))) as source,
        contextlib.closing(sqlite3.connect(db)) as target,
    ):
        source.backup(target)
    damage(db)
    size = db.stat().st_size
    capsys.readouterr()  # the store's creation logs
    for argv in (["personas", "history", "u"], ["rollback", "u"], ["forget", "u", "--qdrant", ":memory:"]):
        code = main([*argv, "--state-dir", str(tmp_path)])
        err = capsys.readouterr().err
        assert code == TrackingUnavailableError.exit_code, err
        assert str(db) in err and says in err and len(err.strip().splitlines()) == 1
    assert db.stat().st_size == size  # not turned into a new, empty registry


def test_forget_with_qdrant_held_elsewhere_reports_what_remains_and_a_second_forget_finishes(
    tmp_path, embedder, monkeypatch, capsys, seed_store
):
    from dspy.clients.cache import Cache

    from persona_dspy.memory import EpisodicMemory

    state, user = seed_store(tmp_path / "state"), "forgetme"
    settings = Settings(state_dir=state)
    texts = [f"movie: Quuxbarian {user} {i}" for i in range(6)]
    with EpisodicMemory(settings, embedder=embedder) as memory:
        memory.add([it.model_copy(update={"input": t}) for it, t in zip(history(user), texts, strict=True)])
        compile_one(user, settings, memory)
    monkeypatch.setenv("DSPY_CACHEDIR", str(state / "dspy_cache"))
    monkeypatch.setenv("TEXTGRAD_LOG_DIR", str(state / "textgrad_logs"))
    cache = Cache(True, False, str(state / "dspy_cache"))  # an LM response DSPy cached during the compile
    cache.put({"model": "m", "messages": [{"role": "user", "content": texts[0]}]}, {"answer": NEW_PERSONA})
    cache.disk_cache.close()
    secrets = [*texts, NEW_PERSONA, CRITIQUE]

    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_EDGE_FOLDER, str(state / "qdrant")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "holding"
        code = main(["forget", user, "--state-dir", str(state)])
        out, err = capsys.readouterr()
        assert code == StoreUnavailableError.exit_code, err
        assert "incomplete" in err and "still in qdrant" in err and "forget forgetme` again" in err
        assert "mlflow: persona_versions 1" in out  # what was removed, per store
        assert Tracking(settings).history(user) == []
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()

    assert main(["forget", user, "--state-dir", str(state)]) == 0
    out = capsys.readouterr().out
    assert "qdrant: points 6" in out and "NOT FORGOTTEN" not in out
    leftovers = [p for p in state.rglob("*") if p.is_file() and any(s.encode() in p.read_bytes() for s in secrets)]
    assert leftovers == []
    with EpisodicMemory(settings, embedder=embedder) as memory:
        assert memory.count() == 0


HOLD_EDGE_FOLDER = """
import sys, time
from persona_dspy.memory.edge_engine import EdgeEngine
engine = EdgeEngine(sys.argv[1], "persona_episodes")
print("holding", flush=True)
time.sleep(600)
"""


def test_a_failure_between_register_and_promote_leaves_no_running_run_and_sync_repoints_the_version(
    tracking, memory, monkeypatch
):
    from mlflow.exceptions import MlflowException

    from persona_dspy.tracking.registry import PersonaRegistry

    user = "half-recorded"
    memory.add(history(user))

    def promote_fails(self, *args, **kwargs):
        raise MlflowException("injected: the store went away between register and promote")

    with monkeypatch.context() as patch:
        patch.setattr(PersonaRegistry, "promote", promote_fails)
        with dspy.context(lm=ScriptedLM(rule)), pytest.raises(TrackingUnavailableError, match="kept in"):
            align_user(user, PersonaOptimizer(n_recent=2, iterations=1, n_val=2), memory=memory, tracking=tracking)
    [version] = tracking.history(user)
    assert "production" not in version.aliases  # nothing promoted
    assert tracking.client.get_run(version.tags["run_id"]).info.status == "FAILED"  # not RUNNING

    [(synced_user, synced_version)] = tracking.sync_pending()
    assert (synced_user, synced_version) == (user, version.version)
    [version] = tracking.history(user)
    run = tracking.client.get_run(version.tags["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["persona_version"] == str(version.version)
    assert "production" in version.aliases


FLEET = """
import signal, sys, threading
# a suite started in the background (`cmd &`) ignores SIGINT, and this child inherits that: Ctrl-C back on
signal.signal(signal.SIGINT, signal.default_int_handler)
from persona_dspy import Settings
from persona_dspy.fleet import compile_users
from persona_dspy.lm.scripted import ScriptedLM
from persona_dspy.memory import EpisodicMemory
from persona_dspy.optimizers import PersonaOptimizer
from test_faults_stores import fleet_users, fleet_optimizer
from scripted import rule

started = threading.Event()
def rule_saying_started(messages):
    if not started.is_set():
        started.set()
        print("compiling", flush=True)
    return rule(messages)

settings = Settings(state_dir=sys.argv[1], qdrant=":memory:", mlflow_tracking_uri=sys.argv[2])
with EpisodicMemory(settings) as memory:
    memory.add([it for u in fleet_users() for it in history(u)])
    compile_users(fleet_users(), fleet_optimizer(), settings=settings, memory=memory,
                  lm=ScriptedLM(rule_saying_started, latency=0.1), workers=2, progress=False)
"""


def fleet_users() -> list[str]:
    return [f"fleet-{i}" for i in range(5)]


def fleet_optimizer() -> PersonaOptimizer:
    return PersonaOptimizer(n_recent=2, iterations=1, n_val=2)


def test_after_sigint_the_fleet_journal_lists_every_compile_the_registry_has_and_resume_says_so(
    tmp_path, memory, mlflow_uri
):
    from persona_dspy.fleet.journal import FleetJournal, fleet_id

    state = tmp_path / "state"
    script = "from test_faults_stores import history\n" + FLEET
    fleet = subprocess.Popen(
        [sys.executable, "-c", script, str(state), mlflow_uri],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parent,
    )
    assert fleet.stdout.readline().strip() == "compiling"
    fleet.send_signal(signal.SIGINT)
    _, err = fleet.communicate(timeout=120)
    assert fleet.returncode != 0 and "KeyboardInterrupt" in err

    settings = Settings(state_dir=state, qdrant=":memory:", mlflow_tracking_uri=mlflow_uri)
    tracking = Tracking(settings)
    recorded = {u: tracking.last_compile(u) for u in fleet_users()}
    recorded = {u: last for u, last in recorded.items() if last is not None}
    journal = FleetJournal(state / "fleet" / f"{fleet_id(fleet_optimizer(), fleet_users())}.jsonl").read()
    assert recorded and len(recorded) < len(fleet_users())  # interrupted in the middle
    assert {u: r.version for u, r in journal.items()} == {u: last["persona_version"] for u, last in recorded.items()}
    running = tracking.client.search_runs(
        [tracking.experiment_id()], "attributes.status = 'RUNNING' and tags.persona_prompt LIKE 'persona.fleet-%'"
    )
    assert running == []

    memory.add([it for u in fleet_users() for it in history(u)])
    report = compile_users(
        fleet_users(), fleet_optimizer(), settings=settings, memory=memory, lm=ScriptedLM(rule), resume=True
    )
    by_user = {u.user_id: u for u in report.users}
    assert {u for u, r in by_user.items() if r.from_journal} == set(recorded)
    assert all(by_user[u].status == "promoted" for u in fleet_users())


@pytest.mark.parametrize(
    "damaged", ["edge_config.json", "wal/open-1", "segments/*/version.info"], ids=["config", "wal", "segment"]
)
def test_a_damaged_qdrant_edge_folder_is_store_unavailable_naming_the_file(damaged, tmp_path, embedder, capsys):
    from persona_dspy.memory import EpisodicMemory

    with EpisodicMemory(Settings(state_dir=tmp_path), embedder=embedder) as memory:
        memory.add(history("edge"))
    target = min((tmp_path / "qdrant" / "persona_episodes").glob(f"*/{damaged}"))  # a shard's file
    target.write_bytes(b"")
    data = tmp_path / "more.jsonl"
    data.write_text('{"user_id": "edge", "id": "new", "input": "x", "output": "1.0", "timestamp": 99}\n')
    code = main(["ingest", str(data), "--state-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == StoreUnavailableError.exit_code, err
    assert str(target) in err or str(target.parent) in err
    assert "restore the folder from a backup" in err and len(err.strip().splitlines()) == 1


def test_a_store_that_cannot_be_written_says_so_and_never_advises_starting_over(tmp_path, embedder, capsys, seed_store):
    """The lock file or the sqlite journal cannot be opened for writing (as on a read-only mount, simulated
    here by a folder in their place: the tests may run as root, whom permissions do not stop)."""
    from persona_dspy.memory import EpisodicMemory

    seed_store(tmp_path)
    with EpisodicMemory(Settings(state_dir=tmp_path), embedder=embedder) as memory:
        memory.add(history("ro"))
    lock = tmp_path / "qdrant" / "persona_episodes.lock"
    lock.unlink()
    lock.mkdir()
    code = main(["ask", "ro", "movie: Heat", "--state-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == StoreUnavailableError.exit_code, err
    assert str(lock) in err and "writable" in err and len(err.strip().splitlines()) == 1

    Tracking(Settings(state_dir=tmp_path)).history("ro")  # the sqlite store exists
    (tmp_path / "mlflow.db-wal").unlink(missing_ok=True)
    (tmp_path / "mlflow.db-wal").mkdir()
    capsys.readouterr()
    code = main(["personas", "history", "ro", "--state-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == TrackingUnavailableError.exit_code, err
    assert "mlflow.db" in err and "writable" in err and "backup" not in err and len(err.strip().splitlines()) == 1


def test_forget_says_when_it_found_nothing_of_the_user(tmp_path, capsys, seed_store):
    seed_store(tmp_path)
    data = tmp_path / "u.jsonl"
    data.write_text(
        "".join(
            f'{{"user_id": "fg", "id": "a{i}", "input": "x {i}", "output": "y", "timestamp": {i}}}\n' for i in range(3)
        )
    )
    assert main(["ingest", str(data), "--state-dir", str(tmp_path)]) == 0
    capsys.readouterr()
    for user, found in (("fg", True), ("fg", False), ("gf", False)):  # the user, again, a misspelling
        assert main(["forget", user, "--state-dir", str(tmp_path)]) == 0
        out = capsys.readouterr().out
        assert ("points 3" in out) is found and ("nothing of user" in out) is not found, out


def test_forget_with_state_dir_clears_that_state_dirs_lm_caches_not_the_default_ones(
    tmp_path, seed_store, monkeypatch, capsys
):
    """The guards point the LM caches at the state dir known at import (``PERSONA_DSPY_STATE_DIR``); a
    command given ``--state-dir`` moves them there first, so ``forget`` never empties another state dir's."""
    other, mine = tmp_path / "other", seed_store(tmp_path / "mine")
    for state in (other, mine):
        (state / "textgrad_logs").mkdir(parents=True)
        (state / "textgrad_logs" / "calls.jsonl").write_text("{}\n")
    monkeypatch.setattr(config, "_GUARDED", set(STATE_VARIABLES))  # as the guards left them at import
    monkeypatch.setenv("TEXTGRAD_LOG_DIR", str(other / "textgrad_logs"))
    monkeypatch.setenv("DSPY_CACHEDIR", str(other / "dspy_cache"))
    assert main(["forget", "zed", "--state-dir", str(mine), "--qdrant", ":memory:"]) == 0
    assert "textgrad logs 1" in capsys.readouterr().out
    assert not (mine / "textgrad_logs" / "calls.jsonl").exists() and (other / "textgrad_logs" / "calls.jsonl").exists()


def test_a_cache_folder_the_user_set_stays_where_they_set_it(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "_GUARDED", {"DSPY_CACHEDIR"})  # as if the user had set TEXTGRAD_LOG_DIR
    monkeypatch.setenv("TEXTGRAD_LOG_DIR", str(tmp_path / "theirs"))
    monkeypatch.setenv("DSPY_CACHEDIR", str(tmp_path / "default"))
    config.follow_state_dir(tmp_path / "state")
    assert os.environ["TEXTGRAD_LOG_DIR"] == str(tmp_path / "theirs")
    assert os.environ["DSPY_CACHEDIR"] == str(tmp_path / "state" / "dspy_cache")


def test_forget_user_in_python_clears_the_state_dirs_own_lm_caches_too(tmp_path, seed_store, monkeypatch):
    from persona_dspy.forget import forget_user

    process, state = tmp_path / "process", seed_store(tmp_path / "state")
    for folder in (process, state):
        (folder / "textgrad_logs").mkdir(parents=True)
        (folder / "textgrad_logs" / "calls.jsonl").write_text("{}\n")
    monkeypatch.setenv("TEXTGRAD_LOG_DIR", str(process / "textgrad_logs"))  # where this process logs
    monkeypatch.setenv("DSPY_CACHEDIR", str(process / "dspy_cache"))
    report = forget_user(Settings(state_dir=state, qdrant=":memory:"), "zed")
    assert report.removed["lm caches"]["textgrad logs"] == 2
    assert not (state / "textgrad_logs" / "calls.jsonl").exists()
    assert not (process / "textgrad_logs" / "calls.jsonl").exists()
