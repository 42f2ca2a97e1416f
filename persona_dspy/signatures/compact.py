"""CompactAdapter: DSPy's chat format without its boilerplate, for one-answer signatures.

DSPy's ``ChatAdapter`` spends ~230 tokens of every call on its protocol: the field list, a template of
``[[ ## field ## ]]`` sections, "In adhering to this structure...", a reminder at the end of the user
message and the ``[[ ## completed ## ]]`` marker the model must write back. A persona agent's call has one
output, a rating or a label, so the protocol is most of what it pays for:

- system: the persona (the signature's instructions), then one line per input and the output's contract;
- user: ``name: value`` per input;
- answer: the value alone.

The same information, about a third fewer tokens per call and ~15 fewer to generate. A signature with
several outputs or a typed output is formatted by ``ChatAdapter`` as before (a ReAct agent, whose calls are
all of that kind, refuses the compact format: it would save nothing).
"""

from __future__ import annotations

import re
from typing import Any

import dspy
from dspy.utils.exceptions import AdapterParseError

_MARKER = re.compile(r"\[\[ ## (\w+) ## \]\]")


def answer_text(reply: str | None, field: str = "answer") -> str | None:
    """The ``field`` section of a reply in DSPy's chat format (``[[ ## answer ## ]]`` ... up to the next
    marker); a reply without markers is taken whole, and a reply with markers but no ``field`` gives
    the text before its first marker. None stays None."""
    if reply is None:
        return None
    parts = _MARKER.split(reply)  # [before, name, body, name, body, ...]
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name == field:
            return body.strip()
    return parts[0].strip()


def _compact(signature: type[dspy.Signature]) -> bool:
    outputs = list(signature.output_fields.values())
    return len(outputs) == 1 and outputs[0].annotation is str


def field_desc(field: Any) -> str:
    """A signature field's ``desc`` ("" for DSPy's ``${name}`` placeholder)."""
    desc = str((field.json_schema_extra or {}).get("desc", "")).strip()
    return "" if not desc or desc.startswith("${") else desc


class CompactAdapter(dspy.ChatAdapter):
    """``dspy.context(adapter=CompactAdapter())``: a one-answer signature in ``name: value`` lines."""

    def __init__(self) -> None:
        super().__init__(use_json_adapter_fallback=False)

    def format_system_message(self, signature: type[dspy.Signature]) -> str:
        if not _compact(signature):
            return super().format_system_message(signature)
        ((name, out),) = signature.output_fields.items()
        lines = [signature.instructions.strip(), "", "Inputs:"]
        lines += [f"- {k}: {field_desc(v) or k}" for k, v in signature.input_fields.items()]
        lines.append(f"Reply with the {name} alone: {field_desc(out) or name}.")
        return "\n".join(lines)

    def format_user_message_content(
        self,
        signature: type[dspy.Signature],
        inputs: dict[str, Any],
        prefix: str = "",
        suffix: str = "",
        main_request: bool = False,
    ) -> str:
        if not _compact(signature):
            return super().format_user_message_content(signature, inputs, prefix, suffix, main_request)
        parts = [prefix]
        for k in signature.input_fields:
            if k in inputs:
                value = str(inputs[k]).strip()
                parts.append(f"{k}:\n{value}" if "\n" in value else f"{k}: {value}")
        parts.append(suffix)
        return "\n\n".join(p for p in parts if p).strip()

    def format_assistant_message_content(
        self, signature: type[dspy.Signature], outputs: dict[str, Any], missing_field_message: str | None = None
    ) -> str:
        if not _compact(signature):
            return super().format_assistant_message_content(signature, outputs, missing_field_message)
        (name,) = signature.output_fields
        return str(outputs.get(name, missing_field_message))

    def parse(self, signature: type[dspy.Signature], completion: str) -> dict[str, Any]:
        if not _compact(signature):
            return super().parse(signature, completion)
        (name,) = signature.output_fields
        text = answer_text(completion, name) or ""  # a reply that wrote the chat markers anyway: its answer
        text = re.sub(rf"^\s*{re.escape(name)}\s*:\s*", "", text, flags=re.IGNORECASE).strip()
        if not text:
            raise AdapterParseError(
                adapter_name="CompactAdapter", signature=signature, lm_response=completion, message="empty answer"
            )
        return {name: text}
