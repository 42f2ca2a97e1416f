"""The optimizer's prompts, kept compact: a 1.5B local model reads them at ~75 tokens/s."""

LOSS_SYSTEM = (
    "You review a persona: the instructions an assistant follows to answer exactly as one specific user would. "
    "Compare the assistant's answers with the user's real answers and say what the persona gets wrong about "
    "this user. Focus on systematic differences (for example: the user rates lower than the assistant thinks, "
    "or prefers certain labels). Answer with at most 4 short bullet points of concrete feedback on the persona. "
    "Do not rewrite the persona."
)

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
