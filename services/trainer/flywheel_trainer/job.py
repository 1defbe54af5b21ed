"""One LoRA preference job: read the pinned snapshots, split them by prompt group, score the
untrained adapter and the champion, train with TRL (DPO or KTO), score again, save the adapter
with its lineage and model card, and let the gate decide. ``python -m flywheel_trainer.job
--spec spec.json`` is only argument parsing around ``run_job``.

The job records its own transitions (running, then succeeded / promoted / rejected /
inconclusive / failed) in the registry, so a job keeps its history even when the watcher that
launched it is gone. The held-out split is recorded with "running", before any training.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from flywheel_common.errors import FlywheelError
from flywheel_common.lifecycle import exit_process
from flywheel_common.logs import configure_logging

from flywheel_trainer.card import model_card
from flywheel_trainer.errors import JobError
from flywheel_trainer.evaluate import (
    EvalReport,
    Scorer,
)
from flywheel_trainer.gate import NO_GOLDEN, Evidence, GateVerdict, decide
from flywheel_trainer.inputs import JobInputs, prepare_inputs
from flywheel_trainer.launchers.local import RunLock
from flywheel_trainer.registry import (
    Registry,
    RegistryEvent,
    RunStatus,
    TrainingRun,
    default_actor,
)
from flywheel_trainer.settings import JobConfig, TrainerSettings
from flywheel_trainer.spec import JobSpec
from flywheel_trainer.training import (
    device_and_dtype,
    kto_weights,
    load_base,
    make_trainer,
    progress_callback,
    token_lengths,
    train_stats,
    with_lora,
)

__all__ = ["ADAPTER_DIR", "JobOutcome", "main", "run_job"]

log = logging.getLogger("flywheel_trainer.job")

ADAPTER_DIR = "adapter"
_CHAMPION = "champion"
_STATUS: dict[str, RunStatus] = {"reject": "rejected", "inconclusive": "inconclusive"}


@dataclass(frozen=True, slots=True)
class JobOutcome:
    run_id: str
    status: RunStatus
    verdict: GateVerdict
    metrics: dict[str, Any]
    adapter_dir: Path


def _champion_report(
    scorer: Scorer, champion: TrainingRun | None, cfg: JobConfig, base: EvalReport
) -> tuple[EvalReport | None, str | None]:
    """The champion scored on this job's rows; the base model when there is no champion."""
    if champion is None:
        return base, None
    champ_base = champion.config.get("base_model")
    if champ_base != cfg.base_model or champion.artifact_uri is None:
        return None, champion.run_id
    path = Path(champion.artifact_uri) / ADAPTER_DIR
    return scorer.report_adapter(str(path), _CHAMPION), champion.run_id


def _verdict(
    spec: JobSpec,
    after: EvalReport,
    champion: EvalReport | None,
    champion_id: str | None,
    meta: dict[str, list[str]],
) -> GateVerdict:
    if champion is None:
        return GateVerdict(
            "reject", f"champion {champion_id} was trained on another base model: promote by hand"
        )
    golden = None
    if after.golden is not None and champion.golden is not None:
        golden = (after.golden, champion.golden)
    kto = (after.kto, champion.kto) if after.kto is not None and champion.kto is not None else None
    evidence = Evidence(
        candidate=after.held_out,
        champion=champion.held_out,
        groups=meta["groups"],
        features=meta["features"],
        sources=meta["sources"],
        golden=golden,
        kto=kto,
    )
    return decide(evidence, spec.gate)


def _record_result(
    spec: JobSpec, registry: Registry, actor: str, verdict: GateVerdict, run_metrics: dict[str, Any]
) -> RunStatus:
    """The result and, when the gate passes, the promotion go in one commit: nobody ever sees
    a finished run whose promotion is still missing."""
    promote = verdict.promote and spec.gate.auto_promote
    status = (
        ("promoted" if promote else "succeeded") if verdict.promote else _STATUS[verdict.decision]
    )
    interval, worst = verdict.interval, verdict.worst
    at = datetime.now(UTC)
    events = [
        RegistryEvent(
            kind="run",
            run_id=spec.run_id,
            status=status,
            actor=actor,
            reason=verdict.reason,
            metrics_json=json.dumps(run_metrics),
            artifact_uri=spec.artifact_dir,
            worst_slice=worst["worst_slice"],
            slice_gap=worst["gap"],
            gain_ci_low=interval.low if interval else None,
            gain_ci_high=interval.high if interval else None,
            recorded_at=at,
        )
    ]
    if promote:
        events.append(
            RegistryEvent(
                kind="champion",
                run_id=spec.run_id,
                champion_action="promote",
                actor=actor,
                reason=f"gate: {verdict.reason}",
                recorded_at=at,
            )
        )
    registry.append(*events)
    return status


