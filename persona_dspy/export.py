"""Take a persona out of the framework: a self-contained prompt any chat API can use.

An optimized DSPy program's instructions alone are not the program (stanfordnlp/dspy#8042: an
extracted prompt scored far below the program it came from): the program also shows the model its
field structure, its output format and what it retrieved, and a small model answers a re-worded
prompt differently (a hand-written re-wording of this agent's prompt scored 3.3% below the agent on
the embedded model). So the three formats are not equally exact:

- ``messages`` is **exact**, by construction: the chat for one task (``task_text`` required) is built
  by the agent's own DSPy adapter (its ``adapter="compact"``, else ``dspy.settings.adapter``, by default
  ``ChatAdapter``) with
  ``adapter.format(signature, demos, inputs)`` from the agent's predictor (its signature carries the
  persona as instructions), its demos and the inputs the agent computes for that task and ``before``
  (the compacted task, the profile and the retrieved episodes). It is, message for message, what the
  agent's LM receives on its first attempt: a system message (the field structure, the persona as
  "your objective") and a user message (``[[ ## profile ## ]]``, ``[[ ## history ## ]]``,
  ``[[ ## task ## ]]`` and the output-format reminder). Sent with the LM's own generation options
  (temperature, max tokens), a plain chat call is the agent's call; the reply follows the
  ``[[ ## answer ## ]]`` markers: ``parse_reply`` reads it with the task's own contract.
- ``text`` and ``json`` are **readable**, not exact: one system prompt in plain words (the persona
  with its facts and guidance, the task, the profile and answer statistics, the output contract),
  for a human, a prompt store or a review, and as a start for a prompt in another framework. They
  hold the same information as ``messages`` but not its wording, so a model may answer them
  differently (#8042); ``json`` also names each part.

Reads only: no LM call (the profile is the one stored; ``ServedAgent.refresh_profile`` updates it).
An agent asked "now" (``before=None``) re-distills a stale profile before it answers, so the
``messages`` export equals that call once the profile is fresh: refresh it first.
"""

from __future__ import annotations

from typing import Any, Literal

import dspy

from persona_dspy.agent import PersonaAgent
from persona_dspy.config import Settings
from persona_dspy.errors import ConfigurationError
from persona_dspy.memory.episodic import EpisodicMemory
from persona_dspy.optimizers.prompts import decompose
from persona_dspy.serving import ServedAgent, load_agent
from persona_dspy.signatures.compact import answer_text, field_desc
from persona_dspy.signatures.tasks import TaskSpec
from persona_dspy.tracking.registry import PRODUCTION
from persona_dspy.tracking.tracker import Tracking

ExportFormat = Literal["text", "json", "messages"]
FORMATS: tuple[str, ...] = ("text", "json", "messages")


def _desc(agent: ServedAgent, field: str) -> str:
    return field_desc(agent.task.signature.fields[field])


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


def agent_messages(agent: PersonaAgent, task_text: str, before: float | None = None) -> list[dict[str, Any]]:
    """Exactly the chat the agent's LM receives for ``task_text`` (first attempt), built by the agent's
    own adapter from its predictor's signature and demos and the inputs ``forward`` computes."""
    if agent.mode != "pipeline" or not isinstance(agent.respond, dspy.Predict):
        raise ConfigurationError(
            f"the messages export is the one call of a pipeline agent; this agent runs in {agent.mode!r} mode"
        )
    predictor = agent.respond
    inputs = {"task": agent.task.compact(task_text), **agent.context(task_text, before)}
    adapter = agent.adapter_settings().get("adapter") or dspy.settings.adapter or dspy.ChatAdapter()
    return adapter.format(predictor.signature, predictor.demos, inputs)


def parse_reply(task: TaskSpec, reply: str | None) -> str | None:
    """The answer of a plain chat call with the ``messages`` export, read by the task's own contract:
    its canonical form, or None when the reply is outside the contract (an invalid answer)."""
    return task.parse(answer_text(reply))


def check_format(format: str, task_text: str | None) -> None:
    """A bad format, or ``messages`` without a task, is a ``ConfigurationError`` (before any store is read)."""
    if format not in FORMATS:
        raise ConfigurationError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    if format == "messages" and not task_text:
        raise ConfigurationError("the messages format is a chat for one task: give the task text (--task-text)")


def agent_prompt(
    agent: ServedAgent, format: ExportFormat = "text", task_text: str | None = None, before: float | None = None
) -> str | dict[str, Any] | list[dict[str, Any]]:
    """The export of a loaded agent (see the module docstring); ``before`` bounds its memory reads."""
    check_format(format, task_text)
    if format == "messages":
        return agent_messages(agent, task_text or "", before)
    if task_text:
        profile = agent.context(task_text, before)["profile"]
    else:
        tools = agent.tools(before)
        profile = "\n".join(x for x in (tools.read_profile(), tools.answer_statistics()) if x) or "(unknown)"
    system = system_prompt(agent, profile)
    if format == "text":
        return system
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
    before: float | None = None,
) -> str | dict[str, Any] | list[dict[str, Any]]:
    """``user_id``'s persona of ``alias`` (or version) as a self-contained prompt: ``text`` (a readable
    system prompt), ``json`` (its parts) or ``messages`` (exactly the chat the agent sends for
    ``task_text``); ``before`` bounds the memory reads as in ``agent(task, before=...)``. Errors as
    ``load_agent``."""
    check_format(format, task_text)
    agent = load_agent(user_id, task, settings=settings, alias=alias, memory=memory, tracking=tracking)
    return agent_prompt(agent, format, task_text, before)


__all__ = [
    "FORMATS",
    "ExportFormat",
    "agent_messages",
    "agent_prompt",
    "answer_text",
    "check_format",
    "export_prompt",
    "output_contract",
    "parse_reply",
    "system_prompt",
]
