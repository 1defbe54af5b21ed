"""Pairing facts: what one partition tells another so pairs that span two runs form anywhere.

A regenerate pair joins a run with its *parent*, and a paired outcome joins two runs of the same
prompt. Topics are keyed by run_id, so those runs usually sit in different partitions, and with
several curators in different processes. The partition that sees a signal therefore sends a
*fact* to the internal pairing topic, keyed so that it lands where the other side is joined:

- ``kept`` (a regeneration the user kept), keyed by the parent's run_id. Kafka's partitioner
  and equal partition counts put it in the partition index that holds the parent's run, and the
  ``range`` assignor gives that index of every topic to one process;
- ``regenerated`` (a run has a child), keyed by the parent's run_id: the parent was not kept,
  so its own "no further regenerate" timer must not fire;
- ``rated`` (a run's first up or down rating), keyed by tenant, feature and prompt: opposite
  ratings of one prompt meet in one partition.

Facts are produced at least once and flushed before the Delta commit of the batch that made
them, so every committed offset has its facts durable. ``fact_id`` is derived from what the
fact is about, never from where it was read, so a replay re-sends the same id and the receiver
counts it once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from confluent_kafka import KafkaError, Message, Producer
from flywheel_common.codec import AvroCodec
from flywheel_common.kafka import produce_when_room
from flywheel_common.lake import content_hash

from flywheel_curator.candidate import KafkaOrigin
from flywheel_curator.delivery import Deliveries
from flywheel_curator.sources import RunView, prompt_key

__all__ = [
    "FACT_RECORD",
    "Fact",
    "FactKind",
    "FactSink",
    "KafkaFacts",
    "LoopbackFacts",
    "fact_problem",
    "kept_fact",
    "rated_fact",
    "regenerated_fact",
    "signal_of",
]

log = logging.getLogger(__name__)

FACT_RECORD = "PairingFact"
FactKind = Literal["kept", "rated", "regenerated"]
_KINDS: frozenset[str] = frozenset({"kept", "rated", "regenerated"})
_FLUSH_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class Fact:
    """One pairing fact. ``signal`` is shaped like the feedback event the pair sources read
    (``event_id``, ``kind``, ``occurred_at`` in epoch ms, ``user_id``); ``origin`` is where the
    event behind the fact was read, kept as the pair's provenance."""

    fact_id: str
    kind: FactKind
    key: str
    tenant: str
    ts: int
    origin: KafkaOrigin
    polarity: int = 0
    run: RunView | None = None
    signal: Mapping[str, Any] | None = None

    def to_record(self) -> dict[str, Any]:
        return {
            "fact_id": self.fact_id,
            "kind": self.kind,
            "key": self.key,
            "tenant": self.tenant,
            "ts": self.ts,
            "polarity": self.polarity,
            "run": None if self.run is None else _run_record(self.run),
            "signal": None if self.signal is None else dict(self.signal),
            "origin_topic": self.origin.topic,
            "origin_partition": self.origin.partition,
            "origin_offset": self.origin.offset,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Fact | None:
        """The fact, or None for a kind this curator does not know (a newer writer's)."""
        kind = record["kind"]
        if kind not in _KINDS:
            return None
        run = record.get("run")
        return cls(
            fact_id=record["fact_id"],
            kind=kind,
            key=record["key"],
            tenant=record["tenant"],
            ts=int(record["ts"]),
            origin=KafkaOrigin(
                record["origin_topic"],
                int(record["origin_partition"]),
                int(record["origin_offset"]),
            ),
            polarity=int(record.get("polarity") or 0),
            run=None if run is None else RunView.from_json(run),
            signal=record.get("signal"),
        )


def _run_record(run: RunView) -> dict[str, Any]:
    body = run.to_json()
    body["prompt"] = [{"role": m["role"], "content": m["content"]} for m in run.prompt]
    return body


def signal_of(event: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a feedback event a pair needs, JSON- and Avro-safe."""
    occurred = event["occurred_at"]
    return {
        "event_id": str(event["event_id"]),
        "kind": str(event.get("kind") or "unknown"),
        "occurred_at": occurred if isinstance(occurred, int) else int(occurred.timestamp() * 1000),
        "user_id": event.get("user_id"),
    }


def kept_fact(child: RunView, signal: Mapping[str, Any], origin: KafkaOrigin, *, ts: int) -> Fact:
    """``child`` (a regeneration) was kept. One per child, whatever the signal: the id names
    the child only, so a replay that keeps it by another signal is still a duplicate."""
    assert child.parent_run_id is not None  # noqa: S101 - callers check
    return Fact(
        fact_id=content_hash("kept", child.tenant, child.run_id),
        kind="kept",
        key=child.parent_run_id,
        tenant=child.tenant,
        ts=ts,
        origin=origin,
        run=child,
        signal=signal,
    )


def regenerated_fact(child: RunView, origin: KafkaOrigin, *, ts: int) -> Fact:
    """``child.parent_run_id`` was regenerated away from."""
    assert child.parent_run_id is not None  # noqa: S101 - callers check
    return Fact(
        fact_id=content_hash("regenerated", child.tenant, child.run_id),
        kind="regenerated",
        key=child.parent_run_id,
        tenant=child.tenant,
        ts=ts,
        origin=origin,
    )


def rated_fact(
    run: RunView,
    polarity: int,
    signal: Mapping[str, Any],
    origin: KafkaOrigin,
    *,
    ts: int,
    key: str | None = None,
) -> Fact:
    """A run's first up or down rating (later ratings of the run do not take part); ``key`` is
    ``prompt_key(run)`` where the caller has it already."""
    key = key or prompt_key(run)
    return Fact(
        fact_id=content_hash("rated", key, run.run_id),
        kind="rated",
        key=key,
        tenant=run.tenant,
        ts=ts,
        origin=origin,
        polarity=polarity,
        run=run,
        signal=signal,
    )


class FactSink(Protocol):
    """Where the pipeline sends facts."""

    def emit(self, fact: Fact) -> None: ...


class LoopbackFacts:
    """Facts kept in memory for the caller to feed back (``flywheel curate``: one process sees
    every partition, so there is nowhere to route to)."""

    def __init__(self) -> None:
        self._queue: list[Fact] = []

    def emit(self, fact: Fact) -> None:
        self._queue.append(fact)

    def take(self) -> list[Fact]:
        out, self._queue = self._queue, []
        return out


class KafkaFacts:
    """Produces facts to the pairing topic at ``flush``, keyed by ``Fact.key`` through the
    producer's murmur2 partitioner (the same function as ``partitioner.partition_for``), and
    remembers the next offset after its last fact in each partition (a replay that stops at the
    end must also read what it wrote itself).

    Facts are buffered until ``flush``: one burst per batch costs a fraction of a produce call
    per fact made while the consumer and the broker compete for the same cores. A fact larger
    than the topic takes (``budget`` bytes of key and value) is handed to ``oversized`` (which
    dead-letters it) instead: the broker would refuse it on every retry."""

    def __init__(
        self,
        producer: Producer,
        codec: AvroCodec,
        *,
        topic: str,
        budget: int,
        oversized: Callable[[Fact, bytes], None],
    ) -> None:
        self._producer = producer
        self._codec = codec
        self.topic = topic
        self.produced_end: dict[int, int] = {}
        self._buffer: list[Fact] = []
        self._budget = budget
        self._oversized = oversized
        self._deliveries = Deliveries("pairing facts")

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if not self._deliveries.report(err):
            return
        partition, offset = msg.partition(), msg.offset()
        if partition is not None and offset is not None:
            self.produced_end[partition] = max(self.produced_end.get(partition, 0), offset + 1)

    def emit(self, fact: Fact) -> None:
        self._buffer.append(fact)

    def discard(self) -> None:
        """Forget facts not flushed yet (their batch is dropped and will be re-read)."""
        self._buffer.clear()

    def flush(self, timeout_s: float = _FLUSH_TIMEOUT_S) -> None:
        """Produce the buffered facts and wait until every one is acknowledged; raise if any
        was not (the batch that made them must then not commit)."""
        facts, self._buffer = self._buffer, []
        for fact in facts:
            value, key = self._codec.encode(FACT_RECORD, fact.to_record()), fact.key.encode()
            if len(value) + len(key) > self._budget:
                self._oversized(fact, value)
                continue
            produce_when_room(
                self._producer, self.topic, value=value, key=key, on_delivery=self._on_delivery
            )
        self._deliveries.flush(self._producer, timeout_s=timeout_s)

    def poll(self) -> None:
        self._producer.poll(0)


def fact_problem(record: Mapping[str, Any]) -> str | None:
    """Why a decoded fact cannot be applied, or None. Avro checked the types; this checks what
    each kind needs (a fact of an unknown kind is skipped, not malformed)."""
    kind = record.get("kind")
    if kind not in _KINDS:
        return None
    if not record.get("key"):
        return f"a {kind} fact with an empty key"
    if kind == "regenerated":
        return None
    for part in ("run", "signal"):
        if record.get(part) is None:
            return f"a {kind} fact without its {part}"
    if kind == "kept" and record["run"].get("parent_run_id") != record["key"]:
        return "a kept fact whose run is not a regeneration of the run it is keyed by"
    if kind == "rated" and record.get("polarity") not in (1, -1):
        return f"a rated fact with polarity {record.get('polarity')}, not +1 or -1"
    return None
