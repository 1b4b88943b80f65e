"""Two of Faust's per-record costs the worker does without, through Faust's own
extension points.

- `RawRecords`, the call-events topic's schema: the agent decodes records itself
  (codec, billing core), so Faust hands key and value over as the bytes they are,
  without a pass through its serializer registry per record.
- `LeanMonitor`: Faust's default monitor keeps per-record statistics (messages in
  and out, per-stream event counts and timings) for its web views, which the
  worker does not run. The worker's Prometheus metrics say what operators need;
  the per-partition and commit bookkeeping Faust itself reads is kept.
"""

from __future__ import annotations

from typing import Any

import faust
from faust.sensors import Monitor


class RawRecords(faust.Schema):  # type: ignore[type-arg]
    def compile(self, app: Any, *, on_key_decode_error: Any = None,
                on_value_decode_error: Any = None, default_propagate: bool = False) -> Any:
        create_event = app.create_event

        async def decode(message: Any, *, propagate: bool = default_propagate) -> Any:
            return create_event(message.key, message.value, message.headers, message)

        return decode


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
