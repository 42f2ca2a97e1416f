"""Personalized memory: episodic (Qdrant) and semantic (LM-distilled profile).

``Memory`` is the interface every consumer types against; ``EpisodicMemory`` (Qdrant Edge in a
folder, or qdrant-client for ``:memory:`` and server URLs) and ``UserSnapshot`` implement it.
"""

from persona_dspy.memory.embedder import OnnxEmbedder
from persona_dspy.memory.episodic import EpisodicMemory
from persona_dspy.memory.protocol import Episode, Memory, MemoryReader
from persona_dspy.memory.semantic import Profile, SemanticMemory
from persona_dspy.memory.snapshot import UserSnapshot

__all__ = [
    "Episode",
    "EpisodicMemory",
    "Memory",
    "MemoryReader",
    "OnnxEmbedder",
    "Profile",
    "SemanticMemory",
    "UserSnapshot",
]
