"""What both demos share (`demo` and `demo --sip`): the run's names, topics and
database (`prepare_run`), the worker and sink subprocesses, and the stored CDR
versions they wait for."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def app_id_for(prefix: str) -> str:
    return f"{prefix}correlator"


def start_processes(args: argparse.Namespace, prefix: str, url: str,
               workdir: Path) -> list[subprocess.Popen[bytes]]:
    env = dict(os.environ, CDR_KAFKA_TOPIC_PREFIX=prefix, CDR_KAFKA_BOOTSTRAP=args.bootstrap)
    exe = [sys.executable, "-m", "pipeline.cli"]
    worker = [*exe, "worker", "--config", str(args.config), "--app-id", app_id_for(prefix),
              "--data-dir", str(workdir / "worker")]
    sink = [*exe, "sink", "--config", str(args.config), "--group", f"{prefix}sink",
            "--clickhouse", url, "--topic", f"{prefix}cdrs"]
    procs = []
    for name, cmd in (("worker", worker), ("sink", sink)):
        handle = (workdir / f"{name}.log").open("wb")
        procs.append(subprocess.Popen(cmd, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                      cwd=ROOT))
    return procs


def stop_processes(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def stored_versions(backend: Any, database: str, call_prefix: str) -> dict[str, int]:
    rows = backend.execute(
        f"SELECT call_id, max(version) FROM {database}.cdr WHERE startsWith(call_id, {{p:String}}) "
        "GROUP BY call_id",
        {"p": call_prefix},
    )
    return {str(cid): int(version) for cid, version in rows}


@dataclass
class DemoRun:
    """One demo run's own names and connections: topics demo-<run>-..., out/<kind>-<run>/."""

    config: Any  # BillingConfig
    url: str
    run: str
    prefix: str
    workdir: Path
    backend: Any
    database: str
    specs: list[Any]  # the run's TopicSpecs


def prepare_run(args: argparse.Namespace, kind: str) -> DemoRun:
    """Load the config, name the run, open ClickHouse (schema migrated) and create the
    run's topics; fills in args.bootstrap from the config when not given."""
    from pipeline.core.config import load_config
    from pipeline.kafka.admin import default_topic_specs, ensure_topics
    from pipeline.runtime.settings import load_settings
    from pipeline.storage.migrate import migrate
    from pipeline.storage.url import open_backend

    config = load_config(args.config)
    settings = load_settings(args.config)
    args.bootstrap = args.bootstrap or settings.kafka.bootstrap
    url = args.clickhouse or settings.clickhouse.url
    run = time.strftime("%Y%m%d%H%M%S", time.gmtime())
    prefix = f"{kind}-{run}-"
    workdir = ROOT / "out" / f"{kind}-{run}"
    workdir.mkdir(parents=True, exist_ok=True)
    backend, database = open_backend(url)
    migrate(backend, database)
    specs = default_topic_specs(prefix, settings.kafka.partitions, 1)
    ensure_topics(args.bootstrap, specs)
    return DemoRun(config, url, run, prefix, workdir, backend, database, list(specs))
