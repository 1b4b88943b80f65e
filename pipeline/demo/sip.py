"""`cdr-pipeline demo --sip`: real SIP calls through the Kamailio switch node.

Starts the project's switch node (Kamailio and two SIPp carrier gateways on free
loopback ports, pipeline/sip/node.py), the switch adapter `cdr-pipeline ingest
kamailio`, a correlator worker and a sink, all as subprocesses; places a mix of
SIP calls with SIPp (answered calls ended by either side, busy, not found, a
cancel, no answer, route advance, every gateway failing, a call cut at the
switch's maximum duration, blocked numbers, an unknown source, a source trusted
for X-Account); waits until ClickHouse holds a CDR for every Call-ID SIPp placed,
checks the newest CDRs equal what `rate-file` computes from the adapter's events
(read back from the call-events topic), and prints the demo's report. Everything
it started is stopped and its topics deleted; the CDRs stay in ClickHouse, under
Call-IDs that start with sipdemo-<run>-.

With `--identities` (deploy/local/demo.sh --secure --sip) it runs on the secured stack
like the simulator's demo (pipeline/demo/common.py): the adapter publishes as `ingest`,
the events are read back as `rerate` (with `ingest`, the worker and `rerate` the only
principals that may touch call-events, and only `rerate` may read it outside the
worker's group), on the deployment's topics, which stay.
"""

from __future__ import annotations

import argparse
import io
import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from pipeline.core.cdr import RatedCdr
from pipeline.errors import PipelineError
from pipeline.sip.node import NodeSettings, SwitchNode, free_ports, start_node
from pipeline.sip.traffic import CallFacts, CallSpec, RunResult, UacRun, start_calls

ROOT = Path(__file__).resolve().parents[2]
SIP_CONFIG = ROOT / "deploy" / "kamailio" / "pipeline.toml"
MAX_CALL_S = 3  # the switch cuts answered calls after this (dialog timeout)
NO_ANSWER_S = 3  # and stops ringing after this (408)
CALL_RATE_CPS = 20.0
#: The simulator's options and their defaults: given with --sip they would do nothing.
SIMULATOR_OPTIONS: dict[str, object] = {
    "calls": 3000, "switches": 4, "rate_cps": 50.0, "pace": None, "faults": None,
}
CALLER = "4930111222"


@dataclass(frozen=True)
class Case:
    """One call of the mix: what it shows, and how SIPp places it."""

    label: str
    callee: str
    header: str | None = None


@dataclass(frozen=True)
class Batch:
    """Calls placed by one SIPp UAC run: a scenario, a source and a hold time."""

    name: str
    scenario: str
    source: str  # "caller" (acct-100), "xacct" (trusted for X-Account), "unknown"
    hold_ms: int
    cases: tuple[Case, ...]


# The gateways act on the callee's last three digits (pipeline/sip/traffic.py).
BATCHES: tuple[Batch, ...] = (
    Batch("main", "caller_bye", "caller", 1500, (
        Case("answered, caller hangs up (UK)", "4420711001"),
        Case("answered, caller hangs up (US)", "12125550101"),
        Case("busy (486 + Q.850 17)", "4420711486"),
        Case("not found (404)", "4420711404"),
        Case("no answer: switch's timer (408)", "4420722000"),
        Case("route advance: gw-a 503, gw-b answers", "4420711503"),
        Case("every gateway 503", "4420711599"),
        Case("blocked number (prefix 1900)", "19005551234"),
        Case("blocked number (exact)", "4930666666"),
    )),
    Batch("callee", "wait_bye", "caller", 1000, (
        Case("answered, callee hangs up", "4420711900"),
        Case(f"answered, cut at max duration ({MAX_CALL_S} s)", "4930123456"),
    )),
    Batch("cancel", "cancel", "caller", 600, (
        Case("caller cancels while ringing", "4420711000"),
    )),
    Batch("unknown", "caller_bye", "unknown", 800, (
        Case("unknown source (403)", "4420711002"),
    )),
    Batch("xacct", "caller_bye", "xacct", 800, (
        Case("trusted source names X-Account acct-777", "4930777001", "X-Account: acct-777"),
        Case("trusted source, its own account", "4420711003"),
    )),
)


