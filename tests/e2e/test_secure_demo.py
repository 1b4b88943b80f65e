# ruff: noqa: F811 - the fixtures are imported by name
"""`deploy/local/demo.sh --secure --sip`: real SIP calls through Kamailio on the secured
stack, the adapter publishing as `ingest`, the worker, the sink and the report each as
themselves (pipeline/demo/sip.py, pipeline/demo/common.py): every call SIPp placed is
rated, equal to `rate-file` on the adapter's events, which the demo reads back as
`rerate`."""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.integration.secure_fixtures import (  # noqa: F401 - fixtures
    REPO_ROOT,
    SecureStack,
    secure_stack,
)

pytestmark = [pytest.mark.e2e, pytest.mark.secure]


def test_the_sip_demo_runs_on_the_secured_stack(secure_stack: SecureStack) -> None:
    out = subprocess.run([str(REPO_ROOT / "deploy" / "local" / "demo.sh"), "--secure", "--sip",
                          "--timeout", "120"], capture_output=True, text=True, timeout=600,
                         cwd=REPO_ROOT, stdin=subprocess.DEVNULL, check=False)
    assert out.returncode == 0, (out.stdout[-2000:], out.stderr[-3000:])
    assert re.search(r"equal to rate-file on the adapter's \d+ events \(15 calls\)", out.stderr)
    totals = out.stdout.split("Totals", 1)[1].splitlines()[3]
    assert totals.split()[0] == "15"  # attempts: every SIP call of this run, once
    for case in ("route advance", "cut at max duration", "unknown source", "SKIPPED"):
        assert case in out.stdout
    # the CDRs are in the deployment's database, under this run's Call-IDs
    run = re.search(r"sip demo (\d+):", out.stderr)
    assert run, out.stderr
    backend = secure_stack.backend("report", "cdr")
    try:
        rows = backend.execute("SELECT uniqExact(call_id) FROM cdr.cdr "
                               "WHERE startsWith(call_id, {p:String})",
                               {"p": f"sipdemo-{run.group(1)}-"})
    finally:
        backend.close()
    assert rows == [(15,)]
