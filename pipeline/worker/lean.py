"""Faust's per-record monitoring, which the worker does without.

`LeanMonitor`, through Faust's own extension point (the app's `monitor`): Faust's
default monitor keeps per-record statistics (messages in and out, per-stream event
counts and timings) for its web views, which the worker does not run. The worker's
Prometheus metrics say what operators need; the per-partition and commit bookkeeping
Faust itself reads is kept.

The fetch loop's two tasks per record, which Faust has no extension point for, are
skipped by `faust_compat.deliver_without_tasks`; the call-events records themselves
skip Faust's stream delivery (handoff.py).
"""

from __future__ import annotations

from typing import Any

from faust.sensors import Monitor


class LeanMonitor(Monitor):
    def on_message_in(self, tp: Any, offset: int, message: Any) -> None:
        return None

    def on_stream_event_in(self, tp: Any, offset: int, stream: Any, event: Any) -> None:
        return None

    def on_stream_event_out(self, tp: Any, offset: int, stream: Any, event: Any,
                            state: Any = None) -> None:
        return None

    def on_message_out(self, tp: Any, offset: int, message: Any) -> None:
        return None

    def on_send_initiated(self, producer: Any, topic: str, message: Any, keysize: int,
                          valsize: int) -> None:
        return None

    def on_send_completed(self, producer: Any, state: Any, metadata: Any) -> None:
        return None