@dataclass
class Placed:
    """A SIPp run's result and the case of each Call-ID it placed."""

    result: RunResult
    cases: dict[str, Case]


def _start_uac(node: SwitchNode, batch: Batch, cid_prefix: str, timeout_s: int) -> UacRun:
    """Start one batch from its source port, with Call-IDs of this run's own (SIPp
    -cid_str), so they are unique in ClickHouse and the report can select them."""
    port = {"caller": node.caller_port, "xacct": node.xacct_port,
            "unknown": node.unknown_port}[batch.source]
    specs = [CallSpec(CALLER, c.callee, c.header) for c in batch.cases]
    return start_calls(batch.scenario, specs, node.workdir, switch_port=node.sip_port,
                       local_port=port, hold_ms=batch.hold_ms, rate_cps=CALL_RATE_CPS,
                       timeout_s=timeout_s,
                       call_id_format=f"{cid_prefix}{batch.name}-%u-%p@%s")


def _finish(run: UacRun, batch: Batch, timeout_s: float) -> Placed:
    try:
        result = run.wait(timeout_s)
    except subprocess.TimeoutExpired:
        raise PipelineError(f"SIPp run {batch.name!r} did not finish in {timeout_s:.0f} s; "
                            f"see {run.workdir}") from None
    if len(result.calls) != len(batch.cases):
        raise PipelineError(f"SIPp run {batch.name!r} placed {len(result.calls)} of "
                            f"{len(batch.cases)} calls (exit {result.returncode}); "
                            f"see {run.workdir}")
    # SIPp numbers its calls in the order of the injection file: N-pid@ip, N from 1.
    ordered = sorted(result.calls, key=lambda cid: int(cid.rsplit("-", 2)[-2]))
    return Placed(result, dict(zip(ordered, batch.cases, strict=True)))


def place_calls(node: SwitchNode, cid_prefix: str) -> list[Placed]:
    """Every batch; runs from different source ports go at once, the same port in turn."""
    timeout_s = max(MAX_CALL_S, NO_ANSWER_S) + 30
    by_source: dict[str, list[Batch]] = {}
    for batch in BATCHES:
        by_source.setdefault(batch.source, []).append(batch)
    running = {src: (batches[0], _start_uac(node, batches[0], cid_prefix, timeout_s))
               for src, batches in by_source.items()}
    placed: list[Placed] = []
    for src, batches in by_source.items():
        batch, run = running[src]
        placed.append(_finish(run, batch, timeout_s + 10))
        for batch in batches[1:]:
            placed.append(_finish(_start_uac(node, batch, cid_prefix, timeout_s), batch,
                                  timeout_s + 10))
    return placed


# --- the adapter ---------------------------------------------------------------------


def _start_adapter(config: Path, node: SwitchNode, env: dict[str, str], workdir: Path,
                   health_port: int) -> subprocess.Popen[bytes]:
    """`cdr-pipeline ingest kamailio` on the node's evapi and journal, with `env` (its
    identity on the secured stack)."""
    state = workdir / "adapter-state"
    state.mkdir(exist_ok=True)
    cmd = [sys.executable, "-m", "pipeline.cli", "ingest", "kamailio", "--config", str(config),
           "--evapi", node.evapi, "--journal", str(node.journal), "--state-dir", str(state),
           "--health-port", str(health_port)]
    with (workdir / "adapter.log").open("wb") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)


