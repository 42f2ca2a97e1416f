"""The README's examples work as written: its Python blocks run (the scripted LM standing in for
``build_lm``'s), and its ``persona-dspy`` commands parse.

Each ```python block of README.md runs in order in one namespace, on a fresh state dir (``pd.Settings()``
reads ``PERSONA_DSPY_STATE_DIR``): the first aligns a bundled user, the second serves that user and
observes an answer, the third registers a task of its own and compiles a user on it, the fourth compiles
every user in memory. A block that no longer matches the API fails here, not in a user's hands.
"""

from __future__ import annotations

import argparse
import itertools
import re
import shlex
import time
from pathlib import Path

import pytest

import persona_dspy
import persona_dspy.lm
from persona_dspy.cli import build_parser
from persona_dspy.evaluation import METHODS
from persona_dspy.lm.scripted import ScriptedLM
from persona_dspy.optimizers import prompts
from persona_dspy.signatures.tasks import TASKS

from scripted import ratings, rule

README = Path(__file__).resolve().parents[1] / "README.md"


def fenced(language: str, text: str | None = None) -> list[str]:
    """The bodies of README.md's ```language blocks, in order."""
    pattern = rf"^```{language}\n(.*?)^```"
    return re.findall(pattern, README.read_text() if text is None else text, flags=re.MULTILINE | re.DOTALL)


def readme_rule(messages: list[dict[str, str]]) -> str | dict[str, str]:
    """``rule``, plus a reply for the README's email task."""
    if prompts.prompt_kind(messages) is None and "`reply`" in messages[0]["content"]:
        return {"reply": "Sure, Friday works."}
    return rule(messages)


@pytest.fixture
def readme_lm(monkeypatch):
    """``build_lm`` answers with the scripted LM (``persona_dspy``'s lazy name first: patching
    ``persona_dspy.lm`` first would make the package cache the fake, and monkeypatch would "restore" it)."""
    fake = lambda settings: ScriptedLM(readme_rule)
    monkeypatch.setitem(vars(persona_dspy), "build_lm", fake)
    monkeypatch.setattr(persona_dspy.lm, "build_lm", fake)


def test_the_readmes_python_examples_run_as_written(tmp_path, monkeypatch, seed_store, capsys, readme_lm):
    code = fenced("python")
    assert len(code) == 4, "the README's examples changed: update this test's description"
    seed_store(tmp_path)
    monkeypatch.setenv("PERSONA_DSPY_STATE_DIR", str(tmp_path))
    namespace: dict = {"emails": [(f"Can we meet on day {i}?", f"Sure, day {i} works.") for i in range(10)]}
    try:
        for i, block in enumerate(code, 1):
            if i == 2:  # 4 new ratings since block 1's compile: block 2's observe makes the user due
                namespace["memory"].add(ratings(namespace["user"].user_id, 4, start=time.time() - 60, rating="4.0"))
            try:
                exec(compile(block, f"README.md python block {i}", "exec"), namespace)  # noqa: S102 (the README's code)
            except Exception as error:  # noqa: BLE001 (the block's own error, named)
                pytest.fail(f"README python block {i} failed: {type(error).__name__}: {error}")
    finally:
        TASKS.pop("email_reply", None)  # block 3 registered it; the registry is process-wide
        agents = [namespace.get("agent"), getattr(namespace.get("aligned"), "agent", None)]
        for memory in {
            id(m): m for m in [namespace.get("memory"), *(getattr(a, "memory", None) for a in agents)]
        }.values():
            if memory is not None:
                memory.close()
    out = capsys.readouterr().out
    assert namespace["aligned"].status == "promoted" and namespace["seen"].users[0].user_id == "517"
    assert namespace["seen"].users[0].due and namespace["statuses"]  # block 2 compiled the due user again
    assert namespace["pred"].answer and namespace["agent"].persona_version
    statuses = {u.user_id: u.status for u in namespace["report"].users}  # block 4: every user in memory
    assert set(statuses) == {"517", "ana"} and "failed" not in statuses.values(), statuses
    assert "ana" in out


