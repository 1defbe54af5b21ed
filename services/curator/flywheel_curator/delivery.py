"""Message limits and delivery reports of the curator's producers (dead letters, gold
notifications, pairing facts).

A broker refuses a record batch larger than the topic's ``max.message.bytes`` (every record in
it, measured: confluent-kafka 2.16, Kafka 4.1), and such refusals never heal: a batch retried
because of one would be retried forever. So each topic's limit is read from the broker at start,
every record is sized against it before it is produced, the producer's batches are capped below
it, and a refusal that no retry cures is told apart from a broker that is only away.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    ConfigResource,
    ResourceType,
)
from flywheel_common.errors import BrokerUnavailableError
from flywheel_common.kafka import flush_or_raise, make_admin
from flywheel_common.settings import KafkaSettings

from flywheel_curator.errors import ProduceRefusedError

__all__ = ["Deliveries", "MessageLimits"]

log = logging.getLogger(__name__)

# librdkafka's default message.max.bytes: no record may be larger, whatever the topic allows.
_PRODUCER_MAX = 1_000_000
# Record batch header (61 bytes) and per-record framing, with room to spare.
_FRAMING = 256
_DESCRIBE_TIMEOUT_S = 10.0
_TOPIC_LIMIT = "max.message.bytes"
# Refusals that a retry of the same record cannot cure.
_PERMANENT = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.INVALID_MSG_SIZE,
        KafkaError.RECORD_LIST_TOO_LARGE,
        KafkaError.INVALID_RECORD,
        KafkaError.INVALID_MSG,
        KafkaError.TOPIC_EXCEPTION,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
        KafkaError._INVALID_ARG,
    }
)


class MessageLimits:
    """The largest record (key and value) each topic takes, as its broker reports it."""

    def __init__(self, topic_limits: Mapping[str, int]) -> None:
        self._limits = {t: min(v, _PRODUCER_MAX) for t, v in topic_limits.items()}

    @classmethod
    def read(cls, kafka: KafkaSettings, topics: Iterable[str]) -> MessageLimits:
        names = list(topics)
        admin = make_admin(kafka)
        resources = [ConfigResource(ResourceType.TOPIC, t) for t in names]
        limits: dict[str, int] = {}
        try:
            futures = admin.describe_configs(resources, request_timeout=_DESCRIBE_TIMEOUT_S)
            for resource, future in futures.items():
                entry = future.result(_DESCRIBE_TIMEOUT_S).get(_TOPIC_LIMIT)
                if entry is not None and entry.value is not None:
                    limits[resource.name] = int(entry.value)
        except KafkaException as exc:
            # No permission to describe, or a topic not there yet: assume the producer's limit;
            # a refusal then stops the curator with the reason instead of looping.
            log.warning("topic limits unknown", extra={"topics": names, "error": str(exc)})
        return cls({t: limits.get(t, _PRODUCER_MAX) for t in names})

    def limit(self, topic: str) -> int:
        return self._limits.get(topic, _PRODUCER_MAX)

    def budget(self, topic: str) -> int:
        """Bytes of key plus value one record to ``topic`` may take."""
        return self.limit(topic) - _FRAMING

    def producer_overrides(self, topics: Iterable[str]) -> dict[str, Any]:
        """Producer settings that keep every batch within the smallest limit of ``topics``."""
        smallest = min(self.limit(t) for t in topics)
        return {
            "message.max.bytes": max(1_000, smallest),
            "batch.size": max(1, smallest - _FRAMING),
        }


class Deliveries:
    """Delivery reports of one producer since its last flush."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._failed = 0
        self._refused: str | None = None

    def report(self, err: KafkaError | None) -> bool:
        """Count a report; True if it was a success."""
        if err is None:
            return True
        self._failed += 1
        if self._refused is None and (err.code() in _PERMANENT or err.fatal()):
            self._refused = f"{err.name()}: {err.str()}"
        log.error("produce failed", extra={"what": self.what, "error": str(err)})
        return False

    def flush(self, producer: Producer, *, timeout_s: float) -> None:
        """Wait for every report. Raises ``ProduceRefusedError`` if the broker refused something
        for good, ``BrokerUnavailableError`` if something failed or is still unacknowledged."""
        try:
            flush_or_raise(producer, timeout_s=timeout_s, failed=self._take_failed, what=self.what)
        except BrokerUnavailableError as exc:
            refused, self._refused = self._refused, None
            if refused is not None:
                raise ProduceRefusedError(self.what, refused) from exc
            raise

    def _take_failed(self) -> int:
        failed, self._failed = self._failed, 0
        return failed
