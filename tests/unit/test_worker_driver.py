"""The driver around the record path, with stand-ins for what it talks to (Faust's
consumer, the producer, the table, the dead-letter topic): it asks once per
assignment where a partition resumes, does each output's writes in order (dead letters,
CDRs, table), and after a gap marks the refused records and sends the consumer back
before writing anything."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from faust.types import TP

from pipeline.runtime.settings import Settings
from pipeline.worker.driver import Driver
from pipeline.worker.handoff import Batch
from pipeline.worker.offsets import GroupOffsets
from pipeline.worker.record_path import RecordPath
from tests.unit.builders import call, make_config
from tests.unit.test_worker_record_path import Rec, records

TOPIC = "call-events"


class World:
    """Records, in one list, everything the driver does to the outside."""

    def __init__(self) -> None:
        self.done: list[tuple[Any, ...]] = []
        self.resume_at = 0
        self.consumer = self  # the app's consumer
        self.producer = self

    # -- the app and its consumer
    def create_event(self, key: Any, value: Any, headers: Any, message: Any) -> Any:
        return ("event", message.offset)

    async def seek_wait(self, offsets: dict[TP, int]) -> None:
        self.done.append(("seek", offsets))

    def highwater(self, tp: TP) -> int:
        return 100

    # -- the sender, the table and the dead-letter topic
    async def send(self, topic: str | None = None, partition: int | None = None,
                   records: Any = None, *, key: Any = None, value: Any = None,
                   headers: Any = None) -> Any:
        if topic is None:  # the dead-letter topic's send
            self.done.append(("dlq", key))
        else:
            self.done.append(("send", topic, partition, [r[0] for r in records]))
        future = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future

    def watch(self, sent: Any, where: str) -> None:
        pass

    def get_topic_name(self) -> str:
        return "call-events.dlq"

    async def write(self, partition: int, writes: Any, event: Any) -> int:
        self.done.append(("table", partition, [w.call_id for w in writes], event))
        return len(writes)


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> World:
    world = World()

    def resume_offset(offsets: GroupOffsets, partition: int) -> int:
        world.done.append(("resume", partition))
        return world.resume_at

    monkeypatch.setattr(GroupOffsets, "resume_offset", resume_offset)
    return world


def _driver(world: World, tmp_path: Path) -> Driver:
    path = RecordPath(make_config(tmp_path), dict().values)
    return Driver(world, Settings(), path, handoff=None, sender=world,  # type: ignore[arg-type]
                  table=world, dlq_topic=world)  # type: ignore[arg-type]


def test_a_partition_s_output_goes_out_in_order(world: World, tmp_path: Path) -> None:
    driver = _driver(world, tmp_path)
    batch = [Rec(1, 0, b"garbage", b"bad"), *records(1, call("c1"), first=1)]

    async def run() -> None:
        await driver.process(1, batch[:2])
        await driver.process(1, batch[2:])

    asyncio.run(run())
    assert world.done == [
        ("resume", 1),  # asked once, at the partition's first records
        ("dlq", b"bad"),
        ("send", "cdrs", 1, []),
        ("table", 1, ["c1"], ("event", 1)),
        ("send", "cdrs", 1, [b"c1"]),
        ("table", 1, ["c1"], ("event", 4)),
    ]


def test_after_a_gap_the_consumer_is_sent_back_and_nothing_is_acknowledged(
        world: World, tmp_path: Path) -> None:
    driver = _driver(world, tmp_path)
    stale = records(0, call("c1"), first=2000)
    out = asyncio.run(driver.process(0, stale))
    assert world.done == [("resume", 0), ("seek", {TP(TOPIC, 0): 0})]
    assert out.refused == stale and out.folded is None


class Stop(Exception):
    """Ends the driver's loop after the batches a test hands it."""


class Handoff:
    """Stands in for the handoff: hands out `batches`, records what is acknowledged."""

    def __init__(self, batches: list[Batch]) -> None:
        self.batches = batches
        self.acked: list[tuple[Batch, dict[int, tuple[int, int]]]] = []

    async def take(self, max_records: int, within: float) -> Batch:
        if not self.batches:
            raise Stop
        return self.batches.pop(0)

    def ack(self, batch: Batch, folded: dict[int, tuple[int, int]]) -> None:
        self.acked.append((batch, folded))


def test_a_batch_is_acknowledged_with_what_each_partition_folded(world: World,
                                                                tmp_path: Path) -> None:
    """After its output is out: partition 1 folded 0..4; partition 2's records came
    after missing ones and hold its commit back."""
    batch = Batch([(1, records(1, call("c1")[:2])), (2, records(2, call("c2"), first=7)),
                   (1, records(1, call("c1")[2:], first=2))], pending=None)
    handoff = Handoff([batch])
    path = RecordPath(make_config(tmp_path), dict().values)
    driver = Driver(world, Settings(), path, handoff=handoff,  # type: ignore[arg-type]
                    sender=world, table=world, dlq_topic=world)  # type: ignore[arg-type]
    with pytest.raises(Stop):
        asyncio.run(driver.run())
    assert handoff.acked == [(batch, {1: (0, 4)})]
    assert ("send", "cdrs", 1, [b"c1"]) in world.done
    assert world.done[-1][0] == "seek"  # partition 2 sent back to where it resumes


def test_a_revoked_partition_is_asked_for_again(world: World, tmp_path: Path) -> None:
    driver = _driver(world, tmp_path)

    async def run() -> None:
        await driver.process(2, records(2, call("c1")[:1]))
        await driver.on_revoked(None, {TP(TOPIC, 2), TP("elsewhere", 0)})
        world.resume_at = 1
        await driver.process(2, records(2, call("c1")[1:2], first=1))

    asyncio.run(run())
    assert [d for d in world.done if d[0] == "resume"] == [("resume", 2), ("resume", 2)]
