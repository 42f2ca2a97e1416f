"""Compile runs: what one run holds (params, metrics, tags, persona artifacts), writing it, finding it.

Order of writes for one compile: run and its artifacts (persona texts, critiques, diff) ->
registered version with alias ``candidate`` -> alias ``production`` only if the gate passed ->
params, metrics and tags in one batch (``persona_version`` marks the run as recorded) -> run
finished. Runs carry a deterministic ``compile_id``, so a retried record never creates a second run.
"""

from __future__ import annotations

import difflib
import hashlib
import tempfile
import time
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, Run, RunTag, ViewType

from persona_dspy.compat.mlflow import get_artifact_repository
from persona_dspy.redaction import redact
from persona_dspy.results import CompileResult
from persona_dspy.tracking.registry import PRODUCTION, PersonaRegistry, prompt_name
from persona_dspy.tracking.store import STORE_ERRORS, MlflowStore

AGENT_PREFIX = "agent."


def compile_id(result: CompileResult) -> str:
    """A deterministic id of one compile's outcome: a retried ``record`` finds its earlier run by it. What
    ``record`` itself sets on the result (``version``; ``promoted`` and ``promotion_skipped`` when it skips a
    promotion) is left out, so a retry of the same result object finds the same run."""
    exclude = {"version", "promoted", "promotion_skipped"} | ({"task"} if result.task is None else set())
    exclude |= set() if result.agent else {"agent"}  # the id of a result recorded before settings were
    return hashlib.sha256(result.model_dump_json(exclude=exclude).encode()).hexdigest()[:20]


def user_tags(user_id: str) -> dict[str, str]:
    return {"user_id": user_id, "persona_prompt": prompt_name(user_id)}


def user_runs(
    client: MlflowClient, exp_id: str, user_id: str, extra: str = "", view: int = ViewType.ACTIVE_ONLY
) -> list[Run]:
    """Runs of exactly this user (the filter uses the prompt name: safe characters only)."""
    runs = client.search_runs(
        [exp_id],
        filter_string=f"tags.persona_prompt = '{prompt_name(user_id)}'{extra}",
        run_view_type=view,
        max_results=10000,
    )
    return [r for r in runs if r.data.tags.get("user_id") == user_id]


SKIPPED = "promotion skipped: production is no longer the persona the gate compared with"


def record_run(store: MlflowStore, result: CompileResult, cid: str, *, open_run_id: str | None = None) -> int:
    """Write the compile as a finished run (into ``open_run_id`` when tracing opened it), register its
    candidate, promote it if the gate passed; returns the version. A compile already recorded (same
    ``compile_id`` on a finished run) returns its version without writing.

    The gate holds only against the persona it compared with: when production is no longer
    ``result.production_persona`` (another compile or a rollback moved it meanwhile, a pending compile
    recorded late, a result compiled against another persona), the candidate is registered but not
    promoted, the run is tagged ``promotion_skipped`` and so is the result (``promoted`` False,
    ``promotion_skipped`` saying why). Two
    processes recording the same user at the very same moment can still both pass this check (it is not
    a transaction); a fleet compiles each user in one process.
    """
    exp_id = store.experiment_id()
    with store.guard("logging the compile run") as client:
        done = _finished_run(client, exp_id, result.user_id, cid)
        if done is not None:
            return int(done.data.tags["persona_version"])
        registry = PersonaRegistry(client)
        run_id, artifact_uri = open_run_id, None
        if run_id is None:
            info = client.create_run(
                exp_id, run_name=f"{result.optimizer}:{result.user_id}", tags=user_tags(result.user_id)
            ).info
            run_id, artifact_uri = info.run_id, info.artifact_uri
        try:
            promote = result.promoted
            if promote:
                current = registry.get(result.user_id, PRODUCTION)
                # production already this record's candidate: an earlier attempt of it promoted, then failed
                retried = current is not None and current.tags.get("compile_id") == cid
                if current is not None and current.text != result.production_persona and not retried:
                    promote = result.promoted = False  # the caller, the run and its artifacts all say kept
                    result.promotion_skipped = SKIPPED
                    client.set_tag(run_id, "promotion_skipped", SKIPPED)
            with tempfile.TemporaryDirectory(prefix="persona_dspy_run_") as tmp:
                _write_artifacts(result, Path(tmp))
                if artifact_uri is None:
                    client.log_artifacts(run_id, tmp)
                else:  # what log_artifacts does, minus the get_run it needs to learn the run's artifact URI
                    get_artifact_repository(artifact_uri, tracking_uri=store.tracking_uri).log_artifacts(tmp)
            version_tags = {
                "run_id": run_id,
                "compile_id": cid,
                "promoted": str(promote).lower(),
                "val_score_candidate": str(result.val_score_candidate),
                "val_score_production": str(result.val_score_production),
                **({"task": result.task} if result.task else {}),
                **agent_tags(result.agent),
            }
            version = registry.register(
                result.user_id,
                result.candidate_persona,
                commit_message=redact(result.reason)[:500] or f"{result.optimizer} compile",
                tags=version_tags,
                experiment_id=exp_id,
            )
            # the same text as an earlier version: this run's now, unless that version was promoted and this
            # run keeps it (its tags stay the evidence of the run that promoted it)
            if version.tags.get("run_id") != run_id and (promote or version.tags.get("promoted") != "true"):
                for key, value in version_tags.items():
                    if version.tags.get(key) != value:
                        client.set_prompt_version_tag(version.name, str(version.version), key, value)
                for key in set(agent_tags(agent_settings(version.tags))) - set(version_tags):  # not this run's
                    client.delete_prompt_version_tag(version.name, str(version.version), key)
                    version.tags.pop(key)
            if promote:
                registry.promote(result.user_id, version.version, exists=True, tags=version.tags)
            # one batch for everything the run shows; persona_version marks the run as recorded
            tags = {**_run_tags(result, cid), "persona_version": str(version.version), "promoted": str(promote).lower()}
            client.log_batch(
                run_id,
                metrics=_metrics(result, int(time.time() * 1000)),
                params=_params(result),
                tags=[RunTag(k, v) for k, v in tags.items()],
            )
            client.set_terminated(run_id, "FINISHED")
        except BaseException:
            _mark_failed(client, run_id)
            raise
    return version.version


