"""Delta sink with Kafka offsets as application-transaction ids: the exactly-once half of the
curator.

A micro-batch becomes at most three commits, in a fixed order: ``sft_examples`` and
``rejected_candidates`` first (only when they have rows), ``dpo_pairs`` last and always. Each
commit carries ``txn(app_id=flywheel:<group>:<topic>:<partition>, version=next offset)`` for
every topic-partition the batch read. Because ``dpo_pairs`` commits last, its txn versions say
"everything before this offset is in all three tables": the consumer seeks from them, and a
row it re-derives on replay is skipped for a table whose own txn version already covers it.

delta-rs accepts any txn version and only detects conflicts with commits made after the
writer's snapshot (docs/findings.md), so fencing is ours, and it closes at the takeover:

- a process that is assigned partitions first *claims* them: one commit per table raising each
  partition's owner epoch (``txn(flywheel-owner:<group>:<topic>:<partition>)``);
- every commit carries the writer's epochs and is refused unless the table still holds this
  process's epochs and offsets for every partition in the batch. A claim made before the
  writer's snapshot is seen by that check; one made after it conflicts with the commit's own
  owner txns in Delta's conflict check. Either way a zombie lands nothing once the new owner
  has claimed, even before the new owner's first commit.

The check reads the txn versions only when some other commit landed since this process last
checked or wrote (a lookup replays the log since the last checkpoint, so it is not free).

On local paths a commit is two-phase (Parquet written with pyarrow, then one Delta commit
adding it) so the crash test can kill the process between the two; other URIs use
``write_deltalake``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError
from flywheel_common.errors import LakeError, SinkCommitError
from flywheel_common.lake import TABLE_SCHEMAS, TableName, txn_app_id
from flywheel_common.settings import LakeSettings

from flywheel_curator import metrics
from flywheel_curator.claims import owner_app_id
from flywheel_curator.files import append_two_phase, is_local
from flywheel_curator.upkeep import NO_HOOKS, Upkeep, UpkeepSettings, UpkeepWork

__all__ = [
    "AUX_TABLES",
    "COMMIT_ORDER",
    "Committed",
    "DeltaSink",
    "FaultPoint",
    "TopicPartition",
    "ZombieError",
]

log = logging.getLogger(__name__)

TopicPartition = tuple[str, int]
FaultPoint = Literal[
    "while_handling",
    "before_parquet_write",
    "after_write_before_commit",
    "after_commit_before_kafka_commit",
]
AUX_TABLES: tuple[TableName, ...] = ("sft_examples", "rejected_candidates")
COMMIT_ORDER: tuple[TableName, ...] = (*AUX_TABLES, "dpo_pairs")


class ZombieError(SinkCommitError):
    """Another curator advanced or claimed this partition: this process no longer owns it."""


@dataclass(frozen=True, slots=True)
class Committed:
    table: TableName
    version: int
    rows: int
    tenants: tuple[str, ...]
    seconds: float


class DeltaSink:
    """Writes micro-batches to the three tables. One per curator process."""

    def __init__(
        self,
        lake: LakeSettings,
        *,
        group: str,
        instance: str = "",
        upkeep: UpkeepSettings | None = None,
        fault: Callable[[FaultPoint], None] = lambda _point: None,
    ) -> None:
        self.lake = lake
        self.group = group
        self._fault = fault
        self._storage = lake.storage_options_plain() or None
        self._tables: dict[TableName, DeltaTable] = {}
        # Per table: a version at which the offsets and owner epochs of these partitions were
        # known to be this process's (it checked them, or wrote that version itself).
        self._checked: dict[TableName, tuple[int, frozenset[TopicPartition]]] = {}
        self.metadata = {"flywheel.curator.group": group, "flywheel.curator.instance": instance}
        self._upkeep = Upkeep(upkeep or UpkeepSettings(), metadata=self.metadata)

    # -- tables -------------------------------------------------------------------------------

    def uri(self, table: TableName) -> str:
        return self.lake.table_uri(table)

    def ensure_tables(self) -> None:
        """Create any missing table with its schema (idempotent, safe to race)."""
        for table in COMMIT_ORDER:
            try:
                DeltaTable.create(
                    self.uri(table),
                    TABLE_SCHEMAS[table],
                    mode="ignore",
                    name=table,
                    storage_options=self._storage,
                )
            except DeltaError as exc:
                raise LakeError(f"cannot create table {table} at {self.uri(table)}") from exc

    def table(self, table: TableName) -> DeltaTable:
        """The table at its latest version: loaded once, then brought forward incrementally."""
        dt = self._tables.get(table)
        try:
            if dt is None:
                dt = DeltaTable(self.uri(table), storage_options=self._storage)
                self._tables[table] = dt
                self._upkeep.loaded(table, dt)
            else:
                dt.update_incremental()
        except TableNotFoundError:
            self.ensure_tables()
            self._tables.pop(table, None)
            return self.table(table)
        except DeltaError as exc:
            raise LakeError(f"cannot load table {table}: {exc}") from exc
        return dt

    def app_id(self, tp: TopicPartition) -> str:
        return txn_app_id(self.group, tp[0], tp[1])

    def offsets(
        self, tps: Sequence[TopicPartition]
    ) -> dict[TableName, dict[TopicPartition, int | None]]:
        """Each table's txn version (the next offset to read) for each topic-partition."""
        out: dict[TableName, dict[TopicPartition, int | None]] = {}
        for table in COMMIT_ORDER:
            dt = self.table(table)
            out[table] = {tp: dt.transaction_version(self.app_id(tp)) for tp in tps}
        return out

    # -- markers ------------------------------------------------------------------------------

    def mark(
        self,
        table: TableName,
        txns: Mapping[str, int],
        *,
        operation: str,
        metadata: Mapping[str, str] | None = None,
    ) -> int:
        """An empty commit that sets ``txns`` (claims, offset resets); returns its version."""
        dt = self.table(table)
        meta = {**self.metadata, "flywheel.operation": operation, **(metadata or {})}
        props = CommitProperties(
            app_transactions=[Transaction(app_id=a, version=v) for a, v in txns.items()],
            custom_metadata=meta,
        )
        try:
            dt.create_write_transaction(
                [],
                mode="append",
                schema=TABLE_SCHEMAS[table],
                commit_properties=props,
                post_commithook_properties=NO_HOOKS,
            )
        except DeltaError as exc:
            raise SinkCommitError(table, str(exc)) from exc
        self._checked.pop(table, None)
        dt.update_incremental()
        return dt.version()

    # -- commit -------------------------------------------------------------------------------

    def commit(
        self,
        rows: Mapping[TableName, Sequence[dict[str, Any]]],
        *,
        known: Mapping[TableName, Mapping[TopicPartition, int | None]],
        end: Mapping[TopicPartition, int],
        epochs: Mapping[TopicPartition, int],
    ) -> list[Committed]:
        """Commit one micro-batch. ``known`` is each table's txn version as this process last
        saw it and ``epochs`` its owner epochs (the fence); ``end`` is the next offset of every
        partition the batch read.

        Raises ``ZombieError`` when another writer moved or claimed a partition and
        ``SinkCommitError`` when a commit failed; in both cases the rows of the failed and later
        tables are not in the lake and the caller must drop the batch and re-seek.
        """
        self._fault("before_parquet_write")
        done: list[Committed] = []
        dpo = self.table("dpo_pairs")
        self._fence(dpo, "dpo_pairs", known["dpo_pairs"], end, epochs)
        for table in COMMIT_ORDER:
            table_rows = rows.get(table, ())
            # Never move a txn backwards: on replay ``end`` can lag what the table has.
            versions = {tp: max(end[tp], known[table].get(tp) or 0) for tp in end}
            if table != "dpo_pairs":
                if not table_rows:
                    continue
                dt = self.table(table)
                self._fence(dt, table, known[table], end, epochs)
            else:
                if not table_rows and all(versions[tp] == known[table].get(tp) for tp in end):
                    continue  # nothing new: a replayed stretch that moves no offset
                dt = dpo
            txns = {self.app_id(tp): v for tp, v in versions.items()}
            txns.update({owner_app_id(self.group, tp): epochs[tp] for tp in end})
            done.append(self._write(dt, table, table_rows, txns, tps=list(end)))
        return done

    def upkeep(self) -> list[UpkeepWork]:
        """Checkpoint and compact the tables that are due (between batches, never inside)."""
        work = []
        for table, dt in self._tables.items():
            if self._upkeep.due(table, dt.version()):
                before = dt.version()
                work.append(self._upkeep.run(table, dt))
                self._wrote(table, before, dt.version(), ())
        return work

    def existing_candidates(self, keys: Sequence[str]) -> set[str]:
        """Which of ``keys`` already have a row in ``rejected_candidates`` (a full scan of one
        column: only needed for the one batch a crash left half-committed)."""
        if not keys:
            return set()
        # Filtered in memory, not pushed down: the dataset prunes files by their statistics,
        # and the two-phase files carry statistics for the Kafka columns only.
        ids = self.table("rejected_candidates").to_pyarrow_table(columns=["candidate_id"])
        column = ids.column("candidate_id")
        found = column.filter(pc.is_in(column, value_set=pa.array(list(keys), pa.string())))
        return set(found.to_pylist())

    def append(self, rows: Mapping[TableName, Sequence[dict[str, Any]]]) -> dict[TableName, int]:
        """Append rows without offsets (``flywheel curate`` over a file); rows per table."""
        out: dict[TableName, int] = {}
        for table in COMMIT_ORDER:
            if rows.get(table):
                out[table] = self._write(self.table(table), table, rows[table], {}).rows
        return out

    def _fence(
        self,
        dt: DeltaTable,
        table: TableName,
        known: Mapping[TopicPartition, int | None],
        end: Mapping[TopicPartition, int],
        epochs: Mapping[TopicPartition, int],
    ) -> None:
        version, checked = self._checked.get(table, (-1, frozenset()))
        if version == dt.version() and checked.issuperset(end):
            return  # nothing but this process's own commits since it last looked
        for tp in end:
            current = dt.transaction_version(self.app_id(tp))
            owner = dt.transaction_version(owner_app_id(self.group, tp))
            if epochs.get(tp) is None or owner != epochs.get(tp):
                raise ZombieError(
                    table,
                    f"{tp[0]}[{tp[1]}] was claimed by another curator (owner epoch {owner}, "
                    f"this process holds {epochs.get(tp)})",
                )
            if current != known.get(tp):
                raise ZombieError(
                    table,
                    f"{tp[0]}[{tp[1]}] is at offset {current} in the table, this process "
                    f"expected {known.get(tp)}: another curator owns it now",
                )
        base = checked if version == dt.version() else frozenset()
        self._checked[table] = (dt.version(), base | frozenset(end))

    def _wrote(
        self, table: TableName, before: int, after: int, tps: Sequence[TopicPartition]
    ) -> None:
        """Keep the fence's knowledge only if the new version is this process's own."""
        version, checked = self._checked.get(table, (-1, frozenset()))
        if version == before and after in (before, before + 1):
            self._checked[table] = (after, checked | frozenset(tps))
        else:
            self._checked.pop(table, None)

    def _write(
        self,
        dt: DeltaTable,
        table: TableName,
        rows: Sequence[dict[str, Any]],
        txns: Mapping[str, int],
        *,
        tps: Sequence[TopicPartition] = (),
    ) -> Committed:
        data = pa.Table.from_pylist(list(rows), schema=TABLE_SCHEMAS[table])
        props = CommitProperties(
            app_transactions=[Transaction(app_id=a, version=v) for a, v in txns.items()],
            custom_metadata=self.metadata,
        )
        started = time.perf_counter()
        before = dt.version()
        try:
            if is_local(self.uri(table)) and data.num_rows:
                between = self._fault if table == "dpo_pairs" else _nothing
                append_two_phase(dt, self.uri(table), data, props, between=between)
            else:
                if table == "dpo_pairs":
                    self._fault("after_write_before_commit")
                write_deltalake(
                    dt,
                    data,
                    mode="append",
                    commit_properties=props,
                    post_commithook_properties=NO_HOOKS,
                )
        except CommitFailedError as exc:
            if "Concurrent transaction" in str(exc):
                raise ZombieError(table, f"lost a race on our own app ids: {exc}") from exc
            raise SinkCommitError(table, str(exc)) from exc
        except DeltaError as exc:
            # VersionAlreadyExists surfaces as the generic DeltaError (docs/findings.md).
            raise SinkCommitError(table, str(exc)) from exc
        dt.update_incremental()
        seconds = time.perf_counter() - started
        version = dt.version()
        self._wrote(table, before, version, tps)
        if data.num_rows:
            self._upkeep.added(table, 1)
        metrics.COMMITS.labels(table=table).inc()
        metrics.COMMIT_SECONDS.labels(table=table).observe(seconds)
        metrics.ROWS_WRITTEN.labels(table=table).inc(data.num_rows)
        tenants = tuple(sorted(set(data.column("tenant").to_pylist()))) if data.num_rows else ()
        return Committed(table, version, data.num_rows, tenants, seconds)


def _nothing(_point: FaultPoint) -> None:
    """No fault point between the two phases of an auxiliary table's commit."""
