"""Revocations, lost partitions and the graceful stop, without Kafka: what was read is
stored and committed when ClickHouse takes it, else left uncommitted to be read
again; never lost, never committed unstored. Against a real broker (a second sink
joining the group, SIGTERM): tests/integration/test_sink.py."""

from __future__ import annotations

from tests.unit.sink_fakes import Rig


def test_a_revocation_stores_and_commits_the_revoked_partitions_rows_first() -> None:
    rig = Rig(partitions=2)  # partial batches: the first at once, the next after 3600 s
    rig.append_cdrs(0, "a0")
    rig.append_cdrs(1, "b0")
    stage: dict[str, object] = {}

    def done() -> bool:
        if "more" not in stage and rig.consumer.group_offsets.get(rig.key(1)) == 1:
            rig.append_cdrs(0, "a1", "a2")
            rig.append_cdrs(1, "b1")
            stage["more"] = True
        elif "revoke" not in stage and "more" in stage and rig.service.pending_rows == 3:
            rig.consumer.revoke([rig.key(0)])  # partition 0 goes to another sink
            stage["revoke"] = True
        elif "revoke" in stage and rig.key(0) not in rig.service.assigned:
            stage["stored"] = sorted(rig.inserter.call_ids())
            stage["committed"] = dict(rig.consumer.group_offsets)
            stage["pending"] = rig.service.pending_rows
            return True
        return False

    stats = rig.run_until(done)

    assert stage["stored"] == ["a0", "a1", "a2", "b0"]  # partition 0's batched rows went in
    assert stage["committed"] == {rig.key(0): 3, rig.key(1): 1}
    assert stage["pending"] == 1  # b1 stays batched for this sink
    assert stats.rows_dropped_on_revoke == 0
    assert sorted(rig.inserter.call_ids()) == ["a0", "a1", "a2", "b0", "b1"]  # b1 at the stop
    assert rig.consumer.group_offsets == {rig.key(0): 3, rig.key(1): 2}


def test_a_revocation_during_an_outage_drops_rows_uncommitted_and_they_are_read_again() -> None:
    rig = Rig(partitions=2, batch_seconds=1.0)
    rig.append_cdrs(0, "a0", "a1")
    rig.append_cdrs(1, "b0")
    rig.inserter.outages = 10**6
    keys = [rig.key(0), rig.key(1)]
    stage: dict[str, object] = {}

    def done() -> bool:
        if "revoke" not in stage and rig.service.stats.insert_retries >= 1:
            rig.consumer.revoke(keys)
            stage["revoke"] = True
        elif "assign" not in stage and "revoke" in stage and not rig.service.assigned:
            stage["committed"] = dict(rig.consumer.group_offsets)
            stage["dropped"] = rig.service.stats.rows_dropped_on_revoke
            stage["gauge"] = rig.metric("cdr_sink_paused")
            rig.inserter.outages = 0  # ClickHouse is back
            rig.consumer.assign(keys)  # the same partitions, still paused in the client
            stage["assign"] = True
        return "assign" in stage and rig.service.is_idle()

    rig.run_until(done)

    assert stage["committed"] == {} and stage["dropped"] == 3 and stage["gauge"] == 0
    assert rig.consumer.paused == set()  # resumed after the assignment
    assert sorted(rig.inserter.call_ids()) == ["a0", "a1", "b0"]  # read again, stored
    assert rig.consumer.group_offsets == {rig.key(0): 2, rig.key(1): 1}


def test_lost_partitions_are_dropped_without_a_commit() -> None:
    rig = Rig(partitions=2)
    rig.append_cdrs(0, "a0")
    rig.append_cdrs(1, "b0")
    stage: dict[str, object] = {}

    def done() -> bool:
        if "more" not in stage and len(rig.consumer.group_offsets) == 2:
            rig.append_cdrs(0, "a1", "a2")
            stage["more"] = True
        elif "lost" not in stage and "more" in stage and rig.service.pending_rows == 2:
            stage["commits"] = len(rig.consumer.commits)
            rig.consumer.lose([rig.key(0)])
            stage["lost"] = True
        return "lost" in stage and rig.key(0) not in rig.service.assigned

    stats = rig.run_until(done)

    assert len(rig.consumer.commits) == stage["commits"]  # no commit for what was lost
    assert stats.rows_dropped_on_revoke == 2
    assert sorted(rig.inserter.call_ids()) == ["a0", "b0"]
    assert rig.consumer.group_offsets == {rig.key(0): 1, rig.key(1): 1}


def test_stopping_stores_and_commits_what_is_batched_then_leaves_the_group() -> None:
    rig = Rig(partitions=1)
    rig.append_cdrs(0, "w0")
    stage: dict[str, object] = {}

    def done() -> bool:
        if "more" not in stage and rig.consumer.group_offsets:
            rig.append_cdrs(0, "s0", "s1", "s2")
            stage["more"] = True
        return "more" in stage and rig.service.pending_rows == 3

    stats = rig.run_until(done)

    assert stats.batches == 2 and rig.inserter.call_ids() == ["w0", "s0", "s1", "s2"]
    assert rig.consumer.group_offsets == {rig.key(0): 4}
    assert rig.consumer.closed and rig.consumer.assigned == []
