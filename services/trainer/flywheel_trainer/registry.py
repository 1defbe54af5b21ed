"""The model registry: the ``training_runs`` Delta table, an append-only event log.

Every transition is one appended row: a run going pending → launched → running → succeeded /
promoted / rejected / inconclusive / failed (→ rolled_back), a champion promotion or rollback, a
pin or unpin of the training data, a restore of the pairs table. The current state is a fold
over the rows (training_runs.py holds the rows' shape and the fold).

Why append-only and not Delta MERGE: three kinds of processes write here (the watcher, the job,
the CLI), often at the same moment. delta-rs treats blind appends as non-conflicting, so they
never fail each other's commits, while a MERGE rewrites files and conflicts with any concurrent
writer touching them. The log is also the audit trail the guarantees ask for (who promoted what,
who restored which version and why), and time travel on this table shows the registry as it was.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import pyarrow as pa
from deltalake import DeltaTable, write_deltalake
from deltalake.exceptions import DeltaError, TableNotFoundError
from flywheel_common.errors import LakeError

from flywheel_trainer.errors import RegistryStateError, RunNotFoundError
from flywheel_trainer.training_runs import (
    ACTIVE,
    EVENT_FIELDS,
    TERMINAL,
    TRAINING_RUNS,
    EventKind,
    OffsetRange,
    RegistryEvent,
    RestoreRecord,
    RunStatus,
    TrainingRun,
    code_version,
    default_actor,
    event_order,
    fold_run,
    utc_now,
)

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
            # merge: a registry created before a column was added gains it on the next append.
            write_deltalake(
                self.uri,
                batch,
                mode="append",
                schema_mode="merge",
                storage_options=self._storage,
            )
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
            known = {k: v for k, v in row.items() if k in EVENT_FIELDS}
            out.append(RegistryEvent(**known))
        out.sort(key=event_order)
        return out

    # -- derived state ---------------------------------------------------------------------
    def runs(self, events: Iterable[RegistryEvent] | None = None) -> dict[str, TrainingRun]:
        """Every run's current state, oldest first."""
        by_run: dict[str, list[RegistryEvent]] = {}
        for ev in self.events() if events is None else events:
            if ev.kind == "run" and ev.run_id:
                by_run.setdefault(ev.run_id, []).append(ev)
        return {rid: fold_run(rid, evs) for rid, evs in by_run.items()}

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

    def split_records(
        self, table_uri: str, runs: Iterable[TrainingRun] | None = None
    ) -> list[Mapping[str, Any]]:
        """The held-out splits of every run on ``table_uri`` that got as far as recording one."""
        pool = self.runs().values() if runs is None else runs
        return [r.split for r in pool if r.table_uri == table_uri and r.split is not None]

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
        at = utc_now()
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
        at = utc_now()
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
