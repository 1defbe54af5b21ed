"""The model registry: the ``training_runs`` Delta table, an append-only event log.

Every transition is one appended row: a run going pending → launched → running → succeeded /
promoted / rejected / failed (→ rolled_back), a champion promotion or rollback, a pin or unpin of
the training data, a restore of the pairs table. The current state is a fold over the rows.

Why append-only and not Delta MERGE: three kinds of processes write here (the watcher, the job,
the CLI), often at the same moment. delta-rs treats blind appends as non-conflicting, so they
never fail each other's commits, while a MERGE rewrites files and conflicts with any concurrent
writer touching them. The log is also the audit trail the guarantees ask for (who promoted what,
who restored which version and why), and time travel on this table shows the registry as it was.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Literal, get_args

import pyarrow as pa
from deltalake import DeltaTable, write_deltalake
from deltalake.exceptions import DeltaError, TableNotFoundError
from flywheel_common.errors import LakeError

from flywheel_trainer.errors import RegistryStateError, RunNotFoundError

__all__ = [
    "ACTIVE",
    "TERMINAL",
    "TRAINING_RUNS",
    "EventKind",
    "OffsetRange",
    "Registry",
    "RegistryEvent",
    "RestoreRecord",
    "RunStatus",
    "TrainingRun",
    "code_version",
    "default_actor",
]

EventKind = Literal["run", "champion", "pin", "restore"]
RunStatus = Literal[
    "pending",  # recorded by the watcher before anything starts; the version is now taken
    "launched",  # the launcher accepted it (a process, a Kubernetes Job)
    "running",  # the job itself has started and holds its lock
    "succeeded",  # trained and evaluated; the gate passed but auto-promotion is off
    "promoted",  # became the champion
    "rejected",  # trained and evaluated; the gate said no (reason says why)
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


def _now() -> datetime:
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
    champion_action: Literal["promote", "rollback"] | None = None
    pinned_version: int | None = None
    restore_from_version: int | None = None
    restore_to_version: int | None = None
    restore_commit_version: int | None = None
    removed_offsets: str | None = None
    event_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    recorded_at: datetime = field(default_factory=_now)

    def row(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


_EVENT_FIELDS = frozenset(f.name for f in fields(RegistryEvent))


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
    reason: str | None = None

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    def summary(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "status": self.status,
            "dataset": f"{self.table_uri}@{self.dataset_version}",
            "rows": self.rows,
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


def _fold(run_id: str, events: Sequence[RegistryEvent]) -> TrainingRun:
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


def _order(ev: RegistryEvent) -> tuple[datetime, int]:
    return (ev.recorded_at, _STATUS_RANK.get(ev.status or "", -1))


class Registry:
    """Reads and appends ``training_runs``. Cheap to construct; every read loads a fresh
    snapshot (a long-lived DeltaTable gets slower per commit, see docs/findings.md)."""

    def __init__(self, uri: str, *, storage_options: Mapping[str, str] | None = None) -> None:
        self.uri = uri
        self._storage = dict(storage_options or {})

    # -- storage ---------------------------------------------------------------------------
    def ensure(self) -> None:
        """Create the table if it does not exist (idempotent, safe against a racing creator)."""
        try:
            DeltaTable(self.uri, storage_options=self._storage)
            return
        except TableNotFoundError:
            pass
        try:
            write_deltalake(
                self.uri,
                TRAINING_RUNS.empty_table(),
                mode="ignore",
                name="training_runs",
                description="Flywheel model registry: append-only event log (see registry.py)",
                storage_options=self._storage,
            )
        except DeltaError as exc:
            # Another process created it between our check and our write: that is fine.
            try:
                DeltaTable(self.uri, storage_options=self._storage)
            except TableNotFoundError:
                raise LakeError(f"cannot create registry {self.uri}: {exc}") from exc

    def append(self, *events: RegistryEvent) -> None:
        if not events:
            return
        self.ensure()
        batch = pa.Table.from_pylist([e.row() for e in events], schema=TRAINING_RUNS)
        try:
            write_deltalake(self.uri, batch, mode="append", storage_options=self._storage)
        except DeltaError as exc:
            raise LakeError(f"cannot append to registry {self.uri}: {exc}") from exc

    def events(self) -> list[RegistryEvent]:
        try:
            dt = DeltaTable(self.uri, storage_options=self._storage)
        except TableNotFoundError:
            return []
        table = dt.to_pyarrow_table()
        out = []
        for row in table.to_pylist():
            known = {k: v for k, v in row.items() if k in _EVENT_FIELDS}
            out.append(RegistryEvent(**known))
        out.sort(key=_order)
        return out

    # -- derived state ---------------------------------------------------------------------
    def runs(self, events: Iterable[RegistryEvent] | None = None) -> dict[str, TrainingRun]:
        """Every run's current state, oldest first."""
        by_run: dict[str, list[RegistryEvent]] = {}
        for ev in self.events() if events is None else events:
            if ev.kind == "run" and ev.run_id:
                by_run.setdefault(ev.run_id, []).append(ev)
        return {rid: _fold(rid, evs) for rid, evs in by_run.items()}

    def run(self, run_id: str) -> TrainingRun:
        try:
            return self.runs()[run_id]
        except KeyError:
            raise RunNotFoundError(run_id) from None

    def champion_stack(self, events: Iterable[RegistryEvent] | None = None) -> list[str]:
        """Champions in order; the last is current. Promote pushes, rollback pops."""
        stack: list[str] = []
        for ev in self.events() if events is None else events:
            if ev.kind != "champion" or not ev.run_id:
                continue
            if ev.champion_action == "promote":
                stack.append(ev.run_id)
            elif ev.champion_action == "rollback" and stack and stack[-1] == ev.run_id:
                stack.pop()
        return stack

    def champion(self) -> TrainingRun | None:
        events = self.events()
        stack = self.champion_stack(events)
        return self.runs(events)[stack[-1]] if stack else None

    def pinned_version(self, events: Iterable[RegistryEvent] | None = None) -> int | None:
        pinned: int | None = None
        for ev in self.events() if events is None else events:
            if ev.kind == "pin":
                pinned = ev.pinned_version
        return pinned

    def restores(self) -> list[RestoreRecord]:
        out = []
        for ev in self.events():
            if ev.kind != "restore" or ev.restore_to_version is None:
                continue
            removed = tuple(OffsetRange(**r) for r in json.loads(ev.removed_offsets or "[]"))
            out.append(
                RestoreRecord(
                    table_uri=ev.table_uri or "",
                    from_version=int(ev.restore_from_version or 0),
                    to_version=ev.restore_to_version,
                    commit_version=int(ev.restore_commit_version or 0),
                    removed=removed,
                    actor=ev.actor,
                    reason=ev.reason,
                    recorded_at=ev.recorded_at,
                )
            )
        return out

    # -- transitions -----------------------------------------------------------------------
    def transition(
        self, run_id: str, status: RunStatus, *, actor: str, reason: str | None = None, **extra: Any
    ) -> None:
        self.append(
            RegistryEvent(
                kind="run", run_id=run_id, status=status, actor=actor, reason=reason, **extra
            )
        )

    def promote(self, run_id: str, *, actor: str, reason: str | None = None) -> None:
        """Make ``run_id`` the champion (one commit: the run's status and the champion event)."""
        run = self.run(run_id)
        if run.artifact_uri is None or run.status in ACTIVE or run.status == "failed":
            raise RegistryStateError(f"run {run_id} is {run.status} and has no usable adapter")
        current = self.champion()
        if current is not None and current.run_id == run_id:
            raise RegistryStateError(f"run {run_id} is already the champion")
        at = _now()
        self.append(
            RegistryEvent(
                kind="run",
                run_id=run_id,
                status="promoted",
                actor=actor,
                reason=reason,
                recorded_at=at,
            ),
            RegistryEvent(
                kind="champion",
                run_id=run_id,
                champion_action="promote",
                actor=actor,
                reason=reason,
                recorded_at=at,
            ),
        )

    def rollback(self, *, actor: str, reason: str | None = None) -> TrainingRun | None:
        """Retire the current champion; the previous one (or none: the base model) is back."""
        events = self.events()
        stack = self.champion_stack(events)
        if not stack:
            raise RegistryStateError("there is no champion to roll back")
        retired = stack[-1]
        at = _now()
        self.append(
            RegistryEvent(
                kind="run",
                run_id=retired,
                status="rolled_back",
                actor=actor,
                reason=reason,
                recorded_at=at,
            ),
            RegistryEvent(
                kind="champion",
                run_id=retired,
                champion_action="rollback",
                actor=actor,
                reason=reason,
                recorded_at=at,
            ),
        )
        return self.runs()[stack[-2]] if len(stack) > 1 else None

    def pin(self, version: int | None, *, actor: str, reason: str | None = None) -> None:
        self.append(RegistryEvent(kind="pin", pinned_version=version, actor=actor, reason=reason))
