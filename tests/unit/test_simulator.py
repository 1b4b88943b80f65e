"""The traffic simulator: deterministic, a realistic mix, every fault, and nothing left open.

Pure: no Kafka. The publisher side is exercised in tests/integration/test_publisher.py.
"""

from __future__ import annotations

import io
import json
import logging
import random
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline.cli import main
from pipeline.core.config import BillingConfig, load_config
from pipeline.core.correlator import Correlator
from pipeline.core.events import ILLEGAL_REASONS, SERVER_REASONS, CallEvent, parse_event
from pipeline.offline.rate_file import RateFileResult, rate_file
from pipeline.switch.simulator import (
    FaultMix,
    SimStats,
    SimulationError,
    Tick,
    generate,
    jsonl_line,
    publish,
    write_jsonl,
)
from tests.paths import EXAMPLE

# 30 s before the 447 rate change of the example deck (2025-11-24T18:00:00Z).
START_MS = 1_764_007_170_000
CALLS = 3000


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """main() configures the root logger for a process; put pytest's handlers back after."""
    root, pipeline_logger = logging.getLogger(), logging.getLogger("pipeline")
    saved = (list(root.handlers), root.level, pipeline_logger.level)
    yield
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    pipeline_logger.setLevel(saved[2])


@pytest.fixture(scope="module")
def config() -> BillingConfig:
    if not EXAMPLE.is_dir():
        pytest.fail(f"worked example not found at {EXAMPLE}")
    return load_config(EXAMPLE / "config.toml")


@pytest.fixture(scope="module")
def run(config: BillingConfig) -> tuple[list[Any], SimStats]:
    stats = SimStats()
    items = list(
        generate(
            config,
            calls=CALLS,
            switches=4,
            rate_cps=50,
            seed=11,
            start_ms=START_MS,
            faults=FaultMix(),
            stats=stats,
        )
    )
    return items, stats


def _events(items: list[Any]) -> list[dict[str, Any]]:
    return [i for i in items if not isinstance(i, Tick)]


def _rate(config: BillingConfig, lines: list[str]) -> tuple[dict[str, dict], RateFileResult, str]:
    out, rejects = io.StringIO(), io.StringIO()
    result = rate_file(config, io.StringIO("".join(lines)), out, rejects)
    newest: dict[str, dict] = {}
    for line in out.getvalue().splitlines():
        cdr = json.loads(line)
        if cdr["call_id"] not in newest or cdr["version"] > newest[cdr["call_id"]]["version"]:
            newest[cdr["call_id"]] = cdr
    return newest, result, rejects.getvalue()


@pytest.fixture(scope="module")
def rated(
    config: BillingConfig, run: tuple[list[Any], SimStats]
) -> tuple[dict[str, dict], RateFileResult, str]:
    return _rate(config, [jsonl_line(i) for i in run[0]])


# -- determinism -------------------------------------------------------------------------


def test_same_seed_same_output(config: BillingConfig, run: tuple[list[Any], SimStats]) -> None:
    again = list(generate(config, calls=CALLS, switches=4, rate_cps=50, seed=11, start_ms=START_MS))
    assert [jsonl_line(i) for i in again] == [jsonl_line(i) for i in run[0]]
    other = list(generate(config, calls=200, switches=4, rate_cps=50, seed=12, start_ms=START_MS))
    assert [jsonl_line(i) for i in other[:50]] != [jsonl_line(i) for i in run[0][:50]]


def test_every_event_is_valid_and_call_ids_unique_per_run(run: tuple[list[Any], SimStats]) -> None:
    items, stats = run
    events = _events(items)
    for raw in events:
        parse_event(raw)  # raises on anything the pipeline would reject
    assert len({e["call_id"] for e in events}) == stats.calls == CALLS
    assert stats.events == len(events)
    assert stats.ticks == len(items) - len(events)
    assert {e["switch_id"] for e in events} == {"sw1", "sw2", "sw3", "sw4"}


def test_arrivals_follow_the_rate(run: tuple[list[Any], SimStats]) -> None:
    setups = sorted(e["ts_ms"] for e in _events(run[0]) if e["event_type"] == "SETUP")
    assert setups[0] == START_MS
    span_s = (setups[-1] - setups[0]) / 1000
    assert 0.9 * CALLS / 50 < span_s < 1.1 * CALLS / 50


