"""Two-phase appends on local paths: the Parquet file is written with pyarrow, then one Delta
commit adds it, so the crash test can kill the process between the two (``sink.py``)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.parquet as pq
from deltalake import CommitProperties, DeltaTable
from deltalake.transaction import AddAction

from flywheel_curator.upkeep import NO_HOOKS

__all__ = ["append_two_phase", "is_local"]

Between = Callable[[Literal["after_write_before_commit"]], None]


def is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def append_two_phase(
    dt: DeltaTable, uri: str, data: pa.Table, props: CommitProperties, *, between: Between
) -> None:
    """Write ``data`` as one Parquet file under the table at ``uri``, call ``between`` (a fault
    point), then commit the file to ``dt``."""
    root = Path(uri.removeprefix("file://"))
    name = f"part-00000-{uuid.uuid4()}-c000.snappy.parquet"
    pq.write_table(data, root / name, compression="snappy")
    between("after_write_before_commit")
    add = AddAction(
        path=name,
        size=(root / name).stat().st_size,
        partition_values={},
        modification_time=int(time.time() * 1000),
        data_change=True,
        stats=_stats(data),
    )
    dt.create_write_transaction(
        [add],
        mode="append",
        schema=data.schema,
        commit_properties=props,
        post_commithook_properties=NO_HOOKS,
    )


def _stats(data: pa.Table) -> str:
    """Delta file statistics: the row count only. Partial min/max statistics are worse than
    none: delta-rs's dataset then prunes files on the columns without them (measured with
    deltalake 1.6.6: a filter on such a column returned no rows)."""
    return json.dumps({"numRecords": data.num_rows})
