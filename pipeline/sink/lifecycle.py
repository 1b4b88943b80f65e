"""The sink's state machine: running, paused for a ClickHouse outage, draining, closed.

One explicit state instead of a handful of flags, so that "may a revocation still
flush?", "is consumption paused?" and "may this sink run?" each have one answer,
and a transition that should not happen fails loudly. The machine also does what
a transition means for the consumer (pause or resume every assigned partition)
and for the `cdr_sink_paused` gauge, so the three never disagree.

    NEW --start--> RUNNING --outage--> PAUSED --stored--> RUNNING
    RUNNING --assigned--> RESUMING --step--> RUNNING
    PAUSED --batch gone with its partitions--> RESUMING
    RUNNING | RESUMING | PAUSED --stop--> DRAINING --> CLOSED
    any --failure--> ABORTING --> CLOSED

RESUMING exists because a pause can outlive a rebalance on a partition: after any
assignment the sink resumes what it holds before reading (a no-op for partitions
that were never paused), unless it is waiting for ClickHouse, when the outage step
pauses the new partitions too.
"""

from __future__ import annotations

import logging
from enum import Enum
from typing import Protocol

from pipeline.sink.clients import SinkConsumer
from pipeline.sink.config import SinkError

log = logging.getLogger(__name__)


class State(Enum):
    NEW = "new"  # built; run() not called yet
    RUNNING = "running"  # consuming
    RESUMING = "resuming"  # partitions were assigned: resume them before reading on
    PAUSED = "paused"  # ClickHouse unavailable: partitions paused, the batch retried
    DRAINING = "draining"  # stopping: storing and committing what is batched, once
    ABORTING = "aborting"  # stopping after a failure: nothing more stored or committed
    CLOSED = "closed"  # clients closed (or closing): a revocation no longer flushes


_ACTIVE = frozenset({State.RUNNING, State.RESUMING, State.PAUSED})
_NEXT: dict[State, frozenset[State]] = {
    State.NEW: frozenset({State.RUNNING}),
    State.RUNNING: frozenset({State.RESUMING, State.PAUSED, State.DRAINING, State.ABORTING}),
    State.RESUMING: frozenset({State.RUNNING, State.PAUSED, State.DRAINING, State.ABORTING}),
    State.PAUSED: frozenset({State.RUNNING, State.RESUMING, State.DRAINING, State.ABORTING}),
    State.DRAINING: frozenset({State.CLOSED, State.ABORTING}),
    State.ABORTING: frozenset({State.CLOSED}),
    State.CLOSED: frozenset(),
}


class Gauge(Protocol):
    def set(self, value: float) -> None: ...


class Lifecycle:
    """The state of one sink and the consumer pauses that go with it."""

    def __init__(self, paused_gauge: Gauge) -> None:
        self.state = State.NEW
        self._gauge = paused_gauge
        self._consumer: SinkConsumer | None = None

    @property
    def paused(self) -> bool:
        """Waiting for ClickHouse: partitions paused, the batch retried with backoff."""
        return self.state is State.PAUSED

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED

    @property
    def stopping(self) -> bool:
        """run() is ending: a revocation no longer stores anything."""
        return self.state not in _ACTIVE

    def start(self) -> None:
        if self.state is not State.NEW:
            raise SinkError("a SinkService runs once; create a new one")
        self._go(State.RUNNING)

    def bind(self, consumer: SinkConsumer) -> None:
        """The consumer whose partitions the machine pauses and resumes."""
        self._consumer = consumer

    def pause(self) -> None:
        """ClickHouse is unavailable: pause every assigned partition. Called at every
        outage step, so partitions assigned since the outage began are paused too."""
        if self.state is not State.PAUSED:
            self._go(State.PAUSED)
            self._gauge.set(1)
        self._pause_partitions()

    def stored(self) -> None:
        """A batch went in: after an outage, consumption resumes."""
        if self.state is State.PAUSED:
            self._resume_partitions()
            log.info("consumption resumed")
            self._go(State.RUNNING)
            self._gauge.set(0)

    def assigned(self) -> None:
        """Partitions were assigned: resume them at the next step, unless paused (the
        outage step pauses them) or stopping."""
        if self.state is State.RUNNING:
            self._go(State.RESUMING)

    def resume_assigned(self) -> None:
        """The step after an assignment: clear a pause a partition may still carry."""
        if self.state is State.RESUMING:
            self._resume_partitions()
            self._go(State.RUNNING)
            self._gauge.set(0)

    def batch_gone(self) -> None:
        """The batch waited for left with its partitions (revoked or lost): there is
        nothing to wait for; what stays assigned is resumed at the next step."""
        if self.state is State.PAUSED:
            self._go(State.RESUMING)
            self._gauge.set(0)

    def drain(self) -> None:
        self._go(State.DRAINING)

    def abort(self) -> None:
        """A failure ends the run without storing anything more (once closed, the
        clients are not closed again)."""
        if self.state not in (State.ABORTING, State.CLOSED):
            self._go(State.ABORTING)

    def close(self) -> None:
        """The clients are being closed; a pause no longer applies."""
        if self.state is not State.CLOSED:
            self._go(State.CLOSED)
        self._gauge.set(0)

    def _go(self, new: State) -> None:
        if new not in _NEXT[self.state]:
            raise AssertionError(f"sink state {self.state.value} -> {new.value} is not allowed")
        self.state = new

    def _pause_partitions(self) -> None:
        consumer = self._bound()
        assignment = consumer.assignment()
        if assignment:
            consumer.pause(assignment)

    def _resume_partitions(self) -> None:
        consumer = self._bound()
        assignment = consumer.assignment()
        if assignment:
            consumer.resume(assignment)

    def _bound(self) -> SinkConsumer:
        assert self._consumer is not None, "bind() the consumer first"
        return self._consumer
