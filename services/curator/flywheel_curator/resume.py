"""Where each partition resumes, and the replay that brings the join state back to the lake.

On assignment (and after a failed or fenced commit) the position of each partition comes from
the lake, never from Kafka: the ``dpo_pairs`` txn version *D* (next offset committed to all
tables) and the state store's applied offset *S* ≤ *D*. The consumer seeks to *S* and
re-applies [S, D) to the state; until every partition is back at *D*, messages past it wait
(``gate.py``). Topics replaced under the lake refuse to go on (``offsets.py``), and a position
before the log start (retention) moves up to it, explicitly.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaException, TopicPartition
from flywheel_common.lake import TableName

from flywheel_curator.errors import OffsetGap, TopicReplaced, TopicsReplacedError
from flywheel_curator.gate import ReplayGate
from flywheel_curator.joins import JoinStore
from flywheel_curator.offsets import fingerprints, gaps, replaced, start_within, watermarks
from flywheel_curator.settings import CuratorSettings
from flywheel_curator.sink import COMMIT_ORDER, DeltaSink

__all__ = ["Resume"]

log = logging.getLogger(__name__)

TP = tuple[str, int]
_TIMEOUT_S = 10.0


class Resume:
    """Positions, replay gate and seeks of one curator's consumer. ``known`` is the curator's
    view of each table's txn versions, refreshed here whenever positions are read."""

    def __init__(
        self,
        settings: CuratorSettings,
        consumer: Consumer,
        sink: DeltaSink,
        store: JoinStore,
        known: dict[TableName, dict[TP, int | None]],
    ) -> None:
        self.settings = settings
        self.consumer = consumer
        self.sink = sink
        self.store = store
        self.known = known
        self.gate = ReplayGate()
        self.marks: dict[TP, tuple[int, int]] = {}  # (log start, end) at the last read
        self.topic_ids: dict[str, int] = {}  # id fingerprints at the last check

    def check(self, tps: Sequence[TP]) -> None:
        """Refuse to go on if the topics of ``tps`` are not the ones the lake recorded: another
        id, or an end before the lake's offsets. Keeps their ids for the next claim."""
        topics = sorted({t for t, _p in tps})
        self.topic_ids = fingerprints(self.settings.kafka, topics)
        found: list[OffsetGap | TopicReplaced] = list(replaced(self.sink, self.topic_ids))
        found += gaps(self.sink.offsets(tps), watermarks(self.consumer, tps))
        self._refuse(found)

    def start(self, tps: Sequence[TP]) -> dict[TP, int]:
        """Positions of newly assigned partitions; begins their replay."""
        positions = self.positions(tps)
        self.gate.begin(positions, self.lake_ends(tps))
        self._log_replay()
        return positions

    def positions(self, tps: Sequence[TP]) -> dict[TP, int]:
        """Where to resume each partition: from the lake's offsets and the state's, never
        from Kafka's committed offsets."""
        offsets = self.sink.offsets(tps)
        marks = watermarks(self.consumer, tps)
        self._refuse(list(gaps(offsets, marks)))
        self.marks.update(marks)
        for table in COMMIT_ORDER:
            self.known[table].update(offsets[table])
        dpo = offsets["dpo_pairs"]
        ahead = [tp for tp in tps if _gt(self.store.applied(tp), dpo[tp])]
        if ahead:
            # State newer than the table (a restored table, an offset reset, a state file from
            # elsewhere): it cannot be trusted; rebuild it from Kafka.
            log.warning("state ahead of the lake; rebuilding", extra={"partitions": ahead})
            self.store.reset()
        out: dict[TP, int] = {}
        for tp in tps:
            committed, applied = dpo[tp], self.store.applied(tp)
            if committed is None:
                start = self._initial(tp)
            elif applied is None:
                start = self._window_start(tp, committed)
            else:
                start = applied
            out[tp] = start_within(tp, start, marks)
        return out

    def off_the_log(self, tp: TP, offset: int) -> None:
        """The broker answered that ``offset`` is not in ``tp`` (``auto.offset.reset=error``):
        move up to the log start if retention deleted it; refuse if it lies past the end."""
        low, high = watermarks(self.consumer, [tp])[tp]
        if offset > high:
            self._refuse([OffsetGap(tp[0], tp[1], offset, high)])
        self._seek(tp, max(offset, low))

    def reseek(self, tps: Sequence[TP]) -> None:
        """Back to the lake's positions (a dropped or fenced batch)."""
        if not tps:
            return
        positions = self.positions(tps)
        held = self.gate.begin(positions, self.lake_ends(tps))
        self._log_replay()
        for tp in tps:
            self._seek(tp, positions[tp])
        self._resume(held)

    def release_held(self) -> None:
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
        for tp, offset in held.items():
            self._seek(tp, offset)
        self._resume(list(held))

    def lake_ends(self, tps: Sequence[TP]) -> dict[TP, int | None]:
        """Per partition, the furthest offset any table holds: the end of the replay."""
        out: dict[TP, int | None] = {}
        for tp in tps:
            ends = [v for t in COMMIT_ORDER if (v := self.known[t].get(tp)) is not None]
            out[tp] = max(ends) if ends else None
        return out

    def _refuse(self, found: Sequence[OffsetGap | TopicReplaced]) -> None:
        if found:
            raise TopicsReplacedError(
                found, lake=self.settings.lake.uri, group=self.settings.group_id
            )

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
            [TopicPartition(tp[0], tp[1], ts_ms)], timeout=_TIMEOUT_S
        )
        offset = int(found[0].offset)
        return offset if offset >= 0 else default

    def _log_replay(self) -> None:
        if self.gate.replaying:
            log.info(
                "re-applying what the lake holds; newer messages wait",
                extra={"partitions": [f"{t}[{p}]" for t, p in self.gate.replaying]},
            )

    def _seek(self, tp: TP, offset: int) -> None:
        try:
            self.consumer.seek(TopicPartition(tp[0], tp[1], offset))
        except KafkaException as exc:
            # Not assigned any more (a rebalance is under way): the next assignment seeks.
            log.info("seek skipped", extra={"partition": tp, "error": str(exc)})

    def _resume(self, tps: Sequence[TP]) -> None:
        if not tps:
            return
        try:
            self.consumer.resume([TopicPartition(t, p) for t, p in tps])
        except KafkaException as exc:
            log.info("resume skipped", extra={"error": str(exc)})


def _gt(a: int | None, b: int | None) -> bool:
    if a is None:
        return False
    return b is None or a > b
