"""persona_dspy: personalized LLM agents with one compiled persona per user (PersonaAgent on DSPy).

``import persona_dspy as pd``, then ``pd.PersonaAgent``, ``pd.PersonaOptimizer``, ``pd.EpisodicMemory``,
``pd.Tracking``, ``pd.Settings``, ``pd.align_user``, ``pd.compile_users`` and every error. Importing
the package is cheap: it sets the environment guards and loads ``Settings`` and the errors; the rest
(DSPy, Qdrant, MLflow, TextGrad) is imported on first use of a name (module ``__getattr__``).
"""

from persona_dspy.config import set_environment_guards

set_environment_guards()

from typing import TYPE_CHECKING, Any

from persona_dspy.config import Settings
from persona_dspy.errors import (
    EXIT_CODES,
    BudgetExceededError,
    ConfigurationError,
    EmptyHistoryError,
    LeakageError,
    LMOutputError,
    MalformedInteractionError,
    ModelWeightsError,
    OutOfOrderObservationError,
    PersonaDSPyError,
    PersonaNotFoundError,
    StoreUnavailableError,
    TaskMetricError,
    TrackingUnavailableError,
    UnknownTaskError,
    UnknownUserError,
)

if TYPE_CHECKING:
    from persona_dspy.agent import PersonaAgent
    from persona_dspy.data import Interaction, UserHistory, load_interactions, load_sample_users, load_shared
    from persona_dspy.export import export_prompt
    from persona_dspy.fleet import FleetReport, compile_users
    from persona_dspy.lm import build_lm
    from persona_dspy.memory import EpisodicMemory, SemanticMemory
    from persona_dspy.optimizers import GatedPersonaOptimizer, PersonaOptimizer
    from persona_dspy.optimizers.baselines import GEPABaseline, MIPROv2Baseline
    from persona_dspy.pipeline import Alignment, align_user
    from persona_dspy.results import CompileResult
    from persona_dspy.serving import RealignPolicy, ServedAgent, compile_due, due_users, load_agent
    from persona_dspy.signatures import TaskSpec, register_task
    from persona_dspy.tracking import Tracking

__version__ = "0.1.0"

_LAZY = {
    "PersonaAgent": "persona_dspy.agent",
    "Interaction": "persona_dspy.data",
    "UserHistory": "persona_dspy.data",
    "load_interactions": "persona_dspy.data",
    "load_sample_users": "persona_dspy.data",
    "load_shared": "persona_dspy.data",
    "EpisodicMemory": "persona_dspy.memory",
    "SemanticMemory": "persona_dspy.memory",
    "build_lm": "persona_dspy.lm",
    "PersonaOptimizer": "persona_dspy.optimizers",
    "GatedPersonaOptimizer": "persona_dspy.optimizers",
    "GEPABaseline": "persona_dspy.optimizers.baselines",
    "MIPROv2Baseline": "persona_dspy.optimizers.baselines",
    "CompileResult": "persona_dspy.results",
    "Tracking": "persona_dspy.tracking",
    "align_user": "persona_dspy.pipeline",
    "Alignment": "persona_dspy.pipeline",
    "compile_users": "persona_dspy.fleet",
    "FleetReport": "persona_dspy.fleet",
    "load_agent": "persona_dspy.serving",
    "ServedAgent": "persona_dspy.serving",
    "RealignPolicy": "persona_dspy.serving",
    "compile_due": "persona_dspy.serving",
    "due_users": "persona_dspy.serving",
    "export_prompt": "persona_dspy.export",
    "TaskSpec": "persona_dspy.signatures",
    "register_task": "persona_dspy.signatures",
}


def __getattr__(name: str) -> Any:
    """Import ``name``'s module on first use (mlflow and qdrant take seconds to import)."""
    if name not in _LAZY:
        raise AttributeError(f"module 'persona_dspy' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "EXIT_CODES",
    "Alignment",
    "BudgetExceededError",
    "CompileResult",
    "ConfigurationError",
    "EmptyHistoryError",
    "EpisodicMemory",
    "FleetReport",
    "GEPABaseline",
    "GatedPersonaOptimizer",
    "Interaction",
    "LMOutputError",
    "LeakageError",
    "MIPROv2Baseline",
    "MalformedInteractionError",
    "ModelWeightsError",
    "OutOfOrderObservationError",
    "PersonaAgent",
    "PersonaDSPyError",
    "PersonaNotFoundError",
    "PersonaOptimizer",
    "RealignPolicy",
    "SemanticMemory",
    "ServedAgent",
    "Settings",
    "StoreUnavailableError",
    "TaskMetricError",
    "TaskSpec",
    "Tracking",
    "TrackingUnavailableError",
    "UnknownTaskError",
    "UnknownUserError",
    "UserHistory",
    "align_user",
    "build_lm",
    "compile_due",
    "compile_users",
    "due_users",
    "export_prompt",
    "load_agent",
    "load_interactions",
    "load_sample_users",
    "load_shared",
    "register_task",
]
