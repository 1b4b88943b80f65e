"""Optional wall-clock ticks: keep event time moving in partitions without traffic.

A timer may not touch Faust tables, but it may produce records: every
`tick_interval_s` it sends a tick (now - tick_lag_s) to every partition of
call-events, and the agent advances that partition's watermark when it reads it.
Off by default: ticks from the wall clock would close calls early when old
traffic is replayed (docs/streaming.md).
"""

from __future__ import annotations

import time
from typing import Any

from pipeline.avro import codec


def install_ticker(app: Any, settings: Any) -> None:
    interval = settings.worker.tick_interval_s
    if interval <= 0:
        return
    topic = app.topic(settings.kafka.call_events, key_serializer="raw", value_serializer="raw")
    lag_ms = int(settings.worker.tick_lag_s * 1000)

    async def tick() -> None:
        now_ms = int(time.time() * 1000) - lag_ms
        for partition in range(settings.kafka.partitions):
            await topic.send(
                value=codec.encode_tick(now_ms),
                partition=partition,
                headers=[(codec.RECORD_HEADER, codec.TICK)],
            )

    app.timer(interval)(tick)
