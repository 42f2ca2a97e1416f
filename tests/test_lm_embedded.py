"""The embedded llama.cpp engine: request mapping and errors (fake server), plus one real-model call."""

import asyncio
from pathlib import Path
from typing import Any

import dspy
import pytest
from dspy.lm15 import Config, ContextLengthError, Message, Request
from dspy.utils.exceptions import ContextWindowExceededError

import persona_dspy  # noqa: F401  (environment guards first)
from persona_dspy.config import Settings
from persona_dspy.lm import build_lm
from persona_dspy.lm.embedded import AsyncLlamaCppEngine, LlamaCppEngine


class FakeServer:
    def __init__(self, reply: dict[str, Any]) -> None:
        self.reply, self.bodies = reply, []

    def handle_chat_completions(self, body: dict[str, Any]) -> dict[str, Any]:
        self.bodies.append(body)
        return self.reply


def engine_with(reply: dict[str, Any]) -> tuple[LlamaCppEngine, FakeServer]:
    engine, server = LlamaCppEngine(Path("/nonexistent.gguf"), seed=7), FakeServer(reply)
    engine._server = server
    return engine, server


OK = {
    "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "hi"}}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
}


def test_init_does_no_io_and_request_maps_to_openai_body() -> None:
    engine, server = engine_with(OK)
    request = Request(
        model="local/m",
        system="sys",
        messages=(Message.user("q"),),
        config=Config(max_tokens=9, temperature=0.0, stop=("END",)),
    )
    response = engine.complete(request)
    assert response.text == "hi" and (response.usage.input_tokens, response.usage.output_tokens) == (12, 3)
    body = server.bodies[0]
    assert body["messages"] == [{"role": "system", "content": "sys"}, {"role": "user", "content": "q"}]
    assert (body["max_tokens"], body["temperature"], body["stop"], body["seed"]) == (9, 0.0, ["END"], 7)
    assert body["cache_prompt"] is True and body["stream"] is False


def test_prompt_cache_off_is_sent_with_every_request_and_read_from_the_environment(monkeypatch) -> None:
    engine, server = LlamaCppEngine(Path("/nonexistent.gguf"), cache_prompt=False), FakeServer(OK)
    engine._server = server
    engine.complete(Request(model="local/m", messages=(Message.user("q"),)))
    assert server.bodies[0]["cache_prompt"] is False and engine.dump_state()["cache_prompt"] is False
    monkeypatch.delenv("PERSONA_DSPY_EMBEDDED_CACHE_PROMPT", raising=False)
    assert Settings().embedded_cache_prompt is True
    monkeypatch.setenv("PERSONA_DSPY_EMBEDDED_CACHE_PROMPT", "0")
    assert Settings().embedded_cache_prompt is False


def test_context_overflow_is_dspy_context_window_error() -> None:
    engine, _ = engine_with({"error": {"code": 400, "type": "exceed_context_size_error", "message": "too long"}})
    with pytest.raises(ContextLengthError, match="too long"):
        engine.complete(Request(model="local/m", messages=(Message.user("q"),)))
    lm = dspy.LM("local/m", engine=engine, cache=False, num_retries=0)
    with pytest.raises(ContextWindowExceededError):
        lm("q")


def test_real_model_predict_with_usage_and_chat_adapter_parsing() -> None:
    """The one test that loads the 1 GB model (joined once into the default cache dir)."""
    settings = Settings(lm_max_tokens=24)
    lm = build_lm(settings)
    assert build_lm(settings).engine is lm.engine  # one model per process
    with dspy.context(lm=lm, adapter=dspy.ChatAdapter()), dspy.track_usage() as usage:
        prediction = dspy.Predict("question -> answer")(question="What is 2 + 3? Reply with the number only.")
    assert "5" in prediction.answer
    tokens = usage.get_total_tokens()[lm.model]
    assert tokens["prompt_tokens"] > 50 and tokens["completion_tokens"] > 0
    assert "[[ ## answer ## ]]" in lm.history[-1]["outputs"][0]


def test_async_calls_and_saved_state_reuse_the_shared_engine() -> None:
    engine = LlamaCppEngine.shared(Path("/nonexistent-shared.gguf"))
    engine._server = FakeServer(OK)
    lm = dspy.LM("local/m", engine=engine, async_engine=AsyncLlamaCppEngine(engine), cache=False)
    assert asyncio.run(lm.acall("q")) == ["hi"]
    restored = dspy.LM.load_state(lm.dump_state(), allow_custom_lm_class=True)
    assert restored.engine is engine and restored("q") == ["hi"]
