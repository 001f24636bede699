"""Results land on the partition every Kafka client picks for their key."""

from __future__ import annotations

from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from hypothesis import given
from hypothesis import strategies as st

from altlas.producers.partitioner import KeyPartitioner, murmur2

# org.apache.kafka.common.utils.UtilsTest#testMurmur2 (Java ints).
JAVA = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


def test_murmur2_matches_the_java_clients_vectors() -> None:
    for key, expected in JAVA.items():
        assert murmur2(key) == expected & 0xFFFFFFFF, key


@given(st.binary(max_size=300))
def test_murmur2_matches_aiokafkas_on_any_key(key: bytes) -> None:
    assert murmur2(key) == aiokafka_murmur2(key) & 0xFFFFFFFF


def test_keyed_records_hash_and_unkeyed_ones_spread_over_available_partitions() -> None:
    partitioner = KeyPartitioner()
    for key, java in JAVA.items():
        assert partitioner(key, [0, 1, 2, 3, 4], [0, 1]) == (java & 0x7FFFFFFF) % 5
    assert {partitioner(None, [0, 1, 2, 3], [1, 3]) for _ in range(200)} == {1, 3}
    assert {partitioner(None, [0, 1, 2], []) for _ in range(200)} == {0, 1, 2}
