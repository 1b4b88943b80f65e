"""The sink's state machine on its own: transitions, what each does to the consumer's
partitions and to the paused gauge, and the transitions it refuses."""

from __future__ import annotations

import pytest
from confluent_kafka import TopicPartition

from pipeline.sink.lifecycle import Lifecycle, State
from pipeline.sink.service import SinkError


class Gauge:
    def __init__(self) -> None:
        self.value = -1.0

    def set(self, value: float) -> None:
        self.value = value


class Partitions:
    """A consumer as the state machine sees it: an assignment it pauses and resumes."""

    def __init__(self, *parts: int) -> None:
        self.assigned = [TopicPartition("cdrs", p) for p in parts]
        self.paused: set[int] = set()

    def assignment(self) -> list[TopicPartition]:
        return list(self.assigned)

    def pause(self, partitions: list[TopicPartition]) -> None:
        self.paused |= {tp.partition for tp in partitions}

    def resume(self, partitions: list[TopicPartition]) -> None:
        self.paused -= {tp.partition for tp in partitions}


def running(*parts: int) -> tuple[Lifecycle, Partitions, Gauge]:
    gauge = Gauge()
    machine = Lifecycle(gauge)
    consumer = Partitions(*parts)
    machine.start()
    machine.bind(consumer)  # type: ignore[arg-type]
    return machine, consumer, gauge


def test_an_outage_pauses_every_assigned_partition_and_a_stored_batch_resumes_them() -> None:
    machine, consumer, gauge = running(0, 1)
    machine.pause()
    assert machine.state is State.PAUSED and machine.paused
    assert consumer.paused == {0, 1} and gauge.value == 1
    consumer.assigned.append(TopicPartition("cdrs", 2))  # assigned during the outage
    machine.assigned()
    assert machine.state is State.PAUSED  # stays paused: the next outage step pauses it
    machine.pause()
    assert consumer.paused == {0, 1, 2}
    machine.stored()
    assert machine.state is State.RUNNING and consumer.paused == set() and gauge.value == 0


def test_an_assignment_is_resumed_at_the_next_step() -> None:
    machine, consumer, gauge = running(0)
    consumer.paused = {0}  # a pause that outlived a rebalance
    machine.assigned()
    assert machine.state is State.RESUMING and consumer.paused == {0}
    machine.resume_assigned()
    assert machine.state is State.RUNNING and consumer.paused == set() and gauge.value == 0
    machine.resume_assigned()  # nothing more to do
    assert machine.state is State.RUNNING


def test_when_the_awaited_batch_leaves_with_its_partitions_the_rest_is_resumed() -> None:
    machine, consumer, gauge = running(0, 1)
    machine.pause()
    consumer.assigned = consumer.assigned[1:]  # partition 0 and the batch went
    machine.batch_gone()
    assert machine.state is State.RESUMING and gauge.value == 0
    machine.resume_assigned()
    assert consumer.paused == {0}  # only what is still assigned is resumed


def test_a_stored_batch_without_an_outage_changes_nothing() -> None:
    machine, consumer, gauge = running(0)
    machine.stored()
    machine.batch_gone()
    assert machine.state is State.RUNNING and consumer.paused == set() and gauge.value == -1


def test_draining_and_closing_end_the_run_and_clear_the_gauge() -> None:
    machine, _, gauge = running(0)
    machine.pause()
    machine.drain()
    assert machine.state is State.DRAINING and machine.stopping and not machine.paused
    machine.assigned()  # a rebalance while stopping changes nothing
    assert machine.state is State.DRAINING
    machine.close()
    assert machine.closed and machine.stopping and gauge.value == 0
    machine.abort()  # a failure after closing does not reopen anything
    assert machine.state is State.CLOSED


def test_a_failure_aborts_from_any_running_state() -> None:
    for prepare in (lambda m: None, lambda m: m.pause(), lambda m: m.assigned(),
                    lambda m: m.drain()):
        machine, _, _ = running(0)
        prepare(machine)
        machine.abort()
        assert machine.state is State.ABORTING and machine.stopping
        machine.close()
        assert machine.closed


def test_refused_transitions() -> None:
    machine, _, _ = running(0)
    with pytest.raises(SinkError, match="runs once"):
        machine.start()
    machine.drain()
    with pytest.raises(AssertionError, match="draining -> paused"):
        machine.pause()
    with pytest.raises(AssertionError, match="new -> draining"):
        Lifecycle(Gauge()).drain()
