"""`cdr-pipeline simulate`: generate switch traffic into a JSON Lines file and/or Kafka.

Registered through ``pipeline.commands``; importing this module loads nothing but
argparse: the simulator and the Kafka publisher are imported when the command runs.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "simulate",
        help="generate deterministic switch traffic (JSON Lines and/or Kafka)",
        description="Simulate a cluster of switch nodes: calls at a Poisson rate with a "
        "realistic mix of outcomes and injected faults (duplicates, reordering, missing "
        "events, second hangups), plus watermark ticks. Writes the events as JSON Lines "
        '(the rate-file input, ticks as {"tick_ms": N}) and/or publishes them to Kafka '
        "in the same order. Same arguments and seed, same output. See docs/simulator.md.",
    )
    p.add_argument("--config", required=True, type=Path, help="billing TOML file")
    p.add_argument("--calls", required=True, type=int, help="number of calls to generate")
    p.add_argument("--switches", type=int, default=4, help="switch nodes sw1..swN (default 4)")
    p.add_argument(
        "--rate-cps",
        type=float,
        default=50.0,
        help="call attempts per second of event time (default 50)",
    )
    p.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    p.add_argument(
        "--start-ms",
        type=int,
        help="event time of the first call, epoch ms (default: now, to the second; "
        "give it for byte-identical reruns)",
    )
    p.add_argument(
        "--faults",
        help="fault rates, e.g. dup=0.02,reorder=0.03,missing_setup=0.01,missing_answer=0.01,"
        "missing_hangup=0.01,second_hangup=0.01 (unnamed kinds keep these defaults; 'none' = off)",
    )
    p.add_argument(
        "--no-final-tick",
        action="store_true",
        help="leave out the final tick that closes every call (max_call_duration_s + "
        "reorder_grace_s ahead of the last event)",
    )
    p.add_argument("--jsonl", type=Path, help="write the events and ticks here, JSON Lines")
    p.add_argument("--bootstrap", help="publish to this Kafka cluster (HOST:PORT[,...]); "
                   "security settings from [kafka] in --config or CDR_KAFKA_* (docs/security.md)")
    p.add_argument("--topic", default="call-events", help="topic (default call-events)")
    p.add_argument(
        "--producer-opt",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra librdkafka producer setting (repeatable), e.g. message.timeout.ms=30000",
    )
    p.add_argument(
        "--pace",
        type=float,
        help="publish at this many calls per second of real time (default: as fast as possible)",
    )
    p.set_defaults(handler=_simulate)


def _producer_options(pairs: list[str]) -> dict[str, str]:
    from pipeline.switch.simulator import SimulationError

    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise SimulationError(f"--producer-opt: {pair!r} is not KEY=VALUE")
        if "password" in key.lower() or key.strip().startswith(("sasl.", "ssl.", "security.")):
            raise SimulationError(
                f"--producer-opt: {key.strip()} is a connection setting: give it in [kafka] "
                "(secrets in a file, e.g. password_file or CDR_KAFKA_PASSWORD_FILE), never on "
                "the command line")
        options[key.strip()] = value.strip()
    return options


def _tee(items: Iterable[Any], handle: IO[str]) -> Iterator[Any]:
    """Write every item to the JSON Lines file before it is published."""
    from pipeline.switch.simulator import jsonl_line

    for item in items:
        handle.write(jsonl_line(item))
        yield item


def _open_jsonl(path: Path) -> IO[str]:
    from pipeline.switch.simulator import SimulationError

    try:
        return path.open("w", encoding="utf-8")
    except OSError as exc:
        raise SimulationError(f"--jsonl: cannot write {path}: {exc.strerror}") from None


def _publish(args: argparse.Namespace, items: Iterable[Any]) -> str:
    from pipeline.runtime.settings import load_settings, replace
    from pipeline.switch.publisher import SwitchPublisher
    from pipeline.switch.simulator import publish

    options = _producer_options(args.producer_opt)
    kafka = replace(load_settings(args.config).kafka, bootstrap=args.bootstrap)
    with SwitchPublisher(kafka, args.topic, options) as publisher:
        publish(items, publisher, args.pace)
        stats = publisher.stats
    return (
        f"kafka {args.topic}@{args.bootstrap}: {stats.events} events, {stats.tick_records} "
        f"tick records, {stats.delivered} delivered"
    )


def _check_args(args: argparse.Namespace) -> None:
    from pipeline.switch.simulator import SimulationError

    if args.jsonl is None and not args.bootstrap:
        raise SimulationError(
            "nothing to do: give --jsonl OUT.jsonl, --bootstrap HOST:PORT or both"
        )
    if args.pace is not None and not args.bootstrap:
        raise SimulationError("--pace paces publishing to Kafka; it needs --bootstrap")
    if args.producer_opt and not args.bootstrap:
        raise SimulationError("--producer-opt needs --bootstrap")


def _simulate(args: argparse.Namespace) -> int:
    from pipeline.core.config import load_config
    from pipeline.switch.simulator import FaultMix, SimStats, generate, write_jsonl

    _check_args(args)
    config = load_config(args.config)
    faults = FaultMix.parse(args.faults) if args.faults is not None else FaultMix()
    start_ms = args.start_ms if args.start_ms is not None else int(time.time()) * 1000
    stats = SimStats()
    items = generate(
        config,
        calls=args.calls,
        switches=args.switches,
        rate_cps=args.rate_cps,
        seed=args.seed,
        start_ms=start_ms,
        faults=faults,
        stats=stats,
        final_tick=not args.no_final_tick,
    )
    log.info(
        "simulate: %s calls, seed %s, start_ms %s, faults %s",
        args.calls,
        args.seed,
        start_ms,
        faults.describe(),
    )
    began = time.monotonic()
    outputs = []
    if args.bootstrap:
        if args.jsonl is not None:
            with _open_jsonl(args.jsonl) as handle:
                outputs.append(_publish(args, _tee(items, handle)))
            outputs.insert(0, f"jsonl {args.jsonl}")
        else:
            outputs.append(_publish(args, items))
    else:
        write_jsonl(items, args.jsonl)
        outputs.append(f"jsonl {args.jsonl}")
    elapsed = max(time.monotonic() - began, 1e-9)
    print(
        f"simulate: {stats.calls} calls, {stats.events} events, {stats.ticks} ticks "
        f"(seed {args.seed}, start_ms {start_ms}, final tick {stats.final_tick_ms}); "
        f"faults: {stats.faults_text()}; {'; '.join(outputs)}; "
        f"{elapsed:.1f}s, {stats.events / elapsed:.0f} events/s"
    )
    return 0
