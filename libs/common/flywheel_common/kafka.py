"""Thin factories over confluent-kafka, so every service talks to Kafka with the same,
named guarantees instead of ad-hoc config dicts."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any, Literal

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from flywheel_common.errors import BrokerUnavailableError, ConfigError
from flywheel_common.partitioner import KAFKA_PARTITIONER
from flywheel_common.settings import KafkaSettings

__all__ = [
    "ProducerProfile",
    "base_config",
    "consumer_config",
    "ensure_topics",
    "flush_or_raise",
    "make_admin",
    "make_consumer",
    "make_producer",
    "produce_when_room",
    "producer_config",
    "wait_for_broker",
]

ProducerProfile = Literal["reliable", "transactional"]


def base_config(settings: KafkaSettings) -> dict[str, Any]:
    conf: dict[str, Any] = {
        "bootstrap.servers": settings.bootstrap_servers,
        "security.protocol": settings.security_protocol,
        "client.id": settings.client_id,
    }
    if settings.sasl_mechanism:
        if settings.sasl_username is None or settings.sasl_password is None:
            raise ConfigError("sasl_mechanism is set but sasl_username/sasl_password are not")
        conf["sasl.mechanism"] = settings.sasl_mechanism
        conf["sasl.username"] = settings.sasl_username
        conf["sasl.password"] = settings.sasl_password.get_secret_value()
    conf.update(settings.extra)
    return conf


def producer_config(
    settings: KafkaSettings,
    *,
    profile: ProducerProfile = "reliable",
    linger_ms: float = 5.0,
    delivery_timeout_ms: int = 30_000,
    queue_max_messages: int = 100_000,
    transactional_id: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``reliable``: acks=all + idempotence, so a delivery report means the event is durable and
    retries cannot duplicate or reorder it. ``transactional`` adds a transactional id."""
    conf = base_config(settings)
    conf.update(
        {
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": linger_ms,
            "delivery.timeout.ms": delivery_timeout_ms,
            "queue.buffering.max.messages": queue_max_messages,
            "compression.type": "lz4",
            # The Java client's default: keys land where any other Kafka producer puts them,
            # and where ``partitioner.partition_for`` computes (the curator routes by it).
            "partitioner": KAFKA_PARTITIONER,
        }
    )
    if profile == "transactional":
        if not transactional_id:
            raise ConfigError("a transactional producer needs a transactional_id")
        conf["transactional.id"] = transactional_id
    conf.update(overrides or {})
    return conf


def consumer_config(
    settings: KafkaSettings,
    *,
    group_id: str,
    auto_offset_reset: Literal["earliest", "latest"] = "earliest",
    session_timeout_ms: int = 10_000,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Offsets are never auto-committed: each consumer decides what it has durably processed."""
    conf = base_config(settings)
    conf.update(
        {
            "group.id": group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": auto_offset_reset,
            "session.timeout.ms": session_timeout_ms,
            "isolation.level": "read_committed",
            "partition.assignment.strategy": "cooperative-sticky",
        }
    )
    conf.update(overrides or {})
    return conf


def make_producer(settings: KafkaSettings, **kwargs: Any) -> Producer:
    return Producer(producer_config(settings, **kwargs))


def produce_when_room(
    producer: Producer,
    topic: str,
    *,
    value: bytes,
    key: bytes | None,
    on_delivery: Callable[[KafkaError | None, Message], None],
) -> None:
    """``produce``, serving delivery reports to make room while the local queue is full
    (for background producers that may wait; a request handler answers 503 instead)."""
    while True:
        try:
            producer.produce(topic, value=value, key=key, on_delivery=on_delivery)
            return
        except BufferError:
            producer.poll(0.1)


def flush_or_raise(
    producer: Producer, *, timeout_s: float, failed: Callable[[], int], what: str
) -> None:
    """Wait until everything produced is acknowledged. ``failed`` answers how many delivery
    reports since the last flush were errors; it is asked after the flush, because the reports
    of the last messages arrive during it. Raises ``BrokerUnavailableError`` unless all went
    through."""
    left = producer.flush(timeout_s)
    errors = failed()
    if left or errors:
        raise BrokerUnavailableError(
            f"{left} {what} not acknowledged and {errors} failed within {timeout_s}s"
        )


def make_consumer(settings: KafkaSettings, *, group_id: str, **kwargs: Any) -> Consumer:
    return Consumer(consumer_config(settings, group_id=group_id, **kwargs))


def make_admin(settings: KafkaSettings) -> AdminClient:
    return AdminClient(base_config(settings))


def wait_for_broker(settings: KafkaSettings, *, timeout_s: float = 30.0) -> list[str]:
    """Block until the cluster answers a metadata request; return its topic names."""
    admin = make_admin(settings)
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            md = admin.list_topics(timeout=min(2.0, max(0.1, deadline - time.monotonic())))
            if md.brokers:
                return sorted(md.topics)
        except KafkaException as exc:
            last = exc
        time.sleep(0.2)
    raise BrokerUnavailableError(
        f"no Kafka broker answered at {settings.bootstrap_servers} within {timeout_s}s"
    ) from last


def ensure_topics(
    settings: KafkaSettings,
    topics: Iterable[str] | None = None,
    *,
    partitions: int | None = None,
    timeout_s: float = 30.0,
) -> list[str]:
    """Create missing topics, all with the same partition count (the co-partitioning contract).
    Returns the names that were created. Existing topics with another count are an error."""
    names = list(topics) if topics is not None else list(settings.topics.all())
    want = partitions or settings.partitions
    admin = make_admin(settings)
    existing = admin.list_topics(timeout=timeout_s).topics
    for name in names:
        if name in existing and len(existing[name].partitions) != want:
            raise ConfigError(
                f"topic {name} has {len(existing[name].partitions)} partitions, expected {want}: "
                "co-partitioning by run_id needs the same count on every topic"
            )
    missing = [n for n in names if n not in existing]
    if not missing:
        return []
    futures = admin.create_topics(
        [
            NewTopic(n, num_partitions=want, replication_factor=settings.replication_factor)
            for n in missing
        ],
        request_timeout=timeout_s,
    )
    created = []
    for name, fut in futures.items():
        try:
            fut.result(timeout=timeout_s)
            created.append(name)
        except KafkaException as exc:
            if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":
                raise BrokerUnavailableError(f"cannot create topic {name}: {exc}") from exc
    # Metadata propagates asynchronously; wait until every topic is visible with its leaders.
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        md = admin.list_topics(timeout=timeout_s).topics
        if all(n in md and len(md[n].partitions) == want and not md[n].error for n in names):
            break
        time.sleep(0.05)
    return created
