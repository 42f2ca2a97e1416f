"""The optimizer's prompts, kept compact: a 1.5B local model reads them at ~75 tokens/s."""

LOSS_SYSTEM = (
    "You review a persona: the instructions that tell an assistant how one specific user answers. "
    "Compare the assistant's answers with the user's real answers. Reply with at most 3 short bullet points: "
    "what the user does differently from the assistant (for example 'The user rates about 1.5 stars lower than "
    "the assistant' or 'The user picks sports, not politics'), and what the persona should tell the assistant "
    "about this user (for example 'The persona should say the user is a harsh critic'). Do not rewrite the persona."
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