# -- the mix -----------------------------------------------------------------------------


def test_mix_covers_every_outcome(config: BillingConfig, run: tuple[list[Any], SimStats]) -> None:
    events = _events(run[0])
    setups = [e for e in events if e["event_type"] == "SETUP"]
    hangups = [e for e in events if e["event_type"] == "HANGUP"]
    assert {h["server_reason"] for h in hangups if "server_reason" in h} == SERVER_REASONS
    assert {s["illegal_reason"] for s in setups if "illegal_reason" in s} == ILLEGAL_REASONS
    assert {(h["sip_code"], h["q850_cause"]) for h in hangups if not h["answered"]} >= {
        (486, 17),
        (480, 19),
        (487, 16),
        (403, 21),
    }
    gateways = {name: g.route_prefix or "" for name, g in config.gateways.items()}
    policy = config.policy

    def customer_number(setup: dict[str, Any]) -> str:
        prefix = gateways.get(setup.get("ingress_gateway", ""), "")
        return setup["callee"][len(prefix) :]

    numbers = [customer_number(s) for s in setups]
    assert sum(policy.free_e164s.matches(n) for n in numbers) > 30
    assert sum(policy.no_cdr_e164s.matches(n) for n in numbers) > 20
    deck = config.accounts["acme"].deck
    assert sum(deck.lookup(n, START_MS) is None for n in numbers) > 30
    assert sum(s["account_id"] not in config.accounts for s in setups) > 10
    with_ingress = [s for s in setups if "ingress_gateway" in s]
    assert with_ingress and all(s["callee"].startswith("777") for s in with_ingress)
    answers = [e for e in events if e["event_type"] == "ANSWER"]
    assert {a["egress_gateway"] for a in answers} == {"out-a"}
    assert any(a.get("callee_gateway", "").startswith("0011") for a in answers)
    assert any("callee_gateway" not in a for a in answers)
    ringing = {e["call_id"] for e in events if e["event_type"] == "RINGING"}
    answered_calls = {a["call_id"] for a in answers}
    assert len(ringing & answered_calls) > 0.8 * len(answered_calls)


def test_durations_are_lognormal_around_90s_and_capped(
    config: BillingConfig, rated: tuple[dict[str, dict], RateFileResult, str]
) -> None:
    cdrs = [c for c in rated[0].values() if c["status"] == "COMPLETE" and c["hold_ms"]]
    holds = [c["hold_ms"] for c in cdrs if c["server_reason"] != "MAX_DURATION"]
    mean_s = sum(holds) / len(holds) / 1000
    assert 70 < mean_s < 115
    assert max(c["hold_ms"] for c in cdrs) < config.policy.max_call_duration_s * 1000


# -- faults ------------------------------------------------------------------------------


def test_every_fault_kind_is_injected(run: tuple[list[Any], SimStats]) -> None:
    faults = run[1].faults
    for kind in (
        "dup",
        "reorder",
        "missing_setup",
        "missing_answer",
        "missing_hangup",
        "second_hangup",
    ):
        assert faults[kind] > 0, kind


def test_event_ids_unique_except_injected_duplicates(run: tuple[list[Any], SimStats]) -> None:
    events = _events(run[0])
    by_id: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in events:
        by_id[event["event_id"]].append(event)
    extra = sum(len(copies) - 1 for copies in by_id.values())
    assert extra == run[1].faults["dup"]
    for copies in by_id.values():
        assert all(c == copies[0] for c in copies)  # a re-sent event is the same event


def test_second_hangups_have_their_own_id_and_lose(run: tuple[list[Any], SimStats]) -> None:
    events = _events(run[0])
    hangups: dict[str, dict[str, dict]] = defaultdict(dict)
    for e in events:
        if e["event_type"] == "HANGUP":
            hangups[e["call_id"]][e["event_id"]] = e
    doubles = [h for h in hangups.values() if len(h) == 2]
    assert len(doubles) == run[1].faults["second_hangup"]
    for pair in doubles:
        first, second = sorted(pair.values(), key=lambda e: e["ts_ms"])
        assert second["event_id"] == first["event_id"] + "2"
        assert second["answered"] == first["answered"]


