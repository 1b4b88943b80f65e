"""The sink's batcher: due by rows or age, early partial takes, commit offsets, tokens."""

from __future__ import annotations

import pytest

from pipeline.sink.batcher import Batch, Batcher

A0 = ("cdrs", 0)
A1 = ("cdrs", 1)


def test_empty_batcher_is_never_due() -> None:
    b: Batcher[str] = Batcher(max_rows=2, max_age_s=1.0)
    assert b.empty and len(b) == 0
    assert not b.due(1e9)
    assert b.time_until_due(0.0) is None
    assert b.take() is None


def test_due_by_rows() -> None:
    b: Batcher[str] = Batcher(max_rows=3, max_age_s=60.0)
    b.add(A0, 10, "a", now=0.0)
    b.add(A0, 11, "b", now=0.0)
    assert not b.due(0.0)
    b.add(A1, 5, "c", now=0.0)
    assert b.due(0.0)


def test_due_by_age_of_the_oldest_record() -> None:
    b: Batcher[str] = Batcher(max_rows=100, max_age_s=1.0)
    b.add(A0, 0, "a", now=10.0)
    b.add(A0, 1, "b", now=10.9)
    assert not b.due(10.99)
    assert b.time_until_due(10.5) == pytest.approx(0.5)
    assert b.due(11.0)
    assert b.time_until_due(11.5) == 0.0


def test_a_partial_batch_may_be_taken_early_once_per_max_age() -> None:
    b: Batcher[str] = Batcher(max_rows=3, max_age_s=1.0)
    assert not b.may_take_early(0.0)  # nothing pending
    b.add(A0, 0, None, now=0.0)
    assert not b.may_take_early(0.0)  # a dead letter alone makes no insert
    b.add(A0, 1, "a", now=0.0)
    assert b.may_take_early(0.0) and not b.due(0.0)
    batch = b.take(now=0.0)
    assert batch is not None and batch.rows == ["a"]
    b.add(A0, 2, "b", now=0.1)
    assert not b.may_take_early(0.9)  # a partial batch was taken 0.9 s ago
    assert b.may_take_early(1.0)
    assert b.take(now=1.0) is not None
    for offset, row in enumerate("cde", start=3):  # a full batch does not count
        b.add(A0, offset, row, now=1.5)
    assert b.due(1.5)
    assert b.take(now=1.5) is not None
    b.add(A0, 6, "f", now=1.6)
    assert not b.may_take_early(1.6)  # still within 1 s of the partial take at 1.0
    assert b.may_take_early(2.0)
    b.take()  # without `now` (revoke, shutdown): does not count
    b.add(A0, 7, "g", now=2.1)
    assert b.may_take_early(2.1)


def test_the_gap_between_partial_batches_is_its_own_setting() -> None:
    assert Batcher(max_rows=3, max_age_s=2.0).partial_gap_s == 2.0  # by default max_age_s
    b: Batcher[str] = Batcher(max_rows=3, max_age_s=60.0, partial_gap_s=0.0)
    b.add(A0, 0, "a", now=0.0)
    assert b.take(now=0.0) is not None
    b.add(A0, 1, "b", now=0.01)
    assert b.may_take_early(0.01) and not b.due(0.01)  # at once: the caller paces
    spaced: Batcher[str] = Batcher(max_rows=3, max_age_s=60.0, partial_gap_s=0.5)
    spaced.add(A0, 0, "a", now=0.0)
    assert spaced.take(now=0.0) is not None
    spaced.add(A0, 1, "b", now=0.1)
    assert not spaced.may_take_early(0.4) and spaced.may_take_early(0.5)
    with pytest.raises(ValueError, match="partial_gap_s"):
        Batcher(partial_gap_s=-0.1)


def test_records_without_rows_count_for_offsets_and_age_not_rows() -> None:
    b: Batcher[str] = Batcher(max_rows=1, max_age_s=1.0)
    b.add(A0, 7, None, now=0.0)  # e.g. sent to the dead-letter topic
    assert len(b) == 0 and not b.empty
    assert not b.due(0.5)
    assert b.due(1.0)
    batch = b.take()
    assert batch is not None
    assert batch.rows == [] and batch.row_count == 0
    assert batch.commit_offsets == {A0: 8}


