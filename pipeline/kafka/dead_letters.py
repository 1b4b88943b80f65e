"""The headers of a dead-letter record: one set of names for every dead-letter topic.

The worker (call-events.dlq), the sink (cdrs.dlq) and the ingest adapters all send a
record they cannot take unchanged, with these headers saying why and from where, so
one tool or query reads every dead-letter topic alike (docs/operations.md).
"""

from __future__ import annotations

REASON = "dlq-reason"  # why, in words: names the field or check that failed
CATEGORY = "dlq-category"  # a short class of the reason, for counting (e.g. undecodable)
SOURCE_TOPIC = "source-topic"
SOURCE_PARTITION = "source-partition"
SOURCE_OFFSET = "source-offset"


def dead_letter_headers(
    reason: str,
    category: str,
    topic: str | None = None,
    partition: int | None = None,
    offset: int | None = None,
) -> list[tuple[str, bytes]]:
    """Headers for one dead letter; where it came from when it came from a topic."""
    headers = [(REASON, reason.encode("utf-8")), (CATEGORY, category.encode("utf-8"))]
    if topic is not None:
        headers.append((SOURCE_TOPIC, topic.encode("utf-8")))
    if partition is not None:
        headers.append((SOURCE_PARTITION, str(partition).encode("ascii")))
    if offset is not None:
        headers.append((SOURCE_OFFSET, str(offset).encode("ascii")))
    return headers
