"""The lake's record of the topics against the broker's: topics recreated under an existing
lake, and the operator's explicit answer to that.

The curator resumes every partition from the offset its tables recorded (``sink.py``). If the
topics were deleted and recreated, those offsets belong to topics that are gone, and a consumer
left to ``auto.offset.reset`` would silently start somewhere else: skipping data, or re-reading
offsets the lake already "has" and dropping their rows as replays. So, on start and on every
assignment, the curator compares each topic's id with the fingerprint its claims recorded
(``claims.py``) and each partition's end with the lake's offset, and refuses to run on a
mismatch (``TopicsReplacedError`` names the partitions and what to do). Its consumer has
``auto.offset.reset=error``: a position that falls off the log while running is decided here
too (before the log start: retention, move to it; past the end: refuse).

``reset_offsets`` is the explicit way on: one empty commit per table that sets the chosen
offsets, raises the owner epochs (a curator still running is fenced) and records who, why and
what in the commit's metadata: the tables' own history is the record (``DeltaTable.history``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Literal

from confluent_kafka import Consumer, KafkaException, TopicCollection, TopicPartition
from flywheel_common.errors import BrokerUnavailableError, ConfigError
from flywheel_common.kafka import make_admin
from flywheel_common.lake import TableName
from flywheel_common.settings import KafkaSettings

from flywheel_curator.claims import owner_app_id, owner_epochs, topic_app_id
from flywheel_curator.errors import OffsetGap, TopicReplaced
from flywheel_curator.sink import COMMIT_ORDER, DeltaSink

__all__ = [
    "RESET_OPERATION",
    "fingerprints",
    "gaps",
    "partitions_of",
    "replaced",
    "reset_offsets",
    "start_within",
    "watermarks",
]

log = logging.getLogger(__name__)

TP = tuple[str, int]
Watermarks = Mapping[TP, tuple[int, int]]
RESET_OPERATION = "reset-offsets"
_TIMEOUT_S = 10.0
_MAX_TXN = (1 << 63) - 1


def partitions_of(consumer: Consumer, topics: Sequence[str]) -> list[TP]:
    """Every partition of ``topics`` that exists on the broker."""
    try:
        md = consumer.list_topics(timeout=_TIMEOUT_S).topics
    except KafkaException as exc:
        raise BrokerUnavailableError(f"cannot list topics: {exc}") from exc
    return [(t, p) for t in topics if t in md for p in sorted(md[t].partitions)]


def watermarks(consumer: Consumer, tps: Sequence[TP]) -> dict[TP, tuple[int, int]]:
    """(log start, high watermark) of each partition, as the broker reports them now."""
    out: dict[TP, tuple[int, int]] = {}
    for tp in tps:
        try:
            low, high = consumer.get_watermark_offsets(TopicPartition(*tp), timeout=_TIMEOUT_S)
        except KafkaException as exc:
            raise BrokerUnavailableError(f"no watermarks for {tp[0]}[{tp[1]}]: {exc}") from exc
        out[tp] = (int(low), int(high))
    return out


def fingerprints(kafka: KafkaSettings, topics: Sequence[str]) -> dict[str, int]:
    """A fingerprint of each topic's id: its 63 high bits (a txn version is a non-negative
    64-bit integer). Topics the broker does not know are left out."""
    admin = make_admin(kafka)
    out: dict[str, int] = {}
    futures = admin.describe_topics(TopicCollection(list(topics)), request_timeout=_TIMEOUT_S)
    for topic, future in futures.items():
        try:
            topic_id = future.result(_TIMEOUT_S).topic_id
        except KafkaException as exc:
            log.info("no topic id", extra={"topic": topic, "error": str(exc)})
            continue
        out[topic] = int(topic_id.get_most_significant_bits()) & _MAX_TXN
    return out


def replaced(sink: DeltaSink, current: Mapping[str, int]) -> list[TopicReplaced]:
    """Topics whose id differs from the fingerprint the lake recorded for the sink's group
    (a lake from before fingerprints were recorded has none: nothing to compare)."""
    dt = sink.table("dpo_pairs")
    out = []
    for topic, fingerprint in current.items():
        recorded = dt.transaction_version(topic_app_id(sink.group, topic))
        if recorded is not None and recorded != fingerprint:
            out.append(TopicReplaced(topic))
    return out


def gaps(
    offsets: Mapping[TableName, Mapping[TP, int | None]], marks: Watermarks
) -> list[OffsetGap]:
    """Partitions whose furthest offset in any table lies past the topic's end."""
    out = []
    for tp, (_low, high) in marks.items():
        ends = [v for t in COMMIT_ORDER if (v := offsets[t].get(tp)) is not None]
        if ends and max(ends) > high:
            out.append(OffsetGap(tp[0], tp[1], max(ends), high))
    return out


def start_within(tp: TP, start: int, marks: Watermarks) -> int:
    """``start`` within the log: moved up to the log start when retention deleted what lay
    before it, down to the end when a requested start (``--from-offset``) lies past it. Kafka's
    logical offsets (negative) are left alone; the lake's own offsets were checked (``gaps``)."""
    low, high = marks.get(tp, (0, 0))
    moved = low if 0 <= start < low else high if start > high else start
    if moved != start:
        log.info(
            "start offset outside the log; starting at its nearest end",
            extra={"partition": f"{tp[0]}[{tp[1]}]", "wanted": start, "start": moved},
        )
    return moved


def reset_offsets(
    sink: DeltaSink,
    marks: Watermarks,
    *,
    topics: Mapping[str, int],
    to: Literal["earliest", "latest"],
    actor: str,
    reason: str,
) -> list[dict[str, object]]:
    """Set the offsets of the partitions in ``marks`` to each one's log start (``earliest``)
    or end (``latest``) in every table, record the ``topics``' current id fingerprints and
    fence any curator still running; returns what was changed, as recorded in the commits."""
    if not reason.strip():
        raise ConfigError("an offset reset needs a reason (it is recorded in the tables)")
    tps = sorted(marks)
    before = sink.offsets(tps)
    target = {tp: marks[tp][0] if to == "earliest" else marks[tp][1] for tp in tps}
    changes: list[dict[str, object]] = [
        {
            "topic": tp[0],
            "partition": tp[1],
            "from": before["dpo_pairs"][tp],
            "to": target[tp],
        }
        for tp in tps
    ]
    epochs = {tp: e + 1 for tp, e in owner_epochs(sink, tps).items()}
    txns = {sink.app_id(tp): target[tp] for tp in tps}
    txns.update({owner_app_id(sink.group, tp): epochs[tp] for tp in tps})
    txns.update({topic_app_id(sink.group, t): v for t, v in topics.items()})
    record = {
        "flywheel.actor": actor,
        "flywheel.reason": reason,
        "flywheel.offsets": json.dumps(changes),
    }
    # Auxiliary tables first, dpo_pairs (where the curator resumes from) last.
    for table in COMMIT_ORDER:
        version = sink.mark(table, txns, operation=RESET_OPERATION, metadata=record)
        log.warning(
            "offsets reset", extra={"table": table, "version": version, "partitions": len(tps)}
        )
    return changes
