"""``flywheel data compact --vacuum`` never deletes files a pinned version reads.

The pin is read from the trainer's registry table (``training_runs``): its newest
``kind = "pin"`` row. Rows here are written with the registry's columns; the trainer's own
writer is checked against the same reader in test_vacuum_pins_trainer.py and, end to end, in
test_compose_stack.py.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake
from flywheel_common.cli import main
from flywheel_curator.retention import pinned_version

_PINS = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("recorded_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("actor", pa.string(), nullable=False),
        pa.field("pinned_version", pa.int64()),
    ]
)


def _lake_with_history(root: Path) -> str:
    """dpo_pairs at version 3: three appends, then a compaction that replaces their files."""
    uri = str(root / "dpo_pairs")
    for i in range(3):
        write_deltalake(uri, pa.table({"pair_id": [f"p{i}"], "n": [i]}), mode="append")
    DeltaTable(uri).optimize.compact()
    return uri


def _record(root: Path, *versions: int | None) -> None:
    start = datetime.now(tz=UTC)
    rows = [
        {
            "event_id": uuid.uuid4().hex,
            "kind": "pin",
            "recorded_at": start + timedelta(seconds=i),
            "actor": "cli:test",
            "pinned_version": v,
        }
        for i, v in enumerate(versions)
    ]
    # A run row in between, as the real log has: only pin rows count.
    rows.append(
        {"event_id": "r", "kind": "run", "recorded_at": start, "actor": "t", "pinned_version": None}
    )
    write_deltalake(
        str(root / "training_runs"), pa.Table.from_pylist(rows, schema=_PINS), mode="append"
    )


def _vacuum(root: Path, *, hours: int = 0) -> int:
    return main(
        [
            "data",
            "compact",
            "--lake",
            str(root),
            "--table",
            "dpo_pairs",
            "--vacuum",
            "--retention-hours",
            str(hours),
        ]
    )


def _rows_at(uri: str, version: int) -> int:
    return int(DeltaTable(uri, version=version).to_pyarrow_dataset().count_rows())


def test_a_vacuum_that_would_break_the_pin_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    uri = _lake_with_history(tmp_path)
    _record(tmp_path, 1)
    assert pinned_version(str(tmp_path / "training_runs"), None) == 1
    assert _vacuum(tmp_path) == 2
    err = capsys.readouterr().err
    assert "pinned version 1" in err and "--retention-hours" in err
    assert _rows_at(uri, 1) == 2  # every file version 1 reads is still there


def test_without_a_pin_the_vacuum_runs(tmp_path: Path) -> None:
    uri = _lake_with_history(tmp_path)
    _record(tmp_path, 1, None)  # pinned, then unpinned
    assert pinned_version(str(tmp_path / "training_runs"), None) is None
    assert _vacuum(tmp_path) == 0
    with pytest.raises(OSError):
        _rows_at(uri, 1)  # its files are gone: that is what vacuum does
    assert _rows_at(uri, DeltaTable(uri).version()) == 3


def test_a_pin_on_the_newest_version_lets_the_vacuum_run(tmp_path: Path) -> None:
    uri = _lake_with_history(tmp_path)
    head = DeltaTable(uri).version()
    _record(tmp_path, 1, head)  # the newest pin wins
    assert _vacuum(tmp_path) == 0
    assert _rows_at(uri, head) == 3


def test_no_registry_means_no_pin(tmp_path: Path) -> None:
    _lake_with_history(tmp_path)
    assert pinned_version(str(tmp_path / "training_runs"), None) is None
    assert _vacuum(tmp_path) == 0
