"""The README's Python examples run as written (the scripted LM standing in for ``build_lm``'s).

Each ```python block of README.md runs in order in one namespace, on a fresh state dir (``pd.Settings()``
reads ``PERSONA_DSPY_STATE_DIR``): the first aligns a bundled user, the second serves that user and
observes an answer, the third registers a task of its own and compiles a user on it, the fourth compiles
every user in memory. A block that no longer matches the API fails here, not in a user's hands.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import persona_dspy
import persona_dspy.lm
from persona_dspy.lm.scripted import ScriptedLM
from persona_dspy.optimizers import prompts

from scripted import rule

README = Path(__file__).resolve().parents[1] / "README.md"


def blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.MULTILINE | re.DOTALL)


def readme_rule(messages: list[dict[str, str]]) -> str | dict[str, str]:
    """``rule``, plus a reply for the README's email task."""
    if prompts.prompt_kind(messages) is None and "`reply`" in messages[0]["content"]:
        return {"reply": "Sure, Friday works."}
    return rule(messages)


def test_the_readmes_python_examples_run_as_written(tmp_path, monkeypatch, seed_store, capsys):
    code = blocks()
    assert len(code) == 4, "the README's examples changed: update this test's description"
    seed_store(tmp_path)
    monkeypatch.setenv("PERSONA_DSPY_STATE_DIR", str(tmp_path))
    fake = lambda settings: ScriptedLM(readme_rule)
    monkeypatch.setattr(persona_dspy.lm, "build_lm", fake)
    monkeypatch.setattr(persona_dspy, "build_lm", fake, raising=False)
    namespace: dict = {"emails": [(f"Can we meet on day {i}?", f"Sure, day {i} works.") for i in range(10)]}
    for i, block in enumerate(code, 1):
        try:
            exec(compile(block, f"README.md python block {i}", "exec"), namespace)  # noqa: S102 (the README's own code)
        except Exception as error:  # noqa: BLE001 (the block's own error, named)
            pytest.fail(f"README python block {i} failed: {type(error).__name__}: {error}")
    out = capsys.readouterr().out
    assert namespace["aligned"].status in {"promoted", "kept"}
    assert namespace["pred"].answer and namespace["seen"].users[0].user_id == "517"
    assert "ana" in out and namespace["report"].users