def test_reordered_events_stay_within_the_grace(
    config: BillingConfig, run: tuple[list[Any], SimStats]
) -> None:
    """An event arrives at most reorder_grace_s behind the newest event time, a re-sent
    duplicate well within closed_retention_s; ticks never run ahead of the events."""
    grace_ms = config.policy.reorder_grace_s * 1000
    newest, seen, behind_calls = 0, set(), set()
    for item in run[0][:-1]:
        if isinstance(item, Tick):
            assert item.ts_ms <= newest
            continue
        lag = newest - item["ts_ms"]
        if item["event_id"] in seen:
            assert lag < config.policy.closed_retention_s * 1000
        else:
            assert lag < grace_ms
            if lag > 0:
                behind_calls.add(item["call_id"])
        seen.add(item["event_id"])
        newest = max(newest, item["ts_ms"])
    # some calls really arrive out of order: an event after a later one of its call
    out_of_order = 0
    last_ts: dict[str, int] = {}
    for e in _events(run[0]):
        if e["ts_ms"] < last_ts.get(e["call_id"], 0):
            out_of_order += 1
        last_ts[e["call_id"]] = max(last_ts.get(e["call_id"], 0), e["ts_ms"])
    assert out_of_order >= run[1].faults["reorder"] > 0


def test_ticks_every_second_and_a_final_tick(
    config: BillingConfig, run: tuple[list[Any], SimStats]
) -> None:
    items, stats = run
    ticks = [i.ts_ms for i in items if isinstance(i, Tick)]
    seconds = [t // 1000 for t in ticks[:-1]]
    assert seconds == sorted(set(seconds))  # at most one tick a second of event time
    # while calls arrive (50 a second) event time moves every second: a tick each second
    busy = [s for s in seconds if s <= (START_MS + CALLS / 50 * 1000) // 1000]
    assert len(busy) >= CALLS / 50 - 2
    policy = config.policy
    assert isinstance(items[-1], Tick)
    assert (
        items[-1].ts_ms
        == stats.final_tick_ms
        == (
            stats.last_event_ts_ms
            + (policy.max_call_duration_s + policy.reorder_grace_s) * 1000
            + 1000
        )
    )


# -- the key property: rating what was generated -------------------------------------------


def test_rating_leaves_nothing_open_and_rejects_nothing(
    run: tuple[list[Any], SimStats], rated: tuple[dict[str, dict], RateFileResult, str]
) -> None:
    newest, result, rejects = rated
    stats = run[1]
    assert rejects == ""
    assert result.rejected == 0
    assert result.open_calls == 0
    assert len(newest) == CALLS
    statuses = Counter(c["status"] for c in newest.values())
    assert statuses["SETUP_MISSING"] == stats.faults["missing_setup"]
    assert statuses["ANSWER_MISSING"] == stats.faults["missing_answer"]
    assert statuses["HANGUP_MISSING"] == stats.faults["missing_hangup"]
    reasons = Counter(c["decision_reason"] for c in newest.values())
    for reason in ("NO_CDR_E164", "RATE_NOT_FOUND", "INCOMPLETE", "SERVER_HANGUP_POLICY"):
        assert reasons[reason] > 0, reason
    modes = Counter(c["billing_mode"] for c in newest.values())
    assert modes["FREE"] > 0 and modes["ILLEGAL"] > 0
    # every distinct event of a call is folded into its final version (the version is the
    # count of distinct events, times a constant stride)
    distinct: dict[str, set[str]] = defaultdict(set)
    for e in _events(run[0]):
        distinct[e["call_id"]].add(e["event_id"])
    assert len({newest[cid]["version"] / len(ids) for cid, ids in distinct.items()}) == 1


def _shuffle_within_calls(items: list[Any], seed: int) -> list[Any]:
    """Each call's events permuted among the positions its events had; ticks unchanged."""
    rng = random.Random(seed)  # noqa: S311
    positions: dict[str, list[int]] = defaultdict(list)
    for n, item in enumerate(items):
        if not isinstance(item, Tick):
            positions[item["call_id"]].append(n)
    shuffled = list(items)
    for slots in positions.values():
        picked = [items[n] for n in slots]
        rng.shuffle(picked)
        for n, item in zip(slots, picked, strict=True):
            shuffled[n] = item
    return shuffled


def test_shuffled_within_call_gives_the_same_final_cdrs(
    config: BillingConfig,
    run: tuple[list[Any], SimStats],
    rated: tuple[dict[str, dict], RateFileResult, str],
) -> None:
    shuffled = _shuffle_within_calls(run[0], seed=5)
    assert shuffled != run[0]
    newest, result, rejects = _rate(config, [jsonl_line(i) for i in shuffled])
    assert rejects == "" and result.open_calls == 0
    assert newest == rated[0]


def test_partitioned_like_the_streaming_worker_gives_the_same_final_cdrs(
    config: BillingConfig,
    run: tuple[list[Any], SimStats],
    rated: tuple[dict[str, dict], RateFileResult, str],
) -> None:
    """Events split by key over 3 partitions, each with its own event time; ticks to all."""
    correlators = [Correlator(config) for _ in range(3)]
    newest: dict[str, Any] = {}

    def keep(cdrs: list[Any]) -> None:
        for cdr in cdrs:
            if cdr.call_id not in newest or cdr.version > newest[cdr.call_id].version:
                newest[cdr.call_id] = cdr

    for item in run[0]:
        if isinstance(item, Tick):
            for correlator in correlators:
                keep(correlator.advance(item.ts_ms))
        else:
            part = zlib.crc32(item["call_id"].encode()) % 3
            keep(correlators[part].on_event(parse_event(item)))
    assert all(not list(c.open_calls()) for c in correlators)
    assert {
        cid: json.loads(json.dumps(c.to_json_dict(), sort_keys=True)) for cid, c in newest.items()
    } == rated[0]


def test_without_faults_every_call_completes_in_one_version(config: BillingConfig) -> None:
    items = list(generate(config, calls=500, seed=3, start_ms=START_MS, faults=FaultMix.none()))
    out = io.StringIO()
    result = rate_file(config, io.StringIO("".join(jsonl_line(i) for i in items)), out)
    cdrs = [json.loads(line) for line in out.getvalue().splitlines()]
    assert result.open_calls == 0 and result.rejected == 0
    assert len(cdrs) == 500
    assert {c["status"] for c in cdrs} == {"COMPLETE"}


def test_single_switch_and_short_windows(tmp_path: Path) -> None:
    """reorder_grace_s 0 and a short retention: no reordering; duplicates re-sent soon enough
    that none is rejected as late."""
    text = (
        (EXAMPLE / "config.toml")
        .read_text()
        .replace("reorder_grace_s = 10", "reorder_grace_s = 0\nclosed_retention_s = 2")
    )
    (tmp_path / "decks").mkdir()
    for deck in (EXAMPLE / "decks").iterdir():
        (tmp_path / "decks" / deck.name).write_bytes(deck.read_bytes())
    (tmp_path / "config.toml").write_text(text)
    config = load_config(tmp_path / "config.toml")
    stats = SimStats()
    items = list(generate(config, calls=300, switches=1, seed=4, start_ms=START_MS, stats=stats))
    assert stats.faults["reorder"] == 0 and stats.faults["dup"] > 0
    assert {e["switch_id"] for e in _events(items)} == {"sw1"}
    _, result, rejects = _rate(config, [jsonl_line(i) for i in items])
    assert rejects == "" and result.open_calls == 0


# -- FaultMix ----------------------------------------------------------------------------


def test_fault_mix_parse() -> None:
    mix = FaultMix.parse("dup=0.1, reorder=0.2,missing-hangup=0.05")
    assert (mix.dup, mix.reorder, mix.missing_hangup) == (0.1, 0.2, 0.05)
    assert mix.missing_setup == FaultMix().missing_setup
    assert FaultMix.parse("none") == FaultMix.none()
    assert FaultMix.parse("") == FaultMix()
    assert FaultMix.parse(mix.describe()) == mix


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("dup", "not KIND=RATE"),
        ("teleport=0.1", "not KIND=RATE"),
        ("dup=x", "not a number"),
        ("dup=1.5", "rate must be 0..1"),
        ("missing_setup=0.6,missing_hangup=0.6", "exceed 1"),
    ],
)
def test_fault_mix_parse_errors(spec: str, message: str) -> None:
    with pytest.raises(SimulationError, match=message):
        FaultMix.parse(spec)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"calls": -1}, "--calls"), ({"switches": 0}, "--switches"), ({"rate_cps": 0}, "--rate-cps")],
)
def test_generate_rejects_bad_arguments(
    config: BillingConfig, kwargs: dict[str, Any], message: str
) -> None:
    args: dict[str, Any] = {"calls": 1, "start_ms": START_MS, **kwargs}
    with pytest.raises(SimulationError, match=message):
        generate(config, **args)


# -- sinks and the CLI -------------------------------------------------------------------


def test_write_jsonl_is_what_rate_file_reads(
    config: BillingConfig, tmp_path: Path, run: tuple[list[Any], SimStats]
) -> None:
    path = tmp_path / "events.jsonl"
    assert write_jsonl(run[0][:100], path) == 100
    lines = path.read_text().splitlines()
    assert lines == [jsonl_line(i).rstrip("\n") for i in run[0][:100]]
    assert jsonl_line(Tick(5)) == '{"tick_ms": 5}\n'


class FakePublisher:
    def __init__(self) -> None:
        self.sent: list[CallEvent | int] = []
        self.flushed = 0
        self.polls = 0

    def publish(self, event: CallEvent) -> None:
        self.sent.append(event)

    def publish_tick(self, ts_ms: int) -> int:
        self.sent.append(ts_ms)
        return 3

    def poll(self, timeout: float = 0.0) -> int:
        self.polls += 1
        time.sleep(timeout)
        return 0

    def flush(self, timeout: float = 30.0) -> None:
        self.flushed += 1


def test_publish_keeps_order_and_flushes(run: tuple[list[Any], SimStats]) -> None:
    fake = FakePublisher()
    items = run[0][:400]
    events, ticks = publish(items, fake)  # type: ignore[arg-type]
    want = [i.ts_ms if isinstance(i, Tick) else parse_event(i) for i in items]
    assert fake.sent == want
    assert (events, ticks) == (len(_events(items)), len(items) - len(_events(items)))
    assert fake.flushed == 1


