"""Delta sink with Kafka offsets as application-transaction ids: the exactly-once half of the
curator.

A micro-batch becomes at most three commits, in a fixed order: ``sft_examples`` and
``rejected_candidates`` first (only when they have rows), ``dpo_pairs`` last and always. Each
commit carries ``txn(app_id=flywheel:<group>:<topic>:<partition>, version=next offset)`` for
every topic-partition the batch read. Because ``dpo_pairs`` commits last, its txn versions say
"everything before this offset is in all three tables": the consumer seeks from them, and a
row it re-derives on replay is skipped for a table whose own txn version already covers it.

delta-rs accepts any txn version and only detects conflicts with commits made after the
writer's snapshot (FINDINGS.md), so fencing is ours: before writing, the current txn version of
every partition in the batch must equal the one this process last saw. Anything else means
another curator owns the partition now (we are a zombie), and the batch is dropped.

On local paths a commit is two-phase (Parquet written with pyarrow, then one Delta commit
adding it) so the crash test can kill the process between the two; other URIs use
``write_deltalake``.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError
from deltalake.transaction import AddAction
from flywheel_common.errors import LakeError, SinkCommitError
from flywheel_common.lake import TABLE_SCHEMAS, TableName, txn_app_id
from flywheel_common.settings import LakeSettings

from flywheel_curator import metrics

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
    """Another curator advanced this partition's offsets: this process no longer owns it."""


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
        checkpoint_interval: int = 100,
        fault: Callable[[FaultPoint], None] = lambda _point: None,
    ) -> None:
        self.lake = lake
        self.group = group
        self.checkpoint_interval = checkpoint_interval
        self._fault = fault
        self._storage = lake.storage_options_plain() or None
        self._tables: dict[TableName, DeltaTable] = {}
        self._loaded_at: dict[TableName, int] = {}

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

    def table(self, table: TableName, *, fresh: bool = False) -> DeltaTable:
        """The table at its latest version. Reloaded from scratch after each checkpoint,
        because a long-lived object gets slower per commit as versions pile up."""
        dt = self._tables.get(table)
        try:
            if dt is None or fresh:
                dt = DeltaTable(self.uri(table), storage_options=self._storage)
                self._tables[table] = dt
                self._loaded_at[table] = dt.version()
            else:
                dt.update_incremental()
                if dt.version() - self._loaded_at[table] >= self.checkpoint_interval:
                    return self.table(table, fresh=True)
        except TableNotFoundError:
            self.ensure_tables()
            return self.table(table, fresh=True)
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

    # -- commit -------------------------------------------------------------------------------

    def commit(
        self,
        rows: Mapping[TableName, Sequence[dict[str, Any]]],
        *,
        known: Mapping[TableName, Mapping[TopicPartition, int | None]],
        end: Mapping[TopicPartition, int],
    ) -> list[Committed]:
        """Commit one micro-batch. ``known`` is each table's txn version as this process last
        saw it (the fence); ``end`` is the next offset of every partition the batch read.

        Raises ``ZombieError`` when another writer moved a partition's offsets and
        ``SinkCommitError`` when a commit failed; in both cases the rows of the failed and later
        tables are not in the lake and the caller must drop the batch and re-seek.
        """
        self._fault("before_parquet_write")
        done: list[Committed] = []
        dpo = self.table("dpo_pairs")
        self._fence(dpo, "dpo_pairs", known["dpo_pairs"], end)
        for table in COMMIT_ORDER:
            table_rows = rows.get(table, ())
            # Never move a txn backwards: on replay ``end`` can lag what the table has.
            versions = {tp: max(end[tp], known[table].get(tp) or 0) for tp in end}
            if table != "dpo_pairs":
                if not table_rows:
                    continue
                dt = self.table(table)
                self._fence(dt, table, known[table], end)
            else:
                if not table_rows and all(versions[tp] == known[table].get(tp) for tp in end):
                    continue  # nothing new: a replayed stretch that moves no offset
                dt = dpo
            done.append(self._write(dt, table, table_rows, versions))
        return done

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
    ) -> None:
        for tp in end:
            current = dt.transaction_version(self.app_id(tp))
            if current != known.get(tp):
                raise ZombieError(
                    table,
                    f"{tp[0]}[{tp[1]}] is at offset {current} in the table, this process "
                    f"expected {known.get(tp)}: another curator owns it now",
                )

    def _write(
        self,
        dt: DeltaTable,
        table: TableName,
        rows: Sequence[dict[str, Any]],
        versions: Mapping[TopicPartition, int],
    ) -> Committed:
        schema = TABLE_SCHEMAS[table]
        data = pa.Table.from_pylist(list(rows), schema=schema)
        props = CommitProperties(
            app_transactions=[
                Transaction(app_id=self.app_id(tp), version=v) for tp, v in versions.items()
            ],
            custom_metadata={"flywheel.curator.group": self.group},
        )
        started = time.perf_counter()
        try:
            if _local(self.uri(table)) and data.num_rows:
                self._two_phase(dt, table, data, props)
            else:
                if table == "dpo_pairs":
                    self._fault("after_write_before_commit")
                write_deltalake(dt, data, mode="append", commit_properties=props)
        except CommitFailedError as exc:
            if "Concurrent transaction" in str(exc):
                raise ZombieError(table, f"lost a race on our own app ids: {exc}") from exc
            raise SinkCommitError(table, str(exc)) from exc
        except DeltaError as exc:
            # VersionAlreadyExists surfaces as the generic DeltaError (FINDINGS.md).
            raise SinkCommitError(table, str(exc)) from exc
        dt.update_incremental()
        seconds = time.perf_counter() - started
        version = dt.version()
        metrics.COMMITS.labels(table=table).inc()
        metrics.COMMIT_SECONDS.labels(table=table).observe(seconds)
        metrics.ROWS_WRITTEN.labels(table=table).inc(data.num_rows)
        if version % self.checkpoint_interval == 0:
            self._checkpoint(dt, table)
        tenants = tuple(sorted(set(data.column("tenant").to_pylist()))) if data.num_rows else ()
        return Committed(table, version, data.num_rows, tenants, seconds)

    def _two_phase(
        self, dt: DeltaTable, table: TableName, data: pa.Table, props: CommitProperties
    ) -> None:
        root = _local_path(self.uri(table))
        name = f"part-00000-{uuid.uuid4()}-c000.snappy.parquet"
        pq.write_table(data, root / name, compression="snappy")
        if table == "dpo_pairs":
            self._fault("after_write_before_commit")
        add = AddAction(
            path=name,
            size=(root / name).stat().st_size,
            partition_values={},
            modification_time=int(time.time() * 1000),
            data_change=True,
            stats=_stats(data),
        )
        dt.create_write_transaction(
            [add], mode="append", schema=TABLE_SCHEMAS[table], commit_properties=props
        )

    def _checkpoint(self, dt: DeltaTable, table: TableName) -> None:
        try:
            dt.create_checkpoint()
        except DeltaError as exc:
            # A missed checkpoint only slows loads down; the next interval tries again.
            log.warning("checkpoint failed", extra={"table": table, "error": str(exc)})
            return
        log.info("checkpoint", extra={"table": table, "version": dt.version()})


def _local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def _local_path(uri: str) -> Path:
    return Path(uri.removeprefix("file://"))


def _stats(data: pa.Table) -> str:
    """Delta file statistics: the row count only. Partial min/max statistics are worse than
    none: delta-rs's dataset then prunes files on the columns without them (measured with
    deltalake 1.6.6: a filter on such a column returned no rows)."""
    return json.dumps({"numRecords": data.num_rows})