def _record_running(spec: JobSpec, registry: Registry, actor: str, inputs: JobInputs) -> None:
    """Recorded before training, with the split: a later run must see what this one held out."""
    data, lineage = inputs.data, inputs.lineage
    registry.transition(
        spec.run_id,
        "running",
        actor=actor,
        table_uri=spec.table_uri,
        dataset_version=spec.dataset_version,
        config_json=spec.job.model_dump_json(),
        config_hash=spec.config_hash(),
        code_version=spec.code_version,
        rows=data.rows,
        train_rows=data.pairs_train.num_rows,
        eval_rows=data.pairs_eval.num_rows,
        pairs_by_source=json.dumps(lineage["pairs_by_source"]),
        metrics_json=json.dumps({"split": lineage["split"]}),
        method=spec.job.method,
        kto_table_uri=spec.kto_table_uri,
        kto_version=spec.kto_version,
        kto_rows=data.kto_rows,
        golden=spec.golden_label,
    )
    if inputs.golden is None:
        log.warning(NO_GOLDEN, extra={"run_id": spec.run_id})
    log.info("dataset pinned", extra={"run_id": spec.run_id, **lineage})


def _scorer(model: Any, tokenizer: Any, inputs: JobInputs, cfg: JobConfig) -> Scorer:
    held_kto = inputs.held_kto
    return Scorer(
        model,
        tokenizer,
        held_out=inputs.held.records,
        golden=inputs.golden,
        kto=held_kto.records if held_kto else None,
        kto_labels=(held_kto.labels or []) if held_kto else [],
        max_length=cfg.max_length,
        batch_size=cfg.eval_batch_size,
        beta=cfg.beta,
    )


