"""The worker's record path: one partition's share of a batch in, what to write out.

Given call-events records (topic, partition, offset, key, value, headers) it folds
them into the partition's Correlator and returns a PartitionOutput: the CDR records
(with the call's pinned start in a header), the dead letters with their reasons, the
changed calls as table writes, the records refused by the in-order guard and the
offset to send the consumer back to. It holds everything the delivery guarantees of
docs/streaming.md rest on:

- *Replay after an assignment.* A partition starts at its resume offset (`start`:
  where the consumer group resumes it). When its first records are folded, its calls
  are restored from the table and the last CDR of every call emitted from the resume
  offset on is sent again (same version, same content), so a crash between the
  changelog write and the CDR send loses nothing.
- *In offset order, none skipped.* Only the record with the next expected offset is
  folded; an earlier one (a re-delivery) is passed over; a later one means records
  are missing: it is refused (never to be acknowledged, so no commit passes the
  missing ones) and the consumer must be sent back to the expected offset.
- *Dead letters.* A record that is not a valid CallEvent, a bad tick, or an event too
  late to place goes out unchanged with the reason; the stream keeps going. Any other
  error is a bug: it propagates, nothing of the batch is written, and the driver
  crashes the app without acknowledging the batch, so a restart folds it again.
- *Ticks.* A tick record moves the partition's event time (`Correlator.advance`).

No Faust, no Kafka I/O, no clock: the driver (driver.py) does the I/O, and the
unit tests (tests/unit/test_worker_record_path.py) run this without a broker.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, NamedTuple, Protocol

from pipeline.avro import codec
from pipeline.core.cdr import RatedCdr
from pipeline.core.config import BillingConfig
from pipeline.core.correlator import Correlator, newest_ts_ms
from pipeline.core.events import parse_event
from pipeline.errors import InvalidEvent
from pipeline.kafka.dead_letters import dead_letter_headers
from pipeline.worker.call_store import CallStore, TableWrite
from pipeline.worker.produce import Headers, Record

log = logging.getLogger(__name__)

# Called for every record: looked up once.
is_tick, decode_tick, decode_event_dict = codec.is_tick, codec.decode_tick, codec.decode_event_dict
_offset = attrgetter("offset")


class InputRecord(Protocol):
    """What the record path reads of a consumed record (Faust's Message has it)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Any: ...


class DeadLetter(NamedTuple):
    """A record for the dead-letter topic: the input's key and value, reason headers."""

    key: bytes | None
    value: bytes
    headers: Headers
    category: str
    reason: str
    source: str  # "topic[partition]@offset", for the log


@dataclass
class PartitionOutput:
    """What one partition's share of a batch asks for, to be done in this order:
    send the consumer back (`seek_to`; `refused` are never acknowledged), send
    `dead_letters`, send `cdrs` to the partition of cdrs, write `changelog` to the
    table and its partition (with `last` as Faust's current event). Only then may the
    `folded` offsets be acknowledged."""

    partition: int
    seek_to: int | None = None  # records are missing from here: send the consumer back
    refused: list[Any] = field(default_factory=list)  # after the gap: never acknowledge
    last: Any = None  # the last record folded (None: none was)
    folded: tuple[int, int] | None = None  # offsets first .. end - 1 were folded: acknowledge
    dead_letters: list[DeadLetter] = field(default_factory=list)
    cdrs: list[Record] = field(default_factory=list)  # re-sent ones first, then new ones
    changelog: list[TableWrite] = field(default_factory=list)
    records_in: Counter[str] = field(default_factory=Counter)  # by kind: event, tick
    cdrs_out: Counter[str] = field(default_factory=Counter)  # by record decision
    reemitted: int = 0


class PartitionStats(NamedTuple):
    table_calls: int
    open_calls: int
    watermark_ms: int


@dataclass
class _Held:
    correlator: Correlator
    store: CallStore


class RecordPath:
    """The record path of the worker's assigned partitions of call-events.

    `table_values` returns the values of the recovered `calls` table (every
    partition's, in either changelog format): a partition's calls are restored from
    them when it is first folded. Changed calls are written in `changelog_format`
    (changelog.FORMATS).
    """

    def __init__(self, config: BillingConfig, table_values: Callable[[], Iterable[Any]],
                 changelog_format: str = "compact") -> None:
        self._config = config
        self._table_values = table_values
        self._changelog_format = changelog_format  # what changed calls are written in
        self._held: dict[int, _Held] = {}
        # Per started partition: the offset of the record to fold next.
        self._expected: dict[int, int] = {}
        # Per started partition: where replay began (its resume offset).
        self._resumed: dict[int, int] = {}

    def started(self, partition: int) -> bool:
        return partition in self._expected

    def start(self, partition: int, resume_offset: int) -> None:
        """Begin `partition` at `resume_offset`: where the consumer group resumes it
        (the committed offset, else the log start)."""
        self._expected[partition] = resume_offset
        self._resumed[partition] = resume_offset

    def revoke(self, partitions: Iterable[int]) -> None:
        """Forget revoked partitions; another worker (or a later assignment) owns them."""
        for partition in partitions:
            self._held.pop(partition, None)
            self._expected.pop(partition, None)
            self._resumed.pop(partition, None)

    def expected(self, partition: int) -> int | None:
        """The offset of `partition`'s record to fold next (None: not started)."""
        return self._expected.get(partition)

    def process(self, partition: int, records: Sequence[InputRecord]) -> PartitionOutput:
        """Fold `partition`'s records of a batch (in offset order, as fetched)."""
        if partition not in self._expected:
            raise RuntimeError(f"partition {partition} was not started: start() it at its "
                               "resume offset first")
        out = PartitionOutput(partition)
        ready = self._in_order(partition, records, out)
        if not ready:
            return out
        held = self._hold(partition, out)
        correlator, store = held.correlator, held.store
        on_event, parse, decode, ticks = correlator.on_event, parse_event, decode_event_dict, 0
        for record in ready:
            headers = record.headers
            try:
                if headers and is_tick(headers):
                    ticks += 1
                    cdrs = correlator.advance(decode_tick(record.value or b""), record.offset)
                else:  # an event: _fold_event, inline (a call per record less)
                    event = parse(decode(record.value or b""))
                    key = record.key
                    if key and key != event.call_id.encode():
                        raise _key_mismatch(key, event.call_id)
                    cdrs = on_event(event, record.offset)
            except InvalidEvent as exc:
                out.dead_letters.append(_dead_letter(record, exc))
                continue
            if cdrs:
                _encode(cdrs, correlator, out)
        if ticks:
            out.records_in["tick"] = ticks
        if len(ready) > ticks:
            out.records_in["event"] = len(ready) - ticks
        out.last = ready[-1]
        out.folded = (ready[0].offset, ready[-1].offset + 1)
        out.changelog = store.drain()
        return out

    def stats(self, partition: int) -> PartitionStats | None:
        """The partition's gauges (counting open calls walks its calls: not per record)."""
        held = self._held.get(partition)
        if held is None:
            return None
        open_calls = sum(1 for _ in held.correlator.open_calls())
        return PartitionStats(len(held.store), open_calls, held.correlator.watermark_ms)

    def _in_order(self, partition: int, records: Sequence[InputRecord],
                  out: PartitionOutput) -> list[InputRecord]:
        """The records to fold, in offset order from the expected offset on.

        call-events has neither compaction nor transaction markers, so a partition's
        offsets are contiguous. A record before the expected offset was folded already
        (a re-delivery) and is passed over. A record after it means records are
        missing: it is refused, and the consumer must be sent back to the expected
        offset. That is asked after every batch with a refused record: Faust's fetch
        loop may still be handing over stale records fetched before the last seek.
        """
        expected = self._expected[partition]
        count = len(records)
        if list(map(_offset, records)) == list(range(expected, expected + count)):
            # the usual case, every record in order from the expected offset (compared
            # in C: a loop over the records cost 2-3% of the worker's time)
            self._expected[partition] = expected + count
            return list(records)
        ready = []
        for record in records:
            offset = record.offset
            if offset == expected:
                ready.append(record)
                expected += 1
            elif offset > expected:
                out.refused.append(record)
        self._expected[partition] = expected
        if out.refused:
            out.seek_to = expected
        return ready

    def _hold(self, partition: int, out: PartitionOutput) -> _Held:
        """The partition's calls and Correlator; on first use restored from the table,
        with the CDRs to re-send from the resume offset on put into `out`."""
        held = self._held.get(partition)
        if held is not None:
            return held
        store = CallStore(partition, self._changelog_format)
        store.load(list(self._table_values()))
        watermark = newest_ts_ms(store)
        correlator = Correlator(self._config, store, watermark_ms=watermark, freeze=store.freeze)
        held = _Held(correlator, store)
        self._held[partition] = held
        resumed = self._resumed[partition]
        resend = held.correlator.reemit_from(resumed)
        log.info("partition %s assigned: %s calls restored, watermark %s, "
                 "%s CDRs re-sent from offset %s",
                 partition, len(store), watermark, len(resend), resumed)
        if resend:
            out.reemitted = len(resend)
            _encode(resend, correlator, out)
        return held


def _key_mismatch(key: bytes, call_id: str) -> InvalidEvent:
    return InvalidEvent(f"record key {key.decode('utf-8', 'replace')!r} is not the event's "
                        f"call_id {call_id!r}", "call_id")


def _encode(cdrs: list[RatedCdr], correlator: Correlator, out: PartitionOutput) -> None:
    """Each CDR as a record, with its call's pinned start in a header (the sink files
    every version of the call under it)."""
    records, counts, encode = out.cdrs, out.cdrs_out, codec.encode_cdr
    call_start, header = correlator.call_start_ms, codec.call_start_header
    for cdr in cdrs:
        call_id = cdr.call_id
        start = call_start(call_id)
        records.append((call_id.encode(), encode(cdr), [] if start is None else [header(start)]))
        counts[cdr.record_decision] += 1


def _dead_letter(record: InputRecord, exc: InvalidEvent) -> DeadLetter:
    headers = dead_letter_headers(exc.reason, exc.category, record.topic, record.partition,
                                  record.offset)
    return DeadLetter(record.key, record.value or b"", headers, exc.category, exc.reason,
                      f"{record.topic}[{record.partition}]@{record.offset}")