def _mark_failed(client: MlflowClient, run_id: str) -> None:
    """A record that failed half-way ends its run as FAILED, never RUNNING: a registered version may
    already point to it (its ``run_id`` tag), and a retry re-points that tag to its own run."""
    try:
        client.set_terminated(run_id, "FAILED")
    except STORE_ERRORS:
        pass  # the store is down: the run stays RUNNING until `discard_unfinished` or the retry


def last_compile(store: MlflowStore, user_id: str) -> dict[str, Any] | None:
    """The user's last recorded compile, the one on the newest data (the highest data watermark, then data
    count, then the latest start, among the 20 latest runs: a compile kept pending and synced after a newer
    one does not count as the last): ``optimizer``, ``data_watermark`` (as logged), ``data_digest``
    and ``data_count`` (None when not recorded), ``recorded_at`` (unix time), ``params``
    (str values, as logged), ``persona_version``, ``promoted``, ``run_id``; None if never recorded."""
    exp_id = store.experiment_id()
    with store.guard("reading the last compile", read=True) as client:
        runs = client.search_runs(
            [exp_id],
            filter_string=f"tags.persona_prompt = '{prompt_name(user_id)}' and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"],
            max_results=20,
        )

    def newest_data(run: Any) -> tuple[float, int, int]:
        tags = run.data.tags
        try:
            watermark = float(tags.get("data_watermark", "-inf"))
        except ValueError:  # "None": a compile with no data
            watermark = float("-inf")
        count = int(tags["data_count"]) if tags.get("data_count", "").isdigit() else -1
        return watermark, count, run.info.start_time

    mine = [r for r in runs if r.data.tags.get("user_id") == user_id and "persona_version" in r.data.tags]
    if not mine:
        return None
    run = max(mine, key=newest_data)
    tags = run.data.tags
    return {
        "run_id": run.info.run_id,
        "optimizer": tags.get("optimizer"),
        "data_watermark": tags.get("data_watermark"),
        "data_digest": tags.get("data_digest"),
        "data_count": int(tags["data_count"]) if tags.get("data_count", "").isdigit() else None,
        "params": dict(run.data.params),
        "persona_version": int(tags["persona_version"]),
        "promoted": tags.get("promoted") == "true",
        "recorded_at": (run.info.end_time or run.info.start_time) / 1000,
    }


def discard_unfinished(store: MlflowStore, user_id: str) -> int:
    """Delete the user's runs a killed process left unfinished (no ``persona_version``); returns how many."""
    exp_id = store.experiment_id()
    with store.guard("discarding unfinished runs") as client:
        stale = [
            r
            for r in user_runs(client, exp_id, user_id, " and attributes.status = 'RUNNING'")
            if "persona_version" not in r.data.tags
        ]
        for run in stale:
            client.delete_run(run.info.run_id)
    return len(stale)


