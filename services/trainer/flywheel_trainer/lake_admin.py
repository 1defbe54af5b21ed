"""Operator actions on the training data: pin, unpin, restore, history, export.

A pin caps the version jobs may train on; a restore rolls the pairs table back after a poisoned
batch with Delta's RESTORE. Both are recorded in the registry with who and why. A restore does
not rewind the curator: Delta keeps the application-transaction versions at their newest values
across a restore, so the curator's offsets stay past the poisoned batch and it never comes back
by itself. The offsets the restore removed are recorded per topic-partition, so bringing any of
them back is an explicit replay.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
from deltalake import CommitProperties, DeltaTable
from deltalake.exceptions import DeltaError
from flywheel_common.errors import ConfigError, LakeError

from flywheel_trainer.dataset import head_version
from flywheel_trainer.registry import OffsetRange, Registry, RegistryEvent, TrainingRun
from flywheel_trainer.settings import TrainerSettings

__all__ = ["HistoryEntry", "history", "pin", "removed_offset_ranges", "restore", "unpin"]

_OFFSET_KEYS = ["kafka_topic", "kafka_partition", "kafka_offset"]


def _registry(settings: TrainerSettings) -> Registry:
    return Registry(settings.registry_uri(), storage_options=settings.lake.storage_options_plain())


def _head(settings: TrainerSettings) -> int:
    head = head_version(settings.pairs_uri(), settings.lake.storage_options_plain())
    if head is None:
        raise ConfigError(f"no pairs table at {settings.pairs_uri()}")
    return head


def pin(settings: TrainerSettings, version: int, *, actor: str, reason: str | None) -> None:
    """From now on jobs train on at most ``version`` (until unpinned)."""
    head = _head(settings)
    if not 0 <= version <= head:
        raise ConfigError(f"cannot pin version {version}: the table is at version {head}")
    _registry(settings).pin(version, actor=actor, reason=reason)


def unpin(settings: TrainerSettings, *, actor: str, reason: str | None) -> None:
    _registry(settings).pin(None, actor=actor, reason=reason)


def removed_offset_ranges(current: pa.Table, target: pa.Table) -> list[OffsetRange]:
    """Per topic-partition, the Kafka offsets of rows in ``current`` but not in ``target``.
    Everything after the target version goes, so per partition this is one range."""
    gone = current.select(_OFFSET_KEYS).join(
        target.select(_OFFSET_KEYS), keys=_OFFSET_KEYS, join_type="left anti"
    )
    if gone.num_rows == 0:
        return []
    grouped = gone.group_by(["kafka_topic", "kafka_partition"]).aggregate(
        [("kafka_offset", "min"), ("kafka_offset", "max"), ("kafka_offset", "count")]
    )
    out = [
        OffsetRange(
            topic=row["kafka_topic"],
            partition=int(row["kafka_partition"]),
            first=int(row["kafka_offset_min"]),
            last=int(row["kafka_offset_max"]),
            count=int(row["kafka_offset_count"]),
        )
        for row in grouped.to_pylist()
    ]
    return sorted(out, key=lambda r: (r.topic, r.partition))


def restore(
    settings: TrainerSettings, version: int, *, actor: str, reason: str
) -> tuple[int, list[OffsetRange]]:
    """Delta RESTORE of the pairs table to ``version``; returns the new commit's version and
    the offset ranges it removed."""
    uri, storage = settings.pairs_uri(), settings.lake.storage_options_plain()
    dt = DeltaTable(uri, storage_options=storage)
    current = dt.version()
    if not 0 <= version < current:
        raise ConfigError(f"cannot restore to version {version}: the table is at {current}")
    now_rows = dt.to_pyarrow_table(columns=_OFFSET_KEYS)
    then_rows = DeltaTable(uri, version=version, storage_options=storage).to_pyarrow_table(
        columns=_OFFSET_KEYS
    )
    removed = removed_offset_ranges(now_rows, then_rows)
    meta = {
        "flywheel.actor": actor,
        "flywheel.reason": reason,
        "flywheel.removed_offsets": json.dumps([asdict(r) for r in removed]),
    }
    try:
        dt.restore(version, commit_properties=CommitProperties(custom_metadata=meta))
    except DeltaError as exc:
        raise LakeError(f"restore of {uri} to version {version} failed: {exc}") from exc
    committed = DeltaTable(uri, storage_options=storage).version()
    _registry(settings).append(
        RegistryEvent(
            kind="restore",
            actor=actor,
            reason=reason,
            table_uri=uri,
            restore_from_version=current,
            restore_to_version=version,
            restore_commit_version=committed,
            removed_offsets=json.dumps([asdict(r) for r in removed]),
        )
    )
    return committed, removed


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    version: int
    timestamp: datetime | None
    operation: str
    rows: int | None  # rows in the table at this version
    added: int | None
    runs: tuple[str, ...]  # training runs pinned to this version
    note: str  # restores and pins that refer to this version

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["timestamp"] = self.timestamp.isoformat() if self.timestamp else None
        return d


def history(settings: TrainerSettings, *, limit: int | None = None) -> list[HistoryEntry]:
    """The pairs table's versions, newest first, with the runs and operator actions on each."""
    uri, storage = settings.pairs_uri(), settings.lake.storage_options_plain()
    dt = DeltaTable(uri, storage_options=storage)
    registry = _registry(settings)
    events = registry.events()
    runs: Mapping[str, TrainingRun] = registry.runs(events)
    notes: dict[int, list[str]] = {}
    for ev in events:
        if ev.kind == "pin":
            if ev.pinned_version is not None:
                notes.setdefault(ev.pinned_version, []).append(f"pinned by {ev.actor}")
        elif ev.kind == "restore" and ev.restore_commit_version is not None:
            notes.setdefault(ev.restore_commit_version, []).append(
                f"restore to {ev.restore_to_version} by {ev.actor}: {ev.reason}"
            )
    out = []
    for commit in dt.history(limit):
        v = int(commit["version"])
        metrics = commit.get("operationMetrics") or {}
        added = metrics.get("num_added_rows")
        ts = commit.get("timestamp")
        out.append(
            HistoryEntry(
                version=v,
                timestamp=datetime.fromtimestamp(ts / 1000, UTC) if ts else None,
                operation=str(commit.get("operation", "")),
                rows=_rows_at(uri, v, storage),
                added=int(added) if added is not None else None,
                runs=tuple(
                    r.run_id for r in runs.values() if r.table_uri == uri and r.dataset_version == v
                ),
                note="; ".join(notes.get(v, [])),
            )
        )
    return out


def _rows_at(uri: str, version: int, storage: Mapping[str, str]) -> int | None:
    try:
        dt = DeltaTable(uri, version=version, storage_options=dict(storage))
        return int(dt.to_pyarrow_dataset().count_rows())
    except (DeltaError, OSError):
        return None  # a vacuumed version: its files are gone
