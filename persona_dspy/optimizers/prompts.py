"""The optimizer's prompts and the persona's layout, kept compact: a 1.5B local model reads them at
~75 tokens/s, and copies any example it is shown, so none of them contains an example answer.

A persona is laid out in three parts:

    <base instructions of the task>                     fixed: a rewrite can never drop them
    What this user's past answers show: <facts>         measured by the optimizer (``grounding``)
    How to answer for this user: <guidance>             the part TextGrad rewrites

so the trainable variable is the guidance only, and the facts are numbers, not LM guesses.
"""

from __future__ import annotations

FACTS_HEADER = "What this user's past answers show:"
GUIDANCE_HEADER = "How to answer for this user:"
GUIDANCE_START = "For this user"
"""How a rewritten guidance starts (a TGD constraint; lets a tag-less answer of a small model be accepted)."""

NO_GUIDANCE = "For this user, follow the facts above."
"""The guidance before any alignment step."""


def compose(base: str, facts: str, guidance: str) -> str:
    """The persona text: base instructions, then the measured facts and the guidance when present."""
    parts = [base.strip()]
    if facts.strip():
        parts.append(f"{FACTS_HEADER} {facts.strip()}")
    if guidance.strip():
        parts.append(f"{GUIDANCE_HEADER} {guidance.strip()}")
    return "\n".join(parts)


def decompose(persona: str) -> tuple[str, str, str]:
    """``(base, facts, guidance)`` of a persona laid out by ``compose``; any other text is all base."""
    base, facts, guidance = persona.strip(), "", ""
    if GUIDANCE_HEADER in base:
        base, guidance = (s.strip() for s in base.split(GUIDANCE_HEADER, 1))
    if FACTS_HEADER in base:
        base, facts = (s.strip() for s in base.split(FACTS_HEADER, 1))
    return base, facts, guidance


LOSS_SYSTEM = (
    "You review how an assistant answered on behalf of one specific user. You get the assistant's answers, "
    "the user's real answers and the measured errors. In at most 2 short sentences, say what the assistant "
    "should do differently for this user. Only state what the measured errors show; never contradict them. "
    "Do not rewrite any instructions."
)

LOSS_PROMPT = (
    "Facts about this user: {facts}\n"
    "Replayed interactions:\n{transcript}\n\n"
    "What should the assistant do differently for this user?"
)

TGD_SYSTEM = (
    "You improve a text variable using feedback. "
    "Reply with the improved variable between {new_variable_start_tag} and {new_variable_end_tag} tags, nothing else. "
    "The text between the tags replaces the variable.\n"
    "Tags you may see: <ROLE> the variable's role, <VARIABLE> its current text, <CONVERSATION> where it was used, "
    "<FEEDBACK> the feedback, <CONSTRAINTS> rules the new text must follow."
)


def prompt_kind(messages: list[dict[str, str]]) -> str:
    """Which optimizer prompt a chat is: ``"loss"``, ``"update"`` or ``"other"`` (the agent, the
    profile). Lets scripted LMs and trace readers tell the calls apart without slicing prompt text."""
    system = messages[0]["content"] if messages and messages[0].get("role") == "system" else ""
    if system == LOSS_SYSTEM:
        return "loss"
    if system.startswith(TGD_SYSTEM.split("{", 1)[0]):
        return "update"
    return "other"
