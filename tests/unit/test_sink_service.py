"""The sink's loop without Kafka or ClickHouse: storing, batching, ordering, commits,
dead letters, the client factory. Fakes: tests/unit/sink_fakes.py; the same
behaviour against the real broker and server: tests/integration/test_sink.py."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError

from pipeline.avro.codec import CALL_START_HEADER
from pipeline.kafka import dead_letters
from pipeline.sink.clients import consumer_conf, producer_conf
from pipeline.sink.service import SinkError
from tests.unit.sink_fakes import Rig, cdr_value


def test_every_record_is_stored_once_and_committed_only_once_stored() -> None:
    rig = Rig(partitions=2)
    rig.append_cdrs(0, "a0", "a1", "a2")
    rig.append_cdrs(1, "b0", "b1")
    rig.consumer.commit_probe = lambda: len(rig.inserter.stored)

    stats = rig.run_until_idle()

    assert sorted(rig.inserter.call_ids()) == ["a0", "a1", "a2", "b0", "b1"]
    assert stats.rows_inserted == 5 and stats.dead_lettered == 0
    assert rig.consumer.group_offsets == {rig.key(0): 3, rig.key(1): 2}
    for offsets, stored_then in rig.consumer.commits:  # never ahead of what is stored
        assert sum(offsets.values()) <= stored_then
    assert rig.consumer.closed
    assert rig.metric("cdr_sink_rows_total") == 5


def test_full_batches_go_in_one_at_a_time_and_are_committed_in_order() -> None:
    rig = Rig(partitions=1, batch_rows=4)
    rig.append_cdrs(0, *(f"c{i}" for i in range(10)))
    rig.consumer.commit_probe = lambda: len(rig.inserter.stored)

    rig.run_until(lambda: rig.consumer.group_offsets.get(rig.key(0)) == 10)

    assert [rows for _, rows in rig.inserter.attempts] == [4, 4, 2]
    assert [(offsets[rig.key(0)], stored) for offsets, stored in rig.consumer.commits] == [
        (4, 4), (8, 8), (10, 10)]
    assert rig.inserter.call_ids() == [f"c{i}" for i in range(10)]  # in offset order
    tokens = [token for token, _ in rig.inserter.attempts]
    assert len(set(tokens)) == 3


def _append_once_the_first_is_committed(rig: Rig, seen: dict[str, int], *call_ids: str) -> None:
    """Append `call_ids` to partition 0 once its first CDR is committed (once)."""
    if rig.consumer.group_offsets.get(rig.key(0)) == 1 and "appended" not in seen:
        rig.append_cdrs(0, *call_ids)
        seen["appended"] = 1


def test_a_partial_batch_goes_in_early_once_caught_up_then_waits_its_turn() -> None:
    rig = Rig(partitions=1, batch_rows=1000, batch_seconds=3600.0)
    rig.append_cdrs(0, "first")
    seen: dict[str, int] = {}

    def done() -> bool:
        _append_once_the_first_is_committed(rig, seen, "second")
        if "appended" in seen and rig.service.pending_rows == 1:
            seen["batches_then"] = rig.service.stats.batches
            return True
        return False

    stats = rig.run_until(done)

    assert seen["batches_then"] == 1  # the second partial batch waited (until the stop)
    assert stats.batches == 2 and rig.inserter.call_ids() == ["first", "second"]
    assert rig.consumer.group_offsets == {rig.key(0): 2}


def test_with_no_insert_gap_the_next_partial_batch_goes_in_once_the_insert_before_is_done(
) -> None:
    rig = Rig(partitions=1, batch_rows=1000, batch_seconds=3600.0, insert_gap_s=0.0)
    rig.append_cdrs(0, "first")
    seen: dict[str, int] = {}

    def done() -> bool:
        _append_once_the_first_is_committed(rig, seen, "second", "third")
        return rig.consumer.group_offsets.get(rig.key(0)) == 3

    rig.run_until(done, fake_seconds=60.0)  # well before batch_seconds

    assert [rows for _, rows in rig.inserter.attempts] == [1, 2]
    assert rig.inserter.call_ids() == ["first", "second", "third"]


def test_the_insert_gap_spaces_partial_batches() -> None:
    rig = Rig(partitions=1, batch_rows=1000, batch_seconds=3600.0, insert_gap_s=30.0)
    rig.append_cdrs(0, "first")
    seen: dict[str, int] = {}

    def done() -> bool:
        _append_once_the_first_is_committed(rig, seen, "second")
        return rig.consumer.group_offsets.get(rig.key(0)) == 2

    rig.run_until(done, fake_seconds=600.0)

    first, second = rig.inserter.attempted_at
    assert second - first >= 30.0


def test_fetches_wait_for_a_batch_of_records_unless_told_otherwise() -> None:
    rig = Rig(partitions=1, fetch_min_bytes=1000, fetch_max_wait_ms=20)
    conf = consumer_conf(rig.config)
    assert conf["fetch.min.bytes"] == 1000 and conf["fetch.wait.max.ms"] == 20
    extra = Rig(partitions=1, consumer_config={"fetch.wait.max.ms": 5})
    assert consumer_conf(extra.config)["fetch.wait.max.ms"] == 5  # extra keys win
    with pytest.raises(SinkError, match="fetch"):
        Rig(partitions=1, fetch_min_bytes=0)
    with pytest.raises(SinkError, match="insert gap"):
        Rig(partitions=1, insert_gap_s=-1.0)


def test_undecodable_records_go_to_the_dead_letter_topic_with_the_shared_header_names() -> None:
    rig = Rig(partitions=1)
    rig.consumer.append(rig.topic, 0, cdr_value("good-1"))
    rig.consumer.append(rig.topic, 0, b"not avro at all", key=b"bad-1")
    rig.consumer.append(rig.topic, 0, None)  # a tombstone: skipped, not a dead letter
    rig.consumer.append(rig.topic, 0, cdr_value("bad-header"),
                        headers=[(CALL_START_HEADER, b"soon")])
    rig.consumer.append(rig.topic, 0, cdr_value("good-2"))
    rig.producer.buffer_full = 2  # the local queue is full twice: produce is retried
    rig.consumer.commit_probe = lambda: len(rig.producer.delivered)

    stats = rig.run_until_idle()

    assert rig.inserter.call_ids() == ["good-1", "good-2"]
    assert stats.dead_lettered == 2 and rig.metric("cdr_sink_dlq_total") == 2
    letters = rig.producer.delivered
    assert [(m["topic"], m["key"]) for m in letters] == [(rig.dlq, b"bad-1"), (rig.dlq, b"k")]
    assert letters[0]["value"] == b"not avro at all"  # unchanged
    assert letters[1]["value"] == cdr_value("bad-header")
    names = {dead_letters.REASON, dead_letters.CATEGORY, dead_letters.SOURCE_TOPIC,
             dead_letters.SOURCE_PARTITION, dead_letters.SOURCE_OFFSET}
    for letter, offset in zip(letters, (1, 3), strict=True):
        assert set(letter["headers"]) == names
        assert letter["headers"][dead_letters.SOURCE_TOPIC] == rig.topic.encode()
        assert letter["headers"][dead_letters.SOURCE_PARTITION] == b"0"
        assert letter["headers"][dead_letters.SOURCE_OFFSET] == str(offset).encode()
    assert [m["headers"][dead_letters.CATEGORY] for m in letters] == [
        b"undecodable", f"bad {CALL_START_HEADER}".encode()]
    assert b"magic" in letters[0]["headers"][dead_letters.REASON]
    assert CALL_START_HEADER.encode() in letters[1]["headers"][dead_letters.REASON]
    # the dead letters' offsets are committed with their batch, once delivered
    assert rig.consumer.group_offsets == {rig.key(0): 5}
    assert all(delivered == 2 for _, delivered in rig.consumer.commits)


def test_a_dead_letter_that_cannot_be_delivered_stops_the_sink_without_a_commit() -> None:
    rig = Rig(partitions=1)
    rig.append_cdrs(0, "good")
    rig.consumer.append(rig.topic, 0, b"garbage")
    rig.producer.failure = KafkaError(KafkaError._MSG_TIMED_OUT)

    with pytest.raises(SinkError, match=f"could not be written to {rig.dlq}.*not committed"):
        rig.run_until_idle()

    assert rig.consumer.group_offsets == {}
    assert rig.consumer.closed


def test_a_failed_commit_is_sent_again_with_the_next_one() -> None:
    rig = Rig(partitions=2, batch_rows=2)
    rig.append_cdrs(0, "a0", "a1")
    rig.append_cdrs(1, "b0", "b1")
    rig.consumer.commit_failures = 1

    rig.run_until_idle()

    first, _ = rig.consumer.commits[0]  # the first that went through carries both
    assert first == {rig.key(0): 2, rig.key(1): 2}
    assert rig.service.stats.commits == len(rig.consumer.commits)


def test_a_commit_that_failed_last_is_sent_again_at_the_stop() -> None:
    rig = Rig(partitions=1)
    rig.append_cdrs(0, "a0", "a1")
    rig.consumer.commit_failures = 1

    rig.run_until(lambda: rig.consumer.commit_failures == 0 and rig.service.pending_rows == 0)

    assert [offsets for offsets, _ in rig.consumer.commits] == [{rig.key(0): 2}]
    assert rig.consumer.group_offsets == {rig.key(0): 2}


def test_the_clients_come_from_the_factory_with_the_whole_kafka_settings() -> None:
    rig = Rig(partitions=1)
    rig.run_until_idle()

    kinds = [(kind, kafka) for kind, kafka, _ in rig.clients.asked]
    assert kinds == [("consumer", rig.config.kafka), ("producer", rig.config.kafka)]
    consumer, producer = (conf for _, _, conf in rig.clients.asked)
    assert consumer == consumer_conf(rig.config) and producer == producer_conf(rig.config)
    assert consumer["enable.auto.commit"] is False
    assert consumer["isolation.level"] == "read_committed"
    assert producer["acks"] == "all" and producer["enable.idempotence"] is True
    # connection settings are client_config's alone (pipeline/kafka/clients.py)
    for conf in (consumer, producer):
        assert not [k for k in conf if k.startswith(("bootstrap", "security", "sasl", "ssl"))]


def test_a_missing_dead_letter_topic_is_named_at_start() -> None:
    rig = Rig(partitions=1)
    del rig.consumer.partitions[rig.dlq]

    with pytest.raises(SinkError, match=f"topic {rig.dlq} is not usable on fake:9092"):
        rig.run_until_idle()

    assert rig.consumer.closed


def test_a_sink_runs_once() -> None:
    rig = Rig(partitions=1)
    rig.run_until_idle()
    with pytest.raises(SinkError, match="runs once"):
        rig.service.run(lambda: True)


def test_the_next_batch_is_read_while_an_insert_is_under_way_but_not_inserted() -> None:
    import threading

    rig = Rig(partitions=1, batch_rows=3)
    rig.append_cdrs(0, *(f"c{i}" for i in range(9)))
    rig.inserter.gate = threading.Event()
    seen: dict[str, object] = {}

    def done() -> bool:
        if rig.inserter.gate is not None and not rig.inserter.gate.is_set() and (
                rig.inserter.inserting.is_set() and rig.service.pending_rows == 6):
            seen["attempts"] = len(rig.inserter.attempts)
            seen["committed"] = dict(rig.consumer.group_offsets)
            rig.inserter.gate.set()
        return rig.consumer.group_offsets.get(rig.key(0)) == 9

    rig.run_until(done)

    assert seen == {"attempts": 1, "committed": {}}  # reading on, one insert, no commit
    assert [offsets[rig.key(0)] for offsets, _ in rig.consumer.commits] == [3, 6, 9]
    assert rig.inserter.call_ids() == [f"c{i}" for i in range(9)]


def test_run_until_idle_times_out_after_a_clean_stop() -> None:
    rig = Rig(partitions=1)
    rig.append_cdrs(0, "never-stored")
    rig.inserter.outages = 10**6

    with pytest.raises(TimeoutError, match="not idle within 30"):
        rig.service.run_until_idle(idle_s=1.0, timeout_s=30)

    assert rig.consumer.closed and rig.consumer.group_offsets == {}
