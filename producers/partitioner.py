"""Kafka's key partitioner (murmur2, as the Java client computes it), fast enough for every result.

Every result is keyed by its request id, and the partition must be the one a
Java, librdkafka (``murmur2_random``) or aiokafka producer would pick for that
key, so that whoever else writes or joins on those keys agrees with us.
aiokafka's own murmur2 reads the key byte by byte in Python, about 7 µs for a
36-character request id: as much as a twentieth of what altlas spends on a
small request. Reading the key as 32-bit words with one ``struct`` call and
mixing them in a short loop gives the same hash in about a third of that.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Sequence
from functools import cache

_SEED = 0x9747B28C
_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


@cache
def _words(count: int) -> struct.Struct:
    return struct.Struct(f"<{count}I")


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 of ``data`` as an unsigned 32-bit value (Java's int, reinterpreted)."""
    length = len(data)
    h = _SEED ^ length
    for k in _words(length >> 2).unpack_from(data):
        k = (k * _M) & _MASK
        k ^= k >> 24
        h = ((h * _M) & _MASK) ^ ((k * _M) & _MASK)
    tail = length & 3
    if tail:
        end = length & ~3
        if tail == 3:
            h ^= data[end + 2] << 16
        if tail >= 2:
            h ^= data[end + 1] << 8
        h = ((h ^ data[end]) * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    return h ^ (h >> 15)


class KeyPartitioner:
    """aiokafka's ``partitioner``: Kafka's default for keyed records, random for unkeyed ones."""

    def __call__(self, key: bytes | None, all_partitions: Sequence[int], available: Sequence[int]) -> int:
        if key is None:
            return random.choice(available or all_partitions)
        return all_partitions[(murmur2(key) & 0x7FFFFFFF) % len(all_partitions)]
