"""Real SIP calls into ClickHouse: SIPp callers -> Kamailio (deploy/kamailio) -> the
`ingest kamailio` adapter -> Kafka -> the worker -> the sink -> ClickHouse.

Every call SIPp placed has exactly one CDR (keyed by SIPp's Call-ID), and each CDR agrees
with what SIPp itself saw of the call (answered, final code, who hung up, talk time)
and with the billing rules of deploy/kamailio/pipeline.toml (docs/billing.md). The
CDRs in ClickHouse also equal the billing core's (rate-file's) result on the events the
adapter published, read back from the call-events topic. A second test SIGKILLs the
adapter mid-traffic and restarts it on the same checkpoint: the journal backstop
(docs/switches.md) leaves no call without its CDR and none counted twice.

The switch's timers are shortened (max call 3 s, no answer 2 s) to keep this short.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.core.config import load_config
from pipeline.ingest.journal import event_payload
from pipeline.ingest.kamailio import map_frame
from pipeline.sip.node import NodeSettings, SwitchNode, start_node
from pipeline.sip.traffic import CallSpec, RunResult, UacRun, start_calls
from tests.e2e.harness import Pipeline
from tests.e2e.sip_harness import (
    KAM_CONFIG,
    Expect,
    check_call,
    http_ok,
    metric,
    rate_offline,
    skip_without_switch,
    start_adapter,
    topic_events,
)
from tests.ports import free_port

pytestmark = pytest.mark.e2e

MAX_CALL_S = 3
NO_ANSWER_S = 2
NODE_ID = "kam-e2e"
CALLER = "4930111222"
# Kamailio and SIPp share the clock, but each stamps an event when its own process gets
# to it (Kamailio relaying the 200 OK / receiving the BYE, SIPp receiving the 200 OK /
# sending the BYE). Measured over 12 runs on the 2-core dev machine, with Kafka, the
# worker and the sink busy: max |hold_ms - SIPp talk time| 1..4 ms (first test) and
# 2..15 ms (60 calls, adapter restarting). 50 ms on top of the 50 ms precision leaves
# room for a loaded CI machine and still catches a lost or shifted ANSWER/HANGUP.
SCHED_SLACK_MS = 50


@pytest.fixture
def node(tmp_path: Path) -> Iterator[SwitchNode]:
    skip_without_switch()
    settings = NodeSettings(node=NODE_ID, max_call_s=MAX_CALL_S, no_answer_s=NO_ANSWER_S)
    with start_node(tmp_path / "node", settings) as switch:
        yield switch


@dataclass
class Placed:
    """One SIPp run and what each of its calls (in injection order) must give."""

    result: RunResult
    expects: list[Expect]

    def expect_for(self, call_id: str) -> Expect:
        # SIPp's Call-ID is "<call number>-<pid>@<ip>"; call N reads line N of the CSV
        return self.expects[int(call_id.split("-", 1)[0]) - 1]


def _specs(expects: list[Expect]) -> list[CallSpec]:
    return [CallSpec(CALLER, e.callee, e.extra_header) for e in expects]


def _start(node: SwitchNode, scenario: str, expects: list[Expect], port: int,
           hold_ms: int, rate_cps: float = 20.0, timeout_s: int = 30) -> UacRun:
    return start_calls(scenario, _specs(expects), node.workdir, switch_port=node.sip_port,
                       local_port=port, hold_ms=hold_ms, rate_cps=rate_cps, timeout_s=timeout_s)


def _poll(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout_s}s waiting for {what}"
        time.sleep(0.05)  # polling SIPp's call log for a condition, bounded by the deadline


def _start_adapter(pipeline: Pipeline, node: SwitchNode, state_dir: Path) -> tuple[int, int]:
    """Start the adapter and wait until it is connected to evapi and Kafka acknowledges."""
    metrics_port, health_port = free_port(), free_port()
    start_adapter(pipeline, node, state_dir, metrics_port, health_port)
    pipeline.wait_for(lambda: http_ok(f"http://127.0.0.1:{health_port}/ready"), 60,
                      "the Kamailio adapter ready (evapi connected, Kafka acknowledging)")
    return metrics_port, health_port


def _start_pipeline(pipeline: Pipeline, node: SwitchNode, state_dir: Path) -> tuple[int, int]:
    pipeline.start_worker(config=KAM_CONFIG)
    pipeline.start_sink(config=KAM_CONFIG)
    return _start_adapter(pipeline, node, state_dir)


# -- the calls of the first test ---------------------------------------------------------

ANSWER_HOLD_MS = 1200
RUN_CALLER = [  # acct-100 on in-gw-1, caller hangs up after ANSWER_HOLD_MS when answered
    Expect("4420711", True, 200, "CALLER", "gw-a"),
    Expect("12125550100", True, 200, "CALLER", "gw-a"),  # USA: a connect fee
    Expect("4420711486", False, 486, "CALLEE", "gw-a"),
    Expect("4420711404", False, 404, "CALLEE", "gw-a"),
    Expect("4420722000", False, 408, "SERVER", "gw-a"),  # rings until the no-answer timer
    Expect("4420711503", True, 200, "CALLER", "gw-b"),  # gw-a 503, route advance to gw-b
    Expect("4420711599", False, 503, "CALLEE", "gw-b"),  # every gateway 503: the last tried
    Expect("19005551234", False, 403, "SERVER", None, server_reason="POLICY",
           illegal="BLACKLISTED"),
    Expect("4930666666", False, 403, "SERVER", None, server_reason="POLICY",
           illegal="BLACKLISTED"),
]
RUN_SERVER_ENDS = [  # acct-100, the caller waits for the other side's BYE
    Expect("4420711900", True, 200, "CALLEE", "gw-a"),  # the gateway hangs up after 800 ms
    Expect("4420733", True, 200, "SERVER", "gw-a", server_reason="MAX_DURATION",
           decision="SKIPPED", decision_reason="SERVER_HANGUP_POLICY"),
    Expect("4420744", True, 200, "SERVER", "gw-a", server_reason="ADMIN"),  # killed
]
XACCT = {"account": "acct-200", "ingress": "in-gw-2"}
# Holds stay under MAX_CALL_S - 1 s: the dialog timer ticks once a second and was seen to
# cut a 3 s call after 2.2 s, which would turn a caller's hangup into MAX_DURATION.
RUN_XACCT = [  # the source trusted for X-Account; 1700 ms talk
    Expect("4420755", True, 200, "CALLER", "gw-a", account="acct-777", ingress="in-gw-2",
           extra_header="X-Account: acct-777"),
    Expect("4420756", True, 200, "CALLER", "gw-a", **XACCT),  # type: ignore[arg-type]
]
RUN_CANCEL = [Expect("4420711000", False, 487, "CALLER", "gw-a", **XACCT)]  # type: ignore[arg-type]
RUN_SHORT = [  # 600 ms talk; Berlin has no vendor rate on gw-a: no cost, still billed
    Expect("4930123456", True, 200, "CALLER", "gw-a", **XACCT),  # type: ignore[arg-type]
]
RUN_UNKNOWN = [
    Expect("4420711", False, 403, "SERVER", None, account="UNIDENTIFIED", ingress=None,
           server_reason="POLICY", illegal="UNAUTHORIZED_SOURCE", flags=("UNKNOWN_ACCOUNT",)),
]


def _caller_port_runs(node: SwitchNode) -> list[Placed]:
    """The trusted caller's port: the mixed outcomes, then the server/callee hangups."""
    first = _start(node, "caller_bye", RUN_CALLER, node.caller_port, ANSWER_HOLD_MS)
    placed = [Placed(first.wait(60), RUN_CALLER)]
    run = _start(node, "wait_bye", RUN_SERVER_ENDS, node.caller_port, 1000, rate_cps=10)

    def by_number(n: int) -> str | None:
        return next((c for c in run.facts() if c.startswith(f"{n}-")), None)

    def ready_to_kill() -> bool:
        callee_ended, to_kill = by_number(1), by_number(3)
        facts = run.facts()
        return (callee_ended is not None and facts[callee_ended].end_ts is not None
                and to_kill is not None and facts[to_kill].answer_ts is not None)

    # kill call 3 once it is answered and call 1 (the callee's 800 ms hangup) is over,
    # so the killed call has talked a while
    _poll(ready_to_kill, 15, "call 3 answered and call 1 ended")
    victim = by_number(3)
    assert victim is not None
    killed = node.sh("kill", victim, check=False)
    print(f"\nadmin kill {victim}: exit {killed.returncode}: {killed.stderr.strip()}")
    assert killed.returncode == 0, killed.stderr
    placed.append(Placed(run.wait(MAX_CALL_S + 30), RUN_SERVER_ENDS))
    return placed


