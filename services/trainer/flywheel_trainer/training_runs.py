"""The ``training_runs`` table's shape: its Arrow schema, one row (``RegistryEvent``), one
run's current state (``TrainingRun``, the fold of its rows), and the records of restores.
``registry.Registry`` reads and appends it (see there for why it is an append-only log)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Literal, get_args

import pyarrow as pa

__all__ = [
    "ACTIVE",
    "EVENT_FIELDS",
    "TERMINAL",
    "TRAINING_RUNS",
    "EventKind",
    "OffsetRange",
    "RegistryEvent",
    "RestoreRecord",
    "RunStatus",
    "TrainingRun",
    "code_version",
    "default_actor",
    "event_order",
    "fold_run",
    "utc_now",
]

EventKind = Literal["run", "champion", "pin", "restore"]
RunStatus = Literal[
    "pending",  # recorded by the watcher before anything starts; the version is now taken
    "launched",  # the launcher accepted it (a process, a Kubernetes Job)
    "running",  # the job itself has started and holds its lock
    "succeeded",  # trained and evaluated; the gate passed but auto-promotion is off
    "promoted",  # became the champion
    "rejected",  # trained and evaluated; the gate said no (reason says why)
    "inconclusive",  # trained and evaluated; too few held-out pairs to decide: champion stays
    "failed",  # did not finish (reason says why)
    "rolled_back",  # was the champion until a rollback
]
ACTIVE: frozenset[str] = frozenset({"pending", "launched", "running"})
TERMINAL: frozenset[str] = frozenset(set(get_args(RunStatus)) - ACTIVE)
# Breaks ties between events of one run recorded in the same microsecond.
_STATUS_RANK = {s: i for i, s in enumerate(get_args(RunStatus))}

_TS = pa.timestamp("us", tz="UTC")
TRAINING_RUNS = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),  # EventKind
        pa.field("recorded_at", _TS, nullable=False),
        pa.field("actor", pa.string(), nullable=False),  # who: trainer@host:pid, cli:user, job
        pa.field("reason", pa.string()),  # why: gate verdict, failure, operator's words
        # kind=run (and champion: the run concerned)
        pa.field("run_id", pa.string()),
        pa.field("status", pa.string()),  # RunStatus
        pa.field("table_uri", pa.string()),
        pa.field("dataset_version", pa.int64()),
        pa.field("rows", pa.int64()),
        pa.field("train_rows", pa.int64()),
        pa.field("eval_rows", pa.int64()),
        pa.field("pairs_by_source", pa.string()),  # JSON {source: count}
        pa.field("config_json", pa.string()),
        pa.field("config_hash", pa.string()),
        pa.field("metrics_json", pa.string()),
        pa.field("artifact_uri", pa.string()),
        pa.field("launcher", pa.string()),
        pa.field("launcher_ref", pa.string()),  # pid or Kubernetes Job name
        pa.field("code_version", pa.string()),
        # Added with the prompt-group gate (older rows read as null): what else the run read,
        # and the gate's headline figures (the full verdict is in metrics_json["gate"]).
        pa.field("method", pa.string()),  # dpo | kto
        pa.field("kto_table_uri", pa.string()),
        pa.field("kto_version", pa.int64()),
        pa.field("kto_rows", pa.int64()),
        pa.field("golden", pa.string()),  # "<uri>@<version>", "<path> (sha256 …)" or "none"
        pa.field("worst_slice", pa.string()),
        pa.field("slice_gap", pa.float64()),
        pa.field("gain_ci_low", pa.float64()),
        pa.field("gain_ci_high", pa.float64()),
        # kind=champion
        pa.field("champion_action", pa.string()),  # promote | rollback
        # kind=pin: the highest version jobs may train on; null = unpinned
        pa.field("pinned_version", pa.int64()),
        # kind=restore
        pa.field("restore_from_version", pa.int64()),
        pa.field("restore_to_version", pa.int64()),
        pa.field("restore_commit_version", pa.int64()),
        pa.field("removed_offsets", pa.string()),  # JSON list of OffsetRange
    ]
)


@cache
def code_version() -> str:
    """The trainer package version, plus the git commit when running from a checkout."""
    try:
        base = version("flywheel-trainer")
    except PackageNotFoundError:
        base = "0+unknown"
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],  # noqa: S607 - git from PATH is fine
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return base
    return f"{base}+g{sha}" if sha else base


def default_actor(role: str) -> str:
    return f"{role}@{socket.gethostname()}:{os.getpid()}"


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class RegistryEvent:
    """One row of ``training_runs``. Unset fields are null and do not change the fold."""

    kind: EventKind
    actor: str
    reason: str | None = None
    run_id: str | None = None
    status: RunStatus | None = None
    table_uri: str | None = None
    dataset_version: int | None = None
    rows: int | None = None
    train_rows: int | None = None
    eval_rows: int | None = None
    pairs_by_source: str | None = None
    config_json: str | None = None
    config_hash: str | None = None
    metrics_json: str | None = None
    artifact_uri: str | None = None
    launcher: str | None = None
    launcher_ref: str | None = None
    code_version: str | None = None
    method: str | None = None
    kto_table_uri: str | None = None
    kto_version: int | None = None
    kto_rows: int | None = None
    golden: str | None = None
    worst_slice: str | None = None
    slice_gap: float | None = None
    gain_ci_low: float | None = None
    gain_ci_high: float | None = None
    champion_action: Literal["promote", "rollback"] | None = None
    pinned_version: int | None = None
    restore_from_version: int | None = None
    restore_to_version: int | None = None
    restore_commit_version: int | None = None
    removed_offsets: str | None = None
    event_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    recorded_at: datetime = field(default_factory=utc_now)

    def row(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


EVENT_FIELDS = frozenset(f.name for f in fields(RegistryEvent))


@dataclass(frozen=True, slots=True)
class TrainingRun:
    """The current state of one run: the fold of its events."""

    run_id: str
    status: RunStatus
    created_at: datetime
    updated_at: datetime
    table_uri: str | None = None
    dataset_version: int | None = None
    rows: int | None = None
    train_rows: int | None = None
    eval_rows: int | None = None
    pairs_by_source: Mapping[str, int] = field(default_factory=dict)
    config: Mapping[str, Any] = field(default_factory=dict)
    config_hash: str | None = None
    metrics: Mapping[str, Any] = field(default_factory=dict)
    artifact_uri: str | None = None
    launcher: str | None = None
    launcher_ref: str | None = None
    code_version: str | None = None
    method: str | None = None
    kto_table_uri: str | None = None
    kto_version: int | None = None
    kto_rows: int | None = None
    golden: str | None = None
    worst_slice: str | None = None
    slice_gap: float | None = None
    gain_ci_low: float | None = None
    gain_ci_high: float | None = None
    reason: str | None = None

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    @property
    def split(self) -> Mapping[str, Any] | None:
        """The held-out split this run used (split.SplitPlan.record), once it has started."""
        value = self.metrics.get("split")
        return value if isinstance(value, Mapping) else None

    def gate_summary(self) -> dict[str, Any]:
        """The gate's verdict in brief: decision, interval, worst slice and gap, golden set."""
        gate = self.metrics.get("gate") or {}
        return {
            "decision": gate.get("decision"),
            "interval": gate.get("interval"),
            "worst": gate.get("worst"),
            "champion_worst": gate.get("champion_worst"),
            "slices": gate.get("slices"),
            "golden": gate.get("golden") or {"configured": self.golden not in (None, "none")},
            "kto": gate.get("kto"),
        }

    def summary(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "status": self.status,
            "method": self.method,
            "dataset": f"{self.table_uri}@{self.dataset_version}",
            "rows": self.rows,
            "kto": f"{self.kto_table_uri}@{self.kto_version}" if self.kto_table_uri else None,
            "kto_rows": self.kto_rows,
            "golden": self.golden,
            "gain_interval": [self.gain_ci_low, self.gain_ci_high]
            if self.gain_ci_low is not None
            else None,
            "worst_slice": self.worst_slice,
            "slice_gap": self.slice_gap,
            "config_hash": self.config_hash,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "reason": self.reason,
        }


