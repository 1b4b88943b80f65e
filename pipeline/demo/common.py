"""What both demos share (`demo` and `demo --sip`): the run's names, topics and
database (`prepare_run`), the worker and sink subprocesses, and the stored CDR
versions they wait for.

With `--identities DIR` (deploy/local/secure.sh makes DIR: .stack/secure/identities)
the demo runs on the secured stack, each part under its own identity: topics checked
as `admin`, the schema migrated as `migrate`, events published as `publisher` (the SIP
demo: by the Kamailio adapter as `ingest`, read back as `rerate`), the worker as
`worker`, the sink as `sink`, the CDRs read and reported as `report`. There the topics,
ACLs and consumer groups are the deployment's own (no topic prefix, worker
cdr-correlator, sink cdr-sink): they outlive the run, and the run's calls are told apart
by their call ids. DIR may be either secured Kafka's (.stack/secure/identities or
identities-cluster): the identities say where it is."""

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

from pipeline.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def app_id_for(prefix: str) -> str:
    return f"{prefix}correlator"


def identity_env(identities: Path | None, name: str) -> dict[str, str]:
    """The environment of component `name`: this process's, plus the CDR_* settings of
    its identity file DIR/name.env when running on the secured stack."""
    from pipeline.runtime.settings import read_env_file

    env = dict(os.environ)
    if identities is not None:
        path = identities / f"{name}.env"
        if not path.is_file():
            raise ConfigError(f"--identities: {path} missing (deploy/local/secure.sh up makes it)")
        env.update(read_env_file(path))
    return env


def component_settings(args: argparse.Namespace, name: str) -> Any:
    """The runtime settings component `name` runs with (see identity_env)."""
    from pipeline.runtime.settings import load_settings

    return load_settings(args.config, env=identity_env(getattr(args, "identities", None), name))


def process_env(args: argparse.Namespace, name: str, prefix: str) -> dict[str, str]:
    """The environment of the run's subprocess `name` (worker, sink, ingest): its
    identity's on the secured stack, the run's topic prefix, and off it the run's
    bootstrap (on it the identity says where Kafka is)."""
    identities = getattr(args, "identities", None)
    env = identity_env(identities, name)
    env["CDR_KAFKA_TOPIC_PREFIX"] = prefix
    if identities is None:
        env["CDR_KAFKA_BOOTSTRAP"] = args.bootstrap
    return env


def start_processes(args: argparse.Namespace, prefix: str, url: str, workdir: Path, *,
                    app_id: str | None = None,
                    sink_group: str | None = None) -> list[subprocess.Popen[bytes]]:
    exe = [sys.executable, "-m", "pipeline.cli"]
    worker = [*exe, "worker", "--config", str(args.config),
              "--app-id", app_id or app_id_for(prefix), "--data-dir", str(workdir / "worker")]
    sink = [*exe, "sink", "--config", str(args.config), "--group", sink_group or f"{prefix}sink",
            "--clickhouse", url, "--topic", f"{prefix}cdrs"]
    procs = []
    for name, cmd in (("worker", worker), ("sink", sink)):
        handle = (workdir / f"{name}.log").open("wb")
        procs.append(subprocess.Popen(cmd, env=process_env(args, name, prefix), stdout=handle,
                                      stderr=subprocess.STDOUT, cwd=ROOT))
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
    """One demo run's own names and connections: topics demo-<run>-..., out/<kind>-<run>/
    (on the secured stack: the deployment's topics, see the module)."""

    config: Any  # BillingConfig
    url: str
    run: str
    prefix: str  # of the run's topics: "" on the secured stack
    workdir: Path
    backend: Any  # reads the CDRs (as `report` on the secured stack)
    database: str
    specs: list[Any]  # the run's TopicSpecs
    admin: Any  # KafkaSettings that create and delete topics
    publisher: Any  # KafkaSettings that publish the events
    app_id: str
    sink_group: str
    owns_topics: bool = True  # False: the deployment's topics, left alone at the end
    tag: str = ""  # <kind>-<run>-: the run's name as a prefix (of the SIP demo's Call-IDs)


def prepare_run(args: argparse.Namespace, kind: str) -> DemoRun:
    """Load the config, name the run, open ClickHouse (schema migrated) and create the
    run's topics; fills in args.bootstrap from the config when not given."""
    from pipeline.core.config import load_config
    from pipeline.kafka.admin import default_topic_specs, ensure_topics
    from pipeline.runtime.settings import replace
    from pipeline.storage.migrate import migrate
    from pipeline.storage.url import open_clickhouse

    secured = getattr(args, "identities", None) is not None
    config = load_config(args.config)
    admin = component_settings(args, "admin").kafka
    publisher = component_settings(args, "publisher").kafka
    args.bootstrap = args.bootstrap or admin.bootstrap
    if not secured:
        admin = replace(admin, bootstrap=args.bootstrap)
        publisher = replace(publisher, bootstrap=args.bootstrap)
    ddl = component_settings(args, "migrate").clickhouse
    url = args.clickhouse or ddl.url
    run = time.strftime("%Y%m%d%H%M%S", time.gmtime())
    tag = f"{kind}-{run}-"
    prefix = "" if secured else tag
    workdir = ROOT / "out" / f"{kind}-{run}"
    workdir.mkdir(parents=True, exist_ok=True)
    backend, database = open_clickhouse(ddl, url)
    try:
        migrate(backend, database, cluster=ddl.cluster or None)
    finally:
        if secured:
            backend.close()
    if secured:
        backend, _ = open_clickhouse(component_settings(args, "report").clickhouse, url)
    specs = default_topic_specs(prefix, admin.partitions, admin.replication_factor)
    ensure_topics(admin, specs)
    app_id, sink_group = ("cdr-correlator", "cdr-sink") if secured else (
        app_id_for(prefix), f"{prefix}sink")
    return DemoRun(config, url, run, prefix, workdir, backend, database, list(specs), admin,
                   publisher, app_id, sink_group, owns_topics=not secured, tag=tag)


def remove_topics(demo: DemoRun) -> None:
    """Delete the run's own topics (and the worker's); the deployment's are kept."""
    from pipeline.kafka.admin import delete_topics, worker_topics

    if demo.owns_topics:
        delete_topics(demo.admin, [s.name for s in demo.specs] + worker_topics(demo.app_id))
