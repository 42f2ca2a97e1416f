"""Optimizers of the persona. Importing ``PersonaOptimizer`` imports TextGrad (a few seconds)."""

from persona_dspy.optimizers.persona_optimizer import PersonaOptimizer

__all__ = ["PersonaOptimizer"]
