"""MLflow tracking: one run per compile, persona versions in the prompt registry, rollback.

``Tracking`` (tracker.py) is the façade; store.py, runs.py, registry.py, tracing.py, pending.py and
forget.py each hold one of its jobs.
"""

from persona_dspy.tracking.compare import RunRow, compare_runs, format_runs
from persona_dspy.tracking.registry import CANDIDATE, PRODUCTION, PersonaRegistry, PersonaVersion, prompt_name
from persona_dspy.tracking.tracker import Tracking, compile_id

__all__ = [
    "CANDIDATE",
    "PRODUCTION",
    "PersonaRegistry",
    "PersonaVersion",
    "RunRow",
    "Tracking",
    "compare_runs",
    "compile_id",
    "format_runs",
    "prompt_name",
]
