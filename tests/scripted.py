"""Deterministic rules for the scripted LM used by unit tests.

The agent's answer depends on the persona it is given, so tests can see a persona change
propagate to answers: a persona mentioning "harsh" answers ``LOW``; otherwise ``HIGH``.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from persona_dspy.optimizers import prompts

LOW, HIGH = "1.0", "4.0"
CRITIQUE = "- The user rates movies harshly, mostly 1 or 2 stars; the persona should say the user is a harsh rater."
NEW_PERSONA = "For this user, answer as a harsh critic: most movies get 1 to 2 stars."
"""The guidance every scripted rewrite returns (the persona's trainable part)."""


def rule(messages: list[dict[str, str]]) -> str | dict[str, str]:
    system = messages[0]["content"] if messages and messages[0]["role"] == "system" else ""
    kind = prompts.prompt_kind(messages)
    if kind == "loss":
        return CRITIQUE
    if kind == "update":
        return f"<IMPROVED_VARIABLE>{NEW_PERSONA}</IMPROVED_VARIABLE>"
    if "profile" in system and "previous_profile" in system:
        return {"profile": "- rates low\n- likes comedies"}
    return {"answer": LOW if "harsh" in system else HIGH}


def rule_with_dspy_optimizers(messages: list[dict[str, str]]) -> str | dict[str, str]:
    """``rule`` plus GEPA's reflection and MIPROv2's instruction proposals, both answering NEW_PERSONA."""
    system = messages[0]["content"]
    for field in ("new_instruction", "proposed_instruction"):
        if f"`{field}`" in system:
            return {field: NEW_PERSONA}
    return rule(messages)


def ratings(
    user_id: str,
    n: int = 6,
    *,
    genres: str = "Drama",
    start: float = 10.0,
    rating: str = "1.0",
    outputs: list[str] | None = None,
) -> list:
    """``n`` MovieLens-style interactions of one user, all rated ``rating``, one second apart; with
    ``outputs``, one interaction per given rating instead."""
    from persona_dspy.data import Interaction

    return [
        Interaction(
            user_id=user_id,
            id=f"m{i}",
            input=f"movie: Film {i} genres: {genres}",
            output=out,
            timestamp=start + i,
            task="movielens_rating",
        )
        for i, out in enumerate(outputs if outputs is not None else [rating] * n)
    ]


def react_rule(tool: str, args: dict, answer: Callable[[str], str]) -> Callable[[list[dict[str, str]]], object]:
    """A ReAct agent that calls ``tool`` with ``args`` once, finishes, then answers ``answer(system)``."""

    def respond(messages: list[dict[str, str]]) -> str | dict[str, str]:
        system, user = messages[0]["content"], messages[-1]["content"]
        if "next_tool_name" in system:
            if "observation_0" not in user:
                return {"next_thought": f"call {tool}", "next_tool_name": tool, "next_tool_args": json.dumps(args)}
            return {"next_thought": "done", "next_tool_name": "finish", "next_tool_args": "{}"}
        if "reasoning" in system:
            return {"reasoning": "from what the tool showed", "answer": answer(system)}
        return rule(messages)

    return respond


def articles(user_id: str, texts: list[str], labels: list[str], start: float = 10.0) -> list:
    """LaMP-2N-style interactions of one user: ``texts[i]`` filed under ``labels[i]``, one second apart."""
    from persona_dspy.data import Interaction

    return [
        Interaction(
            user_id=user_id, id=f"a{i}", input=f"article: {t}", output=label, timestamp=start + i, task="LaMP-2N"
        )
        for i, (t, label) in enumerate(zip(texts, labels))
    ]
