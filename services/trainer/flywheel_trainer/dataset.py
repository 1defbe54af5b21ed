"""The data a job trains and is judged on: pinned versions of ``dpo_pairs`` and (when it
exists) ``kto_examples``, read by time travel, split by prompt group (split.py), in TRL's
conversational formats; and the golden set, a Delta table pinned to a version or a JSONL file
pinned by its SHA-256.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable
from deltalake.exceptions import DeltaError, TableNotFoundError
from flywheel_common.errors import ConfigError

from flywheel_trainer.errors import SnapshotError
from flywheel_trainer.split import PriorSplit, SplitPlan, group_position, plan_split, prompt_group

__all__ = [
    "HeldOut",
    "KtoRecord",
    "PreferenceRecord",
    "TrainingData",
    "file_sha256",
    "head_version",
    "load_golden",
    "load_training_data",
    "read_golden_table",
    "read_rows",
    "snapshot_rows",
    "to_trl",
    "to_trl_kto",
    "unpair",
]

PreferenceRecord = dict[str, Any]  # {"prompt": [msgs], "chosen": [msg], "rejected": [msg]}
KtoRecord = dict[str, Any]  # {"prompt": [msgs], "completion": [msg], "label": bool}
_PAIR_COLUMNS = ["pair_id", "prompt", "chosen", "rejected", "source", "tenant", "feature"]
_KTO_COLUMNS = ["example_id", "prompt", "completion", "label", "signal", "tenant", "feature"]
_GOLDEN_COLUMNS = ["prompt", "chosen", "rejected"]


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


def _read(
    table_uri: str, version: int, columns: list[str], storage: Mapping[str, str] | None
) -> pa.Table:
    dt = _open(table_uri, version, storage)
    if dt.version() != version:  # defensive: time travel must land on the pinned version
        raise SnapshotError(table_uri, version, f"loaded version {dt.version()} instead")
    try:
        return dt.to_pyarrow_table(columns=columns)
    except (DeltaError, OSError, ValueError, pa.ArrowInvalid) as exc:
        raise SnapshotError(table_uri, version, f"needs columns {columns}: {exc}") from exc


def read_rows(
    table_uri: str,
    version: int,
    *,
    kind: Literal["pairs", "kto"],
    seed: int,
    storage: Mapping[str, str] | None = None,
) -> pa.Table:
    """One pinned version of ``dpo_pairs`` (kind "pairs") or ``kto_examples`` ("kto"), with
    each row's prompt group and position appended; sorted by id, so the training order for a
    seed does not depend on how the table is laid out in files."""
    columns, key = (_PAIR_COLUMNS, "pair_id") if kind == "pairs" else (_KTO_COLUMNS, "example_id")
    table = _read(table_uri, version, columns, storage).sort_by(key)
    groups = [
        prompt_group(t, f, p)
        for t, f, p in zip(
            table.column("tenant").to_pylist(),
            table.column("feature").to_pylist(),
            table.column("prompt").to_pylist(),
            strict=True,
        )
    ]
    table = table.append_column("group", pa.array(groups, pa.string()))
    positions = [group_position(g, seed) for g in groups]
    return table.append_column("position", pa.array(positions, pa.float64()))


@dataclass(frozen=True, slots=True)
class HeldOut:
    """Held-out rows of one kind in TRL's format, with what the gate slices them by."""

    records: list[dict[str, Any]]
    groups: list[str]
    features: list[str]
    sources: list[str]  # pair source, or the KTO row's signal
    labels: list[bool] | None = None  # KTO rows only: desirable or not


@dataclass(frozen=True, slots=True)
class TrainingData:
    """The split data of one job."""

    plan: SplitPlan
    pairs_train: pa.Table
    pairs_eval: pa.Table
    kto_train: pa.Table | None
    kto_eval: pa.Table | None

    @property
    def rows(self) -> int:
        return int(self.pairs_train.num_rows + self.pairs_eval.num_rows)

    @property
    def kto_rows(self) -> int:
        parts = (self.kto_train, self.kto_eval)
        return sum(int(t.num_rows) for t in parts if t is not None)

    def pairs_by_source(self) -> dict[str, int]:
        counts: Counter[str] = Counter()
        for part in (self.pairs_train, self.pairs_eval):
            counts.update(part.column("source").to_pylist())
        return dict(sorted(counts.items()))

    def held_out_pairs(self, limit: int) -> HeldOut:
        part = _first_by_position(self.pairs_eval, limit)
        return HeldOut(
            records=to_trl(part),
            groups=part.column("group").to_pylist(),
            features=part.column("feature").to_pylist(),
            sources=part.column("source").to_pylist(),
        )

    def held_out_kto(self, limit: int) -> HeldOut | None:
        if self.kto_eval is None or self.kto_eval.num_rows == 0:
            return None
        part = _first_by_position(self.kto_eval, limit)
        return HeldOut(
            records=to_trl_kto(part),
            groups=part.column("group").to_pylist(),
            features=part.column("feature").to_pylist(),
            sources=part.column("signal").to_pylist(),
            labels=part.column("label").to_pylist(),
        )


