"""One exception hierarchy: every error says what went wrong and what to do next.

The CLI prints each as one line on stderr and exits with the class's ``exit_code`` (distinct per
class; ``EXIT_CODES`` lists them). Every error persona_dspy raises on purpose is defined here.
"""

from __future__ import annotations

from typing import Any


class PersonaDSPyError(Exception):
    """Base class of every error persona_dspy raises on purpose."""

    exit_code = 1


class ConfigurationError(PersonaDSPyError, ValueError):
    """A setting or an argument is missing, out of range or inconsistent (also a ``ValueError``)."""

    exit_code = 2


class ModelWeightsError(PersonaDSPyError):
    """The embedded model's weights are missing or corrupt."""

    exit_code = 3


class UnknownUserError(PersonaDSPyError):
    """No data for this user in the store asked."""

    exit_code = 4

    def __init__(self, user_id: str, where: str = "episodic memory") -> None:
        self.user_id = user_id
        super().__init__(
            f"unknown user {user_id!r}: no interactions in {where}. "
            "Ingest the user's history first (persona-dspy ingest FILE) or check the id."
        )


class EmptyHistoryError(PersonaDSPyError):
    """A user exists but has too few interactions for the operation."""

    exit_code = 5


class MalformedInteractionError(PersonaDSPyError):
    """An input record is invalid; nothing of its batch was written."""

    exit_code = 6

    def __init__(
        self,
        message: str,
        *,
        line: int | None = None,
        record_id: str | None = None,
        field: str | None = None,
        source: str | None = None,
    ) -> None:
        self.line, self.record_id, self.field, self.source = line, record_id, field, source
        where = []
        if source:
            where.append(str(source))
        if line is not None:
            where.append(f"line {line}")
        if record_id is not None:
            where.append(f"record {record_id!r}")
        if field is not None:
            where.append(f"field {field!r}")
        prefix = ", ".join(where)
        super().__init__(
            f"malformed interaction ({prefix}): {message}" if prefix else f"malformed interaction: {message}"
        )


class StoreUnavailableError(PersonaDSPyError):
    """The Qdrant store cannot be opened or reached."""

    exit_code = 7


class TrackingUnavailableError(PersonaDSPyError):
    """The MLflow tracking store cannot be reached; no persona alias was moved."""

    exit_code = 8


class LMOutputError(PersonaDSPyError):
    """The LM failed or returned unusable output after bounded retries."""

    exit_code = 9


class BudgetExceededError(PersonaDSPyError):
    """A compile hit its LM-call or token budget; production was not moved."""

    exit_code = 10


class PersonaNotFoundError(PersonaDSPyError):
    """No such persona version or alias in the registry."""

    exit_code = 11


class LeakageError(PersonaDSPyError):
    """The held-out answer reached memory, persona or an LM prompt: the evaluation is invalid."""

    exit_code = 12


class UnknownTaskError(ConfigurationError, KeyError):
    """No task registered under that name (also a ``KeyError``, what ``get_task`` raised before)."""

    exit_code = 13

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class OutOfOrderObservationError(MalformedInteractionError):
    """An observation is older than what is already stored for its user; nothing was written."""

    exit_code = 14

    def __init__(self, message: str, **where: Any) -> None:
        super().__init__(message, **where)
        self.args = (str(self.args[0]).replace("malformed interaction", "out-of-order observation", 1),)


class TaskMetricError(PersonaDSPyError):
    """A task's metric raised or returned something other than a finite number."""

    exit_code = 15


EXIT_CODES: dict[str, int] = {
    cls.__name__: cls.exit_code
    for cls in (
        PersonaDSPyError,
        ConfigurationError,
        ModelWeightsError,
        UnknownUserError,
        EmptyHistoryError,
        MalformedInteractionError,
        StoreUnavailableError,
        TrackingUnavailableError,
        LMOutputError,
        BudgetExceededError,
        PersonaNotFoundError,
        LeakageError,
        UnknownTaskError,
        OutOfOrderObservationError,
        TaskMetricError,
    )
}
"""Exit code of the CLI per error class (argparse usage errors exit 2, as ``ConfigurationError``)."""

__all__ = [
    "EXIT_CODES",
    "BudgetExceededError",
    "ConfigurationError",
    "EmptyHistoryError",
    "LMOutputError",
    "LeakageError",
    "MalformedInteractionError",
    "ModelWeightsError",
    "OutOfOrderObservationError",
    "PersonaDSPyError",
    "PersonaNotFoundError",
    "StoreUnavailableError",
    "TaskMetricError",
    "TrackingUnavailableError",
    "UnknownTaskError",
    "UnknownUserError",
]
