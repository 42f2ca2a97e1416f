"""Persona registry and runs on a real sqlite MLflow store."""

from __future__ import annotations

import pytest

from persona_dspy import Settings, TrackingUnavailableError
from persona_dspy.errors import PersonaNotFoundError
from persona_dspy.results import CompileResult, Step
from persona_dspy.tracking import PRODUCTION, Tracking, prompt_name


def result(user: str, text: str, promoted: bool) -> CompileResult:
    return CompileResult(user_id=user, params={"n_recent": 2}, initial_persona="base", candidate_persona=text,
                         production_persona="base", promoted=promoted, reason="test", lm_calls=3, tokens=10,
                         val_score_candidate=0.5, val_score_production=0.4,
                         steps=[Step(iteration=1, persona="base", train_score=0.2, predictions=["1.0"])])


@pytest.fixture
def tracking(mlflow_uri, tmp_path):
    return Tracking(Settings(state_dir=tmp_path), tracking_uri=mlflow_uri)


def test_prompt_names_are_valid_and_distinct():
    names = {prompt_name(u) for u in ["a b", "a/b", "a:b", "ü", "x" * 300]}
    assert len(names) == 5
    assert all(n.replace(".", "").replace("-", "").replace("_", "").isalnum() for n in names)


def test_promoted_version_loads_back_by_alias(tracking):
    v = tracking.record(result("reg-u1", "persona one", promoted=True))
    assert tracking.load_persona("reg-u1", PRODUCTION).version == v
    assert tracking.load_persona("reg-u1", PRODUCTION).text == "persona one"


def test_same_candidate_twice_is_not_registered_twice(tracking):
    v1 = tracking.record(result("reg-u2", "same text", promoted=True))
    v2 = tracking.record(result("reg-u2", "same text", promoted=True))
    assert v1 == v2 and len(tracking.history("reg-u2")) == 1


def test_rollback_moves_production_to_previous_promoted_version(tracking):
    v1 = tracking.record(result("reg-u3", "first", promoted=True))
    tracking.record(result("reg-u3", "unpromoted", promoted=False))
    v3 = tracking.record(result("reg-u3", "third", promoted=True))
    assert tracking.load_persona("reg-u3").version == v3
    back = tracking.rollback("reg-u3", reason="got worse")
    assert back.version == v1 and tracking.load_persona("reg-u3").text == "first"
    assert back.tags["rollback_reason"] == "got worse"


def test_rollback_to_missing_version_moves_nothing(tracking):
    v = tracking.record(result("reg-u4", "only", promoted=True))
    with pytest.raises(PersonaNotFoundError):
        tracking.rollback("reg-u4", 99)
    assert tracking.load_persona("reg-u4").version == v


def test_forget_removes_one_user_only(tracking):
    tracking.record(result("reg-u5", "mine", promoted=True))
    tracking.record(result("reg-u6", "theirs", promoted=True))
    counts = tracking.forget("reg-u5")
    assert counts == {"persona_versions": 1, "runs": 1}
    assert tracking.history("reg-u5") == []
    assert tracking.load_persona("reg-u6").text == "theirs"


def test_unreachable_store_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    down = Tracking(Settings(state_dir=tmp_path), tracking_uri="http://user:secret@127.0.0.1:9/")
    with pytest.raises(TrackingUnavailableError) as exc:
        down.record(result("reg-u7", "x", promoted=True))
    assert "secret" not in str(exc.value)
