"""One LoRA DPO job: read the pinned snapshot, score the untrained adapter and the champion,
train with TRL's DPOTrainer, score again, save the adapter with its lineage, and let the gate
decide. ``python -m flywheel_trainer.job --spec spec.json`` is only argument parsing around
``run_job``.

The job records its own transitions (running, then succeeded / promoted / rejected / failed) in
the registry, so a job keeps its history even when the watcher that launched it is gone.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from flywheel_common.errors import ConfigError, FlywheelError
from flywheel_common.lifecycle import exit_process
from flywheel_common.logs import configure_logging

from flywheel_trainer.dataset import PreferenceRecord, load_golden, read_snapshot, to_trl
from flywheel_trainer.errors import JobError
from flywheel_trainer.evaluate import (
    EvalReport,
    GateVerdict,
    PreferenceMetrics,
    TokenizedPair,
    active_adapter,
    decide,
    preference_metrics,
    score_pairs,
    tokenize_pairs,
)
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

__all__ = ["ADAPTER_DIR", "JobOutcome", "main", "run_job"]

log = logging.getLogger("flywheel_trainer.job")

ADAPTER_DIR = "adapter"
_CHAMPION = "champion"


@dataclass(frozen=True, slots=True)
class JobOutcome:
    run_id: str
    status: str  # promoted | rejected | succeeded
    verdict: GateVerdict
    metrics: dict[str, Any]
    adapter_dir: Path


def _device_and_dtype(cfg: JobConfig) -> tuple[torch.device, torch.dtype]:
    if torch.cuda.is_available():
        bf16 = cfg.precision == "bf16" or (
            cfg.precision == "auto" and torch.cuda.is_bf16_supported()
        )
        return torch.device("cuda"), torch.bfloat16 if bf16 else torch.float32
    if cfg.precision == "bf16":
        raise ConfigError("precision=bf16 asked for, but no CUDA device is present")
    return torch.device("cpu"), torch.float32


def _load_base(cfg: JobConfig, dtype: torch.dtype) -> tuple[Any, Any]:
    """Base model and tokenizer from a hub id or a local folder. Downloads happen only where
    the network allows; ``local_files_only`` (or HF_HUB_OFFLINE in the environment, which
    huggingface_hub reads itself) keeps the job off the hub."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {
        "revision": cfg.base_revision,
        "local_files_only": cfg.local_files_only,
    }
    tokenizer = AutoTokenizer.from_pretrained(cfg.base_model, **kwargs)
    if tokenizer.chat_template is None:
        raise ConfigError(
            f"{cfg.base_model} has no chat template: conversational DPO pairs need one"
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(cfg.base_model, dtype=dtype, **kwargs)
    return model, tokenizer


def _with_lora(model: Any, cfg: JobConfig) -> Any:
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=cfg.lora.rank,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=list(cfg.lora.target_modules),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


class _Scorer:
    """Scores models on the held-out and golden pairs against one fixed reference."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        held_out: Sequence[PreferenceRecord],
        golden: Sequence[PreferenceRecord] | None,
        cfg: JobConfig,
    ) -> None:
        self.model = model
        self.cfg = cfg
        self.pad_id = int(tokenizer.pad_token_id)
        self.sets: dict[str, list[TokenizedPair]] = {
            "held_out": tokenize_pairs(tokenizer, held_out, max_length=cfg.max_length)
        }
        if golden is not None:
            self.sets["golden"] = tokenize_pairs(tokenizer, golden, max_length=cfg.max_length)
        # The reference (base model, adapters off) never changes: score it once.
        self.reference = {
            name: score_pairs(
                model, pairs, pad_id=self.pad_id, batch_size=cfg.eval_batch_size, reference=True
            )
            for name, pairs in self.sets.items()
        }

    def report(self) -> EvalReport:
        metrics: dict[str, PreferenceMetrics] = {}
        for name, pairs in self.sets.items():
            policy = score_pairs(
                self.model, pairs, pad_id=self.pad_id, batch_size=self.cfg.eval_batch_size
            )
            metrics[name] = preference_metrics(policy, self.reference[name], beta=self.cfg.beta)
        return EvalReport(held_out=metrics["held_out"], golden=metrics.get("golden"))


def _champion_report(
    scorer: _Scorer, champion: TrainingRun | None, cfg: JobConfig, base: EvalReport
) -> tuple[EvalReport | None, str | None]:
    """The champion scored on this job's pairs; the base model when there is no champion."""
    if champion is None:
        return base, None
    champ_base = champion.config.get("base_model")
    if champ_base != cfg.base_model or champion.artifact_uri is None:
        return None, champion.run_id
    path = Path(champion.artifact_uri) / ADAPTER_DIR
    scorer.model.load_adapter(str(path), adapter_name=_CHAMPION)
    try:
        with active_adapter(scorer.model, _CHAMPION):
            report = scorer.report()
    finally:
        scorer.model.delete_adapter(_CHAMPION)
    return report, champion.run_id


def _progress_callback(run_id: str, progress_path: Path) -> Any:
    from transformers import TrainerCallback

    class ProgressLogger(TrainerCallback):
        """One structured log line per logged step, and progress.json for ``models show``."""

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            fields = {
                k.replace("/", "_"): round(v, 6) if isinstance(v, float) else v
                for k, v in (logs or {}).items()
            }
            progress = {
                "run_id": run_id,
                "step": state.global_step,
                "max_steps": state.max_steps,
                "epoch": state.epoch,
                **fields,
            }
            log.info("train step", extra=progress)
            tmp = progress_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(progress), encoding="utf-8")
            tmp.replace(progress_path)

    return ProgressLogger()


