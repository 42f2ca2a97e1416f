"""Contract of the one TextGrad internal persona_dspy uses (``compat/textgrad.py``): fails loudly on an upgrade."""

from __future__ import annotations

import inspect
import subprocess
import sys

from persona_dspy.compat.textgrad import tg, update_prompt


def test_tgd_still_builds_its_update_prompt_from_a_variable():
    assert list(inspect.signature(tg.TGD._update_prompt).parameters) == ["self", "variable"]


def test_the_update_prompt_carries_the_variable_its_feedback_and_the_constraints():
    from persona_dspy.lm.textgrad_engine import DSPyEngine

    variable = tg.Variable("For this user, be brief.", requires_grad=True, role_description="guidance")
    variable.gradients.add(tg.Variable("answer lower", requires_grad=False, role_description="feedback"))
    optimizer = tg.TGD(parameters=[variable], engine=DSPyEngine(), constraints=["At most 400 characters."])
    prompt = update_prompt(optimizer, variable)
    assert isinstance(prompt, str)
    for text in ("For this user, be brief.", "answer lower", "At most 400 characters.", "<IMPROVED_VARIABLE>"):
        assert text in prompt


def test_the_optimizers_textgrad_comes_without_litellm_and_openai_which_still_load_when_asked_for():
    """The stand-in for ``textgrad.engine_experimental`` (compat/textgrad.py) in a new interpreter: nothing
    of litellm or openai is imported with the optimizer, and every way to reach those engines still works."""
    code = """
import importlib.util, pickle, sys
from persona_dspy.optimizers import textgrad_ops
print(sorted(m for m in ('textgrad', 'litellm', 'openai') if m in sys.modules))
import textgrad as tg
import textgrad.engine_experimental.openai as openai_engine  # a module beside the stand-in
print(tg.engine_experimental is sys.modules['textgrad.engine_experimental'],
      importlib.util.find_spec('textgrad.engine_experimental.litellm') is not None)
from textgrad.engine_experimental.litellm import LiteLLMEngine  # the real module, imported by name
print(bool(LiteLLMEngine.DEFAULT_SYSTEM_PROMPT), 'litellm' in sys.modules)
engine = tg.get_engine('experimental:some-model', cache=False)  # textgrad.engine's stand-in builds it
print(type(engine) is LiteLLMEngine, type(pickle.loads(pickle.dumps(engine))) is LiteLLMEngine)
from textgrad.engine_experimental import OpenAIEngine  # a name of the package
import textgrad.engine
from textgrad.engine_experimental.base import EngineLM
print(OpenAIEngine is tg.engine_experimental.openai.OpenAIEngine is openai_engine.OpenAIEngine,
      textgrad.engine.LiteLLMEngine is LiteLLMEngine, issubclass(LiteLLMEngine, EngineLM))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["['textgrad']"] + ["True"] * 9
