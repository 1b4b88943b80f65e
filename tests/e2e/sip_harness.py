"""Helpers of the SIP end-to-end test (tests/e2e/test_sip.py): the Kamailio adapter as a
subprocess of a :class:`Pipeline`, the call-events topic read back, an independent
rating of the node's decks, and the per-call comparison of a CDR with SIPp's facts."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import urllib.request
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from pipeline.avro.codec import decode_event_dict, is_tick
from pipeline.core.cdr import RatedCdr
from pipeline.core.config import BillingConfig
from pipeline.core.correlator import Correlator
from pipeline.core.events import CallEvent, parse_event
from pipeline.core.summary import newest_versions
from pipeline.sip.node import SwitchNode
from pipeline.sip.traffic import CallFacts
from tests.e2e.harness import PARTITIONS, ROOT, Pipeline

KAM_DIR = ROOT / "deploy" / "kamailio"
KAM_CONFIG = KAM_DIR / "pipeline.toml"
HOLD_PRECISION_MS = 50  # [policy] hold_time_precision_ms of KAM_CONFIG
FEE_PLACES = Decimal("0.0001")  # [policy] fee_precision = 4


def skip_without_switch() -> None:
    """Skip (not fail) only when Kamailio/SIPp are missing and cannot be installed."""
    missing = shutil.which("kamailio") is None or shutil.which("sipp") is None
    if missing and os.geteuid() != 0:
        pytest.skip("kamailio/sipp not installed and not root to apt-get them")


def start_adapter(pipeline: Pipeline, node: SwitchNode, state_dir: Path,
                  metrics_port: int, health_port: int) -> subprocess.Popen[bytes]:
    """`cdr-pipeline ingest kamailio` with the pipeline's Kafka environment."""
    return pipeline._spawn("ingest", [
        "ingest", "kamailio", "--config", str(KAM_CONFIG), "--evapi", node.evapi,
        "--journal", str(node.journal), "--state-dir", str(state_dir),
        "--metrics-port", str(metrics_port), "--health-port", str(health_port)])


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as page:  # noqa: S310 - loopback URL
            return bool(page.status == 200)
    except OSError:
        return False


def metric(port: int, name: str) -> float:
    """One unlabelled sample of the adapter's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as page:  # noqa: S310
        text = page.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    raise AssertionError(f"no metric {name} on port {port}")


def topic_events(pipeline: Pipeline) -> list[CallEvent]:
    """Every event on the pipeline's call-events topic, up to the current end."""
    topic = f"{pipeline.prefix}call-events"
    consumer = Consumer({"bootstrap.servers": pipeline.bootstrap,
                         "group.id": f"{pipeline.prefix}readback", "enable.auto.commit": False})
    try:
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1]
                for p in range(PARTITIONS)}
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
        done = {p: ends[p] == 0 for p in ends}
        events: list[CallEvent] = []
        while not all(done.values()):
            msg = consumer.poll(10)
            assert msg is not None, f"call-events read back stalled; ends {ends}"
            assert msg.error() is None, msg.error()
            part, offset = msg.partition(), msg.offset()
            assert part is not None and offset is not None
            raw = msg.headers()
            pairs = raw.items() if isinstance(raw, dict) else (raw or [])
            headers = [(k, v) for k, v in pairs if isinstance(v, bytes)]
            if offset < ends[part] and not is_tick(headers):
                value = msg.value()
                assert value is not None
                events.append(parse_event(decode_event_dict(value)))
            if offset + 1 >= ends[part]:
                done[part] = True
        return events
    finally:
        consumer.close()


def rate_offline(events: list[CallEvent], config: BillingConfig) -> dict[str, RatedCdr]:
    """The newest CDR per call that the billing core (rate-file's) gives on ``events``."""
    correlator = Correlator(config)
    out: list[RatedCdr] = []
    for event in events:
        out.extend(correlator.on_event(event))
    out.extend(correlator.finish())
    return newest_versions(out)


# -- an independent rating of the node's decks (not the pipeline's code) ----------------


@dataclass(frozen=True)
class Row:
    prefix: str
    rate_per_min: Decimal
    first_s: int
    next_s: int
    connect_fee: Decimal


def load_deck(name: str) -> list[Row]:
    with (KAM_DIR / "decks" / name).open(newline="") as f:
        return [Row(r["prefix"], Decimal(r["rate_per_min"]), int(r["first_increment_s"]),
                    int(r["next_increment_s"]), Decimal(r["connect_fee"]))
                for r in csv.DictReader(f)]


RETAIL = load_deck("retail.csv")
VENDOR = {"gw-a": load_deck("vendor-gw-a.csv"), "gw-b": load_deck("vendor-gw-b.csv")}
ROUTE_PREFIX = {"gw-a": "999", "gw-b": "888"}


def lookup(deck: list[Row], number: str) -> Row | None:
    rows = [r for r in deck if number.startswith(r.prefix)]
    return max(rows, key=lambda r: len(r.prefix)) if rows else None


