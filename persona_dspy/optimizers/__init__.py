"""Optimizers of the persona. TextGrad (a few seconds to import) loads at the first compile."""

from persona_dspy.optimizers.base import Budget, GatedPersonaOptimizer, usage_totals
from persona_dspy.optimizers.persona_optimizer import PersonaOptimizer

__all__ = ["Budget", "GatedPersonaOptimizer", "PersonaOptimizer", "usage_totals"]
