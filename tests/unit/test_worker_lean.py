"""Faust extension points the worker uses to skip per-record work it does not need."""

from __future__ import annotations

import asyncio
from pathlib import Path

import faust
from faust.types import TP, Message

from pipeline.worker.lean import LeanMonitor, RawRecords


def test_raw_records_hand_over_key_and_value_as_the_bytes_they_are() -> None:
    app = faust.App("unit-lean", broker="kafka://127.0.0.1:1", web_enabled=False)
    topic = app.topic("call-events", schema=RawRecords())
    value = bytes(range(256))  # not UTF-8, not JSON: nothing may try to decode it
    message = Message("call-events", 1, 7, 0.0, 0, [("h", b"1")], b"call-1", value, None)
    event = asyncio.run(topic.decode(message))
    assert (event.key, event.value, event.message) == (b"call-1", value, message)
    assert event.headers == {"h": b"1"}


def test_lean_monitor_keeps_the_bookkeeping_faust_reads() -> None:
    monitor = LeanMonitor()
    tp = TP("call-events", 0)
    monitor.track_tp_end_offset(tp, 42)
    monitor.on_tp_commit({tp: 40})
    assert monitor.tp_end_offsets[tp] == 42 and monitor.tp_committed_offsets[tp] == 40
    # Per-record hooks record nothing (and keep no reference to the message).
    monitor.on_message_in(tp, 41, object())
    assert monitor.messages_received_total == 0 and monitor.tp_read_offsets == {}


def test_the_worker_app_uses_both() -> None:
    from pipeline.core.config import load_config
    from pipeline.settings import load_settings
    from pipeline.worker.app import create_app

    root = Path(__file__).resolve().parents[2]
    settings = load_settings(root / "deploy" / "config" / "pipeline.toml", env={})
    app = create_app(settings, load_config(root / "deploy" / "demo" / "demo.toml"))
    assert isinstance(app.monitor, LeanMonitor)
    topic = app.correlate_agent.channel
    assert isinstance(topic.schema, RawRecords)
    assert topic.get_topic_name() == settings.kafka.call_events
