"""The curator's consume → curate → commit loop over runs, feedback, edits and the internal
pairing topic (``facts.py``).

Exactly once, in short:

1. Partitions are assigned with the ``range`` strategy, so partition *p* of the three
   co-partitioned topics goes to one process and a run meets its feedback.
2. On assignment the position of each partition comes from the lake, never from Kafka: the
   ``dpo_pairs`` txn version *D* (next offset committed to all tables) and the state store's
   applied offset *S* ≤ *D*. The consumer seeks to *S* and re-applies [S, D) to the state;
   rows re-derived there are skipped for any table whose txn already covers all of their
   ingredients. Until every partition is back at *D*, messages past it wait (``gate.py``).
3. A micro-batch first flushes the pairing facts it produced, then commits to Delta
   (``sink.py``, fenced against zombies), then the state store, then — as a convenience only —
   the Kafka offsets. Facts are therefore durable before the offsets that made them count as
   consumed; a replay re-sends them with the same ids and the receiver counts them once.
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
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
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
from flywheel_curator.delivery import MessageLimits
from flywheel_curator.dlq import Letter, Notifier
from flywheel_curator.errors import InjectedFault
from flywheel_curator.facts import FACT_RECORD, Fact, KafkaFacts, fact_problem
from flywheel_curator.filters import FilterError
from flywheel_curator.gate import ReplayGate
from flywheel_curator.joins import JoinStore
from flywheel_curator.pipeline import (
    FILTER_STATE_COLUMNS,
    CuratedRow,
    Pipeline,
    build_chain,
    build_pipeline,
    load_filter_state,
)
from flywheel_curator.settings import CuratorSettings
from flywheel_curator.sink import COMMIT_ORDER, DeltaSink, FaultPoint, ZombieError
from flywheel_curator.sources import validate

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
            checkpoint_interval=settings.checkpoint_interval,
            fault=self._fault,
        )
        self.sink.ensure_tables()
        self.store = JoinStore(
            settings.state_dir / f"{settings.group_id}.sqlite",
            identity=f"{settings.lake.uri}|{settings.group_id}",
            cache_kib=settings.state_cache_kib,
        )
        chain = build_chain(settings.filters, self.store)
        # Near-dup and caps remember in memory: rebuild them from what the table holds.
        load_filter_state(
            chain,
            self.sink.table("dpo_pairs").to_pyarrow_table(columns=list(FILTER_STATE_COLUMNS)),
            settings.filters,
        )
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
        self._end: dict[TP, int] = {}  # next offset after the batch, per partition read
        self._rows: dict[TableName, list[dict[str, Any]]] = {t: [] for t in COMMIT_ORDER}
        self._events = 0
        self._batch_started = time.monotonic()
        self._dlq_pending = False
        self._stop_at: dict[TP, int] = {}
        self.gate = ReplayGate()
        self.commits = 0
        self._failures = 0
        self._abandoned = False

    # -- lifecycle ----------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Consume until ``stop`` is set (or, for a replay, until caught up)."""
        topics = [self.topics.runs, self.topics.feedback, self.topics.edits, self.topics.pairing]
        self.consumer.subscribe(
            topics, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )
        log.info(
            "curator started",
            extra={"group": self.settings.group_id, "instance": self.settings.instance_id},
        )
        try:
            self._loop(stop)
        except BaseException:
            self._abandon()
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
                self._release_held()
            self.notifier.poll()
            self.facts.poll()
            if self._due():
                self.flush()
            if self.settings.start.stop_at_end and self._caught_up():
                break
        self.flush()

    def _abandon(self) -> None:
        """An unexpected error: nothing of the batch in progress may reach a table (nor may the
        close path's revoke callback commit it); the state rolls back, and the next start
        re-reads the batch from the lake's offsets."""
        self._abandoned = True
        log.error(
            "batch abandoned: an unexpected error stops the curator; nothing of the batch "
            "was committed",
            extra={"events": self._events},
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
        self.assigned = set(tps)
        positions = self._positions(tps)
        self.gate.begin(positions, self._lake_ends(tps))
        self._log_replay()
        for p in partitions:
            p.offset = positions[(p.topic, p.partition)]
        if self.settings.start.stop_at_end:
            for p in partitions:
                _low, high = consumer.get_watermark_offsets(p, timeout=_WATERMARK_TIMEOUT_S)
                self._stop_at[(p.topic, p.partition)] = high
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
            for table in COMMIT_ORDER:
                self.known[table].pop(tp, None)

    def _positions(self, tps: Sequence[TP]) -> dict[TP, int]:
        """Where to resume each partition: from the lake's offsets and the state's, never
        from Kafka's committed offsets."""
        offsets = self.sink.offsets(tps)
        for table in COMMIT_ORDER:
            self.known[table].update(offsets[table])
        dpo = offsets["dpo_pairs"]
        ahead = [tp for tp in tps if _gt(self.store.applied(tp), dpo[tp])]
        if ahead:
            # State newer than the table (a restored table, a state file from elsewhere):
            # it cannot be trusted; rebuild it from Kafka.
            log.warning("state ahead of the lake; rebuilding", extra={"partitions": ahead})
            self.store.reset()
        out: dict[TP, int] = {}
        for tp in tps:
            committed, applied = dpo[tp], self.store.applied(tp)
            if committed is None:
                out[tp] = self._initial(tp)
            elif applied is None:
                out[tp] = self._window_start(tp, committed)
            else:
                out[tp] = applied
        return out

    def _initial(self, tp: TP) -> int:
        start = self.settings.start
        if start.mode == "offset" and start.offset is not None:
            return start.offset
        if start.mode == "timestamp" and start.timestamp_ms is not None:
            return self._offset_for_time(tp, start.timestamp_ms, default=OFFSET_END)
        return OFFSET_END if start.mode == "latest" else OFFSET_BEGINNING

    def _window_start(self, tp: TP, committed: int) -> int:
        """No local state for a partition the lake has seen: rebuild the joins from the
        events inside the retention window (rows they re-derive are skipped)."""
        since = int((time.time() - self.settings.join_window_s) * 1000)
        found = self._offset_for_time(tp, since, default=committed)
        return min(found, committed) if found >= 0 else OFFSET_BEGINNING

    def _offset_for_time(self, tp: TP, ts_ms: int, *, default: int) -> int:
        found = self.consumer.offsets_for_times(
            [TopicPartition(tp[0], tp[1], ts_ms)], timeout=_WATERMARK_TIMEOUT_S
        )
        offset = int(found[0].offset)
        return offset if offset >= 0 else default

    def _caught_up(self) -> bool:
        if not self.assigned or not self._stop_at:
            return False
        for tp in self.assigned:
            high = self._stop_at.get(tp, 0)
            if tp[0] == self.topics.pairing:
                # Facts this replay wrote after it started are part of its input too.
                high = max(high, self.facts.produced_end.get(tp[1], 0))
            done = self.known["dpo_pairs"].get(tp) or 0
            if done < high and high > 0:
                return False
        return True

    # -- messages -----------------------------------------------------------------------------

    def _handle(self, msg: Message) -> None:
        err = msg.error()
        if err is not None:
            if err.code() != KafkaError._PARTITION_EOF:
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
        self.pipeline.process(event_type, decoded.record, KafkaOrigin(topic, partition, offset))

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
        self.pipeline.process_fact(fact, origin)

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
        """Keep the rows the tables do not hold yet.

        ``sft_examples`` follows its own offsets (sampling is deterministic). The two pair
        tables share one decision per candidate, and a replayed candidate may be judged
        differently (near-dup and caps depend on order across partitions), so they are judged
        together: ``rejected_candidates`` commits before ``dpo_pairs``, and where a crash left
        it ahead, a candidate in between is looked up by ``candidate_id`` before it is written.
        """
        ambiguous: list[CuratedRow] = []
        for row in rows:
            if row.table == "sft_examples":
                state = self._status(row, self.known["sft_examples"], self.known["dpo_pairs"])
            else:
                state = self._status(
                    row, self.known["dpo_pairs"], self.known["rejected_candidates"]
                )
            if state == "new":
                self._rows[row.table].append(row.row)
            elif state == "ambiguous":
                ambiguous.append(row)
            else:
                metrics.REPLAYED_ROWS_SKIPPED.labels(table=row.table).inc()
        if ambiguous:
            written = self.sink.existing_candidates(
                [r.candidate_key for r in ambiguous if r.candidate_key is not None]
            )
            for row in ambiguous:
                if row.candidate_key in written:
                    metrics.REPLAYED_ROWS_SKIPPED.labels(table=row.table).inc()
                else:
                    self._rows[row.table].append(row.row)

    def _status(
        self,
        row: CuratedRow,
        low: dict[TP, int | None],
        other: dict[TP, int | None],
    ) -> str:
        """``new`` if an owned ingredient is past both offsets, ``old`` if all are below
        ``low``; in between, ``ambiguous``."""
        verdict = "old"
        for origin in row.ingredients:
            tp = (origin.topic, origin.partition)
            if tp not in self.assigned:
                continue
            lo = low.get(tp) or 0
            hi = max(lo, other.get(tp) or 0)
            if origin.offset >= hi:
                return "new"
            if origin.offset >= lo:
                verdict = "ambiguous"
        return verdict

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
            done = self.sink.commit(self._rows, known=self.known, end=end)
        except ZombieError as exc:
            log.warning("fenced: another curator owns a partition", extra={"error": str(exc)})
            self._drop("zombie")
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
        log.debug(
            "committed",
            extra={
                "events": self._events,
                "tables": {c.table: [c.version, c.rows] for c in done},
            },
        )
        self._reset_batch()

    def _commit_kafka(self, offsets: dict[TP, int | None]) -> None:
        # A convenience for lag monitoring only; positions always come from the lake.
        tps = [TopicPartition(t, p, o) for (t, p), o in offsets.items() if o is not None]
        if not tps:
            return
        try:
            self.consumer.commit(offsets=tps, asynchronous=True)
        except KafkaException as exc:
            log.info("kafka offset commit skipped", extra={"error": str(exc)})

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

    def _reseek(self) -> None:
        if not self.assigned:
            return
        tps = sorted(self.assigned)
        positions = self._positions(tps)
        held = self.gate.begin(positions, self._lake_ends(tps))
        self._log_replay()
        for tp in tps:
            try:
                self.consumer.seek(TopicPartition(tp[0], tp[1], positions[tp]))
            except KafkaException as exc:
                # Not assigned any more (a rebalance is under way): the next assignment seeks.
                log.info("seek skipped", extra={"partition": tp, "error": str(exc)})
        self._resume(held)

    def _log_replay(self) -> None:
        if self.gate.replaying:
            log.info(
                "re-applying what the lake holds; newer messages wait",
                extra={"partitions": [f"{t}[{p}]" for t, p in self.gate.replaying]},
            )

    def _lake_ends(self, tps: Sequence[TP]) -> dict[TP, int | None]:
        """Per partition, the furthest offset any table holds: the end of the replay."""
        out: dict[TP, int | None] = {}
        for tp in tps:
            ends = [v for t in COMMIT_ORDER if (v := self.known[t].get(tp)) is not None]
            out[tp] = max(ends) if ends else None
        return out

    def _release_held(self) -> None:
        """Rewind and resume the partitions the gate held once every replay is done."""
        replaying = self.gate.replaying
        if replaying:
            try:
                positions = self.consumer.position([TopicPartition(t, p) for t, p in replaying])
            except KafkaException as exc:
                log.info("position unavailable", extra={"error": str(exc)})
                return
            self.gate.reached(((p.topic, p.partition), p.offset) for p in positions)
        held = self.gate.release()
        if held:
            log.info("replay done; new messages flow again", extra={"held": len(held)})
        for (topic, partition), offset in held.items():
            try:
                self.consumer.seek(TopicPartition(topic, partition, offset))
            except KafkaException as exc:
                log.info("seek skipped", extra={"partition": (topic, partition), "error": str(exc)})
        self._resume(list(held))

    def _resume(self, tps: Sequence[TP]) -> None:
        if not tps:
            return
        try:
            self.consumer.resume([TopicPartition(t, p) for t, p in tps])
        except KafkaException as exc:
            log.info("resume skipped", extra={"error": str(exc)})

    # -- faults (crash tests only) --------------------------------------------------------------

    def _fault(self, point: FaultPoint) -> None:
        faults = self.settings.faults
        if point in faults.crash_at and self._rng.random() < faults.probability:
            log.warning(f"fault injected: {faults.mode}", extra={"point": point})
            if faults.mode == "raise":
                raise InjectedFault(point)
            os.kill(os.getpid(), signal.SIGKILL)


def _prepare_pairing_topic(settings: CuratorSettings) -> int:
    """Create the pairing topic with the runs topic's partition count (the routing contract)
    and return that count."""
    topics = settings.kafka.topics
    md = make_admin(settings.kafka).list_topics(timeout=_WATERMARK_TIMEOUT_S).topics
    runs = md.get(topics.runs)
    partitions = len(runs.partitions) if runs is not None else settings.kafka.partitions
    ensure_topics(settings.kafka, [topics.pairing], partitions=partitions)
    return partitions


def _gt(a: int | None, b: int | None) -> bool:
    if a is None:
        return False
    return b is None or a > b


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
