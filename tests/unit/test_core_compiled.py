"""The mypyc build of the billing core against its pure-Python sources: the same CDRs,
byte for byte, on the worked example and on simulated traffic with faults.

Both run as `rate-file` in a child process, one with CDR_PURE_CORE=1 (see
pipeline/core/__init__.py). Without a current build (deploy/local/bootstrap.sh --dev
makes it) there is nothing to compare and the test is skipped, saying so."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import pipeline.core
from tests.paths import EXAMPLE

pytestmark = pytest.mark.skipif(
    not pipeline.core.COMPILED,
    reason="no current mypyc build of the core (deploy/local/bootstrap.sh --dev builds it)",
)


def _rate_file(events: Path, out: Path, pure: bool) -> str:
    env = {k: v for k, v in os.environ.items() if k != "CDR_PURE_CORE"}
    if pure:
        env["CDR_PURE_CORE"] = "1"
    code = (
        "import sys, pipeline.core, pipeline.core.correlator as c\n"
        "print(pipeline.core.COMPILED, c.__file__.endswith('.py'))\n"
        "from pipeline.cli import main\n"
        f"sys.exit(main(['rate-file', '--config', {str(EXAMPLE / 'config.toml')!r}, "
        f"'--events', {str(events)!r}, '--out', {str(out)!r}, "
        f"'--rejects', {str(out) + '.rejects'!r}]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, check=True)
    return done.stdout.splitlines()[0]


def _both(events: Path, tmp_path: Path) -> tuple[bytes, bytes]:
    compiled, pure = tmp_path / "compiled.jsonl", tmp_path / "pure.jsonl"
    assert _rate_file(events, compiled, pure=False) == "True False"
    assert _rate_file(events, pure, pure=True) == "False True"
    assert (Path(f"{compiled}.rejects").read_bytes() == Path(f"{pure}.rejects").read_bytes())
    return compiled.read_bytes(), pure.read_bytes()


def test_the_worked_example_gives_the_same_bytes(tmp_path: Path) -> None:
    compiled, pure = _both(EXAMPLE / "events.jsonl", tmp_path)
    assert compiled == pure and compiled.count(b"\n") > 10


def test_simulated_traffic_gives_the_same_bytes(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "simulate", "--config",
         str(EXAMPLE / "config.toml"), "--calls", "3000", "--seed", "17",
         "--start-ms", "1764000000000", "--faults",
         "dup=0.05,reorder=0.05,missing_setup=0.03,missing_answer=0.03,"
         "missing_hangup=0.03,second_hangup=0.03", "--jsonl", str(events)],
        check=True, capture_output=True,
    )
    compiled, pure = _both(events, tmp_path)
    assert compiled == pure and compiled.count(b"\n") >= 3000
