"""TextGrad, imported in one place (guarded by tests/test_compat_textgrad.py).

* **Its LiteLLM engine is imported on first use, not with textgrad.** ``textgrad.engine`` imports
  ``textgrad.engine_experimental`` (litellm and openai, ~7 s) at import time, for engines persona_dspy
  never calls: its engine delegates to DSPy. Before ``import textgrad``, ``_defer_experimental_engines``
  registers a stand-in for that package whose ``LiteLLMEngine`` imports the real one when it is built
  (``tg.get_engine("experimental:...")`` still works); any other name of the package imports it.
  Nothing is deferred if textgrad was imported before persona_dspy.
* ``TGD._update_prompt(variable)`` builds TextGrad's update prompt (role, value, gradients with their
  context, constraints). ``PersonaTGD.step`` needs that prompt but parses the answer itself (small
  models drop the tags), and TextGrad 0.1.8 has no public way to get the prompt alone.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

_EXPERIMENTAL = "textgrad.engine_experimental"


def _real_experimental(submodule: str = "") -> types.ModuleType:
    """The real ``textgrad.engine_experimental`` (or its ``submodule``), the stand-ins dropped first."""
    for key in (_EXPERIMENTAL, f"{_EXPERIMENTAL}.litellm"):
        if getattr(sys.modules.get(key), "_persona_dspy_stand_in", False):
            del sys.modules[key]
    return importlib.import_module(f"{_EXPERIMENTAL}.{submodule}" if submodule else _EXPERIMENTAL)


class _LiteLLMEngine:
    """Stand-in for ``textgrad.engine_experimental.litellm.LiteLLMEngine``: building it builds the real one."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        return _real_experimental("litellm").LiteLLMEngine(*args, **kwargs)


def _defer_experimental_engines() -> None:
    if "textgrad" in sys.modules or _EXPERIMENTAL in sys.modules:
        return
    spec = importlib.util.find_spec("textgrad")  # a top-level name: found without being imported
    if spec is None or not spec.submodule_search_locations:
        return
    package = types.ModuleType(_EXPERIMENTAL)
    # its other modules (base, openai, ...) load from the real folder, once, under their real names
    package.__path__ = [str(Path(spec.submodule_search_locations[0]) / "engine_experimental")]
    litellm = types.ModuleType(f"{_EXPERIMENTAL}.litellm")
    litellm.LiteLLMEngine = _LiteLLMEngine  # type: ignore[attr-defined]
    package.litellm = litellm  # type: ignore[attr-defined]
    package.__getattr__ = lambda name: getattr(_real_experimental(), name)  # type: ignore[method-assign]
    for module in (package, litellm):
        module._persona_dspy_stand_in = True  # type: ignore[attr-defined]
        sys.modules[module.__name__] = module


_defer_experimental_engines()

import textgrad as tg
from textgrad.autograd.function import BackwardContext, Function
from textgrad.engine import EngineLM

__all__ = ["BackwardContext", "EngineLM", "Function", "tg", "update_prompt"]


def update_prompt(optimizer: tg.TGD, variable: tg.Variable) -> Any:
    """TextGrad's TGD update prompt for ``variable`` (a string, or parts for multimodal variables)."""
    return optimizer._update_prompt(variable)