def _first_by_position(table: pa.Table, limit: int) -> pa.Table:
    """A stable cap: the held-out rows of the lowest positions (whole groups first)."""
    if table.num_rows <= limit:
        return table
    return table.sort_by([("position", "ascending")]).slice(0, limit)


def load_training_data(
    *,
    pairs: pa.Table,
    kto: pa.Table | None,
    fraction: float,
    seed: int,
    min_feature_groups: int,
    prior: PriorSplit,
) -> TrainingData:
    """Split the rows of both tables with one plan over all their prompt groups."""
    parts = [t for t in (pairs, kto) if t is not None]
    groups: dict[str, dict[str, float]] = {}
    for t in parts:
        for f, g, p in zip(
            t.column("feature").to_pylist(),
            t.column("group").to_pylist(),
            t.column("position").to_pylist(),
            strict=True,
        ):
            groups.setdefault(f, {})[g] = p
    plan = plan_split(
        groups, fraction=fraction, seed=seed, min_feature_groups=min_feature_groups, prior=prior
    )

    def split(t: pa.Table) -> tuple[pa.Table, pa.Table]:
        held = pa.array(
            plan.mask(t.column("group").to_pylist(), t.column("position").to_pylist()),
            pa.bool_(),
        )
        return t.filter(pc.invert(held)), t.filter(held)

    pairs_train, pairs_eval = split(pairs)
    kto_train, kto_eval = split(kto) if kto is not None else (None, None)
    return TrainingData(plan, pairs_train, pairs_eval, kto_train, kto_eval)


def _messages(prompt: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    return [{"role": m["role"], "content": m["content"]} for m in prompt]


def _assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def to_trl(table: pa.Table) -> list[PreferenceRecord]:
    """TRL's conversational preference format: the prompt as messages, each answer as one
    assistant message."""
    return [
        {
            "prompt": _messages(row["prompt"]),
            "chosen": _assistant(row["chosen"]),
            "rejected": _assistant(row["rejected"]),
        }
        for row in table.select(["prompt", "chosen", "rejected"]).to_pylist()
    ]


def to_trl_kto(table: pa.Table) -> list[KtoRecord]:
    """TRL's conversational unpaired preference format."""
    return [
        {
            "prompt": _messages(row["prompt"]),
            "completion": _assistant(row["completion"]),
            "label": bool(row["label"]),
        }
        for row in table.select(["prompt", "completion", "label"]).to_pylist()
    ]


def unpair(table: pa.Table) -> list[KtoRecord]:
    """Pairs as unpaired rows: chosen is desirable, rejected undesirable (as TRL unpairs)."""
    out: list[KtoRecord] = []
    for rec in to_trl(table):
        out.append({"prompt": rec["prompt"], "completion": rec["chosen"], "label": True})
        out.append({"prompt": rec["prompt"], "completion": rec["rejected"], "label": False})
    return out


def file_sha256(path: str | Path) -> str:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError as exc:
        raise ConfigError(f"cannot read the golden eval set {path}: {exc}") from exc


def load_golden(path: str | Path, *, sha256: str | None = None) -> list[PreferenceRecord]:
    """A golden set as JSONL in TRL's conversational preference format; with ``sha256``, the
    exact file the run was launched with (an edited file fails the job, it is not read)."""
    if sha256 is not None and file_sha256(path) != sha256:
        raise ConfigError(f"the golden eval set {path} changed since the run was launched")
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


def read_golden_table(
    table_uri: str, version: int, storage: Mapping[str, str] | None = None
) -> list[PreferenceRecord]:
    """A golden table (prompt as chat messages, chosen, rejected) at one version."""
    records = to_trl(_read(table_uri, version, _GOLDEN_COLUMNS, storage))
    if not records:
        raise ConfigError(f"the golden table {table_uri} is empty at version {version}")
    return records