def readme_commands() -> list[tuple[str, bool]]:
    """Every ``persona-dspy ...`` command of README.md, without its environment prefix, and whether it is
    inline code in prose (which may name a command alone) rather than a line of a bash block."""
    text = README.read_text()
    lines = [
        (line.split("persona-dspy", 1)[1], False)
        for block in fenced("bash", text)
        for line in block.splitlines()
        if "persona-dspy" in line
    ]
    inline = re.findall(r"`(?:[A-Z_]+=\S+ )*persona-dspy( [^`]*)`", text)
    return lines + [(command, True) for command in inline]


PLACEHOLDERS = {"FILE": "data.jsonl", "FOLDER": "folder"}
"""What a README placeholder stands for in ``as_argvs`` (any other, e.g. ``USER`` or ``T``: ``1``)."""


def as_argvs(command: str) -> list[list[str]]:
    """A README command as argvs, its optional ``[...]`` parts included: one per alternative of each
    ``a|b``; a placeholder is ``PLACEHOLDERS``' value or ``1``; ``...`` is a value after an option, else
    elided arguments (left out)."""
    tokens = shlex.split(command.replace("[", " ").replace("]", " "), comments=True)
    options = []
    for before, t in zip(["", *tokens], tokens, strict=False):
        if t == "...":  # an option's value ("--reason ..."), or arguments elided ("compile ... --resume")
            options += [["x"]] if before.startswith("--") else []
        elif re.fullmatch(r"[A-Z]+", t):
            options.append([PLACEHOLDERS.get(t, "1")])
        else:
            options.append(t.split("|"))
    return [list(argv) for argv in itertools.product(*options)]


def parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """``parser`` and every subcommand's parser below it."""
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                found += parsers(sub)
    return found


NOT_THE_CLIS = {"--backend-store-uri", "--force-reinstall", "--check", "--scripted", "--report", "--start"}
NOT_THE_CLIS |= {"--methods", "--datasets"}
"""Options the README names for other programs: mlflow server, pip, ruff, the benchmark scripts."""


def test_every_readme_command_parses_with_the_cli_as_written(tmp_path, monkeypatch):
    """Every alternative of every command parses, whole flag names only (no abbreviations), and the files a
    command names exist in a temp dir (the CLI checks them as it parses)."""
    cwd = tmp_path / "cwd"
    (cwd / PLACEHOLDERS["FOLDER"]).mkdir(parents=True)
    monkeypatch.chdir(cwd)
    parser = build_parser()
    for sub in parsers(parser):
        sub.allow_abbrev = False
    commands = readme_commands()
    assert len(commands) >= 20
    for command, inline in commands:
        for argv in as_argvs(command):
            for arg in argv:
                if arg.endswith(".jsonl"):
                    (cwd / arg).parent.mkdir(parents=True, exist_ok=True)
                    (cwd / arg).touch()
            if inline and len(argv) == 1:  # a command named in prose ("`persona-dspy ingest`"): it exists
                argv.append("--help")
            try:
                args = parser.parse_args(argv)
            except SystemExit as exit:
                if exit.code != 0 or argv[-1:] != ["--help"]:
                    pytest.fail(f"the README's `persona-dspy {command}` does not parse: {argv}")
            else:
                if argv[0] == "evaluate":
                    assert args.method.split(":")[0] in METHODS, command


def test_every_option_the_readme_names_is_the_clis():
    options = {o for p in parsers(build_parser()) for a in p._actions for o in a.option_strings}
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", README.read_text()))
    assert named - options - NOT_THE_CLIS == set()
    assert NOT_THE_CLIS <= named  # an option no longer named leaves the list


def test_the_readmes_interaction_lines_are_what_ingest_reads(tmp_path):
    """Each line of the README's ```json blocks loads as an interaction of a known task, its answer within
    the task's contract (``ingest``'s own checks)."""
    from persona_dspy.data.loaders import load_interactions
    from persona_dspy.signatures.tasks import record_problem

    lines = [line for block in fenced("json") for line in block.splitlines() if line.strip()]
    assert lines, "the README shows no interaction line"
    path = tmp_path / "history.jsonl"
    path.write_text("\n".join(lines) + "\n")
    assert len(load_interactions(path, check=record_problem)) == len(lines)
