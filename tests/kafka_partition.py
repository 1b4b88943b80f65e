"""Kafka's default partitioner for keyed records (the Java client's), for tests that
must know where a key lands: reference vectors in tests/integration/test_kafka_stack.py."""

from __future__ import annotations


def murmur2(data: bytes) -> int:
    """Kafka's Utils.murmur2 (the Java client's default partitioner hash), as signed int32."""
    m = 0x5BD1E995
    r = 24
    mask = 0xFFFFFFFF
    length = len(data)
    h = (0x9747B28C ^ length) & mask
    for i in range(0, length - length % 4, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * m) & mask
        k ^= k >> r
        k = (k * m) & mask
        h = (h * m) & mask
        h ^= k
    tail = length % 4
    base = length - tail
    if tail == 3:
        h ^= data[base + 2] << 16
    if tail >= 2:
        h ^= data[base + 1] << 8
    if tail >= 1:
        h ^= data[base]
        h = (h * m) & mask
    h ^= h >> 13
    h = (h * m) & mask
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def java_partition(key: bytes, partitions: int) -> int:
    """DefaultPartitioner / BuiltInPartitioner.partitionForKey: toPositive(murmur2) % n."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions
