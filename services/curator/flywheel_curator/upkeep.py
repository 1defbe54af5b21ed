"""Keeps the tables cheap to commit to and to load as they grow.

Every micro-batch adds a small Parquet file and a log entry. Left alone, each commit gets
slower: delta-rs clones the snapshot's file list into every commit and looks app ids up by
replaying the log since the last checkpoint (measured, deltalake 1.6.6: BENCHMARKS.md,
"Curator — commits"). So, between batches and never inside one:

- a checkpoint every ``checkpoint_interval`` versions (delta-rs's own post-commit checkpoint is
  switched off so it is not written twice);
- compaction of the small files once this process added ``compact_min_files`` of them, into
  files of up to ``compact_target_mb``. Compaction keeps the txn versions (the offsets), and
  the target bounds what one run rewrites: files that reached it are left alone;
- optionally (``log_retention_minutes``), deletion of log entries older than that after each
  checkpoint. On a local disk every snapshot update lists the whole ``_delta_log`` directory
  (about 1 µs per entry, measured), so commits slow down with the number of versions kept; but
  time travel (a pinned or restored version) cannot reach past the retention. Off by default:
  Delta's own retention (30 days) applies.

A failed checkpoint or compaction (another process compacting at the same moment) is logged
and tried again later; it never fails a batch.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from deltalake import CommitProperties, DeltaTable
from deltalake.exceptions import DeltaError
from deltalake.transaction import PostCommitHookProperties
from flywheel_common.lake import TableName
from pydantic import BaseModel, ConfigDict, Field

from flywheel_curator import metrics

__all__ = ["NO_HOOKS", "Upkeep", "UpkeepSettings", "UpkeepWork"]

log = logging.getLogger(__name__)

# Checkpoints are written by ``Upkeep``; log cleanup lists the whole log directory.
NO_HOOKS = PostCommitHookProperties(create_checkpoint=False, cleanup_expired_logs=False)
_MB = 1024 * 1024
_RETENTION = "delta.logRetentionDuration"


class UpkeepSettings(BaseModel):
    """When the curator checkpoints and compacts its tables (0 turns compaction off)."""

    model_config = ConfigDict(frozen=True)

    checkpoint_interval: int = Field(default=100, ge=1)
    compact_min_files: int = Field(default=200, ge=0)
    compact_target_mb: int = Field(default=32, ge=1)
    log_retention_minutes: int | None = Field(default=None, ge=1)


@dataclass(frozen=True, slots=True)
class UpkeepWork:
    """What one round of upkeep did to one table."""

    table: TableName
    compacted_files: int
    checkpoint_version: int | None
    seconds: float


class Upkeep:
    """Counts what this process added to each table and tends the tables when due."""

    def __init__(self, settings: UpkeepSettings, *, metadata: dict[str, str]) -> None:
        self.settings = settings
        self._metadata = metadata
        self._small: dict[TableName, int] = {}  # files added since this process compacted
        self._checkpoint_at: dict[TableName, int] = {}  # version of the last checkpoint seen

    def loaded(self, table: TableName, dt: DeltaTable) -> None:
        """A table was loaded: count from its version, and give it the log retention."""
        self._checkpoint_at.setdefault(table, dt.version())
        minutes = self.settings.log_retention_minutes
        retention = f"interval {minutes} minutes"
        if minutes is None or dt.metadata().configuration.get(_RETENTION) == retention:
            return
        try:
            dt.alter.set_table_properties({_RETENTION: retention})
        except DeltaError as exc:
            log.warning("log retention not set", extra={"table": table, "error": str(exc)})

    def added(self, table: TableName, files: int) -> None:
        self._small[table] = self._small.get(table, 0) + files

    def due(self, table: TableName, version: int) -> bool:
        s = self.settings
        compact = 0 < s.compact_min_files <= self._small.get(table, 0)
        checkpoint = version - self._checkpoint_at.get(table, version) >= s.checkpoint_interval
        return compact or checkpoint

    def run(self, table: TableName, dt: DeltaTable) -> UpkeepWork:
        """Compact (when due) and checkpoint ``dt``, which must be at its latest version."""
        started = time.perf_counter()
        removed = 0
        s = self.settings
        if 0 < s.compact_min_files <= self._small.get(table, 0):
            removed = self._compact(table, dt)
        checkpoint: int | None = None
        try:
            dt.create_checkpoint()
            checkpoint = dt.version()
            if s.log_retention_minutes is not None:
                dt.cleanup_metadata()
        except DeltaError as exc:
            # A missed checkpoint only slows loads down; the next interval tries again.
            log.warning("checkpoint failed", extra={"table": table, "error": str(exc)})
        self._checkpoint_at[table] = dt.version()
        seconds = time.perf_counter() - started
        metrics.UPKEEP_SECONDS.labels(table=table).observe(seconds)
        log.info(
            "table upkeep",
            extra={"table": table, "compacted": removed, "checkpoint": checkpoint, "s": seconds},
        )
        return UpkeepWork(table, removed, checkpoint, seconds)

    def _compact(self, table: TableName, dt: DeltaTable) -> int:
        self._small[table] = 0  # tried either way: a failure is retried after as many files
        try:
            result = dt.optimize.compact(
                target_size=self.settings.compact_target_mb * _MB,
                commit_properties=CommitProperties(custom_metadata=self._metadata),
                post_commithook_properties=NO_HOOKS,
            )
        except DeltaError as exc:
            log.warning("compaction failed", extra={"table": table, "error": str(exc)})
            return 0
        dt.update_incremental()
        return int(result.get("numFilesRemoved") or 0)
