"""SIP benchmark: SIPp at a steady call rate through Kamailio into ClickHouse (not a test).

    .venv/bin/python bench/sip_bench.py [--rate 200] [--seconds 60] [--hold-ms 1000]
        [--children 2] [--shm-mb 256] [--sink-batch-seconds 0.5]

SIPp places answered calls (the caller hangs up after --hold-ms) through the project's
Kamailio switch node (pipeline/sip/node.py, default timers) -> `cdr-pipeline ingest
kamailio` -> worker -> sink -> ClickHouse, each process on its own topic prefix,
consumer groups and database (deleted at the end). Prints:

  * calls/s SIPp placed and how it counted them (successful, failed), and whether a
    call was lost: SIPp's Call-IDs (N-pid@127.0.0.1, N = 1..calls created) against the
    call ids in ClickHouse;
  * the adapter's CPU per 1,000 events it published (/proc of the adapter process
    over the traffic, divided by cdr_ingest_events_published_total);
  * p50/p99 from the BYE to the CDR queryable in ClickHouse: the BYE's time is the
    CDR's end_ts_ms (Kamailio's timestamp of the hangup; same machine, same clock),
    queryable is when the poller, every POLL_S, first sees the call's row (resolution
    POLL_S, the figures err on the high side by up to that);
  * the CPU each part used while SIPp placed calls, in cores (2 on the reference
    machine): Kamailio, the SIPp caller and gateways, adapter, worker, sink, broker,
    ClickHouse and this process.

Needs the local stack (deploy/local/stack.sh up) and Kamailio + SIPp
(deploy/local/kamailio.sh install).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stream_bench import (  # noqa: E402
    _poll_stored,
    _servers,
    _wait_assigned,
    _wait_quiet,
    pids_matching,
    proc_cpu_s,
)

from pipeline.demo.sip import stop_process, wait_ready  # noqa: E402
from pipeline.kafka.admin import (  # noqa: E402
    default_topic_specs,
    delete_topics,
    ensure_topics,
    worker_topics,  # noqa: E402
)
from pipeline.sip.node import NodeSettings, SwitchNode, free_ports, start_node  # noqa: E402
from pipeline.sip.traffic import CallSpec, UacRun, start_calls  # noqa: E402
from pipeline.storage.migrate import migrate  # noqa: E402
from pipeline.storage.url import open_backend  # noqa: E402

CONFIG = ROOT / "deploy" / "kamailio" / "pipeline.toml"
BOOTSTRAP = os.environ.get("CDR_KAFKA_BOOTSTRAP", "127.0.0.1:19092")
CH_URL = "native://127.0.0.1:19000/"
PARTITIONS = 3
POLL_S = 0.1  # stream_bench's poller interval: the latency resolution


def _spawn(args: list[str], prefix: str, log: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, CDR_KAFKA_TOPIC_PREFIX=prefix, CDR_KAFKA_BOOTSTRAP=BOOTSTRAP,
               CDR_KAFKA_PARTITIONS=str(PARTITIONS))
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "pipeline.cli", *args], env=env, cwd=ROOT,
                                stdout=out, stderr=subprocess.STDOUT)


def _cpu(parts: dict[str, list[int]]) -> dict[str, float]:
    return {name: sum(proc_cpu_s(p) for p in pids) for name, pids in parts.items()}


def _metric(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and not line.startswith("#"))


def _pct(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(len(values) * q))]


def run(args: argparse.Namespace) -> None:
    tag = uuid.uuid4().hex[:6]
    prefix, database = f"sipbench{tag}-", f"sipbench{tag}"
    workdir = ROOT / "out" / f"sipbench-{tag}"
    workdir.mkdir(parents=True, exist_ok=True)
    specs = default_topic_specs(prefix, PARTITIONS, 1)
    ensure_topics(BOOTSTRAP, specs)
    backend, _ = open_backend(CH_URL + "default")
    migrate(backend, database)
    node: SwitchNode | None = None
    procs: list[subprocess.Popen[bytes]] = []
    uac: UacRun | None = None
    stop = threading.Event()
    poller: threading.Thread | None = None
    try:
        node = start_node(workdir / "node",
                          NodeSettings(children=args.children, shm_mb=args.shm_mb))
        metrics_port, health_port = free_ports(2)
        adapter = _spawn(["ingest", "kamailio", "--config", str(CONFIG), "--evapi", node.evapi,
                          "--journal", str(node.journal), "--state-dir", str(workdir),
                          "--metrics-port", str(metrics_port), "--health-port", str(health_port)],
                         prefix, workdir / "adapter.log")
        worker = _spawn(["worker", "--config", str(CONFIG), "--app-id", f"{prefix}corr",
                         "--data-dir", str(workdir / "faust")], prefix, workdir / "worker.log")
        sink = _spawn(["sink", "--config", str(CONFIG), "--group", f"{prefix}sink",
                       "--topic", f"{prefix}cdrs", "--clickhouse", f"{CH_URL}{database}",
                       "--batch-seconds", str(args.sink_batch_seconds)], prefix,
                      workdir / "sink.log")
        procs = [adapter, worker, sink]
        wait_ready(adapter, health_port, 60)
        _wait_assigned(f"{prefix}corr", f"{prefix}call-events", [worker])
        _wait_assigned(f"{prefix}sink", f"{prefix}cdrs", [sink])
        _wait_quiet()
        stored_at: dict[str, float] = {}
        poller = threading.Thread(target=_poll_stored, args=(database, stored_at, stop),
                                  daemon=True)
        poller.start()

        total = int(args.rate * args.seconds)
        calls = [CallSpec("4930100000", f"44207{i % 1000:03d}{(i * 7) % 10}1")
                 for i in range(total)]  # never a behaviour suffix: every call is answered
        parts = {
            "kamailio": pids_matching(str(node.base / "stack" / "kamailio.cfg")),
            "sipp gateways": [g.process.pid for g in node.gateways],
            "adapter": [adapter.pid], "worker": [worker.pid], "sink": [sink.pid],
            # the broker and ClickHouse this run uses, by their ports: not every JVM
            # named kafka.Kafka (a cluster or a secured stack may run beside it)
            **_servers(),
            "this bench (poller)": [os.getpid()],
        }
        before = _cpu(parts)
        t0 = time.monotonic()
        uac = start_calls("caller_bye", calls, node.workdir, switch_port=node.sip_port,
                          local_port=node.caller_port, hold_ms=args.hold_ms,
                          rate_cps=args.rate, max_concurrent=20000,
                          timeout_s=int(args.seconds) + 120, trace_calls=False)
        parts["sipp caller"] = [uac.process.pid]
        before["sipp caller"] = 0.0
        sipp_cpu = 0.0
        while uac.process.poll() is None:  # SIPp's own CPU, read while its pid exists
            sipp_cpu = proc_cpu_s(uac.process.pid) or sipp_cpu
            time.sleep(0.5)  # sampling a process's CPU while it runs
        result = uac.wait(10)
        placing_s = time.monotonic() - t0
        after = _cpu(parts)
        after["sipp caller"] = sipp_cpu
        used = {k: after[k] - before.get(k, 0.0) for k in after}
        # The adapter's share over the same window: events it published by the end of it.
        published = _metric(metrics_port, "cdr_ingest_events_published_total")

        pid = uac.process.pid
        placed = {f"{n}-{pid}@127.0.0.1" for n in range(1, result.created + 1)}
        deadline, last_count, last_change = time.monotonic() + 300, -1, time.monotonic()
        while time.monotonic() < deadline and not placed <= set(stored_at):
            if len(stored_at) != last_count:
                last_count, last_change = len(stored_at), time.monotonic()
            if time.monotonic() - last_change > 30:
                break  # nothing new for 30 s: what is missing is lost
            time.sleep(0.2)  # waiting for the poller thread to see the last calls
        stop.set()
        poller.join()
        replayed = _metric(metrics_port, "cdr_ingest_journal_events_replayed_total")
        dead = _metric(metrics_port, "cdr_ingest_dead_letters_total")
        adapter_cpu = used["adapter"]

        rows = backend.execute(f"SELECT call_id, max(end_ts_ms) FROM {database}.cdr "
                               "GROUP BY call_id")
        end_ms = {str(c): int(e) for c, e in rows}
        missing = placed - set(end_ms)
        extra = set(end_ms) - placed
        lat = sorted(stored_at[c] - end_ms[c] / 1000 for c in placed
                     if c in stored_at and c in end_ms)
        ((first_setup, last_setup, first_end, last_end),) = backend.execute(
            f"SELECT min(setup_ts_ms), max(setup_ts_ms), min(end_ts_ms), max(end_ts_ms) "
            f"FROM {database}.cdr")
        setup_span = max((last_setup - first_setup) / 1000, 1e-9)
        end_span = max((last_end - first_end) / 1000, 1e-9)

        print(f"SIPp: {result.created} calls placed at {args.rate:g} calls/s asked "
              f"(SIPp ran {placing_s:.1f} s), hold "
              f"{args.hold_ms} ms; successful {result.successful}, failed {result.failed}, "
              f"exit {result.returncode}")
        n = len(end_ms) - 1
        print(f"sustained, by Kamailio's timestamps on the CDRs: {n / setup_span:,.1f}"
              f" call setups/s over {setup_span:.1f} s, {n / end_span:,.1f} "
              f"hangups/s over {end_span:.1f} s")
        print(f"ClickHouse: CDRs for {len(placed) - len(missing)} of {len(placed)} SIPp "
              f"Call-IDs; lost {len(missing)}{' e.g. ' + min(missing) if missing else ''}; "
              f"{len(extra)} other call ids")
        print(f"adapter, while SIPp ran: {published:,.0f} events published ({replayed:,.0f} "
              f"from the journal, "
              f"{dead:,.0f} dead letters), CPU {adapter_cpu:.2f} s = "
              f"{adapter_cpu / max(published, 1) * 1000 * 1000:.1f} ms per 1,000 events")
        if lat:
            print(f"BYE (CDR end_ts_ms) -> CDR queryable in ClickHouse: p50 "
                  f"{statistics.median(lat) * 1000:,.0f} ms, p99 {_pct(lat, 0.99) * 1000:,.0f} ms, "
                  f"max {lat[-1] * 1000:,.0f} ms over {len(lat)} calls (poll every "
                  f"{POLL_S * 1000:.0f} ms: the resolution)")
        print(f"CPU while SIPp ran ({placing_s:.0f} s), in cores (2 on this machine): " + ", ".join(
            f"{k} {v / placing_s:.2f}" for k, v in sorted(used.items(), key=lambda kv: -kv[1])))
        print(f"total {sum(used.values()) / placing_s:.2f} of {os.cpu_count()} cores "
              f"(other processes on the machine not counted)")
    finally:
        stop.set()
        if poller is not None:
            poller.join()
        if uac is not None and uac.process.poll() is None:
            uac.process.kill()
            uac.process.wait(10)
        for proc in procs:
            stop_process(proc)
        if node is not None:
            node.close()
        backend.execute(f"DROP DATABASE IF EXISTS {database}")
        delete_topics(BOOTSTRAP, [s.name for s in specs] + worker_topics(f"{prefix}corr"))
        print(f"logs: {workdir}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=200.0, help="calls/s SIPp places")
    ap.add_argument("--seconds", type=float, default=60.0, help="how long it places calls")
    ap.add_argument("--hold-ms", type=int, default=1000, help="talk time of each call")
    ap.add_argument("--children", type=int, default=NodeSettings().children,
                    help="Kamailio UDP worker processes")
    ap.add_argument("--shm-mb", type=int, default=NodeSettings().shm_mb,
                    help="Kamailio shared memory; 64 MB runs out above about 300 calls/s "
                         "with a 1 s hold (tm: out of mem)")
    ap.add_argument("--sink-batch-seconds", type=float, default=0.5,
                    help="the sink's --batch-seconds")
    args = ap.parse_args()
    if args.rate <= 0 or args.seconds <= 0 or args.hold_ms < 0 or args.children < 1 \
            or args.shm_mb < 16:
        ap.error("--rate and --seconds must be positive, --hold-ms >= 0, --children >= 1, "
                 "--shm-mb >= 16")
    run(args)


if __name__ == "__main__":
    main()
