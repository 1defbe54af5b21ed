"""Dead letters and gold notifications: the two things the curator produces to Kafka.

A dead letter's ``event_id`` is derived from the source coordinates, so the copy re-sent after
a crash (the DLQ is at-least-once) is recognisably the same letter. The batch that read a bad
message is committed to Delta only after its dead letters are acknowledged, so a message is
never skipped without its letter. A letter always fits its topic: a payload (or key) too large
to go with it is cut to an excerpt, and the letter says so; its position names the original.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import KafkaError, Message, Producer
from flywheel_common.codec import AvroCodec
from flywheel_common.kafka import produce_when_room
from flywheel_common.settings import KafkaSettings

from flywheel_curator import metrics
from flywheel_curator.delivery import Deliveries, MessageLimits
from flywheel_curator.filters.redaction import redact_text

__all__ = ["Letter", "Notifier"]

log = logging.getLogger(__name__)

_COMPONENT = "curator"
_FLUSH_TIMEOUT_S = 30.0
_NAMESPACE = uuid.UUID("6f1c2d4e-8a7b-4c3d-9e2f-0a1b2c3d4e5f")
_DETAIL_CHARS = 4096
_KEY_EXCERPT = 256  # bytes of an oversized key kept in its letter
_VARINT = 10  # room for the Avro length prefix of the excerpt


@dataclass(frozen=True, slots=True)
class Letter:
    """What a dead letter says about the message (or fact) it stands for."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    payload: bytes
    received_ms: int
    reason: str
    detail: str
    tenant: str | None = None
    # Distinguishes several letters about one position (the facts one event made).
    about: str = ""


class Notifier:
    """Produces dead letters and ``GoldCommitted`` events with one reliable producer."""

    def __init__(
        self,
        producer: Producer,
        codec: AvroCodec,
        kafka: KafkaSettings,
        *,
        curator: str,
        limits: MessageLimits,
    ) -> None:
        self._producer = producer
        self._codec = codec
        self._topics = kafka.topics
        self._curator = curator
        self._limits = limits
        self._deliveries = Deliveries("dead letters and notifications")

    def _on_delivery(self, err: KafkaError | None, _msg: Message) -> None:
        self._deliveries.report(err)

    def dead_letter(
        self,
        msg: Message,
        *,
        reason: str,
        detail: str,
        tenant: str | None = None,
    ) -> None:
        _kind, broker_ts = msg.timestamp()
        self.send(
            Letter(
                topic=msg.topic() or "",
                partition=msg.partition() or 0,
                offset=msg.offset() or 0,
                key=msg.key(),
                payload=msg.value() or b"",
                received_ms=broker_ts,
                reason=reason,
                detail=detail,
                tenant=tenant,
            )
        )

    def send(self, letter: Letter) -> None:
        where = f"{letter.topic}:{letter.partition}:{letter.offset}"
        record = {
            "event_id": str(uuid.uuid5(_NAMESPACE, f"{where}{letter.about}")),
            "occurred_at": datetime.now(tz=UTC),
            "received_at": datetime.fromtimestamp(max(letter.received_ms, 0) / 1000, tz=UTC),
            "tenant": letter.tenant,
            "source_topic": letter.topic,
            "source_partition": letter.partition,
            "source_offset": letter.offset,
            "key": letter.key,
            "payload": letter.payload,
            "reason": letter.reason,
            # Redacted before it is cut, so no half of a value escapes the detector.
            "detail": redact_text(letter.detail)[:_DETAIL_CHARS],
            "component": _COMPONENT,
        }
        value, key = self._fit(record)
        self._produce(self._topics.dlq, key, value)
        metrics.DLQ.labels(reason=letter.reason).inc()
        log.warning(
            "dead letter",
            extra={
                "topic": letter.topic,
                "partition": letter.partition,
                "offset": letter.offset,
                "reason": letter.reason,
            },
        )

    def _fit(self, record: dict[str, Any]) -> tuple[bytes, bytes | None]:
        """The encoded letter and its Kafka key, within the DLQ's limit: a payload or key that
        does not fit is cut to an excerpt (the letter says how large the original was)."""
        key: bytes | None = record["key"]
        value = self._codec.encode("DeadLetter", record)
        budget = self._limits.budget(self._topics.dlq)
        if len(value) + len(key or b"") <= budget:
            return value, key
        payload: bytes = record["payload"]
        key = key[:_KEY_EXCERPT] if key is not None else None
        note = f" [payload is an excerpt: the original was {len(payload)} bytes]"
        detail = record["detail"][: _DETAIL_CHARS // 8] + note
        fitted = {**record, "key": key, "payload": b"", "detail": detail}
        room = budget - len(self._codec.encode("DeadLetter", fitted)) - len(key or b"") - _VARINT
        fitted["payload"] = payload[: max(0, room)]
        return self._codec.encode("DeadLetter", fitted), key

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
        self._deliveries.flush(self._producer, timeout_s=timeout_s)

    def poll(self) -> None:
        self._producer.poll(0)
