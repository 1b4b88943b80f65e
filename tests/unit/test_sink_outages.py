"""ClickHouse outages and rejections, without ClickHouse: an outage pauses consumption and
retries the same batch with backoff until it goes in, committing nothing meanwhile; a
rejection stops the sink. The same against a real server (a relay taken down):
tests/integration/test_sink.py."""

from __future__ import annotations

import pytest

from pipeline.sink.inserter import Backoff
from pipeline.sink.service import SinkError
from tests.unit.sink_fakes import Rig


def test_backoff_doubles_up_to_its_cap_and_starts_over_for_a_new_batch() -> None:
    backoff = Backoff(0.5, 3.0)
    assert [backoff.next_delay() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    backoff.reset()
    assert backoff.next_delay() == 0.5


def test_an_outage_pauses_retries_the_same_batch_and_commits_only_after_it_went_in() -> None:
    rig = Rig(partitions=2, batch_seconds=1.0, backoff_initial_s=0.5, backoff_max_s=2.0)
    rig.append_cdrs(0, "a0", "a1")
    rig.append_cdrs(1, "b0")
    rig.inserter.outages = 4
    during: dict[str, object] = {}

    def done() -> bool:
        if rig.service.stats.insert_retries == 2 and not during:
            during["paused"] = set(rig.consumer.paused)
            during["gauge"] = rig.metric("cdr_sink_paused")
            during["committed"] = dict(rig.consumer.group_offsets)
            during["pending"] = rig.service.pending_rows
            rig.append_cdrs(1, "b1")  # arrives during the outage: read after it
        return bool(during) and rig.service.is_idle()

    stats = rig.run_until(done)

    assert during == {"paused": {rig.key(0), rig.key(1)}, "gauge": 1.0, "committed": {},
                      "pending": 3}
    first_batch = rig.inserter.attempts[:5]
    assert len({token for token, _ in first_batch}) == 1  # the same batch, the same token
    assert {rows for _, rows in first_batch} == {3}
    times = rig.inserter.attempted_at[:5]  # each retry waited out its backoff (fake clock)
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert [gap >= delay for gap, delay in zip(gaps, (0.5, 1.0, 2.0, 2.0), strict=True)] == [
        True] * 4
    assert stats.insert_retries == 4 and rig.metric("cdr_sink_insert_retries_total") == 4
    assert sorted(rig.inserter.call_ids()) == ["a0", "a1", "b0", "b1"]  # each once
    assert rig.consumer.group_offsets == {rig.key(0): 2, rig.key(1): 2}
    assert rig.consumer.paused == set() and rig.metric("cdr_sink_paused") == 0


def test_records_fetched_before_the_pause_are_held_and_stored_in_order_after_it() -> None:
    rig = Rig(partitions=1, batch_rows=2)
    rig.append_cdrs(0, "c0", "c1")
    rig.inserter.outages = 1
    appended = []

    def done() -> bool:
        if rig.service.stats.insert_retries == 1 and not appended:
            rig.append_cdrs(0, "c2", "c3")
            rig.consumer.prefetched = 2  # handed out although the partition is paused
            appended.append(True)
        return bool(appended) and rig.consumer.group_offsets.get(rig.key(0)) == 4

    rig.run_until(done)

    assert rig.inserter.call_ids() == ["c0", "c1", "c2", "c3"]
    assert [rows for _, rows in rig.inserter.attempts] == [2, 2, 2]


def test_a_rejected_batch_stops_the_sink_naming_the_code_and_commits_nothing() -> None:
    rig = Rig(partitions=1)
    rig.append_cdrs(0, "x0", "x1")
    rig.inserter.reject = 60

    with pytest.raises(SinkError, match=r"code 60\).*restart the sink"):
        rig.run_until_idle()

    assert len(rig.inserter.attempts) == 1  # not retried
    assert rig.consumer.group_offsets == {}
    assert rig.consumer.closed and rig.metric("cdr_sink_paused") == 0


def test_stopping_during_an_outage_makes_one_attempt_and_leaves_the_batch_uncommitted() -> None:
    rig = Rig(partitions=1)
    rig.append_cdrs(0, "y0", "y1", "y2")
    rig.inserter.outages = 10**6

    stats = rig.run_until(lambda: rig.service.stats.insert_retries >= 2)  # then a clean stop

    assert rig.inserter.stored == []
    assert rig.consumer.group_offsets == {}  # read again on restart
    assert stats.rows_dropped_on_revoke == 3
    assert rig.consumer.closed and rig.metric("cdr_sink_paused") == 0


def test_the_insert_gets_the_callers_backend_and_database() -> None:
    rig = Rig(partitions=1, database="cdr_unit")
    rig.append_cdrs(0, "z0")
    rig.run_until_idle()

    assert rig.inserter.databases == {"cdr_unit"}
    assert rig.inserter.backends == {id(rig.backend)}
