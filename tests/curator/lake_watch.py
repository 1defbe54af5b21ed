"""Waiting on the curator from outside: until the lake's offsets reach the end of every input
topic, and reading back the dead letters it produced."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from confluent_kafka import TopicPartition
from deltalake import DeltaTable
from flywheel_common.codec import AvroCodec
from flywheel_common.kafka import make_consumer
from flywheel_common.lake import txn_app_id
from flywheel_common.settings import KafkaSettings

from tests.conftest import PARTITIONS
from tests.curator.conftest import wait_until


class CaughtUp:
    """True once the lake's offsets reach every partition's end on the four input topics."""

    def __init__(self, kafka: KafkaSettings, lake: Path, group: str) -> None:
        self._consumer = make_consumer(kafka, group_id=f"w-{uuid.uuid4().hex}")
        self._uri, self._group = str(lake / "dpo_pairs"), group
        t = kafka.topics
        inputs = (t.runs, t.feedback, t.edits, t.pairing)
        self._tps = [(topic, p) for topic in inputs for p in range(PARTITIONS)]

    def __call__(self) -> bool:
        if not DeltaTable.is_deltatable(self._uri):
            return False
        dt = DeltaTable(self._uri)
        for topic, p in self._tps:
            _low, high = self._consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high and (dt.transaction_version(txn_app_id(self._group, topic, p)) or 0) < high:
                return False
        return True

    def close(self) -> None:
        self._consumer.close()


def dead_letters(kafka: KafkaSettings, *, at_least: int) -> list[dict[str, Any]]:
    consumer = make_consumer(kafka, group_id=f"dlq-{uuid.uuid4().hex}")
    consumer.assign([TopicPartition(kafka.topics.dlq, p, 0) for p in range(PARTITIONS)])
    codec, out = AvroCodec(), []

    def enough() -> bool:
        for m in consumer.consume(100, timeout=0.5):
            if m.error() is None:
                out.append(codec.decode(m.value()).record)
        return len(out) >= at_least

    try:
        wait_until(enough, timeout=60, what=f"{at_least} dead letters")
        out.extend(codec.decode(m.value()).record for m in consumer.consume(100, timeout=1.0))
    finally:
        consumer.close()
    return out
