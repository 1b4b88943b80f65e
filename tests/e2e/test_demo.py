"""The README's first command, `cdr-pipeline demo`, runs as a user runs it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
EXE = Path(sys.executable).with_name("cdr-pipeline")


def test_demo_rates_every_call_and_reports(kafka_bootstrap: str, clickhouse_native: object) -> None:
    out = subprocess.run([str(EXE), "demo", "--calls", "400", "--bootstrap", kafka_bootstrap,
                          "--timeout", "300"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert re.search(r"equal to rate-file \(400 calls\)", out.stderr)
    totals = out.stdout.split("Totals", 1)[1].splitlines()[3]
    assert totals.split()[0] == "400"  # attempts: every call of this run, once
    for heading in ("ASR", "ACD", "billable min", "revenue USD", "at risk USD",
                    "Revenue at risk by decision reason", "Hangup sources and server reasons"):
        assert heading in out.stdout


def test_sip_demo_rates_every_sip_call_and_reports(
    kafka_bootstrap: str, clickhouse_native: object
) -> None:
    """`demo --sip`: real SIP calls through Kamailio; every call SIPp placed is rated."""
    out = subprocess.run([str(EXE), "demo", "--sip", "--bootstrap", kafka_bootstrap,
                          "--timeout", "300"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, (out.stdout[-2000:], out.stderr[-2000:])
    text = out.stdout + out.stderr
    assert re.search(r"equal to rate-file on the adapter's \d+ events \(15 calls\)", text), text
    totals = out.stdout.split("Totals", 1)[1].splitlines()[3]
    assert totals.split()[0] == "15"  # attempts: every SIP call of this run, once
    for case in ("route advance", "cut at max duration", "unknown source", "SKIPPED"):
        assert case in out.stdout
