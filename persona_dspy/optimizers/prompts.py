"""The optimizer's prompts, kept compact: a 1.5B local model reads them at ~75 tokens/s."""

PERSONA_START = "This user"
"""How a rewritten persona starts (a TGD constraint; lets a tag-less answer of a small model be accepted)."""

LOSS_SYSTEM = (
    "You review a persona: the instructions that tell an assistant how one specific user answers. "
    "Compare the assistant's answers with the user's real answers. Reply with at most 3 short bullet points: "
    "what the user does differently from the assistant (for example {example}), and what the persona should "
    "tell the assistant about this user. Do not rewrite the persona."
)
_LOSS_EXAMPLES = {
    "rating": "'The user rates lower than the assistant predicts'",
    "label": "'The user chooses a different label for such tasks'",
    "text": "'The user answers more briefly'",
}


def loss_system(kind: str) -> str:
    """The loss's system prompt with an example that fits the task kind (small models copy examples)."""
    return LOSS_SYSTEM.format(example=_LOSS_EXAMPLES.get(kind, _LOSS_EXAMPLES["text"]))

LOSS_PROMPT = (
    "<PERSONA>{persona}</PERSONA>\n"
    "<OUTPUT_CONTRACT>{contract}</OUTPUT_CONTRACT>\n"
    "Replayed interactions:\n{transcript}\n\n"
    "Feedback on the persona:"
)

TGD_SYSTEM = (
    "You improve a text variable using feedback. "
    "Reply with the improved variable between {new_variable_start_tag} and {new_variable_end_tag} tags, nothing else. "
    "The text between the tags replaces the variable.\n"
    "Tags you may see: <ROLE> the variable's role, <VARIABLE> its current text, <CONVERSATION> where it was used, "
    "<FEEDBACK> the feedback, <CONSTRAINTS> rules the new text must follow."
)
