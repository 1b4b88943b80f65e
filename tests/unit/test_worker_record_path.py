"""The worker's record path without a broker: records in (topic, partition, offset, key,
value, headers), what to write out. Replay after a rebalance, the in-order guard, dead
letters with their reasons, ticks, and errors that must not be taken for bad records.

The table is a dict that the test fills with the record path's own table writes, as
Faust's table holds them after recovery from the changelog."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pipeline.avro import codec
from pipeline.core.events import CallEvent
from pipeline.kafka.dead_letters import (
    CATEGORY,
    REASON,
    SOURCE_OFFSET,
    SOURCE_PARTITION,
    SOURCE_TOPIC,
)
from pipeline.worker import changelog, record_path
from pipeline.worker.record_path import PartitionOutput, RecordPath
from tests.unit.builders import T0, call, make_config

TOPIC = "call-events"


@dataclass
class Rec:
    """A consumed record as the record path reads it."""

    partition: int
    offset: int
    value: bytes | None
    key: bytes | None = None
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    topic: str = TOPIC


def event(partition: int, offset: int, e: CallEvent) -> Rec:
    return Rec(partition, offset, codec.encode_event(e), e.call_id.encode())


def tick(partition: int, offset: int, ts_ms: int) -> Rec:
    return Rec(partition, offset, codec.encode_tick(ts_ms), None,
               [(codec.RECORD_HEADER, codec.TICK)])


def records(partition: int, events: list[CallEvent], first: int = 0) -> list[Rec]:
    return [event(partition, first + n, e) for n, e in enumerate(events)]


class Table(dict[str, Any]):
    """The `calls` table: what the driver writes from each output's changelog."""

    def apply(self, out: PartitionOutput) -> None:
        for write in out.changelog:
            if write.value is None:
                self.pop(write.call_id, None)
            else:
                self[write.call_id] = write.value


@pytest.fixture
def config(tmp_path: Path) -> Any:
    return make_config(tmp_path)


def _path(config: Any, table: Table, **started: int) -> RecordPath:
    path = RecordPath(config, table.values)
    for partition, offset in started.items():
        path.start(int(partition[1:]), offset)
    return path


def _headers(cdr: tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]) -> dict[str, bytes]:
    return dict(cdr[2])


def test_a_call_s_events_give_its_cdr_with_the_pinned_start_and_one_table_write(
        config: Any) -> None:
    table = Table()
    path = _path(config, table, p2=0)
    out = path.process(2, records(2, call("c1")))

    assert out.seek_to is None and out.refused == [] and out.dead_letters == []
    assert out.last.offset == 3
    assert out.records_in == {"event": 4}
    [(key, value, headers)] = out.cdrs
    cdr = codec.decode_cdr(value)  # type: ignore[arg-type]
    assert key == b"c1" and cdr.call_id == "c1" and cdr.status == "COMPLETE"
    assert out.cdrs_out == {cdr.record_decision: 1}
    assert dict(headers) == {codec.CALL_START_HEADER: str(T0).encode()}
    # The call changed four times in the batch: written once, on the partition.
    [write] = out.changelog
    assert write.call_id == "c1" and write.value is not None
    assert changelog.decode_value(write.value)[0] == 2
    key_bytes, value_bytes, _ = write.record
    assert key_bytes == b'"c1"' and value_bytes == write.value
    assert path.stats(2) == (1, 0, T0 + 63_000)


def test_replay_after_a_rebalance_resends_what_was_emitted_from_the_resume_offset(
        config: Any) -> None:
    table = Table()
    first_owner = _path(config, table, p0=0)
    events = call("c1") + call("c2", answer_after_ms=None)
    done = first_owner.process(0, records(0, events))
    table.apply(done)
    by_call = {key: value for key, value, _ in done.cdrs}
    assert set(by_call) == {b"c1", b"c2"}  # c1 emitted at offset 3, c2 at offset 6

    # The group had committed offset 4 when the partition moved: c2's CDR (emitted at 6)
    # may not have been delivered; c1's (at 3) was, before the commit.
    second_owner = _path(config, table, p0=4)
    again = second_owner.process(0, records(0, events[4:], first=4))
    assert again.reemitted == 1
    assert [(key, value) for key, value, _ in again.cdrs] == [(b"c2", by_call[b"c2"])]
    assert _headers(again.cdrs[0]) == _headers(next(c for c in done.cdrs if c[0] == b"c2"))
    assert again.records_in == {"event": 3}  # the replayed events changed nothing
    assert again.changelog == []
    # Restored from the table: both calls, none open, event time where it was.
    assert second_owner.stats(0) == first_owner.stats(0)
    assert second_owner.stats(0) == (2, 0, T0 + 63_000)


def test_nothing_is_resent_from_a_resume_offset_past_every_emission(config: Any) -> None:
    table = Table()
    events = call("c1")
    table.apply(_path(config, table, p1=0).process(1, records(1, events)))
    later = _path(config, table, p1=4)
    out = later.process(1, [tick(1, 4, T0)])
    assert out.reemitted == 0 and out.cdrs == []


def test_a_revoked_and_reassigned_partition_is_restored_and_replayed_again(config: Any) -> None:
    table = Table()
    path = _path(config, table, p0=0)
    out = path.process(0, records(0, call("c1")))
    table.apply(out)
    path.revoke({0})
    assert not path.started(0) and path.stats(0) is None
    path.start(0, 3)  # committed up to the HANGUP, not past it
    again = path.process(0, records(0, call("c1")[3:], first=3))
    assert again.reemitted == 1 and [c[1] for c in again.cdrs] == [out.cdrs[0][1]]


