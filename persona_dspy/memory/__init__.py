"""Personalized memory: episodic (Qdrant) and semantic (LM-distilled profile)."""

from persona_dspy.memory.embedder import OnnxEmbedder
from persona_dspy.memory.episodic import Episode, EpisodicMemory
from persona_dspy.memory.semantic import Profile, SemanticMemory

__all__ = ["OnnxEmbedder", "Episode", "EpisodicMemory", "Profile", "SemanticMemory"]
