"""Benchmark of the call state's size: memory per open and per closed call, bytes per
changelog write.

    .venv/bin/python bench/state_bench.py [--calls 100000 1000000] [--seed S]

Memory is measured as the growth of the process's resident set (RSS, from
/proc/self/statm) while the open calls are built, in a fresh process per figure, with
garbage collection frozen as the worker's tuned GC does. Each call is a SETUP and an
ANSWER (a call in conversation, the long-lived kind), generated as core_bench.py's
traffic and fed through parse_event one event at a time, so everything a call keeps
alive (its strings included) is counted, and nothing else is. Two representations:

  today   the state before issue 17, rebuilt here as it was: a dataclass of a list of
          four CallEvents, a set of event ids and a list of cached event dicts, in a
          dict, with a (deadline, call_id) heap entry per event (the old correlator's
          deadline heap);
  new     pipeline.core's Correlator: CallState with packed events (packed.py), and
          the bucketed deadline index (deadlines.py).

A closed call is remembered for closed_retention_s (a day by default: duplicates and late
events of it are recognised, corrections re-rate it), so a worker's memory is mostly its
closed calls: `closed` is the RSS growth per call remembered after its CDR went out, of
whole calls (SETUP, RINGING, ANSWER on 65%, HANGUP) through the Correlator, held as
CallStates (`closed`) and frozen (`frozen`: the bytes of each state, as rate-file and
rerate hold them); `worker` is what a worker holds: its CallStore, the closed calls frozen
as their table entries, and the table's values, the same bytes objects.

Changelog bytes are measured on whole calls (SETUP, RINGING, ANSWER, HANGUP, and
unanswered ones), one write per state change as the worker writes: `today` is
orjson.dumps(CallState.to_dict()), `new` is state_codec.encode_state. The time per
write is CPU time of the encoding (to_dict + orjson for today).
"""

from __future__ import annotations

import argparse
import gc
import heapq
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
import core_bench  # noqa: E402  (the traffic generator, next to this file)

from pipeline.core.config import BillingConfig  # noqa: E402
from pipeline.core.correlator import Correlator  # noqa: E402
from pipeline.core.events import CallEvent, parse_event  # noqa: E402
from pipeline.core.state_codec import decode_state, encode_state  # noqa: E402
from pipeline.worker.call_store import CallStore  # noqa: E402

_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * _PAGE


def open_calls(rng: random.Random, count: int, customer: list[str]) -> Iterator[dict[str, Any]]:
    """SETUP and ANSWER event dicts of `count` calls, made one at a time."""
    for n in range(count):
        sw = n % core_bench.SWITCHES
        call_id = f"sw{sw}-{n:09d}-{rng.getrandbits(32):08x}"
        t = core_bench.T0 + n * 2  # within a few minutes: no call goes stale
        callee = core_bench.e164(rng, customer)
        gateway, route = rng.choice(core_bench.EGRESS)
        yield {
            "event_id": f"{call_id}-0", "call_id": call_id, "switch_id": f"sw{sw}",
            "event_type": "SETUP", "ts_ms": t, "account_id": f"acct-{rng.randrange(20)}",
            "caller": core_bench.e164(rng, customer), "callee": callee,
            "caller_ip": f"10.{sw}.{rng.randrange(256)}.{rng.randrange(256)}",
        }
        yield {
            "event_id": f"{call_id}-2", "call_id": call_id, "switch_id": f"sw{sw}",
            "event_type": "ANSWER", "ts_ms": t + rng.randint(3_000, 20_000),
            "egress_gateway": gateway, "callee_gateway": (route or "") + callee,
        }


def closed_calls(rng: random.Random, count: int, customer: list[str]
                 ) -> Iterator[dict[str, Any]]:
    """The event dicts of `count` whole calls, one call at a time, each closed by its
    HANGUP (answered ones COMPLETE at once; unanswered ones too: no ANSWER is due)."""
    for n in range(count):
        sw = n % core_bench.SWITCHES
        call_id = f"sw{sw}-{n:09d}-{rng.getrandbits(32):08x}"
        t = core_bench.T0 + n * 2
        common = {"call_id": call_id, "switch_id": f"sw{sw}"}
        callee = core_bench.e164(rng, customer)
        yield {
            **common, "event_id": f"{call_id}-0", "event_type": "SETUP", "ts_ms": t,
            "account_id": f"acct-{rng.randrange(20)}",
            "caller": core_bench.e164(rng, customer), "callee": callee,
            "caller_ip": f"10.{sw}.{rng.randrange(256)}.{rng.randrange(256)}",
        }
        ring = t + rng.randint(800, 6_000)
        yield {**common, "event_id": f"{call_id}-1", "event_type": "RINGING", "ts_ms": ring}
        answered = rng.random() < 0.65
        end = ring + rng.randint(3_000, 30_000)
        if answered:
            gateway, route = rng.choice(core_bench.EGRESS)
            yield {
                **common, "event_id": f"{call_id}-2", "event_type": "ANSWER",
                "ts_ms": ring + 2_000, "egress_gateway": gateway,
                "callee_gateway": (route or "") + callee,
            }
        yield {
            **common, "event_id": f"{call_id}-3", "event_type": "HANGUP", "ts_ms": end,
            "answered": answered, "hangup_source": "CALLER",
            "sip_code": 200 if answered else 487, "q850_cause": 16 if answered else 17,
        }


@dataclass(slots=True)
class TodayState:
    """The CallState before issue 17, field for field (pipeline/core/state.py then)."""

    call_id: str
    events: list[CallEvent | None] = field(default_factory=lambda: [None, None, None, None])
    seen: set[str] = field(default_factory=set)
    last_ts_ms: int = 0
    version: int = 0
    closed_at_ms: int | None = None
    emitted_at: int | None = None
    call_start_ms: int | None = None
    _dicts: list[Any] = field(default_factory=lambda: [None, None, None, None])


_SLOTS = {"SETUP": 0, "RINGING": 1, "ANSWER": 2, "HANGUP": 3}


class TodayStore:
    """The old correlator's memory for open calls: the states and the deadline heap."""

    def __init__(self, config: BillingConfig) -> None:
        policy = config.policy
        self.stale_ms = (policy.max_call_duration_s + policy.reorder_grace_s) * 1000
        self.store: dict[str, TodayState] = {}
        self.heap: list[tuple[int, str]] = []

    def on_event(self, event: CallEvent) -> None:
        state = self.store.get(event.call_id)
        if state is None:
            state = TodayState(event.call_id)
        state.seen.add(event.event_id)
        state.last_ts_ms = max(state.last_ts_ms, event.ts_ms)
        state.events[_SLOTS[event.event_type]] = event
        self.store[event.call_id] = state
        heapq.heappush(self.heap, (state.last_ts_ms + self.stale_ms, event.call_id))


def measure_memory(kind: str, calls: int, seed: int) -> float:
    """Bytes of RSS per open call, or per closed call remembered (kind `closed`); run in
    a fresh process (see main)."""
    rng = random.Random(seed)  # noqa: S311 - benchmark data
    with tempfile.TemporaryDirectory(prefix="state-bench-") as tmpdir:
        config, customer, _ = core_bench.build(Path(tmpdir), rng)
    gc.collect()
    gc.freeze()
    gc.disable()  # the worker's tuned GC collects rarely; nothing here is cyclic garbage
    if kind == "worker":
        return _worker_memory(config, closed_calls(rng, calls, customer), calls)
    if kind == "today":
        holder: Any = TodayStore(config)
    else:
        holder = Correlator(config, freeze=encode_state if kind == "frozen" else None)
    events = (closed_calls if kind in ("closed", "frozen") else open_calls)(
        rng, calls, customer)
    first = parse_event(next(events))  # allocate what every call shares before measuring
    holder.on_event(first)
    before = rss_bytes()
    for raw in events:
        holder.on_event(parse_event(raw))
    grown = rss_bytes() - before
    return grown / (calls - 1)


def _worker_memory(config: BillingConfig, events: Iterator[dict[str, Any]], calls: int
                   ) -> float:
    """Bytes of RSS per closed call as a worker holds it: the Correlator's store (the
    worker's CallStore, closed calls frozen) and the table's values (Faust's memory store
    is a dict of them, written from the store's drain after each batch, as
    table_store.TableWriter does: a frozen call's value is its frozen bytes)."""
    store = CallStore(0)
    correlator = Correlator(config, store, freeze=store.freeze)  # as record_path.py makes it
    table: dict[str, bytes | None] = {}
    batch: list[dict[str, Any]] = []

    def run(batch: list[dict[str, Any]]) -> None:
        for raw in batch:
            correlator.on_event(parse_event(raw))
        table.update((write.call_id, write.value) for write in store.drain())

    run([next(events)])  # allocate what every call shares before measuring
    before = rss_bytes()
    for raw in events:
        batch.append(raw)
        if len(batch) == 500:
            run(batch)
            batch = []
    run(batch)
    return (rss_bytes() - before) / (calls - 1)


