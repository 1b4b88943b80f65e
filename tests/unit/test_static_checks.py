"""The package type-checks under mypy's strict mode and lints clean under ruff
(pyproject.toml [tool.mypy], [tool.ruff]), so a type error or a lint finding in
pipeline/ fails the suite rather than waiting for someone to run the tools by hand."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, check=False)


def test_pipeline_type_checks_strictly(tmp_path: Path) -> None:
    done = _run("mypy", "--cache-dir", str(tmp_path / "mypy"), "pipeline")
    assert done.returncode == 0, done.stdout + done.stderr


def test_pipeline_lints_clean() -> None:
    done = _run("ruff", "check", "--no-cache", "pipeline")
    assert done.returncode == 0, done.stdout + done.stderr