def _xacct_port_runs(node: SwitchNode) -> list[Placed]:
    placed = []
    for expects, scenario, hold in ((RUN_XACCT, "caller_bye", 1700), (RUN_CANCEL, "cancel", 300),
                                    (RUN_SHORT, "caller_bye", 600)):
        placed.append(Placed(_start(node, scenario, expects, node.xacct_port, hold).wait(60),
                             expects))
    return placed


def _unknown_port_runs(node: SwitchNode) -> list[Placed]:
    return [Placed(_start(node, "caller_bye", RUN_UNKNOWN, node.unknown_port, 500).wait(60),
                   RUN_UNKNOWN)]


def _wait_and_compare(pipeline: Pipeline, node: SwitchNode, call_ids: set[str]) -> None:
    """Wait for a CDR of every call, then the newest versions equal rate-file on the events
    read back from call-events, field for field, each call once under FINAL."""
    try:
        pipeline.wait_for(lambda: set(pipeline.stored_versions()) >= call_ids, 120,
                          f"a CDR for each of the {len(call_ids)} calls SIPp placed")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{_missing(pipeline, node, call_ids)}") from None
    expected = rate_offline(topic_events(pipeline), load_config(KAM_CONFIG))
    assert set(expected) == call_ids, (set(expected) ^ call_ids)
    want = {c: v.version for c, v in expected.items()}
    try:
        pipeline.wait_for(lambda: pipeline.stored_versions() == want, 60,
                          "the newest version of every call")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{pipeline.diagnose(want, expected)}") from None
    got = pipeline.newest_cdrs()
    assert set(got) == call_ids  # nothing missing, nothing extra
    mismatched = [c for c in call_ids if got[c] != expected[c]]
    assert not mismatched, [(got[c], expected[c]) for c in mismatched[:2]]
    once = pipeline.backend.execute(
        f"SELECT count(), uniqExact(call_id) FROM {pipeline.database}.cdr FINAL")
    assert once == [(len(call_ids), len(call_ids))], once


