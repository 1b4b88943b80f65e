"""Netstring framing as evapi sends it: frames merged in one read, split anywhere
(even inside the length), and every kind of malformed stream a clear FramingError."""

from __future__ import annotations

import pytest

from pipeline.ingest.netstring import FramingError, NetstringReader, encode


def test_one_frame() -> None:
    assert NetstringReader().feed(b'5:hello,') == [b"hello"]


def test_merged_frames_in_one_read() -> None:
    data = encode(b'{"a":1}') + encode(b"") + encode(b"xyz")
    assert NetstringReader().feed(data) == [b'{"a":1}', b"", b"xyz"]


def test_split_at_every_byte() -> None:
    frames = [b'{"kind":"SETUP"}', b"second, with a comma", b"3:not a length"]
    data = b"".join(encode(f) for f in frames)
    for cut in range(len(data) + 1):
        reader = NetstringReader()
        got = reader.feed(data[:cut]) + reader.feed(data[cut:])
        assert got == frames, cut
        assert reader.pending == 0


def test_byte_by_byte() -> None:
    reader = NetstringReader()
    data = encode(b"abc") + encode(b"defg")
    got = [frame for byte in data for frame in reader.feed(bytes([byte]))]
    assert got == [b"abc", b"defg"]


def test_partial_frame_is_held() -> None:
    reader = NetstringReader()
    assert reader.feed(b"10:01234") == []
    assert reader.pending == 8
    assert reader.feed(b"56789,") == [b"0123456789"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"abc:x,", "is not a decimal number"),
        (b"{json}", "expected a netstring length"),
        (b"3:abcX", "not followed by ','"),
        (b"3:abc4:defg,", "not followed by ','"),
        (b"-1:,", "is not a decimal number"),
        (b"05:hello,", "is not a decimal number"),
        (b"99999999:", "exceeds the limit"),
        (b"12345678901234", "exceeds the limit"),
    ],
)
def test_bad_stream_is_a_clear_error(data: bytes, message: str) -> None:
    with pytest.raises(FramingError, match=message):
        NetstringReader().feed(data)


def test_good_frames_before_an_error_came_out_of_earlier_feeds() -> None:
    reader = NetstringReader()
    assert reader.feed(encode(b"ok")) == [b"ok"]
    with pytest.raises(FramingError):
        reader.feed(b"2:okX")


def test_limit_is_configurable() -> None:
    with pytest.raises(FramingError, match="exceeds the limit of 4"):
        NetstringReader(max_frame=4).feed(b"5:hello,")
