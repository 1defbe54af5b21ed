"""Dead letters and gold notifications: the two things the curator produces to Kafka.

A dead letter's ``event_id`` is derived from the source coordinates, so the copy re-sent after
a crash (the DLQ is at-least-once) is recognisably the same letter. The batch that read a bad
message is committed to Delta only after its dead letters are acknowledged, so a message is
never skipped without its letter.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

from confluent_kafka import KafkaError, Message, Producer
from flywheel_common.codec import AvroCodec
from flywheel_common.kafka import flush_or_raise, produce_when_room
from flywheel_common.settings import KafkaSettings

from flywheel_curator import metrics
from flywheel_curator.filters.redaction import redact_text

__all__ = ["Notifier"]

log = logging.getLogger(__name__)

_COMPONENT = "curator"
_FLUSH_TIMEOUT_S = 30.0
_NAMESPACE = uuid.UUID("6f1c2d4e-8a7b-4c3d-9e2f-0a1b2c3d4e5f")


class Notifier:
    """Produces dead letters and ``GoldCommitted`` events with one reliable producer."""

    def __init__(
        self, producer: Producer, codec: AvroCodec, kafka: KafkaSettings, *, curator: str
    ) -> None:
        self._producer = producer
        self._codec = codec
        self._topics = kafka.topics
        self._curator = curator
        self._failed = 0

    def _on_delivery(self, err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            self._failed += 1
            log.error("produce failed", extra={"error": str(err)})

    def dead_letter(
        self,
        msg: Message,
        *,
        reason: str,
        detail: str,
        tenant: str | None = None,
    ) -> None:
        topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
        _kind, broker_ts = msg.timestamp()
        now = datetime.now(tz=UTC)
        record = {
            "event_id": str(uuid.uuid5(_NAMESPACE, f"{topic}:{partition}:{offset}")),
            "occurred_at": now,
            "received_at": datetime.fromtimestamp(max(broker_ts, 0) / 1000, tz=UTC),
            "tenant": tenant,
            "source_topic": topic,
            "source_partition": partition,
            "source_offset": offset,
            "key": msg.key(),
            "payload": msg.value() or b"",
            "reason": reason,
            # Redacted before it is cut, so no half of a value escapes the detector.
            "detail": redact_text(detail)[:4096],
            "component": _COMPONENT,
        }
        self._produce(self._topics.dlq, msg.key(), self._codec.encode("DeadLetter", record))
        metrics.DLQ.labels(reason=reason).inc()
        log.warning(
            "dead letter",
            extra={"topic": topic, "partition": partition, "offset": offset, "reason": reason},
        )

    def gold_committed(
        self, *, table: str, table_uri: str, version: int, rows: int, tenants: Sequence[str]
    ) -> None:
        now = datetime.now(tz=UTC)
        record = {
            "event_id": str(uuid.uuid4()),
            "occurred_at": now,
            "received_at": now,
            "tenants": list(tenants),
            "table": table,
            "table_uri": table_uri,
            "version": version,
            "rows_added": rows,
            "curator": self._curator,
        }
        self._produce(
            self._topics.gold, table.encode(), self._codec.encode("GoldCommitted", record)
        )

    def _produce(self, topic: str, key: bytes | None, value: bytes) -> None:
        produce_when_room(
            self._producer, topic, value=value, key=key, on_delivery=self._on_delivery
        )
        self._producer.poll(0)

    def flush(self, timeout_s: float = _FLUSH_TIMEOUT_S) -> None:
        """Wait until everything produced so far is acknowledged; raise if anything was not."""
        failed, self._failed = self._failed, 0
        flush_or_raise(self._producer, timeout_s=timeout_s, failed=failed, what="messages")

    def poll(self) -> None:
        self._producer.poll(0)
