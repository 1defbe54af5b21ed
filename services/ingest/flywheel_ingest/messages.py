"""Events as Kafka messages: encoded (Avro single-object), keyed by ``run_id``, and sized
against what the producer and the topics take, before anything is produced.

The limit: the producer's ``message.max.bytes`` (the ``max_message_bytes`` setting), lowered
when the smallest ``max.message.bytes`` of the event topics, as the broker reports it at start,
cannot hold a batch of that size after worst-case lz4 expansion and framing. A message counts
its key, its value and a fixed record overhead, as librdkafka does.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, NamedTuple

from confluent_kafka import KafkaException
from confluent_kafka.admin import ConfigResource, ResourceType  # type: ignore[attr-defined]
from flywheel_common import AvroCodec, FlywheelError, KafkaSettings
from flywheel_common.kafka import make_admin

__all__ = [
    "Encoded",
    "EventRecord",
    "EventTooLarge",
    "encode_events",
    "producer_message_limit",
    "topic_message_limit",
]

log = logging.getLogger(__name__)

RECORD_OVERHEAD = 128
"""Bytes a message costs beyond its key and value (record framing; librdkafka counts it)."""
_BATCH_OVERHEAD = 128
"""Kafka record-batch header plus lz4 frame header and end mark."""
_TOPIC_LIMIT = "max.message.bytes"
_DESCRIBE_TIMEOUT_S = 10.0


class EventRecord(NamedTuple):
    """One event ready to encode: its Avro record name, topic and record."""

    record_name: str
    topic: str
    record: dict[str, Any]


class Encoded(NamedTuple):
    """One event ready for ``produce``."""

    topic: str
    value: bytes
    key: bytes


class EventTooLarge(FlywheelError):
    """Event ``index`` of a request encodes to ``size`` bytes: more than a message may hold."""

    def __init__(self, index: int, size: int, limit: int) -> None:
        super().__init__(f"event {index} is {size} bytes encoded, over the {limit}-byte limit")
        self.index = index
        self.size = size
        self.limit = limit


def encode_events(
    codec: AvroCodec, events: Sequence[EventRecord], *, max_bytes: int
) -> list[Encoded]:
    """The messages of ``events``, each at most ``max_bytes`` (key + value).

    Raises:
        EventTooLarge: the first event that does not fit.
        EncodeError: a record does not fit its schema (a bug: the models are checked
            against the schemas).
    """
    encode = codec.encode
    messages = [
        Encoded(e.topic, encode(e.record_name, e.record), e.record["run_id"].encode())
        for e in events
    ]
    for index, message in enumerate(messages):
        size = len(message.value) + len(message.key)
        if size > max_bytes:
            raise EventTooLarge(index, size, max_bytes)
    return messages


def producer_message_limit(max_message_bytes: int, topic_limit: int | None) -> int:
    """The ``message.max.bytes`` to give the producer: the setting, or less when a topic takes
    less (lz4 may grow an incompressible batch by 1/255, and the batch adds its framing)."""
    if topic_limit is None:
        return max_message_bytes
    return min(max_message_bytes, (topic_limit - _BATCH_OVERHEAD) * 255 // 256)


def topic_message_limit(kafka: KafkaSettings) -> int | None:
    """The smallest ``max.message.bytes`` of the event topics, or None if the broker would not
    say (then the producer's limit stands alone, and is logged)."""
    topics = kafka.topics
    resources = [
        ConfigResource(ResourceType.TOPIC, name)
        for name in (topics.runs, topics.feedback, topics.edits)
    ]
    admin = make_admin(kafka)  # kept referenced until the answers are in
    try:
        futures = admin.describe_configs(resources, request_timeout=_DESCRIBE_TIMEOUT_S)
        return min(
            int(f.result(timeout=_DESCRIBE_TIMEOUT_S)[_TOPIC_LIMIT].value) for f in futures.values()
        )
    except (KafkaException, KeyError, ValueError, TimeoutError) as exc:
        log.warning("topic message limits unknown; using the producer's", extra={"error": str(exc)})
        return None
