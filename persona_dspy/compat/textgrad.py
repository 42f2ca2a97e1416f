"""TextGrad, imported in one place (guarded by tests/test_compat_textgrad.py).

* **Its LiteLLM engine is imported on first use, not with textgrad.** ``textgrad.engine`` imports
  ``textgrad.engine_experimental`` (litellm and openai, ~7 s) at import time, for engines persona_dspy
  never calls: its engine delegates to DSPy. Before ``import textgrad``, ``_defer_experimental_engines``
  registers a stand-in for that package: the ``LiteLLMEngine`` textgrad.engine takes from it builds the
  real one (``tg.get_engine("experimental:...")`` still works), its names load the real package, and
  its modules load from the real folder. Nothing is deferred if textgrad was imported before
  persona_dspy. ``importlib.reload`` of the stand-in is not supported.
* ``TGD._update_prompt(variable)`` builds TextGrad's update prompt (role, value, gradients with their
  context, constraints). ``PersonaTGD.step`` needs that prompt but parses the answer itself (small
  models drop the tags), and TextGrad 0.1.8 has no public way to get the prompt alone.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

_EXPERIMENTAL = "textgrad.engine_experimental"
_STAND_IN = "_persona_dspy_stand_in"


def _real_experimental() -> types.ModuleType:
    """The real ``textgrad.engine_experimental``, imported in place of the stand-in (once; thread-safe enough:
    a second import finds it in ``sys.modules``). Its modules loaded before it stay, as its attributes, and
    ``textgrad.engine.LiteLLMEngine`` becomes the real class."""
    if getattr(sys.modules.get(_EXPERIMENTAL), _STAND_IN, False):
        sys.modules.pop(_EXPERIMENTAL, None)
    package = importlib.import_module(_EXPERIMENTAL)
    prefix = f"{_EXPERIMENTAL}."
    for name, module in list(sys.modules.items()):
        if name.startswith(prefix) and "." not in name[len(prefix) :]:
            setattr(package, name[len(prefix) :], module)
    textgrad, engine = sys.modules.get("textgrad"), sys.modules.get("textgrad.engine")
    if textgrad is not None:
        textgrad.engine_experimental = package  # type: ignore[attr-defined]
    if engine is not None and getattr(engine, "LiteLLMEngine", None) is _LiteLLMEngine:
        engine.LiteLLMEngine = package.LiteLLMEngine  # type: ignore[attr-defined]
    return package


class _LiteLLMEngine:
    """What ``textgrad.engine`` imports as ``LiteLLMEngine`` until the real package loads: building it loads
    the package and builds the real engine (``tg.get_engine("experimental:...")``)."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        return _real_experimental().LiteLLMEngine(*args, **kwargs)


def _package_attribute(name: str) -> Any:
    if name.startswith("__") and name.endswith("__"):  # inspect, pickle, star-imports probe these
        raise AttributeError(name)
    return getattr(_real_experimental(), name)


def _defer_experimental_engines() -> types.ModuleType | None:
    """Register the stand-in package (and, only while ``textgrad.engine`` imports it, a stand-in of its
    ``litellm`` module); the package, or None when textgrad was imported already."""
    if "textgrad" in sys.modules or _EXPERIMENTAL in sys.modules:
        return None
    spec = importlib.util.find_spec("textgrad")  # a top-level name: found without being imported
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = str(Path(spec.submodule_search_locations[0]) / "engine_experimental")
    package = types.ModuleType(_EXPERIMENTAL)
    package.__spec__ = importlib.machinery.ModuleSpec(_EXPERIMENTAL, None, is_package=True)
    package.__spec__.submodule_search_locations = [folder]
    # its modules (base, openai, litellm, ...) load from the real folder, once, under their real names
    package.__path__ = [folder]
    package.__all__ = ["OpenAIEngine", "LiteLLMEngine"]  # type: ignore[attr-defined]
    package.__getattr__ = _package_attribute  # type: ignore[method-assign]
    setattr(package, _STAND_IN, True)
    litellm = types.ModuleType(f"{_EXPERIMENTAL}.litellm")
    litellm.LiteLLMEngine = _LiteLLMEngine  # type: ignore[attr-defined]
    sys.modules[_EXPERIMENTAL], sys.modules[litellm.__name__] = package, litellm
    return package


_deferred = _defer_experimental_engines()
try:
    import textgrad as tg
    from textgrad.autograd.function import BackwardContext, Function
    from textgrad.engine import EngineLM
finally:  # textgrad.engine has taken its LiteLLMEngine (or failed): the real litellm module loads if asked for
    if _deferred is not None:
        sys.modules.pop(f"{_EXPERIMENTAL}.litellm", None)
if _deferred is not None:
    tg.engine_experimental = _deferred

__all__ = ["BackwardContext", "EngineLM", "Function", "tg", "update_prompt"]


def update_prompt(optimizer: tg.TGD, variable: tg.Variable) -> Any:
    """TextGrad's TGD update prompt for ``variable`` (a string, or parts for multimodal variables)."""
    return optimizer._update_prompt(variable)
