"""TextGrad's engine interface over a ``dspy.LM``.

Routing TextGrad's forward and backward calls through DSPy keeps one LM setting, one response
cache, one history and one ``dspy.track_usage()`` count for the agent and the optimizer alike.
Imports textgrad (through ``compat.textgrad``): import this module only where the optimizer runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import dspy
from dspy.clients.backend_selection import CLIENT_KEYS
from dspy.lm15 import request_from_openai_chat

from persona_dspy.compat.textgrad import EngineLM
from persona_dspy.errors import ConfigurationError, LMOutputError

# Execution controls DSPy owns; they are not generation options of a Request.
_NOT_GENERATION = CLIENT_KEYS | {"n", "rollout_id", "num_generations", "prompt_cache"}


def _text(content: str | Sequence[Any]) -> str:
    """TextGrad passes a string, or a list of parts for multimodal ops; only text parts are supported."""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence) and all(isinstance(part, str) for part in content):
        return "\n".join(content)
    kinds = sorted({type(part).__name__ for part in content if not isinstance(part, str)})
    raise TypeError(f"DSPyEngine takes text only; got parts of type {kinds} (images need a multimodal engine)")


class DSPyEngine(EngineLM):
    """A TextGrad engine that asks ``lm`` (or ``dspy.settings.lm`` at call time when ``lm`` is None).

    ``overrides`` (e.g. ``max_tokens=1024``) apply to every call on top of the LM's own kwargs.
    """

    def __init__(
        self, lm: dspy.BaseLM | None = None, system_prompt: str = EngineLM.system_prompt, **overrides: Any
    ) -> None:
        self.lm = lm
        self.system_prompt = system_prompt
        self.overrides = overrides

    def _resolve_lm(self) -> dspy.BaseLM:
        lm = self.lm or dspy.settings.lm
        if lm is None:
            raise ConfigurationError("DSPyEngine has no LM: pass one, or run under dspy.context(lm=...)")
        return lm

    @property
    def model_string(self) -> str:
        lm = self.lm or dspy.settings.lm
        return lm.model if lm is not None else "dspy.settings.lm"

    def generate(self, prompt: str | Sequence[Any], system_prompt: str | None = None, **kwargs: Any) -> str:
        """One chat call (system + user) through ``lm``, so DSPy records history and usage."""
        lm = self._resolve_lm()
        options = {
            key: value
            for key, value in {**lm.kwargs, **self.overrides, **kwargs}.items()
            if key not in _NOT_GENERATION and value is not None
        }
        messages = [
            {"role": "system", "content": system_prompt or self.system_prompt},
            {"role": "user", "content": _text(prompt)},
        ]
        rollout = {**self.overrides, **kwargs}.get("rollout_id")  # a distinct sample (and cache entry) per id
        try:
            request = request_from_openai_chat({"model": lm.model, "messages": messages, **options})
            response = lm(request) if rollout is None else lm(request, rollout_id=rollout)
        except Exception as exc:  # the LM layer already applied its own bounded retries
            raise LMOutputError(
                f"the LM call failed ({type(exc).__name__}: {str(exc)[:200]}); nothing was "
                "promoted. Check the LM (PERSONA_DSPY_LM, api_base, key) and retry."
            ) from exc
        return response.text or ""

    def __call__(self, prompt: str | Sequence[Any], **kwargs: Any) -> str:
        return self.generate(prompt, **kwargs)
