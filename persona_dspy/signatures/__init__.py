"""Task signatures (one per data set, plus a generic one), custom tasks, and their metrics."""

from persona_dspy.signatures.metrics import rouge_l
from persona_dspy.signatures.tasks import (
    DEFAULT_PERSONA,
    LAMP2N_LABELS,
    TASKS,
    PersonalizedTask,
    TaskSpec,
    get_task,
    register_task,
)

__all__ = [
    "DEFAULT_PERSONA",
    "LAMP2N_LABELS",
    "TASKS",
    "PersonalizedTask",
    "TaskSpec",
    "get_task",
    "register_task",
    "rouge_l",
]
