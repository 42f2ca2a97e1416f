"""Take a persona out of the framework: a self-contained system prompt any chat API can use.

An optimized DSPy program's instructions alone are not the program (stanfordnlp/dspy#8042: an
extracted prompt scored far below the program it came from): the program also shows the model its
field descriptions, its output contract, and what it retrieved. The export therefore holds all that
the in-framework agent shows the LM, in plain text:

- ``text``: the system prompt: the persona (base instructions, the measured facts, the guidance),
  the task, what is known about the user (semantic profile, answer statistics) and the output
  contract;
- ``json``: the same, and each part by name (for a prompt store or a review);
- ``messages``: a chat for one task: that system prompt and a user message with the episodes the
  agent retrieves for it (``task_text`` required), ready for any chat-completions call.

Reads only: no LM call (the profile is the one stored; ``ServedAgent.refresh_profile`` updates it).
"""

from __future__ import annotations

from typing import Any, Literal

from persona_dspy.config import Settings
from persona_dspy.errors import ConfigurationError
from persona_dspy.memory.episodic import EpisodicMemory
from persona_dspy.optimizers.prompts import decompose
from persona_dspy.serving import ServedAgent, load_agent
from persona_dspy.signatures.tasks import TaskSpec
from persona_dspy.tracking.registry import PRODUCTION
from persona_dspy.tracking.tracker import Tracking

ExportFormat = Literal["text", "json", "messages"]
FORMATS: tuple[str, ...] = ("text", "json", "messages")


def _desc(agent: ServedAgent, field: str) -> str:
    return str(agent.task.signature.fields[field].json_schema_extra.get("desc", "")).strip()


def output_contract(agent: ServedAgent) -> str:
    """What the answer must look like, as the agent's signature tells the LM, plus the task's contract."""
    return f"Answer with {_desc(agent, 'answer')}. {agent.task.contract()} Reply with the answer only, nothing else."


def system_prompt(agent: ServedAgent, profile: str) -> str:
    """The persona, the task, what is known about the user and the output contract, in one text."""
    return "\n\n".join(
        [
            agent.persona,
            f"The task: {_desc(agent, 'task')}.",
            f"What is known about this user ({_desc(agent, 'profile')}):\n{profile}",
            output_contract(agent),
        ]
    )


def user_message(agent: ServedAgent, task_text: str, history: str) -> str:
    """One task, with the user's past interactions the agent retrieves for it."""
    return (
        f"This user's past interactions most similar to this task, each with what the user answered:\n{history}\n\n"
        f"The task:\n{agent.task.compact(task_text)}"
    )


def check_format(format: str, task_text: str | None) -> None:
    """A bad format, or ``messages`` without a task, is a ``ConfigurationError`` (before any store is read)."""
    if format not in FORMATS:
        raise ConfigurationError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    if format == "messages" and not task_text:
        raise ConfigurationError("the messages format is a chat for one task: give the task text (--task-text)")


def agent_prompt(
    agent: ServedAgent, format: ExportFormat = "text", task_text: str | None = None, before: float | None = None
) -> str | dict[str, Any] | list[dict[str, str]]:
    """The export of a loaded agent (see the module docstring); ``before`` bounds its memory reads."""
    check_format(format, task_text)
    context = agent.context(task_text or "", before) if task_text else None
    if context is not None:
        profile = context["profile"]
    else:
        tools = agent.tools(before)
        profile = "\n".join(x for x in (tools.read_profile(), tools.answer_statistics()) if x) or "(unknown)"
    system = system_prompt(agent, profile)
    if format == "text":
        return system
    if format == "messages":
        return [
            {"role": "system", "content": system},
            {"role": "user", "content": user_message(agent, task_text or "", context["history"] if context else "")},
        ]
    base, facts, guidance = decompose(agent.persona)
    return {
        "user_id": agent.user_id,
        "task": agent.task.name,
        "alias": agent.alias,
        "persona_version": agent.persona_version,
        "system": system,
        "persona": {"text": agent.persona, "base": base, "facts": facts, "guidance": guidance},
        "profile": profile,
        "contract": output_contract(agent),
    }


def export_prompt(
    user_id: str,
    *,
    settings: Settings | None = None,
    alias: str | int = PRODUCTION,
    format: ExportFormat = "text",
    task: str | TaskSpec | None = None,
    task_text: str | None = None,
    memory: EpisodicMemory | None = None,
    tracking: Tracking | None = None,
) -> str | dict[str, Any] | list[dict[str, str]]:
    """``user_id``'s persona of ``alias`` (or version) as a self-contained prompt: ``text`` (a system
    prompt), ``json`` (its parts) or ``messages`` (a chat for ``task_text``). Errors as ``load_agent``."""
    check_format(format, task_text)
    agent = load_agent(user_id, task, settings=settings, alias=alias, memory=memory, tracking=tracking)
    return agent_prompt(agent, format, task_text)


__all__ = [
    "FORMATS",
    "ExportFormat",
    "agent_prompt",
    "check_format",
    "export_prompt",
    "output_contract",
    "system_prompt",
]