def price(row: Row, seconds: int) -> tuple[int, Decimal]:
    """(billable seconds, money at 4 places half up); nothing billed, nothing charged."""
    if seconds <= 0:
        return 0, Decimal(0)
    if seconds <= row.first_s:
        billable = row.first_s
    else:
        billable = row.first_s + -(-(seconds - row.first_s) // row.next_s) * row.next_s
    money = row.connect_fee + row.rate_per_min * billable / 60
    return billable, money.quantize(FEE_PLACES, rounding=ROUND_HALF_UP)


def hold_s_of(hold_ms: int) -> int:
    return hold_ms // 1000 + (1 if hold_ms % 1000 >= HOLD_PRECISION_MS else 0)


# -- what a call should give ------------------------------------------------------------


@dataclass(frozen=True)
class Expect:
    """One placed call and what its CDR must say (besides what SIPp measured)."""

    callee: str
    answered: bool
    sip_code: int
    source: str  # hangup_source
    egress: str | None
    account: str = "acct-100"
    ingress: str | None = "in-gw-1"
    server_reason: str | None = None
    illegal: str | None = None
    decision: str = "RECORDED"
    decision_reason: str | None = None
    flags: tuple[str, ...] = ()
    extra_header: str | None = None


def check_call(cdr: RatedCdr, facts: CallFacts, want: Expect, slack_ms: int,
               hold_diffs: list[int]) -> list[str]:
    """Every way ``cdr`` disagrees with SIPp's ``facts`` and ``want``; appends the hold-time
    difference (ms) of an answered call to ``hold_diffs``."""
    bad: list[str] = []

    def same(what: str, got: object, exp: object) -> None:
        if got != exp:
            bad.append(f"{cdr.call_id} ({want.callee}): {what} {got!r}, want {exp!r}")

    # SIPp's own view of the call first, then the switch-side expectations
    same("answered (SIPp)", cdr.answered, facts.answered)
    same("sip_code (SIPp)", cdr.sip_code, facts.final_code)
    sipp_source = {"CALLER": {"CALLER"}, "REMOTE": {"CALLEE", "SERVER"}, None: {"CALLEE", "SERVER"}}
    if cdr.hangup_source not in sipp_source[facts.hangup]:
        bad.append(f"{cdr.call_id}: hangup_source {cdr.hangup_source}, SIPp saw {facts.hangup}")
    same("answered", cdr.answered, want.answered)
    same("sip_code", cdr.sip_code, want.sip_code)
    same("hangup_source", cdr.hangup_source, want.source)
    same("server_reason", cdr.server_reason, want.server_reason)
    same("status", cdr.status, "COMPLETE")
    same("callee", cdr.callee, want.callee)
    same("account_id", cdr.account_id, want.account)
    same("ingress_gateway", cdr.ingress_gateway, want.ingress)
    same("illegal_reason", cdr.illegal_reason, want.illegal)
    same("billing_mode", cdr.billing_mode, "ILLEGAL" if want.illegal else "NORMAL")
    same("egress_gateway", cdr.egress_gateway, want.egress)
    same("decision", (cdr.record_decision, cdr.decision_reason),
         (want.decision, want.decision_reason))
    same("flags", tuple(sorted(cdr.flags)), want.flags)
    same("hold_s", cdr.hold_s, hold_s_of(cdr.hold_ms))
    same("rated_s", cdr.rated_s, cdr.hold_s)  # no free time
    if not want.answered:
        same("hold_ms", cdr.hold_ms, 0)
        same("callee_gateway", cdr.callee_gateway, None)
        same("cost", cdr.cost, None)
        same("fee", cdr.fee, Decimal(0))  # illegal ones included, even without an account
        same("billable_s", cdr.billable_s, None if want.account == "UNIDENTIFIED" else 0)
        return bad
    if facts.duration_s is None or want.egress is None:
        return [*bad, f"{cdr.call_id} ({want.callee}): SIPp saw no end of the answered call "
                      f"({facts}), or no egress expected"]
    diff = abs(cdr.hold_ms - round(facts.duration_s * 1000))
    hold_diffs.append(diff)
    if diff > HOLD_PRECISION_MS + slack_ms:
        bad.append(f"{cdr.call_id} ({want.callee}): hold_ms {cdr.hold_ms}, SIPp talked "
                   f"{facts.duration_s * 1000:.0f} ms")
    same("callee_gateway", cdr.callee_gateway, ROUTE_PREFIX[want.egress] + want.callee)
    retail = lookup(RETAIL, want.callee)
    assert retail is not None
    billable, fee = price(retail, cdr.rated_s)
    same("rate_prefix", cdr.rate_prefix, retail.prefix)
    same("billable_s", cdr.billable_s, billable)
    same("fee", cdr.fee, Decimal(0) if want.illegal else fee)
    vendor = lookup(VENDOR[want.egress], want.callee)  # the number without the route prefix
    same("cost_prefix", cdr.cost_prefix, vendor.prefix if vendor else None)
    same("cost", cdr.cost, price(vendor, cdr.hold_s)[1] if vendor else None)
    return bad
