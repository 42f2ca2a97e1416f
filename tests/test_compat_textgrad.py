"""Contract of the one TextGrad internal persona_dspy uses (``compat/textgrad.py``): fails loudly on an upgrade."""

from __future__ import annotations

import inspect

import textgrad as tg

from persona_dspy.compat.textgrad import update_prompt


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
