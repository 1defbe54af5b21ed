"""Which re-derived rows the tables already hold: the skip half of exactly once on replay.

After a restart the consumer re-applies ``[S, D)`` (``resume.py``) and the pipeline forms some
rows again. A row is judged by its *ingredients* (the coordinates of every event that went into
it) against each table's txn versions:

- ``sft_examples`` follows its own offsets (sampling is deterministic);
- the two pair tables share one decision per candidate, and a replayed candidate may be judged
  differently (near-dup and caps depend on order across partitions), so they are judged
  together: ``rejected_candidates`` commits before ``dpo_pairs``, and where a crash left it
  ahead, a candidate in between is *ambiguous*: the caller looks it up by ``candidate_id``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Literal

from flywheel_common.lake import TableName

from flywheel_curator import metrics
from flywheel_curator.pipeline import CuratedRow

__all__ = ["sort_replayed"]

TP = tuple[str, int]
Offsets = Mapping[TP, int | None]


def sort_replayed(
    rows: Sequence[CuratedRow],
    known: Mapping[TableName, Offsets],
    assigned: Collection[TP],
) -> tuple[list[CuratedRow], list[CuratedRow]]:
    """(rows no table holds yet, rows to look up); rows the tables hold are counted and
    dropped."""
    fresh: list[CuratedRow] = []
    ambiguous: list[CuratedRow] = []
    for row in rows:
        if row.table == "sft_examples":
            state = _status(row, known["sft_examples"], known["dpo_pairs"], assigned)
        else:
            state = _status(row, known["dpo_pairs"], known["rejected_candidates"], assigned)
        if state == "new":
            fresh.append(row)
        elif state == "ambiguous":
            ambiguous.append(row)
        else:
            metrics.REPLAYED_ROWS_SKIPPED.labels(table=row.table).inc()
    return fresh, ambiguous


def _status(
    row: CuratedRow, low: Offsets, other: Offsets, assigned: Collection[TP]
) -> Literal["new", "old", "ambiguous"]:
    """``new`` if an owned ingredient is past both offsets, ``old`` if all are below ``low``;
    in between, ``ambiguous``."""
    verdict: Literal["new", "old", "ambiguous"] = "old"
    for origin in row.ingredients:
        tp = (origin.topic, origin.partition)
        if tp not in assigned:
            continue
        lo = low.get(tp) or 0
        hi = max(lo, other.get(tp) or 0)
        if origin.offset >= hi:
            return "new"
        if origin.offset >= lo:
            verdict = "ambiguous"
    return verdict
