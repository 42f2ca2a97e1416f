"""DSPy internals persona_dspy relies on (contract: tests/test_compat.py), pinned to dspy 3.4.1.

An LM engine (``dspy.LM("local/<name>", engine=...)``) receives a ``dspy.lm15.Request`` (public).
Turning it into the OpenAI-style chat body a local server loop takes, and checking it first, is
what DSPy's own engines do with two helpers that are not exported: ``validate_request`` and
``lm15_boundary.request_kwargs``. ``lm/embedded.py`` uses them through this module only.
"""

from __future__ import annotations

from dspy.clients.engines.base import validate_request
from dspy.clients.lm15_boundary import request_kwargs

__all__ = ["request_kwargs", "validate_request"]