@dataclass(frozen=True, slots=True)
class OffsetRange:
    """Kafka offsets [first, last] of one topic-partition whose rows a restore removed."""

    topic: str
    partition: int
    first: int
    last: int
    count: int


@dataclass(frozen=True, slots=True)
class RestoreRecord:
    table_uri: str
    from_version: int
    to_version: int
    commit_version: int
    removed: tuple[OffsetRange, ...]
    actor: str
    reason: str | None
    recorded_at: datetime


def fold_run(run_id: str, events: Sequence[RegistryEvent]) -> TrainingRun:
    first = events[0]
    state: dict[str, Any] = {
        "run_id": run_id,
        "status": first.status or "pending",
        "created_at": first.recorded_at,
        "updated_at": first.recorded_at,
    }
    for ev in events:
        for name in (
            "status",
            "table_uri",
            "dataset_version",
            "rows",
            "train_rows",
            "eval_rows",
            "config_hash",
            "artifact_uri",
            "launcher",
            "launcher_ref",
            "code_version",
            "method",
            "kto_table_uri",
            "kto_version",
            "kto_rows",
            "golden",
            "worst_slice",
            "slice_gap",
            "gain_ci_low",
            "gain_ci_high",
        ):
            value = getattr(ev, name)
            if value is not None:
                state[name] = value
        if ev.pairs_by_source is not None:
            state["pairs_by_source"] = json.loads(ev.pairs_by_source)
        if ev.config_json is not None:
            state["config"] = json.loads(ev.config_json)
        if ev.metrics_json is not None:
            state["metrics"] = json.loads(ev.metrics_json)
        if ev.status is not None:
            # A reason belongs to the transition that gave it; a later one without reason clears it.
            state["reason"] = ev.reason
        state["updated_at"] = ev.recorded_at
    return TrainingRun(**state)


def event_order(ev: RegistryEvent) -> tuple[datetime, int]:
    return (ev.recorded_at, _STATUS_RANK.get(ev.status or "", -1))
