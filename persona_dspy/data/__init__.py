"""Interaction records, loaders and the bundled sample users."""

from importlib import resources
from pathlib import Path

from persona_dspy.data.loaders import group_by_user, load_interactions, load_shared
from persona_dspy.data.records import Interaction, UserHistory


def sample_users_path() -> Path:
    """The bundled MovieLens sample users (see ``samples/README.md`` for source and license)."""
    return Path(str(resources.files("persona_dspy.data") / "samples" / "movielens_users.jsonl"))


def load_sample_users() -> list[UserHistory]:
    return load_shared(sample_users_path())


__all__ = [
    "Interaction",
    "UserHistory",
    "group_by_user",
    "load_interactions",
    "load_sample_users",
    "load_shared",
    "sample_users_path",
]
