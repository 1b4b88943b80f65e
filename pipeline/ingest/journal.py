"""The journal backstop: Kamailio's log, read from a checkpoint, and the checkpoint.

Kamailio writes every event to its log (``... CDR-EVENT <json>``) before it relays
it over evapi, and evapi drops what it relays while no client is connected. So the
log holds everything evapi could have missed. ``JournalTail`` reads it from a byte
offset, complete lines only (Kamailio may be half-way through a line), and
``Checkpoint`` remembers (inode, offset) across restarts, written atomically.

A journal replaced under the tail (rotated: new inode) is finished from the open
file first, then the new one is read from its start; a truncated one (size below
the offset) is read again from the start. Both are logged.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

MARKER = b"CDR-EVENT "
_CHUNK = 1 << 20


class JournalError(PipelineError):
    """The journal or its checkpoint cannot be read or written; the message names the file."""


@dataclass(frozen=True)
class Position:
    inode: int
    offset: int


class Checkpoint:
    """(inode, offset) of the journal up to which everything reached Kafka."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> Position | None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            return Position(int(data["inode"]), int(data["offset"]))
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise JournalError(f"cannot read checkpoint {self.path}: {exc.strerror}") from None
        except (ValueError, KeyError, TypeError):
            log.warning("checkpoint %s is unreadable; the journal is read from its start",
                        self.path)
            return None

    def save(self, position: Position) -> None:
        """Write to a temporary file, fsync, rename: a crash leaves the old or the new."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        data = json.dumps({"inode": position.inode, "offset": position.offset}).encode()
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        except OSError as exc:
            raise JournalError(f"cannot write checkpoint {self.path}: {exc.strerror}") from None


def checkpoint_path(journal: Path, state_dir: Path | None) -> Path:
    """``<journal>.cdr-ingest`` next to the journal, or under ``state_dir``."""
    name = f"{journal.name}.cdr-ingest"
    return (state_dir / name) if state_dir is not None else journal.with_name(name)


class JournalTail:
    """Read ``CDR-EVENT`` payloads from the journal, from a position on."""

    def __init__(self, path: Path, start: Position | None) -> None:
        self.path = path
        self._file: BinaryIO | None = None
        self._inode = start.inode if start else -1
        self._offset = start.offset if start else 0

    @property
    def position(self) -> Position:
        """Just after the last complete line read."""
        return Position(self._inode, self._offset)

    def size(self) -> int | None:
        """How far the journal file reaches now (None when there is none)."""
        current = self._stat_path()
        return None if current is None else current.st_size

    def read(self, until: int | None = None) -> Iterator[bytes]:
        """Every event payload in the complete lines from the position to the end,
        or only to offset ``until`` of the same file when one is given (a rotated or
        truncated journal is then still read whole from its start).

        A generator: ``position`` moves as whole chunks are consumed, so abandoning it
        early leaves a position from which nothing unread is skipped.
        """
        if self._file is None:
            if not self._open():
                return
        else:
            self._seek(self._offset)  # an earlier read may have been left mid-chunk
        yield from self._drain(until)
        current = self._stat_path()
        if current is None:
            return
        if current.st_ino != self._inode:
            log.warning("journal %s was rotated (new inode %s); reading the new file from "
                        "its start", self.path, current.st_ino)
            if until is not None:
                yield from self._drain()  # the rest of the old file first
            self.close()
            if self._open(rotated=True):
                yield from self._drain()
        elif current.st_size < self._offset:
            log.warning("journal %s was truncated (size %s < offset %s); reading it from its "
                        "start", self.path, current.st_size, self._offset)
            self._seek(0)
            yield from self._drain()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _stat_path(self) -> os.stat_result | None:
        try:
            return os.stat(self.path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise JournalError(f"cannot read journal {self.path}: {exc.strerror}") from None

    def _open(self, rotated: bool = False) -> bool:
        """Open the journal at the checkpoint, or at its start if it is another file."""
        try:
            handle = self.path.open("rb")
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise JournalError(f"cannot read journal {self.path}: {exc.strerror}") from None
        st = os.fstat(handle.fileno())
        self._file = handle
        if st.st_ino != self._inode:
            if self._inode != -1 and not rotated:
                log.warning("journal %s is not the file of the checkpoint (inode %s, was %s: "
                            "rotated); reading it from its start",
                            self.path, st.st_ino, self._inode)
            self._inode, self._offset = st.st_ino, 0
        elif st.st_size < self._offset:
            log.warning("journal %s is shorter than the checkpoint (%s < %s: truncated); "
                        "reading it from its start", self.path, st.st_size, self._offset)
            self._offset = 0
        self._seek(self._offset)
        return True

    def _seek(self, offset: int) -> None:
        assert self._file is not None
        self._file.seek(offset)
        self._offset = offset

    def _drain(self, until: int | None = None) -> Iterator[bytes]:
        assert self._file is not None
        while True:
            want = _CHUNK if until is None else min(_CHUNK, until - self._offset)
            if want <= 0:
                return
            chunk = self._file.read(want)
            if not chunk:
                return
            end = chunk.rfind(b"\n")
            if end < 0:  # no complete line yet (or one longer than a chunk: read on)
                if len(chunk) < want or want < _CHUNK:
                    self._seek(self._offset)
                    return
                self._skip_long_line(chunk)
                continue
            for line in chunk[:end].split(b"\n"):
                payload = event_payload(line)
                if payload is not None:
                    yield payload
            self._seek(self._offset + end + 1)

    def _skip_long_line(self, chunk: bytes) -> None:
        """A line of more than a chunk without an event marker worth keeping: skip it."""
        log.warning("journal %s: a line of more than %s bytes at offset %s skipped",
                    self.path, _CHUNK, self._offset)
        assert self._file is not None
        while b"\n" not in chunk and chunk:
            self._offset += len(chunk)
            chunk = self._file.read(_CHUNK)
        if chunk:
            self._seek(self._offset + chunk.index(b"\n") + 1)


def event_payload(line: bytes) -> bytes | None:
    """The JSON after ``CDR-EVENT `` in a log line, or None for other lines."""
    at = line.find(MARKER)
    if at < 0:
        return None
    return line[at + len(MARKER):].rstrip(b"\r")
