"""The filters' start-up state read from a real ``dpo_pairs`` table, bounded: the same near-dup
entries and cap counts as from the whole table, from fewer rows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
from deltalake import DeltaTable, write_deltalake
from flywheel_common.lake import DPO_PAIRS
from flywheel_curator.filters import FilterSettings
from flywheel_curator.pipeline import FILTER_STATE_COLUMNS
from flywheel_curator.warmup import read_filter_state

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def _pairs(start: int, n: int, *, age: timedelta) -> pa.Table:
    """``n`` pairs curated ``age`` ago (one second apart), their events an hour before that."""
    rows = []
    for i in range(start, start + n):
        curated = NOW - age + timedelta(seconds=i - start)
        rows.append(
            {
                "pair_id": f"p{i}",
                "prompt": [{"role": "user", "content": f"question {i}"}],
                "chosen": f"chosen answer number {i}",
                "rejected": f"rejected answer number {i}",
                "source": "edit",
                "run_id": f"r{i}",
                "event_id": f"e{i}",
                "tenant": f"t{i % 3}",
                "user_hash": f"u{i % 7}",
                "feature": "summary",
                "weight": 1.0,
                "event_time": curated - timedelta(hours=1),
                "curated_at": curated,
                "curator_version": "test",
                "filter_config_hash": "h",
                "kafka_topic": "edits",
                "kafka_partition": 0,
                "kafka_offset": i,
            }
        )
    return pa.Table.from_pylist(rows, schema=DPO_PAIRS)


def _table(tmp_path: Path) -> DeltaTable:
    uri = str(tmp_path / "dpo_pairs")
    # Old pairs (outside every window), then recent ones, in several files; then compacted
    # once, as the curator's upkeep does, so files with full statistics are read too.
    for k, days in enumerate((40, 35, 30, 3, 2)):
        write_deltalake(uri, _pairs(k * 100, 100, age=timedelta(days=days)), mode="append")
    assert DeltaTable(uri).optimize.compact()["numFilesRemoved"] == 5
    for k, hours in enumerate((5, 3, 1)):
        write_deltalake(uri, _pairs(1000 + k * 100, 100, age=timedelta(hours=hours)), mode="append")
    return DeltaTable(uri)


def test_the_bounded_read_gives_the_filters_what_the_whole_table_gives(tmp_path: Path) -> None:
    dt = _table(tmp_path)
    settings = FilterSettings.model_validate(
        {"near_dup": {"max_entries": 250}, "caps": {"window": "PT1H", "retain_windows": 72}}
    )
    everything = dt.to_pyarrow_table(columns=list(FILTER_STATE_COLUMNS))
    bounded = read_filter_state(dt, settings, now=NOW)

    def newest(t: pa.Table) -> list[tuple[str, str]]:
        ordered = t.sort_by("curated_at")
        tail = ordered.slice(ordered.num_rows - 250)
        return sorted(zip(tail["chosen"].to_pylist(), tail["rejected"].to_pylist(), strict=True))

    def in_caps(t: pa.Table) -> list[tuple[str, str]]:
        horizon = NOW - timedelta(hours=72)
        return sorted(
            (r["tenant"], r["user_hash"])
            for r in t.select(["tenant", "user_hash", "event_time"]).to_pylist()
            if r["event_time"] >= horizon
        )

    assert newest(bounded) == newest(everything)
    assert in_caps(bounded) == in_caps(everything)
    # Exactly the rows either filter needs: the 250 newest and those inside the caps horizon.
    rows = everything.to_pylist()
    since = sorted(r["curated_at"] for r in rows)[-250]
    horizon = NOW - timedelta(hours=72)
    needed = [r for r in rows if r["curated_at"] >= since or r["event_time"] >= horizon]
    assert bounded.num_rows == len(needed) < len(rows)
    # Texts were read only for the newest rows.
    assert bounded["chosen"].null_count == bounded.num_rows - 250


def test_a_small_table_is_read_once_and_whole(tmp_path: Path) -> None:
    uri = str(tmp_path / "dpo_pairs")
    write_deltalake(uri, _pairs(0, 50, age=timedelta(days=1)), mode="append")
    bounded = read_filter_state(DeltaTable(uri), FilterSettings(), now=NOW)
    assert bounded.num_rows == 50 and bounded["chosen"].null_count == 0
    empty = tmp_path / "empty"
    DeltaTable.create(str(empty), DPO_PAIRS)
    assert read_filter_state(DeltaTable(str(empty)), FilterSettings(), now=NOW).num_rows == 0
