"""The demo's curator stage: ``flywheel replay`` over the topics into a local lake, then a look
at the three tables it wrote."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError
from flywheel_common import KafkaSettings

_CURATE_TIMEOUT_S = 180
_BREAKDOWN = {
    "dpo_pairs": ("source", "tenant"),
    "sft_examples": ("feature",),
    "rejected_candidates": ("reasons",),
}


@dataclass
class TableSummary:
    rows: int = 0
    version: int | None = None
    breakdown: dict[str, dict[str, int]] = field(default_factory=dict)
    example: dict[str, Any] | None = None


def run_curator(kafka: KafkaSettings, *, lake: Path, log_file: Path) -> dict[str, Any]:
    """Run ``flywheel replay --from-beginning`` (the stream curator, stopping at the end of the
    topics) and return the summary it prints."""
    env = {
        **os.environ,
        "FLYWHEEL_CURATOR_KAFKA": kafka.model_dump_json(),
        "FLYWHEEL_CURATOR_LOGGING__FORMAT": "json",
    }
    with log_file.open("w") as log:
        done = subprocess.run(  # noqa: S603 - our own CLI, fixed arguments
            [
                sys.executable,
                "-m",
                "flywheel_common.cli",
                "replay",
                "--from-beginning",
                "--lake",
                str(lake),
                "--state-dir",
                str(lake.parent / "curator-state"),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            timeout=_CURATE_TIMEOUT_S,
            check=False,
        )
    if done.returncode != 0:
        raise RuntimeError(f"the curator failed ({done.returncode}); see {log_file}")
    summary: dict[str, Any] = json.loads(done.stdout)
    return summary


def read_tables(lake: Path) -> dict[str, TableSummary]:
    out: dict[str, TableSummary] = {}
    for name, columns in _BREAKDOWN.items():
        summary = TableSummary()
        try:
            table = DeltaTable(str(lake / name))
        except TableNotFoundError:
            out[name] = summary
            continue
        rows = table.to_pyarrow_table().to_pylist()
        summary.rows, summary.version = len(rows), table.version()
        for column in columns:
            counts: Counter[str] = Counter()
            for row in rows:
                value = row[column]
                counts.update(value if isinstance(value, list) else [str(value)])
            summary.breakdown[column] = dict(counts.most_common())
        summary.example = rows[0] if rows else None
        out[name] = summary
    return out
