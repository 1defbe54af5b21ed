"""The curator's consume → curate → commit loop over runs, feedback, edits and the internal
pairing topic (``facts.py``).

Exactly once, in short:

1. Partitions are assigned with the ``range`` strategy, so partition *p* of the three
   co-partitioned topics goes to one process and a run meets its feedback.
2. On assignment the curator checks that the topics are the ones the lake recorded, claims
   the partitions in the lake (``claims.py``: a zombie is fenced from then on), and resumes
   each from the lake, never from Kafka (``resume.py``): the ``dpo_pairs`` txn version *D*
   (next offset committed to all tables) and the state store's applied offset *S* ≤ *D*. It
   re-applies [S, D) to the state; rows re-derived there are skipped for any table whose txn
   already covers all of their ingredients (``replayed.py``). Until every partition is back at
   *D*, messages past it wait (``gate.py``).
3. A micro-batch first flushes the pairing facts it produced, then commits to Delta
   (``sink.py``, fenced against zombies), then the state store, then — as a convenience only —
   the Kafka offsets; table upkeep (``upkeep.py``) runs after that, between batches. Facts are
   therefore durable before the offsets that made them count as consumed; a replay re-sends
   them with the same ids and the receiver counts them once.
4. A failed or fenced commit drops the batch, rolls the state back and re-seeks from the lake
   (after a backoff where the cause is transient: a lost race, a broker away for a while).
5. Anything else (a bug, a refusal no retry cures) abandons the batch: nothing of it is
   committed, not by the close path either, the state rolls back and the process exits
   non-zero; the next start re-reads the batch.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)
from flywheel_common.codec import AvroCodec
from flywheel_common.errors import (
    BrokerUnavailableError,
    DecodeError,
    FlywheelError,
    LakeError,
    SinkCommitError,
)
from flywheel_common.kafka import ensure_topics, make_admin, make_consumer, make_producer
from flywheel_common.lake import TableName
from flywheel_common.partitioner import partition_for

from flywheel_curator import metrics
from flywheel_curator.candidate import KafkaOrigin
from flywheel_curator.claims import claim
from flywheel_curator.delivery import MessageLimits
from flywheel_curator.dlq import Letter, Notifier
from flywheel_curator.errors import FencedError, InjectedFault
from flywheel_curator.facts import FACT_RECORD, Fact, KafkaFacts, fact_problem
from flywheel_curator.filters import FilterError
from flywheel_curator.joins import JoinStore
from flywheel_curator.offsets import partitions_of
from flywheel_curator.pipeline import (
    CuratedRow,
    Pipeline,
    build_chain,
    build_pipeline,
    load_filter_state,
)
from flywheel_curator.refusals import Refusal
from flywheel_curator.replayed import sort_replayed
from flywheel_curator.resume import Resume
from flywheel_curator.settings import CuratorSettings
from flywheel_curator.sink import COMMIT_ORDER, DeltaSink, FaultPoint, ZombieError
from flywheel_curator.sources import validate
from flywheel_curator.warmup import read_filter_state

__all__ = ["Curator"]

log = logging.getLogger(__name__)

TP = tuple[str, int]
_WATERMARK_TIMEOUT_S = 10.0
_BASE_BACKOFF_S = 0.1
_MAX_BACKOFF_S = 5.0
# Every n-th run is checked against Kafka's partitioner (regenerate facts rely on it).
_ROUTING_SAMPLE = 64
# Failures a re-read of the batch may cure: a lost commit race, a table that could not be
# loaded, a broker away for a while, a toxicity scorer that failed (fail closed).
_TRANSIENT = (LakeError, BrokerUnavailableError, FilterError)
# Session timeouts a process may stay fenced while the group still assigns it the partitions.
_FENCED_SESSIONS = 3


class Curator:
    """One curator process: a consumer-group member that writes the gold tables."""

    def __init__(self, settings: CuratorSettings, *, codec: AvroCodec | None = None) -> None:
        self.settings = settings
        self.topics = settings.kafka.topics
        self.codec = codec or AvroCodec()
        self._rng = random.Random()  # noqa: S311 - fault injection, not security
        self.sink = DeltaSink(
            settings.lake,
            group=settings.group_id,
            instance=settings.instance_id,
            upkeep=settings.upkeep,
            fault=self._fault,
        )
        self.sink.ensure_tables()
        self.store = JoinStore(
            settings.state_dir / f"{settings.group_id}.sqlite",
            identity=f"{settings.lake.uri}|{settings.group_id}",
            cache_kib=settings.state_cache_kib,
        )
        chain = build_chain(settings.filters, self.store)
        # Near-dup and caps remember in memory: rebuild them from the part of the table they
        # need (warmup.py), not the whole of it.
        now = datetime.now(tz=UTC)
        state = read_filter_state(self.sink.table("dpo_pairs"), settings.filters, now=now)
        load_filter_state(chain, state, settings.filters)
        self.partitions = _prepare_pairing_topic(settings)
        t = self.topics
        self.limits = MessageLimits.read(settings.kafka, [t.pairing, t.dlq, t.gold])
        self.facts = KafkaFacts(
            make_producer(
                settings.kafka,
                linger_ms=20,
                overrides=self.limits.producer_overrides([t.pairing]),
            ),
            self.codec,
            topic=t.pairing,
            budget=self.limits.budget(t.pairing),
            oversized=self._fact_too_large,
        )
        self.pipeline: Pipeline = build_pipeline(
            settings, self.store, facts=self.facts, chain=chain
        )
        self.consumer: Consumer = make_consumer(
            settings.kafka,
            group_id=settings.group_id,
            session_timeout_ms=settings.session_timeout_ms,
            overrides={
                # Range gives partition p of every topic to the same member: co-partitioning.
                "partition.assignment.strategy": "range",
                "heartbeat.interval.ms": max(500, settings.session_timeout_ms // 5),
                "client.id": f"{settings.kafka.client_id}-curator-{settings.instance_id}",
                "enable.partition.eof": False,
                # Never start anywhere by itself: a position off the log is decided in
                # resume.py (retention: the log start; past the end: refuse).
                "auto.offset.reset": "error",
                **(
                    {"group.instance.id": settings.static_member_id}
                    if settings.static_member_id
                    else {}
                ),
            },
        )
        self.notifier = Notifier(
            make_producer(
                settings.kafka, overrides=self.limits.producer_overrides([t.dlq, t.gold])
            ),
            self.codec,
            settings.kafka,
            curator=settings.instance_id,
            limits=self.limits,
        )
        self.assigned: set[TP] = set()
        # Each table's txn version per partition, as this process last saw or wrote it.
        self.known: dict[TableName, dict[TP, int | None]] = {t: {} for t in COMMIT_ORDER}
        # The owner epoch this process claimed for each assigned partition (claims.py).
        self.epochs: dict[TP, int] = {}
        self._end: dict[TP, int] = {}  # next offset after the batch, per partition read
        self._rows: dict[TableName, list[dict[str, Any]]] = {t: [] for t in COMMIT_ORDER}
        self._events = 0
        self._batch_started = time.monotonic()
        self._dlq_pending = False
        self._stop_at: dict[TP, int] = {}
        self.resume = Resume(settings, self.consumer, self.sink, self.store, self.known)
        self.gate = self.resume.gate
        self.commits = 0
        self._failures = 0
        self._abandoned = False
        self._fenced_since: float | None = None
        self._faults = 0  # injected so far (crash tests)

    # -- lifecycle ----------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Consume until ``stop`` is set (or, for a replay, until caught up)."""
        topics = [self.topics.runs, self.topics.feedback, self.topics.edits, self.topics.pairing]
        # Refuse before joining the group if the topics were recreated under this lake.
        self.resume.check(partitions_of(self.consumer, topics))
        self.consumer.subscribe(
            topics, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )
        log.info(
            "curator started",
            extra={"group": self.settings.group_id, "instance": self.settings.instance_id},
        )
        try:
            self._loop(stop)
        except BaseException as exc:
            self._abandon(exc)
            raise
        finally:
            self.close()

    def _loop(self, stop: threading.Event) -> None:
        batch = self.settings.batch
        while not stop.is_set():
            left = batch.max_seconds - (time.monotonic() - self._batch_started)
            msgs = self.consumer.consume(
                num_messages=batch.consume_batch, timeout=max(0.0, min(left, 0.5))
            )
            for msg in msgs:
                self._handle(msg)
            if self.gate.held:
                self.resume.release_held()
            self.notifier.poll()
            self.facts.poll()
            if self._due():
                self.flush()
            if self.settings.start.stop_at_end and self._caught_up():
                break
        self.flush()

    def _abandon(self, exc: BaseException) -> None:
        """The loop ended by an exception: nothing of the batch in progress may reach a table
        (nor may the close path's revoke callback commit it); the state rolls back, and the
        next start re-reads the batch from the lake's offsets."""
        self._abandoned = True
        log.error(
            "batch abandoned: nothing of it was committed; the curator stops",
            extra={"events": self._events, "error": type(exc).__name__},
        )
        self._drop("abandoned")

    def close(self) -> None:
        try:
            self.consumer.close()  # revokes: the revoke callback flushes what is left
        except (KafkaException, RuntimeError) as exc:
            log.warning("consumer close failed", extra={"error": str(exc)})
        try:
            self.notifier.flush()
        except FlywheelError as exc:
            log.error("gold notifications not delivered", extra={"error": str(exc)})
        self.store.close()
        log.info("curator stopped", extra={"commits": self.commits})

    # -- rebalance ----------------------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        tps = [(p.topic, p.partition) for p in partitions]
        self._fenced_since = None
        self.assigned = set(tps)
        # Checked, then claimed before anything is read: from here on a zombie's commit is
        # refused.
        self.resume.check(tps)
        self.epochs = claim(self.sink, tps, topics=self.resume.topic_ids) if tps else {}
        positions = self.resume.start(tps)
        for p in partitions:
            p.offset = positions[(p.topic, p.partition)]
        if self.settings.start.stop_at_end:
            for tp in tps:
                self._stop_at[tp] = self.resume.marks[tp][1]
        consumer.assign(partitions)
        log.info(
            "assigned",
            extra={"partitions": {f"{t}[{p}]": positions[(t, p)] for t, p in tps}},
        )

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Still the owner while the callback runs: commit what was read, then let go; but
        # never a batch that an unexpected error left half done.
        if not self._abandoned:
            self.flush()
        self._forget(partitions)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Not the owner any more (session timed out): anything buffered may already be
        # someone else's to write.
        log.warning("partitions lost", extra={"count": len(partitions)})
        self._drop("lost")
        self._forget(partitions)

    def _forget(self, partitions: Sequence[TopicPartition]) -> None:
        self.gate.forget((p.topic, p.partition) for p in partitions)
        for p in partitions:
            tp = (p.topic, p.partition)
            self.assigned.discard(tp)
            self.epochs.pop(tp, None)
            for table in COMMIT_ORDER:
                self.known[table].pop(tp, None)

    def _caught_up(self) -> bool:
        """A replay is done once every assigned partition's *position* reached the end it had
        at the start (and the pairing topic's, the facts this replay wrote), nothing is held
        or replaying and the last batch is committed. Positions, not the last message's
        offset: a transactional producer's last offset is a commit marker that no message
        has, and the consumer's position moves past it."""
        if not self.assigned or not self._stop_at or self._end:
            return False
        if self.gate.held or self.gate.replaying:
            return False
        tps = sorted(self.assigned)
        try:
            found = self.consumer.position([TopicPartition(t, p) for t, p in tps])
        except KafkaException as exc:
            log.info("position unavailable", extra={"error": str(exc)})
            return False
        positions = {(p.topic, p.partition): p.offset for p in found}
        for tp in tps:
            high = self._stop_at.get(tp, 0)
            if tp[0] == self.topics.pairing:
                high = max(high, self.facts.produced_end.get(tp[1], 0))
            done = max(positions.get(tp, -1), self.known["dpo_pairs"].get(tp) or 0)
            if done < high:
                return False
        return True

    # -- messages -----------------------------------------------------------------------------

    def _handle(self, msg: Message) -> None:
        err = msg.error()
        if err is not None:
            topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
            if err.code() == KafkaError._AUTO_OFFSET_RESET and topic and partition is not None:
                self.resume.off_the_log((topic, partition), offset or 0)
            elif err.code() != KafkaError._PARTITION_EOF:
                log.warning("consume error", extra={"error": str(err)})
            return
        topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
        if topic is None or partition is None or offset is None:
            return  # only error events lack coordinates, and those were handled above
        tp = (topic, partition)
        if tp not in self.assigned:
            return  # fetched before a revoke; the new owner reads it
        if not self.gate.admit(tp, offset):
            if self.gate.held.get(tp) == offset:  # the first held message: stop fetching
                self.consumer.pause([TopicPartition(topic, partition)])
            return
        metrics.labeled(metrics.CONSUMED, topic).inc()
        event_type = self.topics.event_type_of(topic)
        replay = offset < (self.known["dpo_pairs"].get(tp) or 0)
        self._end[tp] = offset + 1
        self._events += 1
        self._fault("while_handling")
        if topic == self.topics.pairing:
            self._handle_fact(msg, KafkaOrigin(topic, partition, offset), replay=replay)
            return
        if event_type is None:
            return
        if event_type == "run" and offset % _ROUTING_SAMPLE == 0:
            self._check_routing(msg, partition)
        try:
            decoded = self.codec.decode(
                msg.value() or b"", topic=topic, partition=partition, offset=offset
            )
        except DecodeError as exc:
            if not replay:
                self.notifier.dead_letter(msg, reason=exc.reason_code, detail=exc.reason)
                self._dlq_pending = True
            self.pipeline.summary.dlq[exc.reason_code] += 1
            return
        reason = validate(event_type, decoded.name, decoded.record)
        if reason is not None:
            if not replay:
                tenant = decoded.record.get("tenant")
                self.notifier.dead_letter(
                    msg,
                    reason="invalid_event",
                    detail=reason,
                    tenant=tenant if isinstance(tenant, str) else None,
                )
                self._dlq_pending = True
            self.pipeline.summary.dlq["invalid_event"] += 1
            return
        origin = KafkaOrigin(topic, partition, offset)
        refusal = self.pipeline.process(event_type, decoded.record, origin)
        self._refused(msg, refusal, replay=replay)

    def _handle_fact(self, msg: Message, origin: KafkaOrigin, *, replay: bool) -> None:
        reason = detail = ""
        try:
            decoded = self.codec.decode(
                msg.value() or b"",
                topic=origin.topic,
                partition=origin.partition,
                offset=origin.offset,
            )
        except DecodeError as exc:
            reason, detail = exc.reason_code, exc.reason
        else:
            if decoded.name != FACT_RECORD:
                reason, detail = "invalid_event", f"a {decoded.name} record on the pairing topic"
            elif (problem := fact_problem(decoded.record)) is not None:
                reason, detail = "invalid_fact", problem
        if reason:
            if not replay:
                self.notifier.dead_letter(msg, reason=reason, detail=detail)
                self._dlq_pending = True
            self.pipeline.summary.dlq[reason] += 1
            return
        fact = Fact.from_record(decoded.record)
        if fact is None:
            metrics.FACTS_UNKNOWN.inc()  # a newer curator's kind: nothing this one can pair
            return
        self._refused(msg, self.pipeline.process_fact(fact, origin), replay=replay)

    def _refused(self, msg: Message, refusal: Refusal | None, *, replay: bool) -> None:
        """Dead-letter what the pipeline refused (counted there); a replay sent it already."""
        if refusal is not None and not replay:
            self.notifier.dead_letter(
                msg, reason=refusal.reason, detail=refusal.detail, tenant=refusal.tenant
            )
            self._dlq_pending = True

    def _fact_too_large(self, fact: Fact, value: bytes) -> None:
        """A fact the pairing topic would refuse: dead-lettered under the position of the
        event that made it (the pair it would make cannot form)."""
        limit = self.limits.limit(self.topics.pairing)
        self.notifier.send(
            Letter(
                topic=fact.origin.topic,
                partition=fact.origin.partition,
                offset=fact.origin.offset,
                key=fact.key.encode(),
                payload=value,
                received_ms=fact.ts,
                reason="fact_too_large",
                detail=f"a {fact.kind} pairing fact of {len(value)} bytes does not fit the "
                f"pairing topic (max.message.bytes {limit}); its pair is not formed",
                tenant=fact.tenant,
                about=f":fact:{fact.fact_id}",
            )
        )
        self._dlq_pending = True
        self.pipeline.summary.dlq["fact_too_large"] += 1

    def _check_routing(self, msg: Message, partition: int) -> None:
        """Regenerate facts find a parent run with Kafka's partitioner; a run that some other
        partitioner placed would never be found, so say so loudly."""
        key = msg.key()
        if key and partition_for(key, self.partitions) != partition:
            metrics.MISROUTED_RUNS.inc()
            log.warning(
                "run not where Kafka's default partitioner puts its key; regenerate pairs "
                "across partitions will be missed (set the producer's partitioner to "
                "murmur2_random)",
                extra={"topic": msg.topic(), "partition": partition, "offset": msg.offset()},
            )

    def _due(self) -> bool:
        if not self._end:
            self._batch_started = time.monotonic()
            return False
        return (
            self._events >= self.settings.batch.max_rows
            or time.monotonic() - self._batch_started >= self.settings.batch.max_seconds
        )

    # -- commit -------------------------------------------------------------------------------

    def _collect(self, rows: Sequence[CuratedRow]) -> None:
        """Keep the rows the tables do not hold yet (``replayed.py``)."""
        fresh, ambiguous = sort_replayed(rows, self.known, self.assigned)
        if ambiguous:
            written = self.sink.existing_candidates(
                [r.candidate_key for r in ambiguous if r.candidate_key is not None]
            )
            for row in ambiguous:
                if row.candidate_key in written:
                    metrics.REPLAYED_ROWS_SKIPPED.labels(table=row.table).inc()
                else:
                    fresh.append(row)
        for row in fresh:
            self._rows[row.table].append(row.row)

    def flush(self) -> None:
        """Commit the micro-batch: Delta (fenced), then state, then Kafka offsets."""
        if not self._end:
            return
        try:
            self.pipeline.fire_timers()
            self._collect(self.pipeline.drain())
            self.pipeline.expire()
            self.facts.flush()  # a message is only passed once the facts it made are durable
            if self._dlq_pending:
                self.notifier.flush()  # ... and its letter (an oversized fact's too)
            end = dict(self._end)
            done = self.sink.commit(self._rows, known=self.known, end=end, epochs=self.epochs)
        except ZombieError as exc:
            log.warning("fenced: another curator owns a partition", extra={"error": str(exc)})
            self._drop("zombie")
            self._fenced_too_long(exc)
            self._reseek()
            return
        except _TRANSIENT as exc:
            # A lost commit race, a failing toxicity scorer (fail closed), an unacknowledged
            # dead letter: nothing of the batch counts; re-read it after a bounded backoff.
            # Anything else leaves through ``run``, which abandons the batch.
            self._failures += 1
            backoff = min(_MAX_BACKOFF_S, _BASE_BACKOFF_S * 2 ** (self._failures - 1))
            log.error(
                "batch not committed; re-reading it",
                extra={"error": str(exc), "kind": type(exc).__name__, "backoff_s": backoff},
            )
            self._drop("commit_failed" if isinstance(exc, SinkCommitError) else "error")
            self._reseek()
            time.sleep(backoff)
            return
        for committed in done:
            for tp, offset in end.items():
                prev = self.known[committed.table].get(tp)
                self.known[committed.table][tp] = max(offset, prev or 0)
        dpo_done = {tp: self.known["dpo_pairs"][tp] for tp in end}
        self._fault("after_commit_before_kafka_commit")
        self.store.commit(end)
        self.pipeline.committed()
        self._failures = 0
        self._fenced_since = None
        self.commits += len(done)
        self._commit_kafka(dpo_done)
        for committed in done:
            if committed.rows and committed.table != "rejected_candidates":
                self.notifier.gold_committed(
                    table=committed.table,
                    table_uri=self.sink.uri(committed.table),
                    version=committed.version,
                    rows=committed.rows,
                    tenants=committed.tenants,
                )
        self.sink.upkeep()  # compaction and checkpoints, between batches
        log.debug(
            "committed",
            extra={
                "events": self._events,
                "tables": {c.table: [c.version, c.rows] for c in done},
            },
        )
        self._reset_batch()

    def _fenced_too_long(self, exc: ZombieError) -> None:
        """A zombie learns from the group within a session timeout that it lost its
        partitions. Fenced for much longer while still assigned them, this process was fenced
        by something the group does not know of (an offset reset): stop, and let the restart
        claim them again."""
        now = time.monotonic()
        self._fenced_since = self._fenced_since or now
        if now - self._fenced_since > _FENCED_SESSIONS * self.settings.session_timeout_ms / 1000:
            raise FencedError(str(exc)) from exc

    def _commit_kafka(self, offsets: dict[TP, int | None]) -> None:
        # A convenience for lag monitoring only; positions always come from the lake.
        tps = [TopicPartition(t, p, o) for (t, p), o in offsets.items() if o is not None]
        if not tps:
            return
        try:
            self.consumer.commit(offsets=tps, asynchronous=True)
        except KafkaException as exc:
            log.info("kafka offset commit skipped", extra={"error": str(exc)})

    def _reseek(self) -> None:
        self.resume.reseek(sorted(self.assigned))

    def _drop(self, reason: str) -> None:
        metrics.BATCHES_DROPPED.labels(reason=reason).inc()
        self.store.rollback()
        self.facts.discard()
        self.pipeline.reset_pending()
        self._reset_batch()

    def _reset_batch(self) -> None:
        self._end.clear()
        for rows in self._rows.values():
            rows.clear()
        self._events = 0
        self._dlq_pending = False
        self._batch_started = time.monotonic()

    # -- faults (crash tests only) --------------------------------------------------------------

    def _fault(self, point: FaultPoint) -> None:
        faults = self.settings.faults
        if point not in faults.crash_at or self._rng.random() >= faults.probability:
            return
        if faults.max_faults is not None and self._faults >= faults.max_faults:
            return
        self._faults += 1
        log.warning(f"fault injected: {faults.mode}", extra={"point": point})
        if faults.mode == "raise":
            raise InjectedFault(point)
        os.kill(os.getpid(), signal.SIGSTOP if faults.mode == "stop" else signal.SIGKILL)


def _prepare_pairing_topic(settings: CuratorSettings) -> int:
    """Create the pairing topic with the runs topic's partition count (the routing contract)
    and return that count."""
    topics = settings.kafka.topics
    md = make_admin(settings.kafka).list_topics(timeout=_WATERMARK_TIMEOUT_S).topics
    runs = md.get(topics.runs)
    partitions = len(runs.partitions) if runs is not None else settings.kafka.partitions
    ensure_topics(settings.kafka, [topics.pairing], partitions=partitions)
    return partitions


def stop_on_signals(stop: threading.Event) -> Callable[[], None]:
    """Install SIGTERM/SIGINT handlers that set ``stop``; returns a function that restores."""
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}

    def handler(signum: int, _frame: object) -> None:
        log.info("stopping", extra={"signal": signal.Signals(signum).name})
        stop.set()

    for s in previous:
        signal.signal(s, handler)

    def restore() -> None:
        for s, h in previous.items():
            signal.signal(s, h)

    return restore
