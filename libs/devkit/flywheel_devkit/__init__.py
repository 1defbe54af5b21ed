"""Development kit: a real local Kafka broker for tests, the demo and benchmarks."""

from flywheel_devkit.broker import (
    KAFKA_VERSION,
    BrokerError,
    LocalKafka,
    ensure_kafka_jars,
    free_port,
)

__all__ = ["KAFKA_VERSION", "BrokerError", "LocalKafka", "ensure_kafka_jars", "free_port"]
