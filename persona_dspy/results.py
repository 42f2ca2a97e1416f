"""What a compile produced: plain records shared by the optimizer (producer) and tracking (consumer)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class Step(BaseModel):
    """One iteration: the persona it started from, how it replayed, the loss, and the rewrite."""

    iteration: int
    persona: str
    train_score: float
    predictions: list[str | None]
    loss: str = ""
    updated_persona: str | None = None
    candidate_scores: list[float] = Field(default_factory=list, description="replay score of each usable rewrite")
    rejected: list[str] = Field(default_factory=list, description="rewrites rejected for contradicting the facts")


class CompileResult(BaseModel):
    """Everything a compile did, for tracking and for the fleet report."""

    user_id: str
    task: str | None = Field(None, description="the task the persona was compiled for (its replays and gate)")
    optimizer: str = "PersonaOptimizer"
    params: dict[str, Any]
    agent: dict[str, str] = Field(
        default_factory=dict,
        description="the settings of the agent the persona was replayed and gated with (``PersonaAgent.settings()``: "
        "adapter, mode, k, episode_chars, actions); recorded as ``agent.*`` params and persona-version tags, "
        "which ``load_agent`` serves it with",
    )
    initial_persona: str
    candidate_persona: str
    gated_persona: str | None = Field(
        None,
        description="the text the gate scored, when the promoted candidate re-grounds it on the interactions "
        "the gate and the replay held back (PersonaOptimizer); None when the gated text is the candidate",
    )
    production_persona: str
    steps: list[Step] = Field(default_factory=list)
    val_ids: list[str] = Field(default_factory=list)
    windows: tuple[int, int] | None = Field(
        None,
        description="(replayed, gated) interactions of this compile when they differ from the optimizer's "
        "n_recent and n_val (a short history's windows narrowed, PersonaOptimizer(min_facts=...)); None otherwise",
    )
    val_score_production: float | None = None
    val_score_candidate: float | None = None
    rewritten: bool | None = Field(
        None,
        description="whether the candidate's guidance holds LM-written text (a TextGrad step kept in this "
        "compile, or a guidance carried from an earlier one) rather than the user's measured facts alone "
        "(PersonaOptimizer); None when nothing was measured, and for other optimizers",
    )
    promoted: bool = False
    promotion_skipped: str = Field(
        "",
        description="why recording did not promote a candidate the gate promoted (production had moved since the "
        "compile read it); ``promoted`` is then False",
    )
    reason: str = ""
    stopped: str = Field("", description="why the alignment loop ended (early stop or iterations done)")
    lm_calls: int = 0
    tokens: int = 0
    wall_time: float = 0.0
    data_watermark: float | None = None
    data_digest: str | None = Field(
        None,
        description="``data_digest`` of the user's whole history at compile time (set by ``align_user``): with "
        "``data_count``, what tells an older interaction added or one rewritten since, which the watermark misses",
    )
    data_count: int | None = Field(None, description="how many interactions the user had at compile time")
    version: int | None = None
