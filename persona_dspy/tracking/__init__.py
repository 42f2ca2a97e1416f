"""MLflow tracking: one run per compile, persona versions in the prompt registry, rollback."""

from persona_dspy.tracking.registry import CANDIDATE, PRODUCTION, PersonaRegistry, PersonaVersion, prompt_name
from persona_dspy.tracking.tracker import Tracking

__all__ = ["Tracking", "PersonaRegistry", "PersonaVersion", "prompt_name", "CANDIDATE", "PRODUCTION"]
