"""Shares of a re-rating run in worker processes (one per share, forked).

Rating is pure Python and holds the GIL, so more cores need more processes. Each
worker opens its own ClickHouse (and Kafka) connections, re-rates its share, writes
its changes, and sends its progress now and then and its result (counts, delta
report, samples) at the end over a queue. The parent keeps the run record, the
progress display and the heartbeat. Any worker failing fails the run (the others are
stopped); the run is then resumed like any interrupted run.
"""

from __future__ import annotations

import logging
import multiprocessing
import queue
import time
import traceback
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from pipeline.errors import PipelineError
from pipeline.rerate.connect import Connector

if TYPE_CHECKING:
    from pipeline.rerate.kafka_source import KafkaReplayOptions
    from pipeline.rerate.runner import RerateRequest, RerateResult, Shard

log = logging.getLogger(__name__)

# runner.run_share: (request, connector, shard, run_id, previous, kafka, report, stored)
ShareFn = Callable[..., "RerateResult"]

REPORT_EVERY_S = 0.5


class WorkerFailed(PipelineError):
    """A worker process of a re-rating run failed; the message carries its error."""


def _child(
    share: ShareFn,
    request: RerateRequest,
    connector: Connector,
    shard: Shard,
    run_id: str | None,
    previous: dict[str, tuple[Any, ...]],
    kafka: KafkaReplayOptions | None,
    out: Any,
    stored: dict[str, tuple[Any, ...]] | None,
) -> None:
    last = [0.0]

    def report(done: int, changed: int) -> None:
        now = time.monotonic()
        if now - last[0] >= REPORT_EVERY_S:
            last[0] = now
            out.put(("progress", shard.index, done, changed))

    try:
        result = share(request, connector, shard, run_id, previous, kafka, report, stored)
        out.put(("done", shard.index, result))
    except KeyboardInterrupt:
        out.put(("error", shard.index, "interrupted"))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        log.debug("worker %s failed", shard.index, exc_info=True)
        text = f"{type(exc).__name__}: {exc}"
        out.put(("error", shard.index, text, traceback.format_exc()))


def _check_alive(procs: Sequence[Any], results: dict[int, Any]) -> None:
    for index, proc in enumerate(procs):
        if index not in results and not proc.is_alive() and proc.exitcode not in (0, None):
            raise WorkerFailed(f"worker {index} died (exit code {proc.exitcode})")


def run_in_processes(
    share: ShareFn,
    request: RerateRequest,
    connector: Connector,
    shards: Sequence[Shard],
    run_id: str | None,
    previous: dict[str, tuple[Any, ...]],
    kafka: KafkaReplayOptions | None,
    report: Callable[[int, int, int], None],
    stored: dict[str, tuple[Any, ...]] | None = None,
) -> list[RerateResult]:
    """Run `share` (runner.run_share, passed in so that this module does not import the
    runner that calls it) for every shard in a forked process; return their results in
    shard order."""
    context = multiprocessing.get_context("fork")
    out = context.Queue()
    procs = [
        context.Process(
            target=_child,
            name=f"rerate-worker-{s.index}",
            args=(share, request, connector, s, run_id, previous, kafka, out, stored),
            daemon=True,
        )
        for s in shards
    ]
    results: dict[int, RerateResult] = {}
    try:
        for proc in procs:
            proc.start()
        while len(results) < len(procs):
            try:
                message = out.get(timeout=1.0)
            except queue.Empty:
                _check_alive(procs, results)
                continue
            kind, index = message[0], message[1]
            if kind == "progress":
                report(index, message[2], message[3])
            elif kind == "done":
                results[index] = message[2]
            else:
                if message[2] == "interrupted":
                    raise KeyboardInterrupt
                log.debug("worker %s traceback:\n%s", index, message[3] if len(message) > 3 else "")
                raise WorkerFailed(f"worker {index}: {message[2]}")
    finally:
        for proc in procs:
            if proc.is_alive() and proc.pid is not None:
                proc.join(timeout=0 if len(results) < len(procs) else 10)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
        out.close()
    return [results[s.index] for s in shards]