def test_take_returns_rows_and_next_offsets_per_partition() -> None:
    b: Batcher[str] = Batcher()
    for off, row in [(100, "p0a"), (101, None), (102, "p0b")]:
        b.add(A0, off, row, now=0.0)
    b.add(A1, 3, "p1a", now=0.0)
    batch = b.take()
    assert batch is not None
    assert batch.rows == ["p0a", "p0b", "p1a"]
    assert batch.row_count == 3 and batch.record_count == 4
    assert batch.ranges == {A0: (100, 102), A1: (3, 3)}
    assert batch.commit_offsets == {A0: 103, A1: 4}
    assert batch.describe() == "cdrs[0]@100..102, cdrs[1]@3..3"
    assert b.empty and len(b) == 0 and not b.due(1e9)


def test_take_resets_the_age_clock() -> None:
    b: Batcher[str] = Batcher(max_rows=100, max_age_s=1.0)
    b.add(A0, 0, "a", now=0.0)
    assert b.take() is not None
    b.add(A0, 1, "b", now=5.0)
    assert not b.due(5.5)
    assert b.due(6.0)


def test_partial_take_and_drop_for_revoked_partitions() -> None:
    b: Batcher[str] = Batcher()
    b.add(A0, 0, "a", now=0.0)
    b.add(A1, 0, "b", now=0.0)
    b.add(A1, 1, "c", now=0.0)
    part = b.take([A1, ("other", 9)])
    assert part is not None and part.rows == ["b", "c"] and part.partitions == {A1}
    assert len(b) == 1 and b.partitions() == {A0}
    assert b.take([A1]) is None
    assert b.drop([A0]) == 1
    assert b.empty


def test_redelivered_offsets_never_move_the_commit_offset_back() -> None:
    b: Batcher[str] = Batcher()
    b.add(A0, 5, "a", now=0.0)
    b.add(A0, 3, "a-again", now=0.0)
    batch = b.take()
    assert batch is not None
    assert batch.ranges == {A0: (3, 5)} and batch.commit_offsets == {A0: 6}


def test_token_is_deterministic_and_depends_on_ranges_and_extra() -> None:
    one = Batch({A0: ("x",)}, {A0: (0, 4), A1: (2, 2)})
    same = Batch({A0: ("y",)}, {A1: (2, 2), A0: (0, 4)})  # order of keys is irrelevant
    other = Batch({A0: ("x",)}, {A0: (0, 5), A1: (2, 2)})
    assert one.token() == same.token()
    assert len(one.token()) == 64
    assert one.token() != other.token()
    assert one.token("content-a") != one.token("content-b")


def test_without_removes_partitions() -> None:
    batch = Batch({A0: ("a",), A1: ("b", "c")}, {A0: (0, 0), A1: (0, 1)})
    rest = batch.without([A0])
    assert rest is not None
    assert rest.rows == ["b", "c"] and rest.commit_offsets == {A1: 2}
    assert batch.without([A0, A1]) is None


@pytest.mark.parametrize(("rows", "age"), [(0, 1.0), (5, 0.0), (5, -1.0)])
def test_invalid_limits_are_rejected(rows: int, age: float) -> None:
    with pytest.raises(ValueError):
        Batcher(max_rows=rows, max_age_s=age)


# -- the sink's ClickHouse URL parsing (pure; kept here with the sink's other unit tests)


@pytest.mark.parametrize(
    ("url", "scheme", "where", "database"),
    [
        ("native://127.0.0.1:19000/cdr", "native", ("127.0.0.1", 19000), "cdr"),
        ("native://ch.example", "native", ("ch.example", 9000), "cdr"),
        ("native://h:9440/?database=billing", "native", ("h", 9440), "billing"),
        ("chdb:///var/lib/cdr", "chdb", "/var/lib/cdr", "cdr"),
        ("chdb://.stack/chdb?database=demo", "chdb", ".stack/chdb", "demo"),
    ],
)
def test_clickhouse_urls(url: str, scheme: str, where: object, database: str) -> None:
    from pipeline.storage.url import parse_clickhouse_url

    parsed = parse_clickhouse_url(url)
    assert parsed.scheme == scheme and parsed.database == database
    assert (parsed.host, parsed.port) == where if scheme == "native" else parsed.path == where


@pytest.mark.parametrize(
    "url", ["http://h:8123", "native://:19000/cdr", "native://h:x/cdr", "native://h/bad-name",
            "chdb://"],
)
def test_bad_clickhouse_urls_are_config_errors(url: str) -> None:
    from pipeline.errors import ConfigError
    from pipeline.storage.url import parse_clickhouse_url

    with pytest.raises(ConfigError, match="ClickHouse URL"):
        parse_clickhouse_url(url)
