"""Tracking: every compile is an MLflow run, every persona version is in the prompt registry.

Order of writes for one compile: run (params, metrics, persona texts and diff, in few batched
calls) -> registered version with alias ``candidate`` -> alias ``production`` only if the gate
passed. A store failure raises ``TrackingUnavailableError`` before ``production`` moves.
"""

from __future__ import annotations

import difflib
import getpass
import json
import re
import threading
import time
from contextlib import contextmanager
from collections.abc import Iterator
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from persona_dspy.config import Settings
from persona_dspy.errors import PersonaNotFoundError, TrackingUnavailableError
from persona_dspy.results import CompileResult
from persona_dspy.tracking.registry import CANDIDATE, PRODUCTION, PersonaRegistry, PersonaVersion, prompt_name

_STORE_ERRORS = (MlflowException, OSError, ConnectionError)


_CREDENTIALS = re.compile(r"://[^/@\s]+@")


def _redact_uri(text: str) -> str:
    """Drop credentials (``user:password@``) from any URI in ``text`` before it is shown or logged."""
    return _CREDENTIALS.sub("://***@", text)


class Tracking:
    """One MLflow experiment per project; runs, persona registry, rollback. Thread-safe; no I/O in ``__init__``."""

    def __init__(self, settings: Settings | None = None, *, tracking_uri: str | None = None,
                 experiment: str | None = None) -> None:
        self.settings = settings or Settings()
        self.tracking_uri = tracking_uri or self.settings.tracking_uri
        self.experiment = experiment or self.settings.experiment
        self._client: MlflowClient | None = None
        self._experiment_id: str | None = None
        self._lock = threading.Lock()

    # -- connection ---------------------------------------------------------------------------
    @contextmanager
    def _store(self, doing: str) -> Iterator[MlflowClient]:
        try:
            yield self.client
        except (PersonaNotFoundError, TrackingUnavailableError):
            raise
        except _STORE_ERRORS as exc:
            raise TrackingUnavailableError(
                f"MLflow store {_redact_uri(self.tracking_uri)} failed while {doing}: {type(exc).__name__}: "
                f"{_redact_uri(str(exc).splitlines()[0][:200]) if str(exc) else ''}. No persona alias was moved. Check that the "
                "tracking server is up (or the sqlite path is writable) and retry; set "
                "PERSONA_DSPY_MLFLOW_TRACKING_URI to change stores.") from exc

    @property
    def client(self) -> MlflowClient:
        with self._lock:
            if self._client is None:
                if self.tracking_uri.startswith("sqlite:///"):
                    Path(self.tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
                self._client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
            return self._client

    @property
    def registry(self) -> PersonaRegistry:
        return PersonaRegistry(self.client)

    def experiment_id(self) -> str:
        with self._lock:
            cached = self._experiment_id
        if cached:
            return cached
        with self._store("opening the experiment") as client:
            exp = client.get_experiment_by_name(self.experiment)
            if exp is None:
                try:
                    exp_id = client.create_experiment(self.experiment)
                except MlflowException:  # created concurrently by another worker
                    exp_id = client.get_experiment_by_name(self.experiment).experiment_id
            else:
                exp_id = exp.experiment_id
        with self._lock:
            self._experiment_id = exp_id
        return exp_id

    # -- personas -----------------------------------------------------------------------------
    def production_persona(self, user_id: str) -> str | None:
        with self._store("reading the production persona"):
            version = self.registry.get(user_id, PRODUCTION)
        return version.text if version else None

    def load_persona(self, user_id: str, alias_or_version: str | int = PRODUCTION) -> PersonaVersion:
        with self._store("loading a persona"):
            version = self.registry.get(user_id, alias_or_version)
        if version is None:
            raise PersonaNotFoundError(f"user {user_id!r} has no persona {alias_or_version!r} in "
                                       f"{_redact_uri(self.tracking_uri)}; compile one first (persona-dspy demo / compile).")
        return version

    def history(self, user_id: str) -> list[PersonaVersion]:
        with self._store("listing persona versions"):
            return self.registry.history(user_id)

    def rollback(self, user_id: str, to_version: int | None = None, *, reason: str = "") -> PersonaVersion:
        """Move ``production`` to ``to_version`` (default: the production before the current one)."""
        with self._store("rolling back"):
            versions = self.registry.history(user_id)
            if not versions:
                raise PersonaNotFoundError(f"user {user_id!r} has no persona versions; nothing to roll back")
            current = next((v for v in versions if PRODUCTION in v.aliases), None)
            if to_version is None:
                earlier = [v for v in versions if v.tags.get("promoted") == "true"
                           and (current is None or v.version < current.version)]
                if not earlier:
                    raise PersonaNotFoundError(f"user {user_id!r} has no earlier production persona to roll back to; "
                                               "pass --to VERSION")
                to_version = earlier[-1].version
            self.registry.promote(user_id, to_version)
            name = prompt_name(user_id)
            self.client.set_prompt_version_tag(name, to_version, "rolled_back_by", getpass.getuser())
            self.client.set_prompt_version_tag(name, to_version, "rollback_reason", reason or "manual rollback")
            self.client.set_prompt_version_tag(name, to_version, "rolled_back_at", str(int(time.time())))
            return self.registry.get(user_id, to_version)

    # -- runs ---------------------------------------------------------------------------------
    def record(self, result: CompileResult) -> int:
        """Log the compile as a run, register its candidate, and promote it if the gate passed."""
        exp_id = self.experiment_id()
        with self._store("logging the compile run") as client:
            run = client.create_run(exp_id, run_name=f"{result.optimizer}:{result.user_id}", tags={
                "user_id": result.user_id, "optimizer": result.optimizer, "promoted": str(result.promoted).lower(),
                "data_watermark": str(result.data_watermark), "persona_prompt": prompt_name(result.user_id)})
            run_id = run.info.run_id
            now = int(time.time() * 1000)
            metrics = [Metric("train_score", s.train_score, now, s.iteration) for s in result.steps]
            metrics += [Metric("loss_chars", len(s.loss), now, s.iteration) for s in result.steps]
            finals = {"lm_calls": result.lm_calls, "tokens": result.tokens, "wall_time_s": result.wall_time,
                      "val_score_production": result.val_score_production,
                      "val_score_candidate": result.val_score_candidate, "promoted": float(result.promoted)}
            metrics += [Metric(k, float(v), now, 0) for k, v in finals.items() if v is not None]
            params = [Param(k, str(v)) for k, v in result.params.items()]
            client.log_batch(run_id, metrics=metrics, params=params,
                             tags=[RunTag("gate", result.reason[:5000])])
            for step in result.steps:
                client.log_text(run_id, step.persona, f"personas/step_{step.iteration}.txt")
            diff = "".join(difflib.unified_diff(result.production_persona.splitlines(keepends=True),
                                                result.candidate_persona.splitlines(keepends=True),
                                                "production", "candidate"))
            client.log_text(run_id, result.candidate_persona, "personas/candidate.txt")
            client.log_text(run_id, diff or "(no change)\n", "personas/candidate_vs_production.diff")
            client.log_text(run_id, json.dumps(result.model_dump(), indent=1), "compile_result.json")
            version = self.registry.register(result.user_id, result.candidate_persona, commit_message=result.reason[:500]
                                             or f"{result.optimizer} compile", tags={
                "run_id": run_id, "promoted": str(result.promoted).lower(),
                "val_score_candidate": str(result.val_score_candidate),
                "val_score_production": str(result.val_score_production)})
            client.set_tag(run_id, "persona_version", str(version.version))
            if result.promoted:
                self.registry.promote(result.user_id, version.version)
            client.set_terminated(run_id, "FINISHED")
        return version.version

    def forget(self, user_id: str) -> dict[str, int]:
        """Delete the user's persona versions and runs; returns counts."""
        exp_id = self.experiment_id()
        with self._store("forgetting a user") as client:
            runs = client.search_runs([exp_id], filter_string=f"tags.user_id = '{user_id}'", max_results=10000)
            for run in runs:
                client.delete_run(run.info.run_id)
            return {"persona_versions": self.registry.forget(user_id), "runs": len(runs)}


__all__ = ["Tracking", "CANDIDATE", "PRODUCTION"]
