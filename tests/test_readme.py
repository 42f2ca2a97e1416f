"""The README's examples work as written: its Python blocks run (the scripted LM standing in for
``build_lm``'s), and its ``persona-dspy`` commands parse.

Each ```python block of README.md runs in order in one namespace, on a fresh state dir (``pd.Settings()``
reads ``PERSONA_DSPY_STATE_DIR``): the first aligns a bundled user, the second serves that user and
observes an answer, the third registers a task of its own and compiles a user on it, the fourth compiles
every user in memory. A block that no longer matches the API fails here, not in a user's hands.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

import persona_dspy
import persona_dspy.lm
from persona_dspy.cli import build_parser
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


def readme_commands() -> list[str]:
    """Every ``persona-dspy ...`` command of README.md: the lines of its bash blocks and its inline code."""
    text = README.read_text()
    lines = [
        line.split("persona-dspy", 1)[1]
        for block in re.findall(r"^```bash\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)
        for line in block.splitlines()
        if "persona-dspy" in line
    ]
    lines += [m.removeprefix("persona-dspy") for m in re.findall(r"`(persona-dspy [^`]*)`", text)]
    return [re.split(r"\s{2,}#", line)[0].strip() for line in lines]  # without trailing comments


PLACEHOLDERS = {"FILE": "data.jsonl", "FOLDER": "folder"}
"""What a README placeholder stands for in ``as_argv`` (any other, e.g. ``USER`` or ``T``: ``1``)."""


def as_argv(command: str) -> list[str]:
    """A README command as argv, its optional ``[...]`` parts included: ``a|b`` is ``a``, a placeholder
    is ``PLACEHOLDERS``' value or ``1``."""
    argv = shlex.split(command.replace("[", "").replace("]", ""))
    return [
        PLACEHOLDERS.get(a, "1") if re.fullmatch(r"[A-Z]+", a) else a.split("|")[0] if "|" in a else a for a in argv
    ]


def test_every_readme_command_parses_with_the_cli_as_written(tmp_path, monkeypatch):
    """The files a command names exist (the CLI checks them as it parses): "../shared/..." is inside tmp_path."""
    cwd = tmp_path / "cwd"
    (cwd / PLACEHOLDERS["FOLDER"]).mkdir(parents=True)
    monkeypatch.chdir(cwd)
    commands = readme_commands()
    assert len(commands) >= 20
    parser = build_parser()
    for command in commands:
        argv = as_argv(command)
        for arg in argv:
            if arg.endswith(".jsonl"):
                (cwd / arg).parent.mkdir(parents=True, exist_ok=True)
                (cwd / arg).touch()
        if argv[1:2] == ["..."]:  # "compile ... --resume": the other arguments elided
            continue
        if len(argv) == 1:  # a command named in prose ("`persona-dspy ingest`"): it exists
            argv.append("--help")
        try:
            parser.parse_args(argv)
        except SystemExit as exit:
            if exit.code != 0 or argv[-1:] != ["--help"]:
                pytest.fail(f"the README's `persona-dspy {command}` does not parse: {argv}")
