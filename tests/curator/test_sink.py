"""The Delta sink on real tables: a claim fences the previous owner before the new one commits
anything, and upkeep compacts and checkpoints without touching the offsets."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from deltalake import DeltaTable
from flywheel_common.lake import TableName
from flywheel_common.settings import LakeSettings
from flywheel_curator.claims import claim
from flywheel_curator.sink import COMMIT_ORDER, DeltaSink, ZombieError
from flywheel_curator.upkeep import UpkeepSettings

TPS = [("edits", 0), ("edits", 1)]
NOW = datetime(2026, 12, 1, tzinfo=UTC)


def _rows(i: int) -> dict[TableName, list[dict[str, Any]]]:
    pair = {
        "pair_id": f"p{i}",
        "prompt": [{"role": "user", "content": "q"}],
        "chosen": f"chosen {i}",
        "rejected": f"rejected {i}",
        "source": "edit",
        "run_id": f"r{i}",
        "event_id": f"e{i}",
        "tenant": "t",
        "feature": "f",
        "weight": 1.0,
        "event_time": NOW,
        "curated_at": NOW,
        "curator_version": "test",
        "filter_config_hash": "h",
        "kafka_topic": "edits",
        "kafka_partition": i % 2,
        "kafka_offset": i,
    }
    return {"dpo_pairs": [pair]}


class Writer:
    """A sink with the fence state a curator keeps."""

    def __init__(self, lake: Path, name: str, **upkeep: Any) -> None:
        self.sink = DeltaSink(
            LakeSettings(uri=str(lake)), group="g", instance=name, upkeep=UpkeepSettings(**upkeep)
        )
        self.sink.ensure_tables()
        self.epochs = claim(self.sink, TPS, topics={})
        self.known = self.sink.offsets(TPS)

    def commit(self, i: int) -> None:
        end = {tp: i + 1 for tp in TPS}
        for c in self.sink.commit(_rows(i), known=self.known, end=end, epochs=self.epochs):
            self.known[c.table].update(end)


def test_a_claim_fences_the_previous_owner_before_the_new_one_commits(tmp_path: Path) -> None:
    old = Writer(tmp_path, "old")
    old.commit(0)
    new = Writer(tmp_path, "new")  # takes over; commits nothing yet
    assert new.epochs == {tp: 2 for tp in TPS}
    with pytest.raises(ZombieError, match="claimed by another curator"):
        old.commit(1)
    new.commit(1)
    rows = DeltaTable(str(tmp_path / "dpo_pairs")).to_pyarrow_table().to_pylist()
    assert sorted(r["pair_id"] for r in rows) == ["p0", "p1"]


def test_upkeep_compacts_and_checkpoints_and_keeps_the_offsets(tmp_path: Path) -> None:
    writer = Writer(tmp_path, "w", compact_min_files=5, checkpoint_interval=1_000)
    for i in range(5):
        writer.commit(i)
    dt = DeltaTable(str(tmp_path / "dpo_pairs"))
    assert len(dt.file_uris()) == 5
    [work] = writer.sink.upkeep()
    assert (work.table, work.compacted_files) == ("dpo_pairs", 5)
    dt = DeltaTable(str(tmp_path / "dpo_pairs"))
    assert len(dt.file_uris()) == 1 and dt.to_pyarrow_table().num_rows == 5
    assert dt.transaction_version(writer.sink.app_id(TPS[0])) == 5
    assert any(
        p.name.endswith(".checkpoint.parquet")
        for p in (tmp_path / "dpo_pairs" / "_delta_log").iterdir()
    )
    writer.commit(5)  # the compaction was this process's own: no fence trips
    assert writer.sink.upkeep() == []
    for table in COMMIT_ORDER:
        assert writer.known[table] == writer.sink.offsets(TPS)[table]
