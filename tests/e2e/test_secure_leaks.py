# ruff: noqa: F811 - the fixtures are imported by name
"""No secret leaks: every process of the secured pipeline, at debug log level, with known
passwords, and the password appears in no log, no metrics page, no error and no --help.

The known secrets are the stack's own (every password and token under .stack/secure/
secrets) and the wrong ones the refused runs are given. librdkafka's own debug output
(`debug=all`, configuration dump included) goes through the same logs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from pipeline.switch.simulator import FaultMix, jsonl_line
from tests.e2e.harness import CONFIG, Pipeline, offline_final, traffic
from tests.integration.secure_fixtures import (  # noqa: F401 - fixtures
    REPO_ROOT,
    SecureStack,
    secure_pipeline,
    secure_stack,
)
from tests.ports import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.secure]

WRONG_KAFKA = "Wrong-Kafka-Password-4711"  # noqa: S105 - a known wrong secret
WRONG_CLICKHOUSE = "Wrong-ClickHouse-Password-4711"  # noqa: S105


class Outputs:
    """Everything the processes printed, served or logged, to be searched for secrets."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.texts: dict[str, str] = {}

    def cli(self, stack: SecureStack, identity: str, name: str, *args: str,
            ok: bool = True, **env: str) -> subprocess.CompletedProcess[str]:
        clean = {k: v for k, v in os.environ.items() if not k.startswith("CDR_")}
        proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "-v", *args],
                              env={**clean, **stack.env(identity), **env}, cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=300, check=False)
        self.texts[name] = proc.stdout + proc.stderr
        assert (proc.returncode == 0) == ok, f"{name}: exit {proc.returncode}\n{proc.stderr}"
        return proc

    def fetch(self, name: str, url: str, token: str | None = None) -> str:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        deadline = time.monotonic() + 60
        while True:
            try:
                request = urllib.request.Request(url, headers=headers)
                with urllib.request.urlopen(request, timeout=30) as page:  # noqa: S310
                    text = page.read().decode("utf-8", "replace")
                    break
            except urllib.error.HTTPError as exc:
                text = exc.read().decode("utf-8", "replace")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)  # polling until the server listens, bounded by the deadline
        self.texts[name] = text
        return text

    def leaks(self, secrets: dict[str, str]) -> list[str]:
        texts = dict(self.texts)
        for path in self.folder.rglob("*.log"):
            texts[str(path.relative_to(self.folder))] = path.read_text("utf-8", "replace")
        return [f"{secret_name} in {where}" for where, text in texts.items()
                for secret_name, secret in secrets.items() if secret and secret in text]