def test_in_order_folds_contiguous_records_and_passes_over_redeliveries(config: Any) -> None:
    path = _path(config, Table(), p0=2)
    events = call("c1")
    out = path.process(0, records(0, events))  # offsets 0..3; 0 and 1 were folded before
    assert [r.offset for r in out.refused] == [] and out.seek_to is None
    assert out.records_in == {"event": 2}
    assert out.last.offset == 3 and path.expected(0) == 4


def test_a_gap_refuses_later_records_and_sends_the_consumer_back_until_refetched(
        config: Any) -> None:
    path = _path(config, Table(), p2=0)
    events = call("c1")
    stale = records(2, events, first=2000)
    out = path.process(2, stale[:3])
    assert out.refused == stale[:3] and out.seek_to == 0
    assert out.last is None and out.cdrs == [] and out.changelog == [] and out.records_in == {}
    assert path.stats(2) is None  # nothing folded: the partition is not even restored yet
    # More stale records before the re-fetch arrives: refused, and sent back again.
    out = path.process(2, stale[3:])
    assert out.refused == stale[3:] and out.seek_to == 0
    # The re-fetch from 0 is folded; a stale record in the same batch is refused.
    refetched = records(2, events)
    out = path.process(2, [*refetched[:2], stale[0], *refetched[2:]])
    assert out.refused == [stale[0]] and out.seek_to == 4
    assert out.last is refetched[-1] and [c[0] for c in out.cdrs] == [b"c1"]
    assert path.expected(2) == 4


def test_a_partition_must_be_started_at_its_resume_offset(config: Any) -> None:
    path = _path(config, Table())
    with pytest.raises(RuntimeError, match="partition 1 was not started"):
        path.process(1, records(1, call("c1")))


def test_bad_records_go_to_dead_letters_with_their_reason_and_the_stream_goes_on(
        config: Any) -> None:
    path = _path(config, Table(), p1=10)
    good = call("c1")
    wrong_key = event(1, 11, good[1])
    wrong_key.key = b"someone-else"
    batch = [
        Rec(1, 10, b"\x00not avro", b"c9"),
        wrong_key,
        tick(1, 12, 0),
        Rec(1, 13, b"yesterday", None, [(codec.RECORD_HEADER, codec.TICK)]),
        *records(1, good, first=14),
    ]
    out = path.process(1, batch)

    reasons = [(d.category, d.source) for d in out.dead_letters]
    assert reasons == [("undecodable", "call-events[1]@10"),
                       ("bad call_id", "call-events[1]@11"),
                       ("undecodable", "call-events[1]@13")]
    first, wrong, bad_tick = out.dead_letters
    assert (first.key, first.value) == (b"c9", b"\x00not avro")  # sent on unchanged
    headers = dict(first.headers)
    assert headers[CATEGORY] == b"undecodable" and headers[REASON] == first.reason.encode()
    assert (headers[SOURCE_TOPIC], headers[SOURCE_PARTITION], headers[SOURCE_OFFSET]) == (
        b"call-events", b"1", b"10")
    assert "someone-else" in wrong.reason and "'c1'" in wrong.reason
    assert "tick record value b'yesterday'" in bad_tick.reason
    # The good call after them is folded, and every record counted by kind.
    assert [c[0] for c in out.cdrs] == [b"c1"] and out.last.offset == 17
    assert out.records_in == {"event": 6, "tick": 2}


def test_an_event_too_late_to_place_is_a_dead_letter(config: Any) -> None:
    path = _path(config, Table(), p0=0)
    retention_ms = config.policy.closed_retention_s * 1000
    # The call's last event (HANGUP at T0 + 63 s) is older than the retention behind
    # the watermark: none of its events can be placed.
    out = path.process(0, [tick(0, 0, T0 + 63_000 + retention_ms),
                           *records(0, call("old"), first=1)])
    assert [d.category for d in out.dead_letters] == ["late"] * 4
    assert "more than closed_retention_s behind" in out.dead_letters[0].reason
    assert out.cdrs == [] and out.changelog == []


def test_a_tick_moves_event_time_and_closes_a_stale_call(config: Any) -> None:
    table = Table()
    path = _path(config, table, p0=0)
    opened = path.process(0, records(0, call("c1", skip=("HANGUP",))))
    assert opened.cdrs == [] and path.stats(0) == (1, 1, T0 + 2_000)
    policy = config.policy
    stale_at = T0 + 2_000 + (policy.max_call_duration_s + policy.reorder_grace_s) * 1000

    out = path.process(0, [tick(0, 3, stale_at - 1)])
    assert out.cdrs == [] and out.records_in == {"tick": 1}
    out = path.process(0, [tick(0, 4, stale_at)])
    [(key, value, _)] = out.cdrs
    assert key == b"c1" and codec.decode_cdr(value).status == "HANGUP_MISSING"  # type: ignore[arg-type]
    assert [w.call_id for w in out.changelog] == ["c1"]
    assert path.stats(0) == (1, 0, stale_at)
    # Emitted by the tick at offset 4: a replay from 4 re-sends it, from 5 does not.
    table.apply(opened)
    table.apply(out)
    assert _path(config, table, p0=4).process(0, [tick(0, 4, stale_at)]).reemitted == 1
    assert _path(config, table, p0=5).process(0, [tick(0, 5, stale_at)]).reemitted == 0


def test_an_error_that_is_not_a_bad_record_propagates(config: Any,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug must crash the worker (unacknowledged batch, folded again after a restart),
    never be dead-lettered as if the record were bad."""

    def broken(raw: Any) -> CallEvent:
        raise RuntimeError("a bug in the core")

    path = _path(config, Table(), p0=0)
    monkeypatch.setattr(record_path, "parse_event", broken)
    with pytest.raises(RuntimeError, match="a bug in the core"):
        path.process(0, records(0, call("c1")))
