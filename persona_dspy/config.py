"""One ``Settings`` object: every store is reached by a URI, a path or ``:memory:``.

Switching from the embedded defaults to a server is a setting, never a code change::

    PERSONA_DSPY_LM=openai/gpt-4o-mini
    PERSONA_DSPY_QDRANT=http://qdrant:6333      # default: a Qdrant Edge folder, <state_dir>/qdrant
    PERSONA_DSPY_MLFLOW_TRACKING_URI=http://mlflow:5000
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

EMBEDDED_LM = "embedded/qwen2.5-coder-1.5b-instruct-q4_k_m"
DEFAULT_K = 8
"""Episodes an agent shows by default: what the quality benchmark measured (its sweep kept 8 over 16)."""


def default_state_dir() -> Path:
    return Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state")) / "persona_dspy"


class Settings(BaseSettings):
    """Where the LM, the memory store and the tracking store live."""

    # extra="forbid": Settings(qdrnt=...) is an error, not the default store; unknown PERSONA_DSPY_* variables
    # in the environment stay ignored (pydantic-settings checks extras of the init arguments only)
    model_config = SettingsConfigDict(env_prefix="PERSONA_DSPY_", extra="forbid")

    lm: str = Field(
        EMBEDDED_LM,
        min_length=1,
        description="'embedded/...' for the in-process model, or any LiteLLM model string",
    )
    api_base: str | None = Field(
        None, description="base URL of an OpenAI-compatible server, e.g. http://127.0.0.1:8080/v1"
    )
    api_key: SecretStr | None = Field(None, description="API key for the LM; never logged")
    lm_temperature: float = Field(0.0, ge=0.0)
    lm_max_tokens: int = Field(384, ge=1)
    lm_num_retries: int = Field(2, ge=0)
    state_dir: Path = Field(default_factory=default_state_dir)
    qdrant: str | None = Field(
        None,
        description="a folder (Qdrant Edge, also 'edge:<folder>'), ':memory:', a URL "
        "(Qdrant server) or 'local:<folder>' (qdrant-client local mode); default "
        "<state_dir>/qdrant (Qdrant Edge)",
    )
    qdrant_api_key: SecretStr | None = None
    collection: str = "persona_episodes"
    mlflow_tracking_uri: str | None = Field(None, description="default sqlite:///<state_dir>/mlflow.db")
    experiment: str = "persona_dspy"
    embedded_threads: int = Field(default_factory=lambda: max(1, os.cpu_count() or 1), ge=1)
    embedded_ctx: int = Field(8192, ge=512)
    embedded_cache_prompt: bool = Field(
        True,
        description="reuse the KV cache of a shared prompt prefix (faster); False: every prompt from scratch, so "
        "the same prompt gets the same answer whatever ran before it (for benchmarks that compare arms)",
    )

    @field_validator("qdrant", mode="after")
    @classmethod
    def _qdrant_url_has_a_scheme(cls, v: str | None) -> str | None:
        # 'localhost:6333' would silently become a folder of that name in the working directory
        if v is not None and not v.startswith(("edge:", "local:")) and re.fullmatch(r"[A-Za-z0-9_.-]+:\d+(/.*)?", v):
            raise ValueError(
                f"{v!r} looks like a server address without a scheme: write http://{v} for a Qdrant server, "
                f"or ./{v} for a folder"
            )
        if v == "":  # PERSONA_DSPY_QDRANT= (an empty variable): the default store, as when it is unset
            return None
        scheme, colon, folder = (v or "").partition(":")
        if v is not None and (not v.strip() or colon and scheme in ("edge", "local") and not folder.strip()):
            raise ValueError(f"{v!r} names no folder (it would be the working directory): write edge:<folder>")
        return v

    @field_validator("mlflow_tracking_uri", mode="after")
    @classmethod
    def _tracking_uri_scheme(cls, v: str | None) -> str | None:
        if v is not None and not re.match(
            r"(sqlite|https?|file|postgresql|mysql|mssql|databricks|databricks-uc|uc)(\+\w+)?:", v
        ):
            raise ValueError(
                "expected an MLflow store URI: sqlite:///PATH, http(s)://HOST:PORT (a tracking server), "
                "postgresql://..., mysql://... or file:PATH"
            )
        return v

    @field_validator("state_dir", mode="before")
    @classmethod
    def _not_empty(cls, v: object) -> object:
        if isinstance(v, str) and not v.strip():  # Path("") is the working directory, wherever a command runs
            raise ValueError("must not be empty (for the working directory, write .)")
        return v

    @field_validator("state_dir", mode="after")
    @classmethod
    def _expand(cls, v: Path) -> Path:
        v = v.expanduser()
        if v.exists() and not v.is_dir():
            raise ValueError(f"{v} is a file, not a folder: give a folder (it is created if missing)")
        return v

    @property
    def is_embedded_lm(self) -> bool:
        return self.lm.startswith("embedded/")

    @property
    def qdrant_location(self) -> str:
        return self.qdrant or str(self.state_dir / "qdrant")

    @property
    def qdrant_is_server(self) -> bool:
        return self.qdrant_location.startswith(("http://", "https://"))

    @property
    def qdrant_folder(self) -> Path | None:
        """The folder of an embedded store (Qdrant Edge, ``edge:`` or ``local:``); ``None`` for ``:memory:`` or a server."""
        location = self.qdrant_location
        if location == ":memory:" or self.qdrant_is_server:
            return None
        return Path(location.split(":", 1)[1] if location.startswith(("edge:", "local:")) else location)

    @property
    def tracking_uri(self) -> str:
        return self.mlflow_tracking_uri or f"sqlite:///{self.state_dir / 'mlflow.db'}"

    @property
    def cache_dir(self) -> Path:
        return self.state_dir / "cache"


def set_environment_guards(state_dir: Path | None = None) -> None:
    """Environment the stack needs to stay offline and out of the working directory.

    Must run before litellm / textgrad / mlflow are imported; ``persona_dspy/__init__`` calls it.
    Values already set by the user win.
    """
    state = Path(state_dir) if state_dir else Path(os.environ.get("PERSONA_DSPY_STATE_DIR") or default_state_dir())
    defaults = {
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "TEXTGRAD_LOG_DIR": str(state / "textgrad_logs"),
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
        "DSPY_CACHEDIR": str(state / "dspy_cache"),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        # fail in seconds, not minutes, when a tracking server is down (MLflow's default backs off ~2 min)
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
    }
    for key, value in defaults.items():
        if key not in os.environ:
            os.environ[key] = value
            if key in STATE_VARIABLES:
                _GUARDED.add(key)


STATE_VARIABLES = ("TEXTGRAD_LOG_DIR", "DSPY_CACHEDIR")
"""The guards' variables that name a folder of the state dir."""

_GUARDED: set[str] = set()
"""The ``STATE_VARIABLES`` the guards set (the user had not): ``follow_state_dir`` may move them."""


def follow_state_dir(state_dir: Path) -> None:
    """Point the LM caches' folders (``STATE_VARIABLES``) at ``state_dir`` when the guards set them at import
    (from ``PERSONA_DSPY_STATE_DIR`` or the default) and the state dir was then given otherwise (the CLI's
    ``--state-dir``): a command's DSPy cache and TextGrad logs belong to its own state dir, and ``forget``
    must clear those, not another state dir's. Values the user set stay. Effective before DSPy and TextGrad
    are imported (they read them once); the CLI calls it before any command imports them."""
    state = Path(state_dir)
    for key, folder in (("TEXTGRAD_LOG_DIR", "textgrad_logs"), ("DSPY_CACHEDIR", "dspy_cache")):
        if key in _GUARDED:
            os.environ[key] = str(state / folder)