def test_no_secret_in_any_log_metric_or_error(secure_stack: SecureStack,
                                              secure_pipeline: Pipeline, tmp_path: Path) -> None:
    pipeline = secure_pipeline
    out = Outputs(tmp_path)
    pipeline.cli_args = ("-v",)
    url = secure_stack.url()
    start_ms = int(time.time() * 1000) - 3_600_000
    items, config, _ = traffic(150, seed=31, faults=FaultMix(), start_ms=start_ms)
    events = tmp_path / "events.jsonl"
    events.write_text("".join(jsonl_line(i) for i in items), encoding="utf-8")
    expected = offline_final(items, config)

    # the pipeline's processes at debug level, librdkafka's debug output included
    worker_metrics, sink_metrics = free_port(), free_port()
    pipeline._spawn("worker", ["worker", "--config", str(CONFIG), "--app-id", pipeline.app_id,
                               "--data-dir", str(tmp_path / "faust"), "--faust-loglevel", "debug",
                               "--metrics-port", str(worker_metrics)])
    pipeline._spawn("sink", ["sink", "--config", str(CONFIG), "--group", f"{pipeline.prefix}sink",
                             "--clickhouse", url,
                             "--topic", f"{pipeline.prefix}cdrs", "--metrics-port",
                             str(sink_metrics), "--batch-seconds", "0.5"])
    prefix = {"CDR_KAFKA_TOPIC_PREFIX": pipeline.prefix}
    out.cli(secure_stack, "publisher", "publish", "publish", "--config", str(CONFIG),
            "--events", str(events), **prefix)
    out.cli(secure_stack, "publisher", "simulate", "simulate", "--config", str(CONFIG),
            "--calls", "5", "--seed", "32", "--bootstrap", secure_stack.kafka("publisher").bootstrap,
            "--topic", f"{pipeline.prefix}call-events", "--no-final-tick",
            "--producer-opt", "debug=all")
    want = {c: v.version for c, v in expected.items()}
    pipeline.wait_for(lambda: want.items() <= pipeline.stored_versions().items(), 300,
                      "the published calls' CDRs")
    out.fetch("worker /metrics", f"http://127.0.0.1:{worker_metrics}/metrics")
    out.fetch("sink /metrics", f"http://127.0.0.1:{sink_metrics}/metrics")

    # the ClickHouse side, each under its own user
    window = ["--from", str(start_ms - 3_600_000), "--to", str(start_ms + 6 * 3_600_000)]
    out.cli(secure_stack, "migrate", "db migrate", "db", "migrate", "--clickhouse", url)
    out.cli(secure_stack, "refresh", "dashboard refresh", "dashboard", "refresh",
            "--clickhouse", url)
    report = out.cli(secure_stack, "report", "report", "report", "--no-refresh",
                     "--clickhouse", url, *window, "--format", "json")
    assert json.loads(report.stdout)["panels"]["summary"]["total"]["attempts"] >= len(expected)
    out.cli(secure_stack, "rerate", "rerate", "rerate", "--config", str(CONFIG), "--source",
            "kafka", *window, "--workers", "2", "--no-progress", "--dry-run",
            CDR_CLICKHOUSE_URL=url, **prefix)
    _serve_and_fetch(secure_stack, out, url, tmp_path)

    # refused runs: their errors name the cause, never the secret they were given
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    (wrong / "kafka").write_text(WRONG_KAFKA, encoding="utf-8")
    (wrong / "ch").write_text(WRONG_CLICKHOUSE, encoding="utf-8")
    out.cli(secure_stack, "publisher", "publish (wrong password)", "publish", "--config",
            str(CONFIG), "--events", str(events), "--timeout", "20", ok=False,
            CDR_KAFKA_PASSWORD_FILE=str(wrong / "kafka"), **prefix)
    out.cli(secure_stack, "publisher", "publish (password in env)", "publish", "--config",
            str(CONFIG), "--events", str(events), "--timeout", "20", ok=False,
            CDR_KAFKA_PASSWORD_FILE="", CDR_KAFKA_PASSWORD=WRONG_KAFKA, **prefix)
    out.cli(secure_stack, "report", "report (wrong password)", "report", "--no-refresh",
            "--clickhouse", url, ok=False, CDR_CLICKHOUSE_PASSWORD_FILE=str(wrong / "ch"))
    out.cli(secure_stack, "sink", "sink (password with plaintext)", "sink", "--config",
            str(CONFIG), ok=False, CDR_KAFKA_SECURITY_PROTOCOL="PLAINTEXT")
    for command in ("worker", "sink", "publish", "rerate", "report", "dashboard", "db",
                    "simulate", "ingest"):
        out.cli(secure_stack, "sink", f"{command} --help", command, "--help")

    secrets = {**secure_stack.secrets(), "wrong kafka": WRONG_KAFKA,
               "wrong clickhouse": WRONG_CLICKHOUSE}
    assert len(out.texts) >= 15 and any(p.stat().st_size for p in tmp_path.glob("*.log"))
    assert "sasl.password" in "".join(out.texts.values()) + "".join(
        p.read_text("utf-8", "replace") for p in tmp_path.glob("*.log")), \
        "librdkafka's configuration dump (debug=all) was not in the logs: nothing was searched"
    assert out.leaks(secrets) == []


def _serve_and_fetch(stack: SecureStack, out: Outputs, url: str, tmp_path: Path) -> None:
    """The web dashboard and the HTTP ingest, at debug level: their pages and metrics."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CDR_")}
    dash_port, ingest_port = free_port(), free_port()
    token = Path(stack.env("dashboard")["CDR_DASHBOARD_TOKEN_FILE"]).read_text().strip()
    ingest_token = tmp_path / "ingest.token"
    ingest_token.write_text("ingest-token-0123456789abcdef", encoding="utf-8")
    servers = [
        subprocess.Popen([sys.executable, "-m", "pipeline.cli", "-v", "dashboard",
                          "--clickhouse", url, "--port", str(dash_port),
                          "--refresh-interval", "0", "--readers", "1"],
                         env={**clean, **stack.env("dashboard")}, cwd=REPO_ROOT,
                         stdout=(tmp_path / "dashboard.log").open("wb"),
                         stderr=subprocess.STDOUT),
        subprocess.Popen([sys.executable, "-m", "pipeline.cli", "-v", "ingest", "http",
                          "--config", str(CONFIG), "--port", str(ingest_port)],
                         env={**clean, **stack.env("ingest"),
                              "CDR_INGEST_HTTP_TOKEN_FILE": str(ingest_token)},
                         cwd=REPO_ROOT, stdout=(tmp_path / "ingest-http.log").open("wb"),
                         stderr=subprocess.STDOUT),
    ]
    try:
        out.fetch("dashboard /", f"http://127.0.0.1:{dash_port}/", token)
        out.fetch("dashboard /api/report", f"http://127.0.0.1:{dash_port}/api/report", token)
        out.fetch("dashboard refused", f"http://127.0.0.1:{dash_port}/api/report", "x" * 20)
        out.fetch("ingest /ready", f"http://127.0.0.1:{ingest_port}/ready")
        out.fetch("ingest /metrics", f"http://127.0.0.1:{ingest_port}/metrics")
    finally:
        for server in servers:
            server.terminate()
            server.wait(30)