def _missing(pipeline: Pipeline, node: SwitchNode, call_ids: set[str]) -> str:
    """For a timeout: what the journal and the topic hold of the calls without a CDR."""
    missing = sorted(call_ids - set(pipeline.stored_versions()))
    journal: dict[str, list[str]] = {}
    for e in node.journal_events():
        journal.setdefault(e["call_id"], []).append(e["kind"])
    topic: dict[str, list[str]] = {}
    for ev in topic_events(pipeline):
        topic.setdefault(ev.call_id, []).append(ev.event_type)
    return "\n".join(f"{c}: journal {journal.get(c)}, call-events {topic.get(c)}"
                     for c in missing)


def _check_calls(pipeline: Pipeline, placed: list[Placed]) -> list[int]:
    """Per call: the CDR against SIPp's facts; returns the hold-time differences (ms)."""
    got = pipeline.newest_cdrs()
    bad: list[str] = []
    diffs: list[int] = []
    for run in placed:
        for call_id, facts in run.result.calls.items():
            bad += check_call(got[call_id], facts, run.expect_for(call_id), SCHED_SLACK_MS, diffs)
    assert not bad, "\n".join(bad)
    return diffs


def _check_counters(pipeline: Pipeline, placed: list[Placed]) -> None:
    """SIPp's counters per run agree with the CDRs of that run's calls."""
    got = pipeline.newest_cdrs()
    for run in placed:
        res = run.result
        cdrs = [got[c] for c in res.calls]
        assert res.created == len(run.expects) == len(res.calls), res
        # SIPp counts a call successful when it reached the end of the scenario (the
        # scenarios' "failed" branch ACKs the error and ends normally) and failed only
        # when it aborted; none of these calls aborts.
        assert (res.successful, res.failed) == (res.created, 0), res
        answered = sum(c.answered for c in res.calls.values())
        assert sum(c.answered for c in cdrs) == answered == sum(e.answered for e in run.expects)
        codes = sorted(c.final_code or 0 for c in res.calls.values())
        assert sorted(c.sip_code or 0 for c in cdrs) == codes


