"""DSPyEngine: TextGrad calls go through a dspy.LM (messages, options, usage, history)."""

import dspy
import pytest
from dspy.lm15 import Message, Request, Response, TextPart, Usage
from dspy.utils.dummies import DummyLM

import persona_dspy  # noqa: F401  (environment guards first)
from persona_dspy.errors import ConfigurationError
from persona_dspy.lm.textgrad_engine import DSPyEngine


class RecordingEngine:
    """A canonical DSPy engine that echoes the request and reports fixed token usage."""

    def __init__(self) -> None:
        self.requests: list[Request] = []

    def complete(self, request: Request) -> Response:
        self.requests.append(request)
        text = f"system={request.system} user={request.messages[-1].text}"
        return Response(
            id=None,
            model=request.model,
            message=Message.assistant((TextPart(text),)),
            finish_reason="stop",
            usage=Usage(input_tokens=11, output_tokens=5),
        )


def recording_lm(**kwargs) -> tuple[dspy.LM, RecordingEngine]:
    engine = RecordingEngine()
    return dspy.LM("local/recorder", engine=engine, cache=False, **kwargs), engine


def test_routes_system_and_prompt_and_returns_text() -> None:
    lm = DummyLM([{"answer": "forty-two"}])
    out = DSPyEngine(lm)("What is it?", system_prompt="Be brief.")
    assert "forty-two" in out
    assert lm.history[-1]["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is it?"},
    ]


def test_generate_uses_default_system_prompt_and_settings_lm() -> None:
    lm, engine = recording_lm()
    with dspy.context(lm=lm):
        out = DSPyEngine(system_prompt="Default sys").generate("hello")
    assert out == "system=Default sys user=hello"
    assert engine.requests[0].system == "Default sys"


def test_usage_is_tracked_and_history_recorded() -> None:
    lm, _ = recording_lm()
    with dspy.track_usage() as usage:
        DSPyEngine(lm)("one")
        DSPyEngine(lm)("two")
    totals = usage.get_total_tokens()["local/recorder"]
    assert (totals["prompt_tokens"], totals["completion_tokens"]) == (22, 10)
    assert len(lm.history) == 2


def test_lm_kwargs_overrides_and_call_kwargs_reach_the_request() -> None:
    lm, engine = recording_lm(temperature=0.0, max_tokens=100)
    DSPyEngine(lm, max_tokens=300)("x")
    DSPyEngine(lm, max_tokens=300)("x", temperature=0.5, max_tokens=7)
    first, second = (r.config for r in engine.requests)
    assert (first.temperature, first.max_tokens) == (0.0, 300)
    assert (second.temperature, second.max_tokens) == (0.5, 7)


def test_text_parts_are_joined_and_images_refused() -> None:
    lm, engine = recording_lm()
    DSPyEngine(lm)(["first", "second"])
    assert engine.requests[0].messages[-1].text == "first\nsecond"
    with pytest.raises(TypeError, match="text only"):
        DSPyEngine(lm)([b"\x89PNG", "describe"])


def test_no_lm_is_a_configuration_error() -> None:
    with dspy.context(lm=None), pytest.raises(ConfigurationError, match="no LM"):
        DSPyEngine()("x")
