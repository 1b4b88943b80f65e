"""Load test of `cdr-pipeline ingest http` on loopback, beside a bare producer (not a test).

    .venv/bin/python bench/http_ingest_bench.py [--requests 200] [--batch 500]
        [--clients 4] [--max-seconds 60] [--partitions 6] [--bootstrap 127.0.0.1:19092]

Runs the endpoint as the real command in a subprocess (its own process and GIL, as in
production), then posts `--requests` JSON Lines bodies of `--batch` simulator events
from `--clients` keep-alive connections (http.client, one thread each), stopping at
`--max-seconds`. Prints events/s sustained and p50/p99 of the acknowledgement latency
(request sent to 2xx received), then publishes the same events with a bare
confluent-kafka producer (idempotent, acks=all, same settings as SwitchPublisher) and
prints its events/s. The goal is at least half the bare rate. Topics it creates (a
unique prefix) are deleted at the end; needs the local broker (deploy/local/kafka.sh up).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from confluent_kafka import Producer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.avro import codec  # noqa: E402
from pipeline.core.config import load_config  # noqa: E402
from pipeline.core.events import parse_event  # noqa: E402
from pipeline.kafka.admin import default_topic_specs, delete_topics, ensure_topics  # noqa: E402
from pipeline.switch.publisher import PRODUCER_DEFAULTS  # noqa: E402
from pipeline.switch.simulator import Tick, generate  # noqa: E402
from tests.ports import free_port  # noqa: E402

TOKEN = "bench-token-" + uuid.uuid4().hex
_CLI = ("import sys; from pipeline import commands; from pipeline.ingest.cli_http import "
        "register; commands.REGISTRY.append(register) if register not in commands.REGISTRY "
        "else None; from pipeline.cli import build_parser, main; "
        "names = build_parser()._subparsers._group_actions[0].choices; "
        "cmd = ['ingest-http'] if 'ingest-http' in names else ['ingest', 'http']; "
        "sys.exit(main(cmd + sys.argv[1:]))")


def _events(count: int) -> list[dict[str, Any]]:
    config = load_config(ROOT / "examples" / "basic" / "config.toml")
    out: list[dict[str, Any]] = []
    calls = count // 3 + 10
    for item in generate(config, calls=calls, seed=7, start_ms=1_764_000_000_000,
                         rate_cps=500.0):
        if not isinstance(item, Tick):
            out.append(item)
            if len(out) == count:
                break
    return out


def _wait_up(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"ingest http exited with {proc.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/ready")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit("ingest http not ready in time")


def _post_all(port: int, bodies: list[bytes], clients: int, max_s: float
              ) -> tuple[int, list[float], float, dict[int, int]]:
    lock = threading.Lock()
    queue = list(enumerate(bodies))
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    accepted = [0]
    deadline = time.monotonic() + max_s

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/x-ndjson"}
        while time.monotonic() < deadline:
            with lock:
                if not queue:
                    break
                _, body = queue.pop()
            began = time.monotonic()
            conn.request("POST", "/v1/events", body=body, headers=headers)
            resp = conn.getresponse()
            answer = json.loads(resp.read())
            took = time.monotonic() - began
            with lock:
                statuses[resp.status] = statuses.get(resp.status, 0) + 1
                if resp.status == 200:
                    latencies.append(took)
                    accepted[0] += answer["accepted"]
        conn.close()

    began = time.monotonic()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return accepted[0], latencies, time.monotonic() - began, statuses


def _bare(bootstrap: str, topic: str, events: list[dict[str, Any]]) -> float:
    producer = Producer({**PRODUCER_DEFAULTS, "bootstrap.servers": bootstrap})
    failed = [0]

    def report(err: Any, _msg: Any) -> None:
        if err is not None:
            failed[0] += 1

    began = time.monotonic()
    for raw in events:  # the same work per event as the endpoint: validate, encode, produce
        event = parse_event(raw)
        while True:
            try:
                producer.produce(topic, codec.encode_event(event), event.call_id.encode(),
                                 on_delivery=report)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    left = producer.flush(60)
    took = time.monotonic() - began
    if left or failed[0]:
        raise SystemExit(f"bare producer: {left} unflushed, {failed[0]} failed")
    return len(events) / took


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--max-seconds", type=float, default=60.0)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--bootstrap", default=os.environ.get("CDR_KAFKA_BOOTSTRAP",
                                                              "127.0.0.1:19092"))
    args = parser.parse_args()
    events = _events(args.requests * args.batch)
    bodies = ["\n".join(json.dumps(e) for e in events[i:i + args.batch]).encode()
              for i in range(0, len(events), args.batch)]
    prefix = f"bench-http-{uuid.uuid4().hex[:8]}-"
    specs = default_topic_specs(prefix, args.partitions, 1)
    ensure_topics(args.bootstrap, specs)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDR_")}
    env.update({"CDR_KAFKA_BOOTSTRAP": args.bootstrap, "CDR_KAFKA_TOPIC_PREFIX": prefix,
                "CDR_INGEST_HTTP_TOKEN": TOKEN, "CDR_INGEST_HTTP_PORT": str(port),
                "PYTHONPATH": str(ROOT)})
    conf = ROOT / "examples" / "basic" / "config.toml"
    proc = subprocess.Popen([sys.executable, "-c", _CLI, "--config", str(conf)], env=env,
                            stdin=subprocess.DEVNULL)
    try:
        _wait_up(port, proc)
        _post_all(port, bodies[:2], 1, 30)  # warm up (connections, metadata)
        accepted, latencies, took, statuses = _post_all(port, bodies, args.clients,
                                                        args.max_seconds)
        proc.terminate()
        proc.wait(30)
        rate = accepted / took
        print(f"http ingest: {accepted} events acknowledged in {took:.1f}s = {rate:,.0f} "
              f"events/s ({args.clients} clients, {args.batch} events/request, statuses "
              f"{statuses}); ack latency p50 {_pct(latencies, 0.5):.0f} ms, p99 "
              f"{_pct(latencies, 0.99):.0f} ms, mean {statistics.fmean(latencies) * 1000:.0f} ms")
        bare = _bare(args.bootstrap, specs[0].name, events)
        print(f"bare producer: {len(events)} events = {bare:,.0f} events/s "
              f"(parse_event + encode + produce, idempotent, acks=all)")
        print(f"ratio http / bare: {rate / bare:.2f} (goal >= 0.50)")
    finally:
        if proc.poll() is None:
            proc.kill()
        delete_topics(args.bootstrap, [s.name for s in specs])
    return 0


if __name__ == "__main__":
    sys.exit(main())
