"""Shared fixtures: expensive objects are built once per test session."""

import persona_dspy  # noqa: F401  (sets the offline environment guards first)

import pytest

from persona_dspy.memory.embedder import OnnxEmbedder


@pytest.fixture(scope="session")
def embedder() -> OnnxEmbedder:
    """The real MiniLM embedder, loaded once (session creation is the slow part)."""
    return OnnxEmbedder()
