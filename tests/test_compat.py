"""Contracts of the MLflow and DSPy internals persona_dspy uses (persona_dspy/compat/{mlflow,dspy}.py).

Each test names what an upgrade removed or changed, so a failure says which compat function to fix.
They run against the real libraries and a real sqlite MLflow store.
"""

from __future__ import annotations

import inspect

import pytest


def params(fn) -> list[str]:
    return [p for p in inspect.signature(fn).parameters if p != "self"]


# -- MLflow -------------------------------------------------------------------------------------------
def test_mlflow_private_names_we_import_still_exist():
    import persona_dspy.compat.mlflow as compat

    assert isinstance(compat.IS_PROMPT_TAG_KEY, str) and isinstance(compat.PROMPT_EXPERIMENT_IDS_TAG_KEY, str)
    assert params(compat.get_artifact_repository)[:2] == ["artifact_uri", "tracking_uri"]
    assert params(compat.SqlAlchemyStore._hard_delete_run) == ["run_id"], "SqlAlchemyStore._hard_delete_run changed"


def test_mlflow_registry_store_writes_prompts_the_way_registry_py_calls_it(mlflow_uri):
    from mlflow import MlflowClient

    from persona_dspy.compat.mlflow import registry_store

    client = MlflowClient(tracking_uri=mlflow_uri, registry_uri=mlflow_uri)
    store = registry_store(client)
    create = params(store.create_prompt_version)
    assert create[:2] == ["name", "template"] and {"description", "tags"} <= set(create), create
    assert params(store.set_prompt_alias) == ["name", "alias", "version"]
    assert params(store.create_registered_model)[:2] == ["name", "tags"]
    assert isinstance(client._registry_uri, str), "MlflowClient._registry_uri is gone (forget_cached_prompt uses it)"


def test_mlflow_prompt_cache_invalidation_and_a_registered_alias_round_trip(mlflow_uri):
    from mlflow import MlflowClient

    from persona_dspy.compat.mlflow import IS_PROMPT_TAG_KEY, forget_cached_prompt, registry_store

    client = MlflowClient(tracking_uri=mlflow_uri, registry_uri=mlflow_uri)
    store = registry_store(client)
    store.create_registered_model("compat.prompt", tags={IS_PROMPT_TAG_KEY: "true"})
    version = store.create_prompt_version("compat.prompt", template="be brief", description="c", tags={"k": "v"})
    store.set_prompt_alias("compat.prompt", "production", version.version)
    forget_cached_prompt(client, "compat.prompt", "production")
    loaded = client.get_prompt_version_by_alias("compat.prompt", "production")
    assert loaded.template == "be brief" and loaded.tags.get("k") == "v"


def test_mlflow_sql_store_purges_a_run_and_a_server_uri_has_none(mlflow_uri):
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from persona_dspy.compat.mlflow import hard_delete_run, sql_store

    client = MlflowClient(tracking_uri=mlflow_uri)
    assert sql_store(client) is not None, "MlflowClient._tracking_client.store is no longer the SqlAlchemyStore"
    run = client.create_run(client.create_experiment("compat-purge"))
    assert hard_delete_run(client, run.info.run_id)
    with pytest.raises(MlflowException):
        client.get_run(run.info.run_id)
    assert sql_store(MlflowClient(tracking_uri="http://127.0.0.1:9")) is None


def test_mlflow_dspy_tracing_callback_replaces_an_earlier_one():
    from mlflow.dspy.callback import MlflowCallback

    from persona_dspy.compat.mlflow import with_dspy_tracing

    other = object()
    once = with_dspy_tracing([other])
    twice = with_dspy_tracing(once)
    assert once[0] is other and isinstance(once[1], MlflowCallback)
    assert len(twice) == 2 and twice[1] is not once[1]


def test_mlflow_dspy_callback_reads_the_log_traces_flag_that_enable_dspy_tracing_sets():
    from mlflow.dspy import callback
    from mlflow.utils.autologging_utils import get_autologging_config

    from persona_dspy.compat.mlflow import enable_dspy_tracing

    enable_dspy_tracing()
    assert get_autologging_config("dspy", "log_traces") is True
    assert callback.FLAVOR_NAME == "dspy" and hasattr(callback, "skip_if_trace_disabled"), (
        "MLflow's DSPy callback no longer gates its spans on the autologging flag: revisit enable_dspy_tracing"
    )


# -- DSPy ---------------------------------------------------------------------------------------------
def test_dspy_lm15_request_helpers_turn_a_request_into_a_chat_body():
    from dspy import lm15

    from persona_dspy.compat.dspy import request_kwargs, validate_request

    assert params(request_kwargs) == ["request", "model_type"], "dspy's lm15_boundary.request_kwargs changed"
    request = lm15.Request(model="local/x", messages=(lm15.Message.user("hi"),))
    validate_request(request)
    assert request_kwargs(request, "chat")["messages"] == [{"role": "user", "content": "hi"}]
