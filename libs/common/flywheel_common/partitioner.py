"""Kafka's default key partitioner (murmur2, as the Java client and librdkafka's
``murmur2_random`` compute it), in Python.

Every Flywheel producer is configured with ``partitioner=murmur2_random``, so a key lands where a
Java producer would put it too. The curator needs the function itself: it routes a record to the
partition that holds another run (``partition_for(parent_run_id, n)``), which only works if it
agrees byte for byte with the producer that placed that run.
"""

from __future__ import annotations

__all__ = ["KAFKA_PARTITIONER", "murmur2", "partition_for"]

# The librdkafka name of the partitioner ``partition_for`` reproduces.
KAFKA_PARTITIONER = "murmur2_random"

_SEED = 0x9747B28C
_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's ``Utils.murmur2``: a signed 32-bit hash of ``data``."""
    length = len(data)
    h = (_SEED ^ length) & _MASK
    tail = length & ~3
    for i in range(0, tail, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    rest = length & 3
    if rest == 3:
        h ^= data[tail + 2] << 16
    if rest >= 2:
        h ^= data[tail + 1] << 8
    if rest >= 1:
        h ^= data[tail]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def partition_for(key: str | bytes, partitions: int) -> int:
    """The partition a keyed record goes to: ``toPositive(murmur2(key)) % partitions``."""
    if partitions < 1:
        raise ValueError(f"partitions must be >= 1, got {partitions}")
    raw = key.encode() if isinstance(key, str) else key
    return (murmur2(raw) & 0x7FFFFFFF) % partitions
