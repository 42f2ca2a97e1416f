"""Persona registry and runs, with the same assertions on a real sqlite store and a real ``mlflow server``."""

from __future__ import annotations

from pathlib import Path

import dspy
import pytest
from mlflow.entities import ViewType
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

from persona_dspy import Settings, TrackingUnavailableError
from persona_dspy.cli import main
from persona_dspy.errors import ConfigurationError, PersonaNotFoundError
from persona_dspy.results import CompileResult, Step
from persona_dspy.tracking import CANDIDATE, PRODUCTION, Tracking, compare_runs, compile_id, prompt_name


def result(user: str, text: str, promoted: bool, production: str = "base") -> CompileResult:
    return CompileResult(
        user_id=user,
        params={"n_recent": 2, "iterations": 2},
        initial_persona="base",
        candidate_persona=text,
        production_persona=production,
        promoted=promoted,
        reason="test",
        lm_calls=3,
        tokens=10,
        wall_time=1.5,
        data_watermark=1700000000.0,
        val_ids=["i1", "i2"],
        val_score_candidate=0.5,
        val_score_production=0.4,
        steps=[
            Step(
                iteration=1,
                persona="base",
                train_score=0.2,
                predictions=["1.0"],
                loss="too high by 2",
                updated_persona="mid",
            ),
            Step(iteration=2, persona="mid", train_score=0.6, predictions=["2.0"]),
        ],
    )


@pytest.fixture(scope="module", autouse=True)
def _server_starts_while_sqlite_tests_run(mlflow_server):
    """Requesting the server here starts it before the first test; server-backed tests wait for it."""


@pytest.fixture(scope="module", params=["sqlite", "server"])
def store_uri(request, mlflow_uri, mlflow_server) -> str:
    return mlflow_uri if request.param == "sqlite" else mlflow_server.wait().uri


@pytest.fixture
def tracking(store_uri, tmp_path):
    """On both backends: registry round trips and what a run holds."""
    return Tracking(Settings(state_dir=tmp_path), tracking_uri=store_uri)


@pytest.fixture
def local(mlflow_uri, tmp_path):
    """On the sqlite store only: behaviours that do not depend on the transport."""
    return Tracking(Settings(state_dir=tmp_path), tracking_uri=mlflow_uri)


def user_runs(tracking: Tracking, user: str, view: int = ViewType.ACTIVE_ONLY) -> list:
    return [
        r
        for r in tracking.client.search_runs([tracking.experiment_id()], run_view_type=view, max_results=1000)
        if r.data.tags.get("user_id") == user
    ]


def test_prompt_names_are_valid_and_distinct():
    names = {prompt_name(u) for u in ["a b", "a/b", "a:b", "ü", "x" * 300]}
    assert len(names) == 5
    assert all(n.replace(".", "").replace("-", "").replace("_", "").isalnum() for n in names)


# -- round trips on both backends -------------------------------------------------------------------
def test_promoted_version_loads_back_by_alias(tracking):
    v = tracking.record(result("reg-u1", "persona one", promoted=True))
    loaded = tracking.load_persona("reg-u1", PRODUCTION)
    assert (loaded.version, loaded.text) == (v, "persona one")
    assert set(tracking.history("reg-u1")[-1].aliases) == {CANDIDATE, PRODUCTION}


def test_versions_are_mlflow_prompts_with_their_tags_on_the_version_only(tracking):
    """What MLflow's own API sees: a prompt linked to the experiment, tagged with its user; each
    version carries its compile's tags; aliases resolve through ``load_prompt``."""
    v1 = tracking.record(result("reg-prompts", "first words", promoted=True))
    v2 = tracking.record(result("reg-prompts", "second words", promoted=False))
    name = prompt_name("reg-prompts")
    prompt = tracking.client.get_prompt(name)
    assert prompt.tags.get("user_id") == "reg-prompts"
    assert not {"run_id", "promoted", "compile_id"} & set(prompt.tags)
    assert f",{tracking.experiment_id()}," in prompt.tags.get("_mlflow_experiment_ids", "")
    versions = {v.version: v for v in tracking.history("reg-prompts")}
    assert (versions[v1].tags["promoted"], versions[v2].tags["promoted"]) == ("true", "false")
    assert versions[v1].tags["run_id"] != versions[v2].tags["run_id"]
    assert tracking.client.load_prompt(f"prompts:/{name}@production").template == "first words"
    assert tracking.client.load_prompt(f"prompts:/{name}@candidate").template == "second words"
    assert tracking.client.load_prompt(f"prompts:/{name}/{v2}").commit_message == "test"


def test_a_prompt_whose_candidate_alias_was_removed_gets_its_next_version(tracking):
    v1 = tracking.record(result("reg-noalias", "one", promoted=True))
    tracking.client.delete_prompt_alias(prompt_name("reg-noalias"), CANDIDATE)
    v2 = tracking.record(result("reg-noalias", "two", promoted=False))
    assert v2 == v1 + 1
    assert [v.text for v in tracking.history("reg-noalias")] == ["one", "two"]
    assert tracking.load_persona("reg-noalias", CANDIDATE).text == "two"


def test_unpromoted_candidate_does_not_move_production(tracking):
    v1 = tracking.record(result("reg-u8", "good", promoted=True))
    v2 = tracking.record(result("reg-u8", "worse", promoted=False))
    assert tracking.load_persona("reg-u8", CANDIDATE).version == v2
    assert tracking.load_persona("reg-u8", PRODUCTION).version == v1


def test_same_candidate_twice_is_not_registered_twice(local):
    first, second = result("reg-u2", "same text", promoted=True), result("reg-u2", "same text", promoted=True)
    second.tokens += 1  # another compile that found the same text
    assert local.record(first) == local.record(second)
    assert len(local.history("reg-u2")) == 1 and len(user_runs(local, "reg-u2")) == 2


def test_retried_record_of_one_compile_creates_no_second_run(local):
    compiled = result("reg-u9", "retried", promoted=True)
    assert local.record(compiled) == local.record(compiled.model_copy())
    assert len(user_runs(local, "reg-u9")) == 1


def test_threads_with_their_own_tracking_on_one_sqlite_store_all_record(mlflow_uri, tmp_path):
    """Each thread's compile is recorded exactly once, as version 1 of its own user, and promoted."""
    from concurrent.futures import ThreadPoolExecutor

    def one(i: int) -> int:
        return Tracking(Settings(state_dir=tmp_path), tracking_uri=mlflow_uri).record(
            result(f"thread-{i}", f"persona of thread {i}", promoted=True)
        )

    with ThreadPoolExecutor(8) as pool:
        versions = list(pool.map(one, range(16)))
    assert versions == [1] * 16
    check = Tracking(Settings(state_dir=tmp_path), tracking_uri=mlflow_uri)
    assert [check.production_persona(f"thread-{i}") for i in range(16)] == [f"persona of thread {i}" for i in range(16)]


def test_run_holds_tags_params_metrics_and_persona_artifacts(tracking):
    compiled = result("reg-u10", "line one\nline two\n", promoted=True)
    version = tracking.record(compiled)
    (run,) = user_runs(tracking, "reg-u10")
    tags, params = run.data.tags, run.data.params
    assert (tags["optimizer"], tags["data_watermark"], tags["persona_version"]) == (
        "PersonaOptimizer",
        "1700000000.0",
        str(version),
    )
    assert tags["compile_id"] == compile_id(compiled) and tags["promoted"] == "true"
    assert (params["n_recent"], params["iterations"], params["val_ids"]) == ("2", "2", "i1,i2")
    history = tracking.client.get_metric_history(run.info.run_id, "train_score")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [(1, 0.2), (2, 0.6)]
    assert run.data.metrics["val_score_candidate"] == 0.5 and run.data.metrics["lm_calls"] == 3
    files = {f.path for f in tracking.client.list_artifacts(run.info.run_id, "personas")}
    assert {
        "personas/step_1.txt",
        "personas/step_2.txt",
        "personas/step_1_critique.txt",
        "personas/candidate_vs_production.diff",
    } <= files
    diff = tracking.client.download_artifacts(run.info.run_id, "personas/candidate_vs_production.diff")
    text = Path(diff).read_text()
    assert "-base" in text and "+line two" in text


def test_rollback_moves_production_to_previous_promoted_version(tracking):
    v1 = tracking.record(result("reg-u3", "first", promoted=True))
    tracking.record(result("reg-u3", "unpromoted", promoted=False, production="first"))
    v3 = tracking.record(result("reg-u3", "third", promoted=True, production="first"))
    assert tracking.load_persona("reg-u3").version == v3
    back = tracking.rollback("reg-u3", reason="got worse")
    assert back.version == v1 and tracking.load_persona("reg-u3").text == "first"
    assert back.tags["rollback_reason"] == "got worse"


