"""The one TextGrad internal persona_dspy uses, in one place (guarded by tests/test_compat_textgrad.py).

``TGD._update_prompt(variable)`` builds TextGrad's update prompt (role, value, gradients with their
context, constraints). ``PersonaTGD.step`` needs that prompt but parses the answer itself (small
models drop the tags), and TextGrad 0.1.8 has no public way to get the prompt alone.
"""

from __future__ import annotations

from typing import Any

import textgrad as tg


def update_prompt(optimizer: tg.TGD, variable: tg.Variable) -> Any:
    """TextGrad's TGD update prompt for ``variable`` (a string, or parts for multimodal variables)."""
    return optimizer._update_prompt(variable)
