"""Credentials never leave the process: ``redact`` is applied to every text persona_dspy writes (error
lines, the fleet journal and report, run tags, params and artifacts, pending compiles, log records).

What it removes: ``user:password@`` in any URI (a tracking URI, ``PERSONA_DSPY_API_BASE``), secrets in a
query string (``?api_key=...``, ``token``, ``password``, ``secret``), ``Bearer`` tokens and ``sk-...`` keys.
"""

from __future__ import annotations

import logging
import re
from typing import Any

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"://[^/@\s'\"]+@"), "://***@"),
    (re.compile(r"(?i)([?&;](?:api[_-]?key|access[_-]?token|token|password|passwd|secret)=)[^&\s'\"]+"), r"\1***"),
    (re.compile(r"(?i)(\bbearer\s+)[A-Za-z0-9._~+/=-]+"), r"\1***"),
    (re.compile(r"\bsk-[A-Za-z0-9_-]{8,}"), "sk-***"),
)


def redact(text: str) -> str:
    """``text`` with every credential it holds replaced by ``***``."""
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def redact_logs() -> None:
    """Redact every log record of the process as it is created (any logger, any handler, including
    those a library adds later); the CLI calls it. Idempotent."""
    factory = logging.getLogRecordFactory()
    if getattr(factory, "redacts", False):
        return

    def make(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return record

    make.redacts = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(make)