def wait_ready(proc: subprocess.Popen[bytes], health_port: int, timeout_s: float,
               what: str = "the adapter") -> None:
    """Until /ready answers 200 (connected to evapi, Kafka acknowledging)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise PipelineError(f"{what} exited with code {proc.returncode}; see its log")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{health_port}/ready",  # noqa: S310
                                        timeout=2) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass  # not listening yet, or 503 not ready
        time.sleep(0.1)  # polling the health endpoint, bounded by timeout_s
    raise PipelineError(f"{what} was not ready within {timeout_s:.0f} s; see its log")


def stop_process(proc: subprocess.Popen[bytes], timeout_s: float = 30) -> None:
    """SIGTERM, then SIGKILL after timeout_s: a process this module started."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


# --- what the pipeline made of it --------------------------------------------------------


def topic_events(kafka: Any, topic: str, call_prefix: str = "",
                 group: str = "sipdemo-reader") -> list[dict[str, Any]]:
    """Every CallEvent on `topic` (read to its end offsets) whose call id starts with
    `call_prefix`, as rate-file input dicts; `kafka`: the [kafka] settings or a
    (plaintext) bootstrap string. `group` only names the reader (it assigns partitions
    and commits nothing); a principal needs READ on it all the same."""
    from confluent_kafka import Consumer, TopicPartition

    from pipeline.avro import codec
    from pipeline.kafka.clients import client_config, settings_of

    consumer = Consumer(client_config(settings_of(kafka), **{
        "group.id": group, "enable.auto.commit": False}))
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                for p in meta.partitions}
        consumer.assign([TopicPartition(topic, p, low) for p, (low, high) in ends.items()
                         if high > low])
        left = {p for p, (low, high) in ends.items() if high > low}
        events: list[dict[str, Any]] = []
        deadline = time.monotonic() + 60
        while left and time.monotonic() < deadline:
            for msg in consumer.consume(1000, timeout=1.0):
                if msg.error() is not None:
                    continue
                part, offset = msg.partition(), msg.offset()
                if part is None or offset is None:
                    continue
                headers = msg.headers() or []
                items = headers.items() if isinstance(headers, dict) else headers
                if not codec.is_tick([(k, v) for k, v in items if isinstance(v, bytes)]):
                    raw = codec.decode_event_dict(msg.value() or b"")
                    if str(raw.get("call_id", "")).startswith(call_prefix):
                        events.append({k: v for k, v in raw.items() if v is not None})
                if offset + 1 >= ends[part][1]:
                    left.discard(part)
        if left:
            raise PipelineError(f"could not read {topic} to its end within 60 s")
    finally:
        consumer.close()
    return events


def events_reader(args: argparse.Namespace, run: str) -> tuple[Any, str]:
    """Who reads the run's events back, and under which group name: off the secured
    stack anyone (the run's bootstrap); on it `rerate`, under a group of its prefix."""
    if getattr(args, "identities", None) is None:
        return args.bootstrap, "sipdemo-reader"
    from pipeline.demo.common import component_settings
    from pipeline.kafka.acls import RERATE_GROUP_PREFIX

    return component_settings(args, "rerate").kafka, f"{RERATE_GROUP_PREFIX}sipdemo-{run}"


def rate_events(events: Sequence[dict[str, Any]], config: Any,
                path: Path) -> dict[str, RatedCdr]:
    """rate-file on the events, in switch time order (written to `path` as well)."""
    from pipeline.core.summary import newest_versions
    from pipeline.offline.rate_file import rate_lines

    ordered = sorted(events, key=lambda e: int(e["ts_ms"]))  # stable: a call keeps its order
    text = "".join(json.dumps(e) + "\n" for e in ordered)
    path.write_text(text)
    return dict(newest_versions(rate_lines(io.StringIO(text), config)))


def stored_cdrs(backend: Any, database: str, prefix: str) -> dict[str, RatedCdr]:
    """The newest CDR of every call whose Call-ID starts with `prefix` (FINAL)."""
    from pipeline.storage.cdr_store import fetch_newest

    out: dict[str, RatedCdr] = {}
    for row in fetch_newest(backend, database, "startsWith(call_id, {p:String})", {"p": prefix}):
        row["flags"] = tuple(row["flags"])
        out[row["call_id"]] = RatedCdr(**{k: row[k] for k in RatedCdr._fields})
    return out


