"""Task signatures (one per data set, plus a generic one) and the optimizer's own signatures."""

from persona_dspy.signatures.tasks import DEFAULT_PERSONA, LAMP2N_LABELS, TASKS, PersonalizedTask, TaskSpec, get_task

__all__ = ["DEFAULT_PERSONA", "LAMP2N_LABELS", "TASKS", "PersonalizedTask", "TaskSpec", "get_task"]
