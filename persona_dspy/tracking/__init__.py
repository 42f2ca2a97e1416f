"""MLflow tracking: one run per compile, persona versions in the prompt registry, rollback."""

from persona_dspy.tracking.compare import RunRow, compare_runs, format_runs
from persona_dspy.tracking.registry import CANDIDATE, PRODUCTION, PersonaRegistry, PersonaVersion, prompt_name
from persona_dspy.tracking.tracker import Tracking, compile_id

__all__ = ["Tracking", "PersonaRegistry", "PersonaVersion", "prompt_name", "compile_id", "CANDIDATE", "PRODUCTION",
           "RunRow", "compare_runs", "format_runs"]
