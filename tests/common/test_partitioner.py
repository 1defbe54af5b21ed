"""Kafka's default partitioner in Python agrees with the Java client and with librdkafka."""

from __future__ import annotations

import uuid

import pytest
from flywheel_common.kafka import make_producer, producer_config
from flywheel_common.partitioner import KAFKA_PARTITIONER, murmur2, partition_for
from flywheel_common.settings import KafkaSettings

# Kafka's own test vectors for Utils.murmur2 (clients/src/test/.../UtilsTest.java).
JAVA_VECTORS = {
    "21": -973932308,
    "foobar": -790332482,
    "a-little-bit-long-string": -985981536,
    "a-little-bit-longer-string": -1486304829,
    "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    "abc": 479470107,
}


@pytest.mark.parametrize(("key", "expected"), sorted(JAVA_VECTORS.items()))
def test_murmur2_matches_the_java_client(key: str, expected: int) -> None:
    assert murmur2(key.encode()) == expected


def test_every_producer_uses_that_partitioner(kafka_settings: KafkaSettings) -> None:
    assert producer_config(kafka_settings)["partitioner"] == KAFKA_PARTITIONER


def test_partition_for_matches_librdkafka(kafka_settings: KafkaSettings) -> None:
    keys = [str(uuid.uuid4()) for _ in range(200)] + ["", "a", "ab", "abc", "é🚀"]
    placed: dict[str, int] = {}

    def record(err: object, msg: object) -> None:
        assert err is None, err
        placed[msg.key().decode()] = msg.partition()  # type: ignore[attr-defined]

    producer = make_producer(kafka_settings, linger_ms=1)
    for key in keys:
        producer.produce(kafka_settings.topics.runs, b"x", key=key.encode(), on_delivery=record)
    assert producer.flush(30) == 0
    partitions = kafka_settings.partitions
    assert len(set(placed.values())) == partitions  # the keys spread over every partition
    assert {k: partition_for(k, partitions) for k in keys} == placed


def test_partition_for_rejects_no_partitions() -> None:
    with pytest.raises(ValueError, match="partitions must be >= 1"):
        partition_for("k", 0)
