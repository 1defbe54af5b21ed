"""VACUUM never deletes what a pinned version of the training data needs.

``flywheel data pin`` records the pin in the trainer's registry, the ``training_runs`` Delta
table: an append-only log where the newest ``kind = "pin"`` row is the pin in force (a null
version is an unpin). This side reads that table with deltalake alone, so the check needs no
trainer package (no torch) and runs wherever ``flywheel data compact`` runs.

The check is exact: a dry run lists what the vacuum would delete, and none of it may be a
file of the pinned version.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping

from deltalake import DeltaTable
from deltalake.exceptions import DeltaError
from flywheel_common.errors import ConfigError, LakeError

__all__ = [
    "PINNED_TABLE",
    "REGISTRY_TABLE",
    "check_vacuum_keeps_pin",
    "keep_pinned_files",
    "pinned_version",
]

PINNED_TABLE = "dpo_pairs"  # the table a pin refers to
REGISTRY_TABLE = "training_runs"  # the trainer's registry_table default
_MS_PER_HOUR = 3_600_000


def pinned_version(registry_uri: str, storage: Mapping[str, str] | None) -> int | None:
    """The version of ``dpo_pairs`` pinned in the registry at ``registry_uri``, or None."""
    options = dict(storage or {})
    try:
        if not DeltaTable.is_deltatable(registry_uri, storage_options=options):
            return None
        pins = DeltaTable(registry_uri, storage_options=options).to_pyarrow_table(
            columns=["recorded_at", "pinned_version"], filters=[("kind", "=", "pin")]
        )
    except DeltaError as exc:
        # Unreadable is not "unpinned": refuse rather than risk the pinned files.
        raise LakeError(f"cannot read the pin from {registry_uri}: {exc}") from exc
    rows = pins.to_pylist()
    if not rows:
        return None
    newest = max(rows, key=lambda row: row["recorded_at"])
    return None if newest["pinned_version"] is None else int(newest["pinned_version"])


def keep_pinned_files(
    table: DeltaTable,
    *,
    registry_uri: str,
    retention_hours: int,
    enforce_retention_duration: bool,
    storage: Mapping[str, str] | None,
) -> None:
    """Refuse (``ConfigError``) a vacuum of ``table`` that would break the pinned version."""
    pinned = pinned_version(registry_uri, storage)
    if pinned is not None:
        check_vacuum_keeps_pin(
            table,
            pinned,
            retention_hours=retention_hours,
            enforce_retention_duration=enforce_retention_duration,
            storage=storage,
        )


def check_vacuum_keeps_pin(
    table: DeltaTable,
    pinned: int,
    *,
    retention_hours: int,
    enforce_retention_duration: bool,
    storage: Mapping[str, str] | None,
) -> None:
    """Raise ``ConfigError`` if vacuuming ``table`` with this retention would delete a file
    that version ``pinned`` reads."""
    # Paths relative to the table, as in the log and in vacuum's answer.
    at_pin = DeltaTable(table.table_uri, version=pinned, storage_options=dict(storage or {}))
    needed = set(at_pin.get_add_actions(flatten=True).column("path").to_pylist())
    doomed = table.vacuum(
        retention_hours=retention_hours,
        dry_run=True,
        enforce_retention_duration=enforce_retention_duration,
    )
    lost = needed.intersection(doomed)
    if not lost:
        return
    raise ConfigError(
        f"{PINNED_TABLE}: vacuum with --retention-hours {retention_hours} would delete "
        f"{len(lost)} file(s) of pinned version {pinned} (flywheel data pin); keep them with "
        f"--retention-hours {_hours_keeping(table, pinned)} or more, or unpin first"
    )


def _hours_keeping(table: DeltaTable, pinned: int) -> int:
    """A retention that keeps every file removed after ``pinned``: files of version V can
    only be tombstoned by a later commit, so retaining back to the first one suffices."""
    later = [int(c["timestamp"]) for c in table.history() if int(c["version"]) > pinned]
    if not later:
        return 0
    age_ms = time.time() * 1000 - min(later)
    return max(0, math.ceil(age_ms / _MS_PER_HOUR))
