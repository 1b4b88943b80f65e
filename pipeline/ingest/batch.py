"""Turn a batch of raw event records into CallEvents (and ticks), with a reason per bad one.

Shared by the ways in that take many events at once (``publish`` reads a file, the HTTP
endpoint a request body), so a line is judged the same everywhere: exactly as
``rate-file`` judges it (``pipeline.offline.rate_file``), with the same reject reasons and
categories. A bad item never stops the batch; it is set aside with its reason, and the
caller publishes the good ones.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pipeline.core.events import CallEvent
from pipeline.errors import InvalidEvent
from pipeline.offline.rate_file import (
    Item,
    Reject,
    Tick,
    numbered_lines,
    parse_item,
    parse_line,
)

__all__ = ["Batch", "Item", "Tick", "numbered_lines", "parse_body", "parse_item",
           "parse_line", "parse_lines"]


@dataclass
class Batch:
    """What a batch held: the usable items in input order, each with its position (the
    1-based line number, or the 0-based array index), and the rejects."""

    items: list[tuple[int, Item]] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)

    @property
    def events(self) -> list[tuple[int, CallEvent]]:
        return [(pos, item) for pos, item in self.items if isinstance(item, CallEvent)]


def parse_lines(lines: Iterator[str] | list[str]) -> Batch:
    """A JSON Lines batch: one item per non-blank line, rejects in rate-file's format.

    The lines are first decoded together, as one JSON array (one C call instead of one
    per line: most of the HTTP endpoint's time per event); when that fails, some line
    is not JSON and each is decoded on its own to say which. Trade-off: lines that are
    not one JSON value each but whose fragments happen to join into as many values as
    there are lines (crafted, e.g. a string split over two lines) are attributed by
    position; only the decoded values are ever published, never anything else."""
    numbered = list(numbered_lines(lines))
    try:
        values = json.loads("[" + ",".join(text for _, text in numbered) + "]")
    except json.JSONDecodeError:
        values = None
    batch = Batch()
    if isinstance(values, list) and len(values) == len(numbered):
        for (number, text), raw in zip(numbered, values, strict=True):
            try:
                batch.items.append((number, parse_item(raw)))
            except InvalidEvent as exc:
                batch.rejects.append(Reject(number, exc.reason, exc.category, text))
        return batch
    for number, text in numbered:
        try:
            batch.items.append((number, parse_line(text)))
        except InvalidEvent as exc:
            batch.rejects.append(Reject(number, exc.reason, exc.category, text))
    return batch


def parse_array(values: list[Any]) -> Batch:
    """A JSON array batch: positions are 0-based indexes; a reject's ``raw`` is the
    item re-encoded as JSON."""
    batch = Batch()
    for index, raw in enumerate(values):
        try:
            batch.items.append((index, parse_item(raw)))
        except InvalidEvent as exc:
            text = json.dumps(raw, separators=(",", ":"), default=str)
            batch.rejects.append(Reject(index, exc.reason, exc.category, text))
    return batch


def parse_body(body: bytes) -> tuple[Batch, bool]:
    """A request body: a JSON array when it starts with ``[``, else JSON Lines.
    Returns the batch and whether it was an array (positions are indexes then).
    InvalidEvent when the body as a whole cannot be read (not UTF-8, a broken array)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidEvent(f"body is not UTF-8 (byte {exc.start})") from None
    if text.lstrip().startswith("["):
        try:
            values = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidEvent(
                f"body starts with '[' but is not a JSON array: {exc.msg} at line "
                f"{exc.lineno} column {exc.colno}"
            ) from None
        if not isinstance(values, list):
            raise InvalidEvent("body starts with '[' but is not a JSON array")
        return parse_array(values), True
    return parse_lines(text.splitlines()), False