def test_sip_calls_become_cdrs(pipeline: Pipeline, node: SwitchNode, tmp_path: Path) -> None:
    state = tmp_path / "ingest-state"
    state.mkdir()
    metrics_port, _ = _start_pipeline(pipeline, node, state)
    t0 = time.monotonic()
    with ThreadPoolExecutor(3) as pool:
        chains = [pool.submit(f, node)
                  for f in (_caller_port_runs, _xacct_port_runs, _unknown_port_runs)]
        placed = [p for chain in chains for p in chain.result()]
    t_calls = time.monotonic() - t0
    call_ids = {c for p in placed for c in p.result.calls}
    assert len(call_ids) == sum(len(p.expects) for p in placed)
    _wait_and_compare(pipeline, node, call_ids)
    t_stored = time.monotonic() - t0
    diffs = _check_calls(pipeline, placed)
    _check_counters(pipeline, placed)
    for cdr in sorted(pipeline.newest_cdrs().values(), key=lambda c: c.setup_ts_ms or 0):
        print(f"\n{cdr.callee:>12} {cdr.account_id:<12} {cdr.hangup_source:<6} {cdr.sip_code} "
              f"{cdr.server_reason or '-':<12} {cdr.egress_gateway or '-':<4} "
              f"{cdr.callee_gateway or '-':<15} hold {cdr.hold_ms:>5} "
              f"{cdr.record_decision}/{cdr.decision_reason or '-'} {cdr.billing_mode} "
              f"fee {cdr.fee} ({cdr.rate_prefix}) cost {cdr.cost} ({cdr.cost_prefix}) "
              f"{','.join(cdr.flags)}", end="")
    print(f"\n{len(call_ids)} calls placed in {t_calls:.1f}s, all stored after {t_stored:.1f}s; "
          f"hold_ms vs SIPp talk time: max |diff| {max(diffs)} ms over {len(diffs)} answered calls")
    records, events = _published_is_journal(pipeline, node)
    replayed = metric(metrics_port, "cdr_ingest_journal_events_replayed_total")
    print(f"call-events: {records} records for {events} events; {replayed:.0f} published from "
          "the journal while evapi was connected")


# -- the adapter SIGKILLed mid-traffic ---------------------------------------------------


def _journal_events(node: SwitchNode) -> int:
    return sum(1 for _ in node.journal_events())


def test_adapter_killed_mid_traffic(pipeline: Pipeline, node: SwitchNode, tmp_path: Path) -> None:
    state = tmp_path / "ingest-state"
    state.mkdir()
    _start_pipeline(pipeline, node, state)
    adapter = pipeline.procs[-1]
    # answered calls only (no number ends in a behaviour suffix: they all end in 1)
    main = [Expect(f"44207{i:04d}1", True, 200, "CALLER", "gw-a") for i in range(48)]
    side = [Expect(f"1212555{i:03d}1", True, 200, "CALLER", "gw-a", **XACCT)  # type: ignore[arg-type]
            for i in range(12)]
    runs = [(_start(node, "caller_bye", main, node.caller_port, 1400, rate_cps=8, timeout_s=60),
             main),
            (_start(node, "caller_bye", side, node.xacct_port, 1000, rate_cps=2, timeout_s=60),
             side)]
    main_run = runs[0][0]
    _poll(lambda: sum(f.answered for f in main_run.facts().values()) >= 12, 30,
          "12 calls answered before the kill")
    adapter.send_signal(signal.SIGKILL)
    adapter.wait(30)
    at_kill = _journal_events(node)
    # events the adapter can only get from the journal: written while it is down
    _poll(lambda: _journal_events(node) >= at_kill + 30, 30, "30 events written while down")
    down_events = _journal_events(node) - at_kill
    metrics_port, _ = _start_adapter(pipeline, node, state)
    placed = [Placed(run.wait(90), expects) for run, expects in runs]
    assert all(p.result.created == len(p.expects) for p in placed)
    call_ids = {c for p in placed for c in p.result.calls}
    assert len(call_ids) == 60
    _wait_and_compare(pipeline, node, call_ids)
    diffs = _check_calls(pipeline, placed)
    _check_counters(pipeline, placed)

    replayed = metric(metrics_port, "cdr_ingest_journal_events_replayed_total")
    records, events = _published_is_journal(pipeline, node)
    print(f"\nadapter SIGKILLed after {at_kill} journal events; {down_events} written while it "
          f"was down; the restarted adapter replayed {replayed:.0f} from the journal; "
          f"{records} records on call-events for {events} events "
          f"({records - events} duplicates); max hold diff {max(diffs)} ms")
    assert replayed >= down_events > 0


def _published_is_journal(pipeline: Pipeline, node: SwitchNode) -> tuple[int, int]:
    """The events on call-events are exactly the journal's (nothing lost, nothing made up);
    returns (records on the topic, distinct events)."""
    journal_ids = {map_frame(p).event_id for p in _journal_payloads(node)}
    published = topic_events(pipeline)
    published_ids = {e.event_id for e in published}
    assert published_ids == journal_ids, (len(published_ids - journal_ids),
                                          len(journal_ids - published_ids))
    return len(published), len(published_ids)


def _journal_payloads(node: SwitchNode) -> list[bytes]:
    out = []
    for line in node.journal.read_bytes().splitlines():
        payload = event_payload(line)
        if payload is not None:
            out.append(payload)
    return out
