"""Netstring framing (``LEN:payload,``) as Kamailio's evapi sends it.

TCP delivers a byte stream, not messages: one read may hold several frames, or a
frame split anywhere (even inside its length). ``NetstringReader`` buffers what it
is fed and hands back complete payloads. A malformed frame raises ``FramingError``;
the stream cannot be resynchronised after that (any byte could be a length digit),
so the caller must drop the connection and open a new one.
"""

from __future__ import annotations

from pipeline.errors import PipelineError

# Longest payload accepted: a call event is a few hundred bytes. A larger length is a
# corrupt stream (or not evapi at all), not a frame worth buffering megabytes for.
MAX_FRAME = 1 << 20
_MAX_DIGITS = len(str(MAX_FRAME))


class FramingError(PipelineError):
    """The byte stream is not valid netstrings; the message says what was found where."""


class NetstringReader:
    """Split a stream of netstrings into payloads; feed it bytes as they arrive."""

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._buf = bytearray()
        self._max = max_frame

    @property
    def pending(self) -> int:
        """Bytes held that do not yet make a whole frame."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        """Add ``data``; return every payload now complete, in order."""
        self._buf += data
        frames: list[bytes] = []
        start = 0
        buf = self._buf
        while start < len(buf):
            colon = buf.find(b":", start, start + _MAX_DIGITS + 1)
            if colon < 0:
                self._check_length_prefix(bytes(buf[start:]))
                break
            digits = bytes(buf[start:colon])
            length = self._length(digits)
            end = colon + 1 + length
            if end >= len(buf):  # payload or its comma not here yet
                break
            if buf[end] != ord(","):
                raise FramingError(
                    f"netstring of length {length} not followed by ',' "
                    f"(found {bytes(buf[end:end + 1])!r})"
                )
            frames.append(bytes(buf[colon + 1:end]))
            start = end + 1
        del buf[:start]
        return frames

    def _length(self, digits: bytes) -> int:
        if not digits.isdigit() or (len(digits) > 1 and digits.startswith(b"0")):
            raise FramingError(f"netstring length {digits[:20]!r} is not a decimal number")
        length = int(digits)
        if length > self._max:
            raise FramingError(f"netstring length {length} exceeds the limit of {self._max}")
        return length

    def _check_length_prefix(self, head: bytes) -> None:
        """No ':' close enough: fine while the head may still become a length."""
        digits = len(head) - len(head.lstrip(b"0123456789"))
        if digits > _MAX_DIGITS:
            raise FramingError(f"netstring length {head[:20]!r}... exceeds the limit "
                               f"of {self._max}")
        if digits < len(head):
            raise FramingError(f"expected a netstring length, found {head[:20]!r}")


def encode(payload: bytes) -> bytes:
    """One netstring; for tests and tools that play evapi."""
    return b"%d:%s," % (len(payload), payload)