def measure_changelog(calls: int, seed: int) -> dict[str, float]:
    """Bytes and CPU time per changelog write, today's JSON and the new encoding."""
    rng = random.Random(seed)  # noqa: S311 - benchmark data
    with tempfile.TemporaryDirectory(prefix="state-bench-") as tmpdir:
        config, customer, _ = core_bench.build(Path(tmpdir), rng)
    dicts = core_bench.traffic(rng, calls, customer)
    correlator = Correlator(config)
    states = []
    for offset, raw in enumerate(dicts):
        event = parse_event(raw)
        correlator.on_event(event, offset)
        state = correlator.store.get(event.call_id)
        if state is not None:
            # A snapshot of this write (the state object changes on with later events).
            states.append(decode_state(encode_state(state)))
    today = [orjson.dumps(s.to_dict()) for s in states]
    new = [encode_state(s) for s in states]
    for state, value in zip(states[:2000], new[:2000], strict=False):
        assert decode_state(value) == state
    started = time.process_time()
    for s in states:
        orjson.dumps(s.to_dict())
    today_s = time.process_time() - started
    started = time.process_time()
    for s in states:
        encode_state(s)
    new_s = time.process_time() - started
    return {
        "writes": len(states),
        "today_mean": statistics.mean(map(len, today)), "today_max": max(map(len, today)),
        "new_mean": statistics.mean(map(len, new)), "new_max": max(map(len, new)),
        "today_us": today_s / len(states) * 1e6, "new_us": new_s / len(states) * 1e6,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, nargs="+", default=[100_000, 1_000_000],
                        help="open-call counts to measure (default 100000 1000000)")
    parser.add_argument("--seed", type=int, default=20251124)
    parser.add_argument("--measure", nargs=2, metavar=("KIND", "CALLS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:  # the child process of one memory figure
        print(measure_memory(args.measure[0], int(args.measure[1]), args.seed))
        return 0

    print("memory per open call (SETUP + ANSWER; RSS growth, fresh process each):")
    print("   open calls        today          new")
    for calls in args.calls:
        figures = []
        for kind in ("today", "new"):
            out = subprocess.run(
                [sys.executable, __file__, "--seed", str(args.seed), "--measure", kind,
                 str(calls)],
                check=True, capture_output=True, text=True,
            )
            figures.append(float(out.stdout.strip()))
        print(f"{calls:12,}   {figures[0]:8,.0f} B   {figures[1]:8,.0f} B"
              f"   goal: new <= 500 B -- {'met' if figures[1] <= 500 else 'NOT met'}")

    print("memory per closed call remembered (closed_retention_s; whole calls):")
    print("   calls        CallStates     frozen   a worker (its store + the table's values)")
    for calls in args.calls:
        figures = []
        for kind in ("closed", "frozen", "worker"):
            out = subprocess.run(
                [sys.executable, __file__, "--seed", str(args.seed), "--measure", kind,
                 str(calls)],
                check=True, capture_output=True, text=True,
            )
            figures.append(float(out.stdout.strip()))
        print(f"{calls:12,}   {figures[0]:8,.0f} B   {figures[1]:6,.0f} B   {figures[2]:8,.0f} B")

    writes = measure_changelog(20_000, args.seed)
    print(f"changelog value per write ({writes['writes']:,} writes of 20,000 whole calls):")
    print(f"  today (orjson of to_dict*) mean {writes['today_mean']:5.0f} B  "
          f"max {writes['today_max']:5} B  {writes['today_us']:5.1f} us/write")
    print(f"  new (encode_state)          mean {writes['new_mean']:5.0f} B  "
          f"max {writes['new_max']:5} B  {writes['new_us']:5.1f} us/write   "
          f"goal: mean <= 200 B -- {'met' if writes['new_mean'] <= 200 else 'NOT met'}")
    print("  * today's bytes exactly; its time is to_dict of today's state format built from")
    print("    the packed state (the cache of event dicts it had is gone), so not today's cost")
    return 0


if __name__ == "__main__":
    sys.exit(main())