def _finished_run(client: MlflowClient, exp_id: str, user_id: str, cid: str) -> Run | None:
    for run in user_runs(client, exp_id, user_id, f" and tags.compile_id = '{cid}'"):
        if run.info.status == "FINISHED" and "persona_version" in run.data.tags:
            return run
    return None


def agent_tags(settings: dict[str, str]) -> dict[str, str]:
    """The agent's settings as ``agent.<name>`` params and persona-version tags (``agent_settings`` reads them)."""
    return {f"{AGENT_PREFIX}{k}": v for k, v in settings.items()}


LEGACY_AGENT = {
    "adapter": "chat",
    "mode": "pipeline",
    "k": "4",
    "episode_chars": "220",
    "actions": "read_profile,answer_statistics,recall_episodes",
}
"""``PersonaAgent``'s default settings when compiles began recording them (``agent.*`` params): what a compile
from before then (and the persona version it recorded) is compared and served with. Frozen: a later change of
the defaults must not make those compiles look like the new defaults."""


def agent_settings(tags: dict[str, str]) -> dict[str, str]:
    """The agent settings recorded with a compile's params or a persona version's tags (``agent_tags``)."""
    return {k[len(AGENT_PREFIX) :]: v for k, v in tags.items() if k.startswith(AGENT_PREFIX)}


def _run_tags(result: CompileResult, cid: str) -> dict[str, str]:
    return {
        **user_tags(result.user_id),
        "optimizer": result.optimizer,
        "compile_id": cid,
        "data_watermark": str(result.data_watermark),
        **({"data_digest": result.data_digest} if result.data_digest else {}),
        **({"data_count": str(result.data_count)} if result.data_count is not None else {}),
        "gate": redact(result.reason)[:5000],
        "stopped": redact(result.stopped)[:5000],
        "mlflow.runName": f"{result.optimizer}:{result.user_id}",
    }


def _params(result: CompileResult) -> list[Param]:
    params = {
        "optimizer": result.optimizer,
        **result.params,
        **agent_tags(result.agent),
        "data_watermark": result.data_watermark,
        "val_ids": ",".join(result.val_ids),
    }
    return [Param(k, redact(str(v))[:6000]) for k, v in params.items()]


def _metrics(result: CompileResult, now: int) -> list[Metric]:
    """Per-iteration (step = iteration) and final metrics."""
    per_step = [
        Metric(key, float(value), now, s.iteration)
        for s in result.steps
        for key, value in (
            ("train_score", s.train_score),
            ("loss_chars", len(s.loss)),
            ("persona_chars", len(s.persona)),
        )
    ]
    finals = {
        "lm_calls": result.lm_calls,
        "tokens": result.tokens,
        "wall_time_s": result.wall_time,
        "iterations_run": len(result.steps),
        "val_score_production": result.val_score_production,
        "val_score_candidate": result.val_score_candidate,
        "promoted": float(result.promoted),
    }
    return per_step + [Metric(k, float(v), now, 0) for k, v in finals.items() if v is not None]


def _write_artifacts(result: CompileResult, folder: Path) -> None:
    """Persona texts of every step, the critique that moved it, the diff against production, the record."""
    personas = folder / "personas"
    personas.mkdir()
    texts = {
        "initial.txt": result.initial_persona,
        "production.txt": result.production_persona,
        "candidate.txt": result.candidate_persona,
    }
    if result.gated_persona is not None:  # promoted and re-grounded: the text the gate scored
        texts["gated.txt"] = result.gated_persona
    for step in result.steps:
        texts[f"step_{step.iteration}.txt"] = step.persona
        if step.loss:
            texts[f"step_{step.iteration}_critique.txt"] = step.loss
        if step.updated_persona is not None:
            texts[f"step_{step.iteration}_updated.txt"] = step.updated_persona
    diff = "".join(
        difflib.unified_diff(
            result.production_persona.splitlines(keepends=True),
            result.candidate_persona.splitlines(keepends=True),
            "production",
            "candidate",
        )
    )
    texts["candidate_vs_production.diff"] = diff or "(no change)\n"
    for name, text in texts.items():
        (personas / name).write_text(redact(text), encoding="utf-8")
    (folder / "compile_result.json").write_text(redact(result.model_dump_json(indent=1)), encoding="utf-8")