def test_a_result_gated_against_another_persona_than_production_is_not_promoted(tracking):
    """A compile against the default persona recorded after another compile promoted v1 (or any stale
    result): its gate never compared with v1, so v1 stays production and the run says why."""
    v1 = tracking.record(result("reg-stale", "first", promoted=True))
    stale = tracking.record(result("reg-stale", "stale", promoted=True, production="base"))
    assert tracking.load_persona("reg-stale").version == v1 and stale != v1
    version = next(v for v in tracking.history("reg-stale") if v.version == stale)
    assert version.tags["promoted"] == "false"  # so rollback never goes back to it
    run = tracking.client.get_run(version.tags["run_id"])
    assert "promotion_skipped" in run.data.tags and run.data.tags["promoted"] == "false"


def test_a_promotion_of_the_latest_versions_text_marks_that_version_promoted(tracking):
    """The same text as the latest version reuses it: promoted by a later compile (another margin),
    it is production in the history and the rollback of a later version returns to it."""
    v1 = tracking.record(result("reg-same", "same", promoted=False))
    wider = result("reg-same", "same", promoted=True)
    wider = wider.model_copy(update={"params": {**wider.params, "margin": 1.0}})  # another compile, same text
    assert tracking.record(wider) == v1
    assert next(v for v in tracking.history("reg-same") if v.version == v1).tags["promoted"] == "true"
    v2 = tracking.record(result("reg-same", "next", promoted=True, production="same"))
    assert tracking.load_persona("reg-same").version == v2
    assert tracking.rollback("reg-same").version == v1


def test_rollback_to_missing_version_moves_nothing(tracking):
    v = tracking.record(result("reg-u4", "only", promoted=True))
    with pytest.raises(PersonaNotFoundError):
        tracking.rollback("reg-u4", 99)
    assert tracking.load_persona("reg-u4").version == v
    for bad in (True, 1.0):  # True was version 1, 1.0 an alias named "1.0"
        with pytest.raises(ConfigurationError, match="alias .* or a version number"):
            tracking.load_persona("reg-u4", bad)
        with pytest.raises(ConfigurationError):
            tracking.rollback("reg-u4", bad)
    too_big = "9" * 23  # beyond any store's 64-bit version: not there, not a store failure
    assert tracking.registry.get("reg-u4", too_big) is None and tracking.registry.get("reg-u4", "0") is None


def test_forget_leaves_nothing_of_the_user_and_everything_of_others(tracking):
    tracking.record(result("reg-u5", "mine", promoted=True))
    tracking.record(result("reg-u6", "theirs", promoted=True))
    (mine,), (theirs,) = user_runs(tracking, "reg-u5"), user_runs(tracking, "reg-u6")
    counts = tracking.forget("reg-u5")
    assert (counts["persona_versions"], counts["runs"]) == (1, 1) and counts["artifact_files"] >= 8
    assert tracking.history("reg-u5") == [] and user_runs(tracking, "reg-u5") == []
    purged = user_runs(tracking, "reg-u5", ViewType.ALL) == []
    assert purged != bool(counts["runs_awaiting_gc"])  # purged on sqlite; deleted, awaiting `mlflow gc`, on a server
    repo = lambda run: get_artifact_repository(run.info.artifact_uri, tracking_uri=tracking.tracking_uri)
    assert repo(mine).list_artifacts() == []
    assert len(repo(theirs).list_artifacts()) == 2
    assert tracking.load_persona("reg-u6").text == "theirs" and len(user_runs(tracking, "reg-u6")) == 1


def test_compare_lists_each_run_with_scores_and_cost(local):
    local.record(result("reg-u11", "a", promoted=True))
    local.record(result("reg-u11", "b", promoted=False))
    rows = compare_runs(local, "reg-u11")
    assert [(r.persona_version, r.promoted) for r in rows] == [(1, True), (2, False)]
    assert (rows[0].before, rows[0].after, rows[0].lm_calls, rows[0].tokens) == (0.4, 0.5, 3, 10)
    assert rows[0].params == {"n_recent": "2", "iterations": "2"}