def _fit(
    spec: JobSpec,
    model: Any,
    tokenizer: Any,
    records: list[dict[str, Any]],
    callbacks: Sequence[Any],
) -> dict[str, Any]:
    """Train with TRL; returns the run's "train" figures."""
    cfg, artifact_dir = spec.job, Path(spec.artifact_dir)
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    weights = kto_weights(records, cfg) if cfg.method == "kto" else None
    trainer = make_trainer(
        model=model,
        tokenizer=tokenizer,
        cfg=cfg,
        records=records,
        weights=weights,
        output_dir=str(artifact_dir / "checkpoints"),
        device=device,
        dtype=dtype,
        callbacks=[progress_callback(spec.run_id, artifact_dir / "progress.json"), *callbacks],
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - started
    lengths = token_lengths(tokenizer, records, cfg)
    return train_stats(result, seconds, lengths, cfg, device, dtype, weights)


def _save(spec: JobSpec, model: Any, tokenizer: Any, run_metrics: dict[str, Any]) -> Path:
    artifact_dir = Path(spec.artifact_dir)
    adapter_dir = artifact_dir / ADAPTER_DIR
    model.save_pretrained(str(adapter_dir))  # safetensors by default
    tokenizer.save_pretrained(str(adapter_dir))
    (artifact_dir / "metrics.json").write_text(json.dumps(run_metrics, indent=2), encoding="utf-8")
    (adapter_dir / "README.md").write_text(model_card(spec, run_metrics), encoding="utf-8")
    return adapter_dir


def _train(
    spec: JobSpec,
    settings: TrainerSettings,
    registry: Registry,
    actor: str,
    callbacks: Sequence[Any],
) -> JobOutcome:
    cfg = spec.job
    inputs = prepare_inputs(spec, registry, settings.lake.storage_options_plain())
    _record_running(spec, registry, actor, inputs)
    device, dtype = device_and_dtype(cfg)
    base, tokenizer = load_base(cfg, dtype)
    model = with_lora(base, cfg).to(device)
    scorer = _scorer(model, tokenizer, inputs, cfg)
    held = inputs.held
    meta = {
        "groups": [held.groups[i] for i in scorer.kept],
        "features": [held.features[i] for i in scorer.kept],
        "sources": [held.sources[i] for i in scorer.kept],
    }
    before = scorer.report()
    champion, champion_id = _champion_report(scorer, registry.champion(), cfg, before)
    log.info(
        "evaluated before training",
        extra={"run_id": spec.run_id, "before": before.as_dict(), "champion": champion_id},
    )
    train = _fit(spec, model, tokenizer, inputs.records, callbacks)
    after = scorer.report()
    verdict = _verdict(spec, after, champion, champion_id, meta)
    run_metrics: dict[str, Any] = {
        "before": before.as_dict(),
        "after": after.as_dict(),
        "champion": champion.as_dict() if champion else None,
        "champion_run_id": champion_id,
        "gate": verdict.as_dict(),
        "split": inputs.lineage["split"],
        "train": train,
        "lineage": inputs.lineage,
    }
    adapter_dir = _save(spec, model, tokenizer, run_metrics)
    log.info(
        "evaluated after training",
        extra={"run_id": spec.run_id, "after": after.as_dict(), "gate": verdict.reason},
    )
    status = _record_result(spec, registry, actor, verdict, run_metrics)
    return JobOutcome(spec.run_id, status, verdict, run_metrics, adapter_dir)


def run_job(
    spec: JobSpec,
    settings: TrainerSettings,
    *,
    lock_fd: int | None = None,
    callbacks: Sequence[Any] = (),
) -> JobOutcome | None:
    """Run ``spec`` once. Returns None (and does nothing) when the run already finished or
    another process holds its lock; raises ``JobError`` after recording the failure."""
    registry = Registry(spec.registry_uri, storage_options=settings.lake.storage_options_plain())
    actor = default_actor("job")
    lock = (
        RunLock.inherit(lock_fd)
        if lock_fd is not None
        else RunLock.try_acquire(Path(spec.artifact_dir))
    )
    if lock is None:
        log.warning("job already running elsewhere; not starting", extra={"run_id": spec.run_id})
        return None
    with lock:
        runs = registry.runs()
        current = runs.get(spec.run_id)
        if current is not None and not current.active:
            log.warning(
                "run already finished; not training again",
                extra={"run_id": spec.run_id, "status": current.status},
            )
            return None
        try:
            return _train(spec, settings, registry, actor, callbacks)
        except Exception as exc:  # any failure must reach the registry before we exit
            reason = f"{type(exc).__name__}: {exc}"
            log.exception("job failed", extra={"run_id": spec.run_id})
            registry.transition(spec.run_id, "failed", actor=actor, reason=reason[:2000])
            if isinstance(exc, FlywheelError):
                raise
            raise JobError(spec.run_id, reason) from exc


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flywheel_trainer.job", description=__doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--spec", type=Path, help="the run's spec.json")
    source.add_argument("--spec-json", help="the spec inline (Kubernetes Jobs carry it this way)")
    parser.add_argument(
        "--lock-fd", type=int, default=None, help="an inherited, already locked run lock"
    )
    args = parser.parse_args(argv)
    settings = TrainerSettings()
    configure_logging(settings.logging.level, settings.logging.format)
    spec = JobSpec.read(args.spec) if args.spec else JobSpec.model_validate_json(args.spec_json)
    log.info("job starting", extra={"run_id": spec.run_id, "pid": os.getpid()})
    try:
        outcome = run_job(spec, settings, lock_fd=args.lock_fd)
    except FlywheelError as exc:
        log.error("job failed: %s", exc, extra={"run_id": spec.run_id})
        return 1
    if outcome is not None:
        log.info("job finished", extra={"run_id": spec.run_id, "status": outcome.status})
    return 0


if __name__ == "__main__":
    # Explicit exit: the launcher reads this code, and Arrow/torch teardown must not change it.
    exit_process(main())
