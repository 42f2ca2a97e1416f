"""A deterministic scripted LM for unit tests: a real ``dspy.LM`` whose engine answers by a rule.

It goes through DSPy's whole LM layer (adapters, usage tracking, history), records every prompt
it receives (leakage tests assert on them), and can be given a latency to emulate a real model.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import dspy
from dspy.lm15 import Message, Response, TextPart, Usage, response_to_events

_JSON_ADAPTER_MARK = "Outputs will be a JSON object"

Rule = Callable[[list[dict[str, str]]], "str | dict[str, Any]"]


def format_fields(fields: dict[str, Any], *, as_json: bool = False) -> str:
    """An answer in DSPy's ChatAdapter format, or JSONAdapter's when ``as_json``."""
    if as_json:
        return json.dumps(fields)
    body = "\n\n".join(f"[[ ## {k} ## ]]\n{v}" for k, v in fields.items())
    return f"{body}\n\n[[ ## completed ## ]]"


class ScriptedEngine:
    """DSPy 3.4 engine: ``complete(Request) -> Response`` from a rule over the chat messages."""

    def __init__(self, rule: Rule, latency: float = 0.0) -> None:
        self.rule = rule
        self.latency = latency
        self.prompts: list[list[dict[str, str]]] = []
        self._lock = threading.Lock()

    def complete(self, request) -> Response:
        messages: list[dict[str, str]] = []
        if request.system is not None:
            system = request.system if isinstance(request.system, str) else "".join(p.text for p in request.system)
            messages.append({"role": "system", "content": system})
        messages.extend({"role": m.role, "content": m.text or ""} for m in request.messages)
        with self._lock:
            self.prompts.append(messages)
        out = self.rule(messages)
        as_json = bool(messages) and _JSON_ADAPTER_MARK in messages[0]["content"]
        text = format_fields(out, as_json=as_json) if isinstance(out, dict) else str(out)
        if self.latency:
            time.sleep(self.latency)
        n_in = sum(len(m["content"].split()) for m in messages)
        n_out = len(text.split())
        return Response(
            id=None,
            model="scripted",
            message=Message.assistant([TextPart(text)]),
            finish_reason="stop",
            usage=Usage(input_tokens=n_in, output_tokens=n_out, total_tokens=n_in + n_out),
        )

    def stream(self, request):
        return response_to_events(self.complete(request))

    def close(self) -> None:
        pass


class ScriptedLM(dspy.LM):
    """``ScriptedLM(rule)`` where ``rule(messages)`` returns raw text or a dict of output fields."""

    def __init__(self, rule: Rule, latency: float = 0.0) -> None:
        self.script = ScriptedEngine(rule, latency)
        super().__init__("local/scripted", engine=self.script, cache=False)

    @property
    def prompts(self) -> list[list[dict[str, str]]]:
        return self.script.prompts

    def all_prompt_text(self) -> str:
        return "\n".join(m["content"] for msgs in self.prompts for m in msgs)
