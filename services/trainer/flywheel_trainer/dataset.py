"""The data a job trains on: a pinned snapshot of ``dpo_pairs`` read by time travel, split into
train and eval by a hash of ``pair_id``, in TRL's conversational preference format.

The split depends on nothing but the pair id (and the eval fraction), so a pair held out in one
job is held out in every later job and is never trained on; raising ``eval_fraction`` only moves
pairs from train to eval, never back (the watcher refuses to lower it).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TextIO

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable
from deltalake.exceptions import DeltaError, TableNotFoundError
from flywheel_common.errors import ConfigError

from flywheel_trainer.errors import SnapshotError

__all__ = [
    "PreferenceRecord",
    "Snapshot",
    "SplitName",
    "export_trl",
    "head_version",
    "is_eval_pair",
    "load_golden",
    "read_snapshot",
    "snapshot_rows",
    "to_trl",
]

PreferenceRecord = dict[str, Any]  # {"prompt": [msgs], "chosen": [msg], "rejected": [msg]}
SplitName = Literal["all", "train", "eval"]
_SPLIT_SALT = b"flywheel-eval-split-v1:"
_COLUMNS = ["pair_id", "prompt", "chosen", "rejected", "source"]


def _open(table_uri: str, version: int | None, storage: Mapping[str, str] | None) -> DeltaTable:
    try:
        return DeltaTable(table_uri, version=version, storage_options=dict(storage or {}))
    except TableNotFoundError as exc:
        raise SnapshotError(table_uri, version, "table not found") from exc
    except (DeltaError, OSError, ValueError) as exc:
        raise SnapshotError(table_uri, version, str(exc)) from exc


def head_version(table_uri: str, storage: Mapping[str, str] | None = None) -> int | None:
    """The newest version, or None when the table does not exist yet."""
    try:
        return _open(table_uri, None, storage).version()
    except SnapshotError:
        return None


def snapshot_rows(table_uri: str, version: int, storage: Mapping[str, str] | None = None) -> int:
    """Exact row count of one version (Parquet footers only, no data read)."""
    return int(_open(table_uri, version, storage).to_pyarrow_dataset().count_rows())


def is_eval_pair(pair_id: str, fraction: float) -> bool:
    """Deterministic, uniform and monotone in ``fraction``: the same answer in every job."""
    digest = hashlib.sha256(_SPLIT_SALT + pair_id.encode()).digest()
    return bool(int.from_bytes(digest[:8], "big") / float(1 << 64) < fraction)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One pinned version of the pairs table, split."""

    table_uri: str
    version: int
    train: pa.Table
    eval: pa.Table

    @property
    def rows(self) -> int:
        return int(self.train.num_rows + self.eval.num_rows)

    def pairs_by_source(self) -> dict[str, int]:
        counts: Counter[str] = Counter()
        for part in (self.train, self.eval):
            counts.update(part.column("source").to_pylist())
        return dict(sorted(counts.items()))


def read_snapshot(
    table_uri: str,
    version: int,
    *,
    eval_fraction: float,
    storage: Mapping[str, str] | None = None,
) -> Snapshot:
    """Read exactly ``version`` by time travel and split it by pair id."""
    dt = _open(table_uri, version, storage)
    if dt.version() != version:  # defensive: time travel must land on the pinned version
        raise SnapshotError(table_uri, version, f"loaded version {dt.version()} instead")
    table = dt.to_pyarrow_table(columns=_COLUMNS)
    # Sorting by pair id makes the row order (and so the training order for a seed) independent
    # of how the table happens to be laid out in files.
    table = table.sort_by("pair_id")
    mask = pa.array([is_eval_pair(p, eval_fraction) for p in table.column("pair_id").to_pylist()])
    return Snapshot(
        table_uri=table_uri,
        version=version,
        train=table.filter(pc.invert(mask)),
        eval=table.filter(mask),
    )


def to_trl(table: pa.Table) -> list[PreferenceRecord]:
    """TRL's conversational preference format: the prompt as messages, each answer as one
    assistant message."""
    out: list[PreferenceRecord] = []
    for row in table.select(["prompt", "chosen", "rejected"]).to_pylist():
        prompt = [{"role": m["role"], "content": m["content"]} for m in row["prompt"]]
        out.append(
            {
                "prompt": prompt,
                "chosen": [{"role": "assistant", "content": row["chosen"]}],
                "rejected": [{"role": "assistant", "content": row["rejected"]}],
            }
        )
    return out


def load_golden(path: str | Path) -> list[PreferenceRecord]:
    """A fixed eval set: JSONL in TRL's conversational preference format."""
    records: list[PreferenceRecord] = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read the golden eval set {path}: {exc}") from exc
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}:{n}: not JSON: {exc}") from exc
        if not isinstance(rec, dict) or not all(
            isinstance(rec.get(k), list) for k in ("prompt", "chosen", "rejected")
        ):
            raise ConfigError(f"{path}:{n}: needs prompt/chosen/rejected as lists of messages")
        records.append(rec)
    if not records:
        raise ConfigError(f"the golden eval set {path} is empty")
    return records


def export_trl(
    table_uri: str,
    version: int,
    out: TextIO,
    *,
    split: SplitName = "all",
    eval_fraction: float,
    storage: Mapping[str, str] | None = None,
) -> int:
    """Write one version as TRL conversational JSONL; returns the number of records."""
    snap = read_snapshot(table_uri, version, eval_fraction=eval_fraction, storage=storage)
    parts: Iterable[pa.Table] = {
        "all": (snap.train, snap.eval),
        "train": (snap.train,),
        "eval": (snap.eval,),
    }[split]
    n = 0
    for part in parts:
        for rec in to_trl(part):
            out.write(json.dumps(rec, ensure_ascii=False) + "\n")
            n += 1
    return n
