"""The watcher: decides when a job runs, records it, launches it, and notices when it ends.

It wakes on GoldCommitted events and on a timer that polls the pairs table's version, so a lost
or late event only delays a job. Every decision reads the table and the registry afresh: the
registry is the watcher's whole memory, so a restarted trainer resumes where it was, adopts
jobs that are still running, and never launches a second job for a version that has one.

Order of a launch: the run is appended as ``pending`` (with its pinned table version) *before*
anything starts, then the launcher starts it, then ``launched`` is appended. A crash between the
first two leaves a pending run whose job never started: the next trainer sees its lock free and
records it as failed; that version is not trained (the guarantee is "never twice", not "retry").
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flywheel_common.codec import AvroCodec
from flywheel_common.errors import ConfigError, DecodeError, FlywheelError
from flywheel_common.kafka import make_consumer

from flywheel_trainer.dataset import file_sha256, head_version, snapshot_rows
from flywheel_trainer.errors import LaunchError
from flywheel_trainer.gate import NO_GOLDEN
from flywheel_trainer.launchers import JobHandle, Launcher
from flywheel_trainer.policy import LaunchDecision, decide_launch
from flywheel_trainer.registry import (
    Registry,
    RegistryEvent,
    code_version,
    default_actor,
)
from flywheel_trainer.settings import TrainerSettings
from flywheel_trainer.spec import JobSpec

__all__ = ["GOLD_RECORD", "Watcher"]

log = logging.getLogger(__name__)

GOLD_RECORD = "GoldCommitted"
_CONSUMER_POLL_S = 0.5


class Watcher:
    """One per pairs table (the registry is not fenced against two watchers launching at once)."""

    def __init__(
        self,
        settings: TrainerSettings,
        launcher: Launcher,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.settings = settings
        self.launcher = launcher
        self.storage = settings.lake.storage_options_plain()
        self.registry = Registry(settings.registry_uri(), storage_options=self.storage)
        self.table_uri = settings.pairs_uri()
        self.kto_uri = settings.kto_uri()
        self.actor = default_actor("trainer")
        self._clock = clock
        self._handles: dict[str, JobHandle] = {}
        self._last_reason: str | None = None
        self.events_seen = 0
        self.events_undecodable = 0

    # -- one step -------------------------------------------------------------------------
    def tick(self) -> LaunchDecision:
        """Reconcile running jobs, then launch one if the tables have grown enough."""
        self.reconcile()
        events = self.registry.events()
        runs = list(self.registry.runs(events).values())
        head = head_version(self.table_uri, self.storage)
        pinned = self.registry.pinned_version(events)
        target = head if pinned is None or head is None else min(head, pinned)
        rows = snapshot_rows(self.table_uri, target, self.storage) if target is not None else 0
        kto_version = head_version(self.kto_uri, self.storage)
        kto_rows = 0
        if kto_version is not None:
            kto_rows = snapshot_rows(self.kto_uri, kto_version, self.storage)
        golden = self.golden_pin()
        if isinstance(golden, str):
            decision = LaunchDecision(False, golden)
        else:
            decision = decide_launch(
                table_uri=self.table_uri,
                target_version=target,
                target_rows=rows,
                runs=runs,
                now=self._clock(),
                threshold=self.settings.threshold,
                min_interval_s=self.settings.min_interval_s,
                max_concurrent=self.settings.max_concurrent_jobs,
                split_seed=self.settings.job.split_seed,
                method=self.settings.job.method,
                kto_version=kto_version,
                kto_rows=kto_rows,
            )
        if decision.reason != self._last_reason:  # log changes, not every poll
            log.info(
                "launch decision",
                extra={
                    "launch": decision.launch,
                    "reason": decision.reason,
                    "head_version": head,
                    "pinned_version": pinned,
                    "target_version": target,
                    "rows": rows,
                    "kto_version": kto_version,
                    "kto_rows": kto_rows,
                },
            )
            self._last_reason = decision.reason
        if decision.launch and decision.version is not None and not isinstance(golden, str):
            self.launch(decision.version, decision.rows, kto=(kto_version, kto_rows), golden=golden)
        return decision

    def golden_pin(self) -> dict[str, Any] | str:
        """The golden set pinned for a launch (spec fields), or why nothing may launch: a
        configured golden set that cannot be read would silently drop the guard."""
        uri, path = self.settings.golden_uri(), self.settings.golden_eval_path
        if uri is not None:
            version = head_version(uri, self.storage)
            if version is None:
                return f"the golden table {uri} does not exist: not launching without its guard"
            return {"golden_uri": uri, "golden_version": version}
        if path is not None:
            try:
                return {"golden_eval_path": path, "golden_sha256": file_sha256(path)}
            except ConfigError as exc:
                return f"{exc}: not launching without its guard"
        return {}

    def launch(
        self,
        version: int,
        rows: int,
        *,
        kto: tuple[int | None, int] = (None, 0),
        golden: dict[str, Any] | None = None,
    ) -> str:
        run_id = f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:8]}"
        artifact_dir = Path(self.settings.artifact_store).resolve() / run_id
        cfg = self.settings.job
        kto_version, kto_rows = kto
        spec = JobSpec(
            run_id=run_id,
            table_uri=self.table_uri,
            dataset_version=version,
            kto_table_uri=self.kto_uri if kto_version is not None else None,
            kto_version=kto_version,
            registry_uri=self.registry.uri,
            artifact_dir=str(artifact_dir),
            job=cfg,
            gate=self.settings.gate,
            code_version=code_version(),
            **(golden or {}),
        )
        if spec.golden_label == "none":
            log.warning(NO_GOLDEN, extra={"run_id": run_id})
        # Recorded before anything starts: from here on this version is taken.
        self.registry.append(self._pending(spec, rows, kto_rows))
        try:
            handle = self.launcher.launch(spec)
        except LaunchError as exc:
            self.registry.transition(run_id, "failed", actor=self.actor, reason=str(exc))
            log.error("launch failed", extra={"run_id": run_id, "error": str(exc)})
            return run_id
        self._handles[run_id] = handle
        self.registry.transition(run_id, "launched", actor=self.actor, launcher_ref=handle.ref)
        log.info(
            "job launched",
            extra={"run_id": run_id, "dataset_version": version, "rows": rows, "ref": handle.ref},
        )
        return run_id

    def _pending(self, spec: JobSpec, rows: int, kto_rows: int) -> RegistryEvent:
        cfg = spec.job
        return RegistryEvent(
            kind="run",
            run_id=spec.run_id,
            status="pending",
            actor=self.actor,
            reason=f"{rows} pairs at version {spec.dataset_version}",
            table_uri=self.table_uri,
            dataset_version=spec.dataset_version,
            rows=rows,
            config_json=cfg.model_dump_json(),
            config_hash=spec.config_hash(),
            artifact_uri=spec.artifact_dir,
            launcher=self.launcher.name,
            code_version=spec.code_version,
            method=cfg.method,
            kto_table_uri=spec.kto_table_uri,
            kto_version=spec.kto_version,
            kto_rows=kto_rows if spec.kto_version is not None else None,
            golden=spec.golden_label,
        )

    def reconcile(self) -> None:
        """Adopt jobs of an earlier trainer; record jobs that died without a result."""
        for run in self.registry.runs().values():
            if not run.active:
                self._handles.pop(run.run_id, None)
                continue
            handle = self._handles.get(run.run_id)
            if handle is None:
                handle = self.launcher.adopt(run)
                self._handles[run.run_id] = handle
                log.info(
                    "adopted run of an earlier trainer",
                    extra={"run_id": run.run_id, "status": run.status, "ref": handle.ref},
                )
            if self.launcher.state(handle) != "exited":
                continue
            # It exited: the job records its own terminal state before exiting, so read again.
            if self.registry.run(run.run_id).active:
                self.registry.transition(
                    run.run_id,
                    "failed",
                    actor=self.actor,
                    reason="job exited without recording a result (see its job.log)",
                )
                log.error("job died", extra={"run_id": run.run_id})
            self._handles.pop(run.run_id, None)

    def active_runs(self) -> list[str]:
        return [r.run_id for r in self.registry.runs().values() if r.active]

    # -- the loop -------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Until ``stop`` is set: wake on GoldCommitted for our table, or every poll interval."""
        self.registry.ensure()
        codec = AvroCodec()
        topic = self.settings.kafka.topics.gold
        consumer = make_consumer(self.settings.kafka, group_id=self.settings.group_id)
        consumer.subscribe([topic])
        log.info(
            "trainer watching",
            extra={"table": self.table_uri, "topic": topic, "threshold": self.settings.threshold},
        )
        if not (self.settings.golden_table or self.settings.golden_eval_path):
            log.warning(NO_GOLDEN)
        next_tick = 0.0  # tick at once: resume where the last process left off
        try:
            while not stop.is_set():
                msg = consumer.poll(_CONSUMER_POLL_S)
                if msg is not None and not msg.error():
                    if self._is_our_commit(
                        codec, msg.value(), msg.partition() or 0, msg.offset() or 0
                    ):
                        next_tick = 0.0
                    consumer.commit(message=msg, asynchronous=True)
                elif msg is not None:
                    log.warning("consumer error", extra={"error": str(msg.error())})
                if time.monotonic() >= next_tick:
                    try:
                        self.tick()
                    except FlywheelError as exc:  # a lake or launch hiccup: retry next poll
                        log.error("tick failed", extra={"error": str(exc)})
                    next_tick = time.monotonic() + self.settings.poll_interval_s
        finally:
            consumer.close()
            log.info("trainer stopped", extra={"active_runs": self.active_runs()})

    def _is_our_commit(
        self, codec: AvroCodec, value: bytes | None, partition: int, offset: int
    ) -> bool:
        self.events_seen += 1
        try:
            event = codec.decode(
                value or b"",
                topic=self.settings.kafka.topics.gold,
                partition=partition,
                offset=offset,
            )
        except DecodeError as exc:
            # Only a wake-up call: the table poll covers it. Counted and logged, not dead-lettered.
            self.events_undecodable += 1
            log.warning("undecodable gold event", extra={"error": str(exc)})
            return False
        rec = event.record
        ours = event.name == GOLD_RECORD and (
            rec.get("table") == self.settings.pairs_table or rec.get("table_uri") == self.table_uri
        )
        if ours:
            log.info(
                "gold commit",
                extra={"version": rec.get("version"), "rows_added": rec.get("rows_added")},
            )
        return ours
