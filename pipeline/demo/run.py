"""`cdr-pipeline demo`: traffic in, rated CDRs in ClickHouse, a report out.

Runs the real processes against the local stack: the simulator publishes a
cluster's call events to Kafka, a correlator worker and a sink run as
subprocesses, and the demo waits until every call's newest CDR is in ClickHouse
and equals what `rate-file` computes from the same events. Each run uses its
own topics (prefix demo-<run>-) and call ids, and deletes its topics at the end;
the CDRs stay in ClickHouse. With `--identities` it runs on the secured stack
(deploy/local/demo.sh --secure; pipeline/demo/common.py, docs/security.md).
"""

from __future__ import annotations

import argparse
import io
import logging
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.demo.common import (
    ROOT,
    prepare_run,
    remove_topics,
    start_processes,
    stop_processes,
    stored_versions,
)
from pipeline.errors import PipelineError

log = logging.getLogger(__name__)
DEFAULT_CONFIG = ROOT / "deploy" / "demo" / "demo.toml"


@dataclass
class Expected:
    versions: dict[str, int]  # call_id -> newest version
    jsonl: Path


def _expected(items: list[Any], config: Any, workdir: Path) -> Expected:
    from pipeline.core.summary import newest_versions
    from pipeline.offline.rate_file import rate_lines
    from pipeline.switch.simulator import jsonl_line, write_jsonl

    path = workdir / "events.jsonl"
    write_jsonl(items, path)
    lines = io.StringIO("".join(jsonl_line(i) for i in items))
    final = newest_versions(rate_lines(lines, config))
    return Expected({cid: cdr.version for cid, cdr in final.items()}, path)


def _wait_for_cdrs(backend: Any, database: str, call_prefix: str, expected: Expected,
                   procs: list[subprocess.Popen[bytes]], timeout_s: float) -> float:
    started = time.monotonic()
    stored: dict[str, int] = {}
    while time.monotonic() - started < timeout_s:
        stored = stored_versions(backend, database, call_prefix)
        if stored == expected.versions:
            return time.monotonic() - started
        for proc in procs:
            if proc.poll() is not None:
                command = proc.args[3] if isinstance(proc.args, list) else proc.args
                raise PipelineError(f"{command!s} exited with code {proc.returncode}; see its log")
        time.sleep(0.5)  # polling ClickHouse for a condition, bounded by timeout_s
    missing = len(set(expected.versions) - set(stored))
    behind = sum(1 for c, v in expected.versions.items() if c in stored and stored[c] != v)
    raise PipelineError(
        f"timed out after {timeout_s:.0f} s: {missing} calls missing, {behind} at another version"
    )


def _run(args: argparse.Namespace) -> int:
    if args.sip:  # real SIP calls through Kamailio instead of the simulator
        from pipeline.demo.sip import run_sip_demo

        return run_sip_demo(args, DEFAULT_CONFIG)
    from pipeline.dashboard.report import Filters, build_report, format_report
    from pipeline.switch.publisher import SwitchPublisher
    from pipeline.switch.simulator import FaultMix, SimStats, generate, publish

    demo = prepare_run(args, "demo")
    config, url, run, prefix, workdir = demo.config, demo.url, demo.run, demo.prefix, demo.workdir
    backend, database = demo.backend, demo.database

    stats = SimStats()
    seed = int(run)
    items = list(generate(config, calls=args.calls, switches=args.switches, rate_cps=args.rate_cps,
                          seed=seed, start_ms=int(time.time() * 1000) - 3_600_000,
                          faults=FaultMix.parse(args.faults) if args.faults else FaultMix(),
                          stats=stats))
    expected = _expected(items, config, workdir)
    print(f"demo {run}: {args.calls} calls, {len(items)} records from {args.switches} switches; "
          f"faults: {stats.faults_text()}", file=sys.stderr)
    procs = start_processes(args, prefix, url, workdir, app_id=demo.app_id,
                            sink_group=demo.sink_group)
    try:
        t0 = time.monotonic()
        with SwitchPublisher(demo.publisher, f"{prefix}call-events") as publisher:
            publish(items, publisher, pace=args.pace)
        published = time.monotonic() - t0
        waited = _wait_for_cdrs(backend, database, f"{seed}-", expected, procs, args.timeout)
    finally:
        stop_processes(procs)
        remove_topics(demo)
    print(f"published in {published:.1f} s; every call's CDR in ClickHouse {waited:.1f} s later, "
          f"equal to rate-file ({len(expected.versions)} calls). Logs and events: {workdir}",
          file=sys.stderr)
    print(format_report(build_report(backend, database, Filters(call_id_prefix=f"{seed}-"))))
    backend.close()
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("demo",
                       help="run the whole pipeline on simulated traffic and print a report",
                       description=__doc__)
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="billing + runtime TOML")
    p.add_argument("--calls", type=int, default=3000, help="calls to simulate (default 3000)")
    p.add_argument("--switches", type=int, default=4, help="switch nodes (default 4)")
    p.add_argument("--rate-cps", type=float, default=50.0,
                   help="simulated call rate (calls/s of event time)")
    p.add_argument("--pace", type=float,
                   help="publish at this many calls per real second (default: flat out)")
    p.add_argument("--faults",
                   help="fault mix, e.g. dup=0.02,reorder=0.03 (default: the simulator's)")
    p.add_argument("--bootstrap", help="Kafka bootstrap (default from config)")
    p.add_argument("--clickhouse", metavar="URL", help="ClickHouse URL (default from config)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the CDRs")
    p.add_argument("--identities", type=Path, metavar="DIR",
                   help="run on the secured stack, each part under its own identity from "
                        "DIR/<part>.env (deploy/local/secure.sh up makes .stack/secure/"
                        "identities; docs/security.md)")
    p.add_argument("--sip", action="store_true",
                   help="real SIP calls (SIPp) through a Kamailio switch node and the switch "
                        "adapter instead of the simulator (default config: "
                        "deploy/kamailio/pipeline.toml); see pipeline/demo/sip.py")
    p.set_defaults(handler=_run)
