"""What the in-memory filters need from ``dpo_pairs`` on start, read bounded.

Near-duplicate detection remembers the newest ``near_dup.max_entries`` pairs and caps count
the accepted pairs of the last ``caps.retain_windows`` windows; both are rebuilt from the table
when a curator starts (``pipeline.load_filter_state``). Reading the whole table for that (its
texts included) made a start as slow as the table is large. Instead:

1. one timestamp column of the whole table (``curated_at``) gives the time ``T`` of the
   ``max_entries``-th newest pair;
2. the texts are read only where ``curated_at >= T``;
3. the caps columns (no texts) only where ``event_time`` is inside the caps horizon and the
   row was not read in step 2.

Steps 2 and 3 are filters on the Parquet files' own row-group statistics, so files outside the
window are not read at all. The result has the columns ``load_filter_state`` expects (texts
null on the caps-only rows, which are never among the newest).
"""

from __future__ import annotations

from datetime import datetime

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from deltalake import DeltaTable

from flywheel_curator.filters import FilterSettings
from flywheel_curator.pipeline import FILTER_STATE_COLUMNS

__all__ = ["read_filter_state"]

_TEXTS = ("chosen", "rejected")


def read_filter_state(dt: DeltaTable, settings: FilterSettings, *, now: datetime) -> pa.Table:
    """The rows of ``dt`` (``dpo_pairs``) that the near-dup index and the caps start from."""
    columns = list(FILTER_STATE_COLUMNS)
    dataset = dt.to_pyarrow_dataset()
    # Nullable throughout: the caps-only rows carry no texts.
    schema = pa.schema([dataset.schema.field(c).with_nullable(True) for c in columns])
    near_dup, caps = settings.near_dup, settings.caps
    newest: ds.Expression | None = None  # rows the near-dup index needs, texts included
    parts: list[pa.Table] = []
    if near_dup.enabled:
        since = _newest_since(dataset, near_dup.max_entries)
        newest = None if since is None else pc.field("curated_at") >= since
        parts.append(dataset.to_table(columns=columns, filter=newest).cast(schema))
        if newest is None:
            return parts[0]  # the whole table is within max_entries: nothing else to read
    if caps.enabled:
        horizon = pa.scalar(now - caps.window * caps.retain_windows, pa.timestamp("ms", "UTC"))
        window = pc.field("event_time") >= horizon
        if newest is not None:
            window = window & ~newest
        light = [c for c in columns if c not in _TEXTS]
        rows = dataset.to_table(columns=light, filter=window)
        for name in _TEXTS:
            rows = rows.append_column(name, pa.nulls(rows.num_rows, pa.string()))
        parts.append(rows.select(columns).cast(schema))
    return pa.concat_tables(parts) if parts else schema.empty_table()


def _newest_since(dataset: ds.Dataset, keep: int) -> pa.Scalar | None:
    """The ``curated_at`` of the ``keep``-th newest row, or None if there are no more rows
    than that."""
    curated = dataset.to_table(columns=["curated_at"])
    if curated.num_rows <= keep:
        return None
    newest = pc.select_k_unstable(curated, k=keep, sort_keys=[("curated_at", "descending")])
    return pc.min(pc.take(curated.column("curated_at"), newest))
