"""The one LM setting: the embedded llama.cpp model by default, any LiteLLM model string otherwise.

``DSPyEngine`` (TextGrad over a ``dspy.LM``) is importable from here lazily: only the optimizer needs
textgrad.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import dspy

from persona_dspy.config import Settings
from persona_dspy.lm.embedded import AsyncLlamaCppEngine, LlamaCppEngine
from persona_dspy.lm.weights import model_path

if TYPE_CHECKING:
    from persona_dspy.lm.textgrad_engine import DSPyEngine

__all__ = ["AsyncLlamaCppEngine", "DSPyEngine", "LlamaCppEngine", "build_lm", "embedded_engine", "model_path"]


def embedded_engine(settings: Settings) -> LlamaCppEngine:
    """The process-wide engine for the embedded model: weights joined/verified now, loaded on first call.

    Verifying here (cheap after the first join) surfaces ``ModelWeightsError`` itself instead of a
    wrapped DSPy LM error at the first prediction.
    """
    path = model_path(settings.cache_dir)
    return LlamaCppEngine.shared(
        path,
        n_threads=settings.embedded_threads,
        n_ctx=settings.embedded_ctx,
        cache_prompt=settings.embedded_cache_prompt,
    )


def build_lm(settings: Settings) -> dspy.LM:
    """A ``dspy.LM`` for ``settings.lm``; raises ``ModelWeightsError`` if embedded weights are broken."""
    common = {"temperature": settings.lm_temperature, "max_tokens": settings.lm_max_tokens}
    if settings.is_embedded_lm:
        name = settings.lm.split("/", 1)[1]
        # num_retries=0: a local failure is deterministic; retrying would only repeat it.
        engine = embedded_engine(settings)
        return dspy.LM(
            f"local/{name}",
            engine=engine,
            async_engine=AsyncLlamaCppEngine(engine),
            cache=False,
            num_retries=0,
            **common,
        )
    api_key = settings.api_key.get_secret_value() if settings.api_key else None
    return dspy.LM(
        settings.lm, api_base=settings.api_base, api_key=api_key, num_retries=settings.lm_num_retries, **common
    )


def __getattr__(name: str) -> Any:
    if name == "DSPyEngine":
        from persona_dspy.lm.textgrad_engine import DSPyEngine

        return DSPyEngine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