def _model_card(spec: JobSpec, run_metrics: dict[str, Any], verdict: GateVerdict) -> str:
    cfg = spec.job
    lineage = run_metrics["lineage"]
    return "\n".join(
        [
            "---",
            "library_name: peft",
            f"base_model: {cfg.base_model}",
            "tags: [flywheel, trl, dpo, lora]",
            "---",
            f"# Flywheel LoRA DPO adapter `{spec.run_id}`",
            "",
            "## Lineage",
            f"- dataset: `{spec.table_uri}` at Delta version **{spec.dataset_version}**",
            f"- pairs: {lineage['rows']} ({lineage['train_rows']} train, "
            f"{lineage['eval_rows']} held out by pair_id hash, "
            f"eval_fraction {cfg.eval_fraction})",
            f"- pairs by source: {json.dumps(lineage['pairs_by_source'])}",
            f"- config hash: `{cfg.config_hash()}`",
            f"- code version: `{spec.code_version}`",
            f"- golden eval set: {spec.golden_eval_path or 'none'}",
            "",
            "## Recipe",
            f"TRL DPOTrainer, loss {cfg.loss_type}, beta {cfg.beta}, learning rate "
            f"{cfg.learning_rate}, epochs {cfg.epochs}, max length {cfg.max_length}; LoRA rank "
            f"{cfg.lora.rank}, alpha {cfg.lora.alpha}, dropout {cfg.lora.dropout}, targets "
            f"{', '.join(cfg.lora.target_modules)}.",
            "",
            "```json",
            json.dumps(cfg.model_dump(mode="json"), indent=2, sort_keys=True),
            "```",
            "",
            "## Evaluation (held-out pairs; rewards relative to the base model)",
            "```json",
            json.dumps({k: run_metrics[k] for k in ("before", "after", "champion")}, indent=2),
            "```",
            f"Gate: {'pass' if verdict.promote else 'reject'} — {verdict.reason}",
            "",
        ]
    )


