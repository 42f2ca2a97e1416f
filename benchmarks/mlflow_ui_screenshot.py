"""Check with a real browser that a person sees a user's persona versions and aliases in MLflow's UI.

    python benchmarks/mlflow_ui_screenshot.py [--out docs/mlflow_prompts.png]

Builds a demo store (three compiles of one demo user: v1 promoted, v2 kept as candidate, v3
promoted; hand-made results, no LM), starts ``mlflow ui`` on 127.0.0.1, opens the user's prompt
page (``/#/prompts/<prompt name>``) in headless Debian Chromium (installed with apt-get if
missing) and saves screenshots of it and of the experiment's runs.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import persona_dspy  # noqa: F401  (environment guards before mlflow is imported)
from persona_dspy import Settings
from persona_dspy.results import CompileResult, Step
from persona_dspy.tracking import Tracking, prompt_name
from persona_dspy.tracking.server import LocalMlflowServer

DEMO_USER = "demo-user-1"
PERSONAS = [
    ("You answer as user 1: a generous rater who loves comedies.", True),
    ("You answer as user 1: rates comedies 4-5 stars, dramas 2-3; always answers with one number.", False),
    ("You answer as user 1: a harsh critic of dramas (1-2 stars) who still rates comedies 4 stars.", True),
]


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    subprocess.run(["apt-get", "update"], check=True)
    subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "chromium"], check=True)
    return shutil.which("chromium") or sys.exit("chromium is still missing after apt-get install")


def demo_store(folder: Path) -> Path:
    tracking = Tracking(Settings(state_dir=folder), tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")
    production = "You are a helpful assistant."
    for i, (text, promoted) in enumerate(PERSONAS, start=1):
        tracking.record(
            CompileResult(
                user_id=DEMO_USER,
                params={"n_recent": 3, "iterations": 2},
                initial_persona=production,
                candidate_persona=text,
                production_persona=production,
                promoted=promoted,
                reason=f"compile {i}: candidate {'not worse' if promoted else 'worse'} than production on 2 held-back",
                lm_calls=9,
                tokens=5200,
                wall_time=80.0 + i,
                data_watermark=1.7e9 + i,
                val_ids=["a", "b"],
                val_score_production=0.55,
                val_score_candidate=0.6 if promoted else 0.4,
                steps=[Step(iteration=1, persona=production, train_score=0.3, predictions=["4.0"], loss="too high")],
            )
        )
        production = text if promoted else production
    return folder / "mlflow.db"


def screenshot(browser: str, url: str, out: Path, profile: Path, budget_ms: int) -> None:
    subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--hide-scrollbars",
            f"--screenshot={out}",
            "--window-size=1400,900",
            f"--virtual-time-budget={budget_ms}",
            url,
        ],
        check=True,
        timeout=180,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/mlflow_prompts.png"))
    parser.add_argument("--runs-out", type=Path, default=Path("docs/mlflow_runs.png"))
    parser.add_argument("--budget-ms", type=int, default=20000, help="virtual time the page gets to render")
    args = parser.parse_args(argv)
    browser = chromium()
    with tempfile.TemporaryDirectory(prefix="persona_dspy_ui_") as tmp:
        root = Path(tmp)
        demo_store(root / "store")
        ui = LocalMlflowServer(root / "store", command="ui", template_db=None)
        with ui:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            prompt_url = f"{ui.uri}/#/prompts/{prompt_name(DEMO_USER)}"
            screenshot(browser, prompt_url, args.out.resolve(), root / "profile-1", args.budget_ms)
            runs_url = f"{ui.uri}/#/experiments/1/runs"
            screenshot(browser, runs_url, args.runs_out.resolve(), root / "profile-2", args.budget_ms)
    print(f"{prompt_url}\n  -> {args.out}\n{runs_url}\n  -> {args.runs_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