def test_publish_paces_calls(config: BillingConfig) -> None:
    items = list(generate(config, calls=40, seed=2, start_ms=START_MS))
    fake = FakePublisher()
    began = time.monotonic()
    publish(items, fake, pace=200)  # type: ignore[arg-type]
    assert time.monotonic() - began >= 39 / 200 * 0.9
    assert fake.polls > 0
    with pytest.raises(SimulationError, match="--pace"):
        publish(items, fake, pace=0)  # type: ignore[arg-type]


@pytest.mark.usefixtures("restore_logging")
def test_cli_simulate_writes_jsonl(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sim.jsonl"
    argv = [
        "simulate",
        "--config",
        str(EXAMPLE / "config.toml"),
        "--calls",
        "300",
        "--seed",
        "9",
        "--start-ms",
        str(START_MS),
        "--faults",
        "dup=0.1,reorder=0.1",
        "--jsonl",
        str(out),
    ]
    assert main(argv) == 0
    summary = capsys.readouterr().out.strip()
    assert summary.startswith("simulate: 300 calls, ") and "faults: dup " in summary
    assert len(summary.splitlines()) == 1
    config = load_config(EXAMPLE / "config.toml")
    items = generate(
        config, calls=300, seed=9, start_ms=START_MS, faults=FaultMix.parse("dup=0.1,reorder=0.1")
    )
    assert out.read_text() == "".join(jsonl_line(i) for i in items)


@pytest.mark.usefixtures("restore_logging")
@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "give --jsonl"),
        (["--jsonl", "x.jsonl", "--faults", "dup=7"], "fault dup"),
        (["--jsonl", "x.jsonl", "--pace", "10"], "--pace"),
        (["--jsonl", "/nonexistent-dir/x.jsonl"], "cannot write"),
    ],
)
def test_cli_simulate_errors(
    extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["simulate", "--config", str(EXAMPLE / "config.toml"), "--calls", "5", *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "cdr-pipeline simulate: error:" in err and message in err
    assert "Traceback" not in err