def _train(
    spec: JobSpec,
    settings: TrainerSettings,
    registry: Registry,
    actor: str,
    callbacks: Sequence[Any],
) -> JobOutcome:
    cfg = spec.job
    artifact_dir = Path(spec.artifact_dir)
    snap = read_snapshot(
        spec.table_uri,
        spec.dataset_version,
        eval_fraction=cfg.eval_fraction,
        storage=settings.lake.storage_options_plain(),
    )
    train_records = to_trl(snap.train)
    held_out = to_trl(snap.eval)[: cfg.max_eval_pairs]
    golden = load_golden(spec.golden_eval_path) if spec.golden_eval_path else None
    if not train_records:
        raise JobError(spec.run_id, f"no training pairs in {spec.table_uri}@{spec.dataset_version}")
    lineage = {
        "table_uri": spec.table_uri,
        "dataset_version": spec.dataset_version,
        "rows": snap.rows,
        "train_rows": snap.train.num_rows,
        "eval_rows": snap.eval.num_rows,
        "pairs_by_source": snap.pairs_by_source(),
        "config_hash": cfg.config_hash(),
        "code_version": spec.code_version,
    }
    registry.transition(
        spec.run_id,
        "running",
        actor=actor,
        table_uri=spec.table_uri,
        dataset_version=spec.dataset_version,
        config_json=cfg.model_dump_json(),
        config_hash=cfg.config_hash(),
        code_version=spec.code_version,
        rows=snap.rows,
        train_rows=snap.train.num_rows,
        eval_rows=snap.eval.num_rows,
        pairs_by_source=json.dumps(lineage["pairs_by_source"]),
    )
    log.info("dataset pinned", extra={"run_id": spec.run_id, **lineage})

    device, dtype = _device_and_dtype(cfg)
    base, tokenizer = _load_base(cfg, dtype)
    model = _with_lora(base, cfg).to(device)
    scorer = _Scorer(model, tokenizer, held_out, golden, cfg)
    before = scorer.report()
    champion_run = registry.champion()
    champion, champion_id = _champion_report(scorer, champion_run, cfg, before)
    log.info(
        "evaluated before training",
        extra={"run_id": spec.run_id, "before": before.as_dict(), "champion": champion_id},
    )

    from datasets import Dataset
    from trl.trainer.dpo_config import DPOConfig
    from trl.trainer.dpo_trainer import DPOTrainer

    args = DPOConfig(
        output_dir=str(artifact_dir / "checkpoints"),
        learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        gradient_checkpointing=cfg.gradient_checkpointing,
        bf16=dtype == torch.bfloat16,
        use_cpu=device.type == "cpu",
        beta=cfg.beta,
        loss_type=[cfg.loss_type],
        max_length=cfg.max_length,
        seed=cfg.seed,
        logging_steps=cfg.logging_steps,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        disable_tqdm=True,  # progress goes to the structured log instead
        dataloader_num_workers=0,
    )
    trainer = DPOTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(train_records),
        processing_class=tokenizer,
        callbacks=[_progress_callback(spec.run_id, artifact_dir / "progress.json"), *callbacks],
    )
    from transformers import PrinterCallback

    # Without tqdm, transformers prints each log dict; ours logs them structured instead.
    trainer.remove_callback(PrinterCallback)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    result = trainer.train()
    train_s = time.perf_counter() - started
    steps = int(result.global_step)
    lengths = [
        len(p.chosen) + len(p.rejected)
        for p in tokenize_pairs(tokenizer, train_records, max_length=cfg.max_length)
    ]
    # Pairs seen: a full batch per step, but never more than the epochs hold.
    seen = min(
        steps * cfg.batch_size * cfg.gradient_accumulation_steps,
        math.ceil(len(lengths) * cfg.epochs) if cfg.max_steps < 0 else steps * cfg.batch_size,
    )
    train_tokens = round(sum(lengths) / max(len(lengths), 1) * seen)
    after = scorer.report()

    verdict = (
        decide(after, champion, spec.gate)
        if champion is not None
        else GateVerdict(
            False, f"champion {champion_id} was trained on another base model: promote by hand"
        )
    )
    run_metrics: dict[str, Any] = {
        "before": before.as_dict(),
        "after": after.as_dict(),
        "champion": champion.as_dict() if champion else None,
        "champion_run_id": champion_id,
        "gate": {"promote": verdict.promote, "reason": verdict.reason},
        "train": {
            "loss": float(result.training_loss),
            "steps": steps,
            "seconds": train_s,
            "seconds_per_step": train_s / max(steps, 1),
            "tokens": train_tokens,
            "tokens_per_s": train_tokens / train_s if train_s > 0 else math.nan,
            "device": device.type,
            "dtype": str(dtype).removeprefix("torch."),
            "peak_gpu_memory_bytes": torch.cuda.max_memory_allocated()
            if device.type == "cuda"
            else None,
        },
        "lineage": lineage,
    }

    adapter_dir = artifact_dir / ADAPTER_DIR
    model.save_pretrained(str(adapter_dir))  # safetensors by default
    tokenizer.save_pretrained(str(adapter_dir))
    (artifact_dir / "metrics.json").write_text(json.dumps(run_metrics, indent=2), encoding="utf-8")
    (adapter_dir / "README.md").write_text(
        _model_card(spec, run_metrics, verdict), encoding="utf-8"
    )
    log.info(
        "evaluated after training",
        extra={"run_id": spec.run_id, "after": after.as_dict(), "gate": run_metrics["gate"]},
    )

    # The result and, when the gate passes, the promotion go in one commit: nobody ever sees
    # a finished run whose promotion is still missing.
    promote = verdict.promote and spec.gate.auto_promote
    status: RunStatus = ("promoted" if promote else "succeeded") if verdict.promote else "rejected"
    at = datetime.now(UTC)
    events = [
        RegistryEvent(
            kind="run",
            run_id=spec.run_id,
            status=status,
            actor=actor,
            reason=verdict.reason,
            metrics_json=json.dumps(run_metrics),
            artifact_uri=str(artifact_dir),
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
