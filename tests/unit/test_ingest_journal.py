"""The journal backstop's file handling: complete lines only, other log lines
skipped, rotation and truncation read from the start, the checkpoint round trip."""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.ingest.journal import Checkpoint, JournalTail, Position, checkpoint_path


def line(n: int) -> bytes:
    return b'0(42) NOTICE: <script>: CDR-EVENT {"n":%d}\n' % n


def test_reads_event_lines_and_skips_the_rest(tmp_path: Path) -> None:
    journal = tmp_path / "kamailio.log"
    journal.write_bytes(b"0(1) INFO: starting\n" + line(1) + b"noise\r\n" + line(2))
    tail = JournalTail(journal, None)
    assert list(tail.read()) == [b'{"n":1}', b'{"n":2}']
    assert tail.position == Position(os.stat(journal).st_ino, journal.stat().st_size)
    assert list(tail.read()) == []


def test_a_half_written_line_waits_for_its_end(tmp_path: Path) -> None:
    journal = tmp_path / "kamailio.log"
    whole = line(1)
    journal.write_bytes(line(0) + whole[:20])
    tail = JournalTail(journal, None)
    assert list(tail.read()) == [b'{"n":0}']
    with journal.open("ab") as f:
        f.write(whole[20:])
    assert list(tail.read()) == [b'{"n":1}']


def test_resumes_at_the_checkpoint(tmp_path: Path) -> None:
    journal = tmp_path / "kamailio.log"
    journal.write_bytes(line(1) + line(2))
    first = JournalTail(journal, None)
    list(first.read())
    with journal.open("ab") as f:
        f.write(line(3))
    assert list(JournalTail(journal, first.position).read()) == [b'{"n":3}']


def test_an_abandoned_read_loses_nothing(tmp_path: Path) -> None:
    journal = tmp_path / "kamailio.log"
    journal.write_bytes(line(1) + line(2))
    tail = JournalTail(journal, None)
    reader = tail.read()
    assert next(reader) == b'{"n":1}'
    reader.close()
    assert list(tail.read()) == [b'{"n":1}', b'{"n":2}']


def test_rotated_journal_is_finished_then_read_from_its_start(tmp_path: Path) -> None:
    journal = tmp_path / "kamailio.log"
    journal.write_bytes(line(1))
    tail = JournalTail(journal, None)
    assert list(tail.read()) == [b'{"n":1}']
    with journal.open("ab") as f:
        f.write(line(2))
    journal.rename(tmp_path / "kamailio.log.1")
    journal.write_bytes(line(3))
    assert list(tail.read()) == [b'{"n":2}', b'{"n":3}']


def test_checkpoint_of_another_file_or_beyond_the_end_reads_from_the_start(
    tmp_path: Path,
) -> None:
    journal = tmp_path / "kamailio.log"
    journal.write_bytes(line(1))
    ino = os.stat(journal).st_ino
    assert list(JournalTail(journal, Position(ino + 1, 5)).read()) == [b'{"n":1}']
    assert list(JournalTail(journal, Position(ino, 10_000)).read()) == [b'{"n":1}']


def test_truncated_under_the_tail_is_read_from_the_start(tmp_path: Path) -> None:
    journal = tmp_path / "kamailio.log"
    journal.write_bytes(line(1) + line(2))
    tail = JournalTail(journal, None)
    list(tail.read())
    with journal.open("r+b") as f:
        f.truncate(0)
    assert list(tail.read()) == []
    journal.write_bytes(line(3))
    assert list(tail.read()) == [b'{"n":3}']


def test_missing_journal_is_nothing_yet(tmp_path: Path) -> None:
    tail = JournalTail(tmp_path / "absent.log", None)
    assert list(tail.read()) == []


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    journal = tmp_path / "kamailio.log"
    assert checkpoint_path(journal, None) == tmp_path / "kamailio.log.cdr-ingest"
    assert checkpoint_path(journal, tmp_path / "s") == tmp_path / "s" / "kamailio.log.cdr-ingest"
    cp = Checkpoint(checkpoint_path(journal, None))
    assert cp.load() is None
    cp.save(Position(7, 1234))
    assert cp.load() == Position(7, 1234)
    assert not list(tmp_path.glob("*.tmp"))
    cp.path.write_text("garbage")
    assert cp.load() is None


def test_a_lagged_read_stops_at_the_given_offset(tmp_path: Path) -> None:
    """While evapi is connected the adapter reads only as far as the journal reached a
    pass ago, so frames still on their way are not published twice."""
    journal = tmp_path / "kamailio.log"
    journal.write_bytes(line(1) + line(2))
    tail = JournalTail(journal, None)
    until = len(line(1)) + 5  # inside line 2: it waits
    assert list(tail.read(until)) == [b'{"n":1}']
    assert tail.position.offset == len(line(1))
    size = tail.size()
    with journal.open("ab") as f:
        f.write(line(3))
    assert list(tail.read(size)) == [b'{"n":2}']
    assert list(tail.read()) == [b'{"n":3}']


def test_a_lagged_read_finishes_a_rotated_journal(tmp_path: Path) -> None:
    journal = tmp_path / "kamailio.log"
    journal.write_bytes(line(1))
    tail = JournalTail(journal, None)
    assert list(tail.read()) == [b'{"n":1}']
    size = tail.size()
    with journal.open("ab") as f:
        f.write(line(2))  # beyond the lag limit, then the file is rotated away
    journal.rename(tmp_path / "kamailio.log.1")
    journal.write_bytes(line(3))
    assert list(tail.read(size)) == [b'{"n":2}', b'{"n":3}']


def _adapter(journal: Path, from_end: bool) -> None:
    """Construct (and close) an adapter: its start reads or writes the checkpoint."""
    from pipeline.ingest.adapter import AdapterConfig, KamailioAdapter

    adapter = KamailioAdapter(AdapterConfig(
        evapi_host="127.0.0.1", evapi_port=1, bootstrap="127.0.0.1:1", topic="t",
        dlq_topic="t.dlq", journal=journal, journal_from_end=from_end))
    adapter._close()


def test_journal_from_end_starts_a_first_run_at_the_end(tmp_path: Path) -> None:
    """Adopting an old log: its calls were rated already, so a first start skips them
    (only when no checkpoint exists; an existing one always wins)."""
    journal = tmp_path / "kamailio.log"
    journal.write_bytes(line(1) + line(2) + b"half a li")
    _adapter(journal, from_end=True)
    saved = Checkpoint(checkpoint_path(journal, None)).load()
    assert saved == Position(os.stat(journal).st_ino, len(line(1) + line(2)))
    with journal.open("ab") as f:
        f.write(b"ne\n" + line(3))
    _adapter(journal, from_end=True)  # the checkpoint exists: it stays
    assert Checkpoint(checkpoint_path(journal, None)).load() == saved
    assert list(JournalTail(journal, saved).read()) == [b'{"n":3}']


def test_without_journal_from_end_a_first_run_reads_from_the_start(tmp_path: Path) -> None:
    journal = tmp_path / "kamailio.log"
    journal.write_bytes(line(1))
    _adapter(journal, from_end=False)
    assert Checkpoint(checkpoint_path(journal, None)).load() is None
