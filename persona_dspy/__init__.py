"""persona_dspy: personalized LLM agents with one compiled persona per user (PersonaAgent on DSPy)."""

from persona_dspy.config import set_environment_guards

set_environment_guards()

from persona_dspy.config import Settings  # noqa: E402
from persona_dspy.errors import (  # noqa: E402
    BudgetExceededError,
    EmptyHistoryError,
    LMOutputError,
    MalformedInteractionError,
    PersonaDSPyError,
    StoreUnavailableError,
    TrackingUnavailableError,
    UnknownUserError,
)

__version__ = "0.1.0"
__all__ = [
    "Settings", "PersonaDSPyError", "UnknownUserError", "EmptyHistoryError", "MalformedInteractionError",
    "StoreUnavailableError", "TrackingUnavailableError", "LMOutputError", "BudgetExceededError",
]