# -- store down, then back ----------------------------------------------------------------------------
def test_store_down_raises_before_any_alias_moves_and_keeps_the_candidate(mlflow_uri, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    settings = Settings(state_dir=tmp_path)
    down = Tracking(settings, tracking_uri="http://user:secret@127.0.0.1:9/")
    with pytest.raises(TrackingUnavailableError) as exc:
        down.record(result("reg-u7", "kept while down", promoted=True))
    assert "secret" not in str(exc.value) and "persona-dspy sync" in str(exc.value)
    assert len(down.pending()) == 1

    up = Tracking(settings, tracking_uri=mlflow_uri)
    assert up.history("reg-u7") == []
    assert up.sync_pending() == [("reg-u7", 1)]
    assert up.load_persona("reg-u7").text == "kept while down" and up.pending() == []
    assert up.sync_pending() == [] and len(user_runs(up, "reg-u7")) == 1


def test_synced_compile_is_not_promoted_over_a_production_that_moved(mlflow_uri, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    settings = Settings(state_dir=tmp_path)
    with pytest.raises(TrackingUnavailableError):
        Tracking(settings, tracking_uri="http://127.0.0.1:9/").record(result("reg-u12", "stale", promoted=True))
    up = Tracking(settings, tracking_uri=mlflow_uri)
    up.record(result("reg-u12", "newer", promoted=True))
    up.sync_pending()
    assert up.load_persona("reg-u12", PRODUCTION).text == "newer"
    assert up.load_persona("reg-u12", CANDIDATE).text == "stale"


def test_cli_sync_and_compare(mlflow_uri, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with pytest.raises(TrackingUnavailableError):
        Tracking(Settings(state_dir=tmp_path), tracking_uri="http://127.0.0.1:9/").record(
            result("reg-u13", "from cli", promoted=True)
        )
    common = ["--state-dir", str(tmp_path), "--mlflow-tracking-uri", mlflow_uri]
    assert main(["sync", *common]) == 0
    assert main(["runs", "compare", "--user", "reg-u13", *common]) == 0
    out = capsys.readouterr().out
    assert "1 pending compile(s) recorded" in out and "reg-u13" in out and "v1" in out


def test_an_unreadable_pending_file_stops_neither_sync_nor_forget(mlflow_uri, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with pytest.raises(TrackingUnavailableError):
        Tracking(Settings(state_dir=tmp_path), tracking_uri="http://127.0.0.1:9/").record(
            result("reg-u15", "kept", promoted=True)
        )
    pending = tmp_path / "pending"
    (pending / "0000cut.json").write_text('{"user_id": "reg-u16", "cand')  # cut by a kill: reg-u16's
    (pending / "0001other.json").write_text("not json")
    common = ["--state-dir", str(tmp_path), "--mlflow-tracking-uri", mlflow_uri]
    assert main(["sync", *common]) == 1
    out, err = capsys.readouterr()
    assert "1 pending compile(s) recorded" in out and "reg-u15" in out
    assert "0000cut.json is not a kept compile" in err and "0001other.json" in err
    tracking = Tracking(Settings(state_dir=tmp_path), tracking_uri=mlflow_uri)
    assert tracking.pending_compiles.drop_user("reg-u16") == 1  # forget drops what names the user
    assert [p.name for p in pending.glob("*.json")] == ["0001other.json"]


# -- tracing ------------------------------------------------------------------------------------------
def test_traced_compile_run_holds_the_lm_calls_as_traces(mlflow_uri, tmp_path):
    from dspy.utils.dummies import DummyLM

    tracking = Tracking(Settings(state_dir=tmp_path), tracking_uri=mlflow_uri, trace=True)
    with tracking.compile_run("reg-u14") as run_id, dspy.context(lm=DummyLM([{"answer": "4.0"}])):
        dspy.Predict("question -> answer")(question="rating?")
        tracking.record(result("reg-u14", "traced", promoted=True))
    (run,) = user_runs(tracking, "reg-u14")
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    traces = tracking.client.search_traces(locations=[tracking.experiment_id()], run_id=run_id)
    assert len(traces) >= 1
    folders = [Path(t.info.tags["mlflow.artifactLocation"].removeprefix("file://")) for t in traces]
    for folder in folders:  # the spans' file (prompts and answers), written by MLflow when the export finishes
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "traces.json").touch()
    assert tracking.forget("reg-u14")["traces"] == len(traces)
    assert not any(p.is_file() for folder in folders if folder.exists() for p in folder.rglob("*"))


def test_forget_finds_the_users_runs_in_every_experiment_of_the_store(mlflow_uri, tmp_path):
    other = Tracking(Settings(state_dir=tmp_path), tracking_uri=mlflow_uri, experiment="elsewhere")
    other.record(result("reg-exp", "mine", promoted=True))
    here = Tracking(Settings(state_dir=tmp_path), tracking_uri=mlflow_uri)
    assert here.forget("reg-exp")["runs"] == 1 and user_runs(other, "reg-exp", ViewType.ALL) == []


def test_a_re_grounded_promotion_keeps_the_gated_text_next_to_the_served_one(tracking):
    compiled = result("reg-gated", "served text", promoted=True).model_copy(update={"gated_persona": "gated text"})
    version = tracking.record(compiled)
    (run,) = user_runs(tracking, "reg-gated")
    gated = tracking.client.download_artifacts(run.info.run_id, "personas/gated.txt")
    assert Path(gated).read_text() == "gated text"
    assert tracking.load_persona("reg-gated").version == version
    assert tracking.load_persona("reg-gated").text == "served text"


def test_a_rollback_after_a_rollback_skips_the_version_rolled_back_from(local):
    versions = {}
    production = "base"
    for text in ("first", "second", "third"):
        versions[text] = local.record(result("reg-back", text, promoted=True, production=production))
        production = text
    assert local.rollback("reg-back").version == versions["second"]
    fourth = local.record(result("reg-back", "fourth", promoted=True, production="second"))
    assert local.load_persona("reg-back").version == fourth
    assert local.rollback("reg-back").version == versions["second"]  # not third, which was rolled back
    third = next(v for v in local.history("reg-back") if v.version == versions["third"])
    assert "withdrawn_at" in third.tags
    assert local.rollback("reg-back", versions["third"]).version == versions["third"]  # by hand, it may
    assert "withdrawn_at" not in next(v for v in local.history("reg-back") if v.version == versions["third"]).tags


def test_a_kept_compile_of_the_production_text_leaves_the_promotion_evidence_alone(local):
    v1 = local.record(result("reg-evidence", "first", promoted=True))
    promoted_by = local.history("reg-evidence")[0].tags["run_id"]
    kept = result("reg-evidence", "first", promoted=False, production="first")
    kept = kept.model_copy(update={"params": {**kept.params, "n_val": 9}, "val_score_candidate": None})
    assert local.record(kept) == v1
    [version] = local.history("reg-evidence")
    assert version.tags["run_id"] == promoted_by and version.tags["val_score_candidate"] == "0.5"


def test_a_retried_record_that_had_promoted_before_failing_stays_promoted(local, monkeypatch):
    from mlflow import MlflowClient

    real = MlflowClient.log_batch
    calls = iter([True])

    def fails_once(self, *args, **kwargs):  # after the promotion: the run's batch of tags and metrics
        if next(calls, False):
            raise OSError("injected: the store went away after the promotion")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_batch", fails_once)
    first = result("reg-again", "first", promoted=True)
    with pytest.raises(TrackingUnavailableError):
        local.record(first)
    assert local.load_persona("reg-again").text == "first"  # promoted before the failure
    assert local.record(first) == 1 and first.promoted and not first.promotion_skipped
    evidence = local.history("reg-again")[0].tags["run_id"]
    other = result("reg-again", "first", promoted=True)  # another compile of the same text, gated against base
    other = other.model_copy(update={"params": {**other.params, "n_val": 9}})
    local.record(other)
    assert not other.promoted and other.promotion_skipped  # not this record's retry
    assert local.history("reg-again")[0].tags["run_id"] == evidence


def test_the_last_compile_is_the_one_on_the_newest_data_not_the_latest_recorded(local):
    newer = result("reg-late", "newer", promoted=True).model_copy(update={"data_watermark": 5000.0})
    local.record(newer)
    stale = result("reg-late", "stale", promoted=False, production="newer")  # kept pending, synced late
    local.record(stale.model_copy(update={"data_watermark": 1000.0}))
    assert float(local.last_compile("reg-late")["data_watermark"]) == 5000.0


def test_a_version_recorded_again_without_agent_settings_loses_the_earlier_ones(tracking):
    """A compile kept from before settings were recorded (``agent`` empty) promotes a text an earlier
    compile registered with settings: the version then holds no settings it was not gated with."""
    from persona_dspy.results import CompileResult

    def result(agent: dict[str, str], production: str) -> CompileResult:
        return CompileResult(
            user_id="tia",
            task="movielens_rating",
            params={"n": 1 if agent else 2},
            agent=agent,
            initial_persona=production,
            candidate_persona="Rates films harshly.",
            production_persona=production,
            promoted=True,
        )

    first = tracking.record(result({"adapter": "compact", "k": "6"}, "Default."))
    assert tracking.load_persona("tia").tags["agent.adapter"] == "compact"
    again = tracking.record(result({}, "Rates films harshly."))
    tags = tracking.load_persona("tia").tags
    assert again == first and not any(key.startswith("agent.") for key in tags)