def check_alive(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    """A PipelineError naming the first of `procs` that has exited."""
    for proc in procs:
        if proc.poll() is not None:
            words = [str(a) for a in proc.args] if isinstance(proc.args, list) else [
                str(proc.args)]
            command = " ".join(words[3:5]) if len(words) > 4 else " ".join(words)
            raise PipelineError(f"{command} exited with code {proc.returncode}; see its log")


def wait_stored(backend: Any, database: str, prefix: str, want: dict[str, int],
                procs: Sequence[subprocess.Popen[bytes]], timeout_s: float) -> float:
    """Until ClickHouse holds exactly the calls of `want` at those versions."""
    from pipeline.demo.common import stored_versions

    started = time.monotonic()
    stored: dict[str, int] = {}
    while time.monotonic() - started < timeout_s:
        stored = stored_versions(backend, database, prefix)
        if stored == want:
            return time.monotonic() - started
        check_alive(procs)
        time.sleep(0.2)  # polling ClickHouse for a condition, bounded by timeout_s
    missing = sorted(set(want) - set(stored))
    behind = [c for c, v in want.items() if c in stored and stored[c] != v]
    raise PipelineError(f"timed out after {timeout_s:.0f} s: {len(missing)} calls missing "
                        f"({', '.join(missing[:3])}), {len(behind)} at another version")


def _outcome(facts: CallFacts) -> str:
    if facts.answered:
        who = {"CALLER": "caller BYE", "REMOTE": "BYE received"}.get(facts.hangup or "", "")
        return f"200, {who}" if who else "200"
    if facts.final_code == 487 and facts.hangup == "CALLER":
        return "CANCEL, 487"
    return str(facts.final_code) if facts.final_code is not None else "?"


def _money(amount: Decimal | None, currency: str | None) -> str:
    return "-" if amount is None else f"{amount} {currency or ''}".rstrip()


def calls_table(placed: Sequence[Placed], cdrs: dict[str, RatedCdr]) -> str:
    """One line per call: the case, what SIPp saw, what the CDR says."""
    head = ("case", "SIPp", "status", "hangup", "decision", "account", "egress", "billed s",
            "fee", "cost")
    rows: list[tuple[str, ...]] = [head]
    for p in placed:
        for cid, case in p.cases.items():
            cdr = cdrs[cid]
            hangup = cdr.hangup_source + (f" {cdr.server_reason}" if cdr.server_reason else "")
            decision = cdr.record_decision + (
                f" {cdr.decision_reason}" if cdr.decision_reason else "")
            rows.append((case.label, _outcome(p.result.calls[cid]), cdr.status, hangup,
                         decision, cdr.account_id or "-", cdr.egress_gateway or "-",
                         str(cdr.billable_s) if cdr.billable_s is not None else "-",
                         _money(cdr.fee, cdr.currency), _money(cdr.cost, cdr.cost_currency)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)


# --- the demo ----------------------------------------------------------------------------


def check_args(args: argparse.Namespace) -> None:
    given = [f"--{name.replace('_', '-')}" for name, default in SIMULATOR_OPTIONS.items()
             if getattr(args, name, default) != default]
    if given:
        raise PipelineError(f"{', '.join(given)}: simulator options, they do nothing with "
                            "--sip (the SIP demo places a fixed mix of real calls)")


def run_sip_demo(args: argparse.Namespace, default_config: Path) -> int:
    from pipeline.dashboard.report import Filters, build_report, format_report
    from pipeline.demo.common import (
        prepare_run,
        process_env,
        remove_topics,
        start_processes,
        stop_processes,
    )

    check_args(args)
    if args.config == default_config:
        args.config = SIP_CONFIG  # the accounts and gateways the switch node sends
    demo = prepare_run(args, "sipdemo")
    config, url, run, prefix, workdir = demo.config, demo.url, demo.run, demo.prefix, demo.workdir
    backend, database = demo.backend, demo.database
    calls_prefix = demo.tag  # the Call-IDs: the run's own, also on the deployment's topics
    print(f"sip demo {run}: starting the Kamailio switch node, the adapter, a worker and a sink",
          file=sys.stderr)
    procs: list[subprocess.Popen[bytes]] = []
    adapter: subprocess.Popen[bytes] | None = None
    node: SwitchNode | None = None
    try:
        try:
            node = start_node(workdir / "node", NodeSettings(
                node="kam-demo", max_call_s=MAX_CALL_S, no_answer_s=NO_ANSWER_S))
        except (RuntimeError, FileNotFoundError, TimeoutError) as exc:
            raise PipelineError(f"{exc} (deploy/local/kamailio.sh install sets it up)") from None
        (health_port,) = free_ports(1)
        adapter = _start_adapter(args.config, node, process_env(args, "ingest", prefix),
                                 workdir, health_port)
        procs = start_processes(args, prefix, url, workdir, app_id=demo.app_id,
                                sink_group=demo.sink_group)
        wait_ready(adapter, health_port, 60)
        calls = sum(len(b.cases) for b in BATCHES)
        print(f"placing {calls} SIP calls with SIPp (about {MAX_CALL_S + NO_ANSWER_S + 4} s)",
              file=sys.stderr)
        t0 = time.monotonic()
        placed = place_calls(node, calls_prefix)
        placed_s = time.monotonic() - t0
        sipp_ids = {cid for p in placed for cid in p.cases}
        waited = wait_stored_ids(backend, database, calls_prefix, sipp_ids, [adapter, *procs],
                                 args.timeout)
        reader, group = events_reader(args, run)
        events = topic_events(reader, f"{prefix}call-events", calls_prefix, group)
        expected = rate_events(events, config, workdir / "events.jsonl")
        if set(expected) != sipp_ids:
            raise PipelineError(f"the adapter's events rate {len(expected)} calls, SIPp placed "
                                f"{len(sipp_ids)}; see {workdir}")
        wait_stored(backend, database, calls_prefix,
                    {c: v.version for c, v in expected.items()}, [adapter, *procs], args.timeout)
        got = stored_cdrs(backend, database, calls_prefix)
        differ = sorted(c for c in expected if got.get(c) != expected[c])
        if differ:
            raise PipelineError(f"{len(differ)} CDRs in ClickHouse differ from rate-file, e.g. "
                                f"{differ[0]}: {got.get(differ[0])} != {expected[differ[0]]}")
    finally:
        if adapter is not None:
            stop_process(adapter)
        stop_processes(procs)
        if node is not None:
            node.close()
        remove_topics(demo)
    print(f"placed in {placed_s:.1f} s; every call's CDR in ClickHouse {waited:.1f} s after the "
          f"last call ended, equal to rate-file on the adapter's {len(events)} events "
          f"({len(expected)} calls). Logs, SIPp records and events: {workdir}", file=sys.stderr)
    print(calls_table(placed, got))
    print()
    print(format_report(build_report(backend, database, Filters(call_id_prefix=calls_prefix))))
    backend.close()
    return 0


def wait_stored_ids(backend: Any, database: str, prefix: str, call_ids: set[str],
                    procs: Sequence[subprocess.Popen[bytes]], timeout_s: float) -> float:
    """Until ClickHouse holds a CDR for each of `call_ids`; returns the seconds waited."""
    from pipeline.demo.common import stored_versions

    started = time.monotonic()
    stored: set[str] = set()
    while time.monotonic() - started < timeout_s:
        stored = set(stored_versions(backend, database, prefix))
        if call_ids <= stored:
            return time.monotonic() - started
        check_alive(procs)
        time.sleep(0.2)  # polling ClickHouse for a condition, bounded by timeout_s
    missing = sorted(call_ids - stored)
    raise PipelineError(f"timed out after {timeout_s:.0f} s: no CDR for {len(missing)} of the "
                        f"{len(call_ids)} calls SIPp placed ({', '.join(missing[:3])})")
