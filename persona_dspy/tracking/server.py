"""A local ``mlflow server`` / ``mlflow ui`` process on 127.0.0.1, for tests, benchmarks and the UI check.

The server proxies artifacts (``--serve-artifacts``, MLflow's default since 2.x): clients log them
through HTTP to ``--artifacts-destination``, so nothing is written next to the caller.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Self


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalMlflowServer:
    """``with LocalMlflowServer(folder) as server: server.uri`` — starts, waits for ``/health``, stops.

    ``folder`` holds ``mlflow.db``, ``artifacts/`` and ``server.log``. ``template_db`` (an already
    migrated sqlite file) is copied in first: a new store otherwise spends seconds in migrations.
    """

    def __init__(
        self,
        folder: Path,
        *,
        port: int | None = None,
        template_db: Path | None = None,
        command: str = "server",
        startup_timeout: float = 90.0,
    ) -> None:
        self.folder, self.port, self.template_db = Path(folder), port, template_db
        self.command, self.startup_timeout = command, startup_timeout
        self.process: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def db(self) -> Path:
        return self.folder / "mlflow.db"

    def start(self) -> Self:
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.template_db is not None and not self.db.exists():
            shutil.copyfile(self.template_db, self.db)
        self.port = self.port or free_port()
        env = {
            **os.environ,
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        }  # no job runner: persona_dspy submits no jobs
        args = [
            sys.executable,
            "-m",
            "mlflow",
            self.command,
            "--backend-store-uri",
            f"sqlite:///{self.db}",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        if self.command == "server":
            args += ["--workers", "1", "--artifacts-destination", str(self.folder / "artifacts")]
        self._log = open(self.folder / "server.log", "ab")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(
            args, stdout=self._log, stderr=subprocess.STDOUT, cwd=self.folder, env=env, start_new_session=True
        )
        return self

    def wait(self) -> Self:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"mlflow {self.command} exited; see {self.folder / 'server.log'}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(
            f"mlflow {self.command} not healthy after {self.startup_timeout:.0f} s; see {self.folder / 'server.log'}"
        )

    def stop(self) -> None:
        """Stop the server and its uvicorn workers (its own process group, started by ``start``)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()
        self.process = None

    def __enter__(self) -> Self:
        return self.start().wait()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def migrated_sqlite(path: Path) -> Path:
    """Create (once) an empty, fully migrated sqlite MLflow store at ``path``; returns it."""
    if not path.exists():
        from persona_dspy.compat.mlflow import migrate_sqlite

        path.parent.mkdir(parents=True, exist_ok=True)
        migrate_sqlite(path)
    return path
