"""What one job reads: the pinned rows of ``dpo_pairs`` and ``kto_examples`` split with every
earlier split of the table, the rows its method trains on, and the pinned golden set."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flywheel_trainer.dataset import (
    HeldOut,
    PreferenceRecord,
    TrainingData,
    load_golden,
    load_training_data,
    read_golden_table,
    read_rows,
    to_trl,
    to_trl_kto,
    unpair,
)
from flywheel_trainer.errors import JobError
from flywheel_trainer.registry import Registry
from flywheel_trainer.settings import JobConfig
from flywheel_trainer.spec import JobSpec
from flywheel_trainer.split import merge_records

__all__ = ["JobInputs", "golden_records", "prepare_inputs", "read_job_data", "training_records"]


def read_job_data(spec: JobSpec, registry: Registry, storage: dict[str, str]) -> TrainingData:
    """The pinned rows of both tables, split with every earlier split of this table."""
    cfg = spec.job
    prior = merge_records(
        registry.split_records(spec.table_uri), seed=cfg.split_seed, table_uri=spec.table_uri
    )
    pairs = read_rows(
        spec.table_uri, spec.dataset_version, kind="pairs", seed=cfg.split_seed, storage=storage
    )
    kto = None
    if spec.kto_table_uri is not None and spec.kto_version is not None:
        kto = read_rows(
            spec.kto_table_uri, spec.kto_version, kind="kto", seed=cfg.split_seed, storage=storage
        )
    return load_training_data(
        pairs=pairs,
        kto=kto,
        fraction=cfg.eval_fraction,
        seed=cfg.split_seed,
        min_feature_groups=cfg.eval_min_feature_groups,
        prior=prior,
    )


def training_records(data: TrainingData, cfg: JobConfig) -> list[dict[str, Any]]:
    """DPO: the training pairs. KTO: the training KTO rows plus (by default) the training
    pairs unpaired, chosen desirable and rejected undesirable."""
    if cfg.method == "dpo":
        return to_trl(data.pairs_train)
    rows = to_trl_kto(data.kto_train) if data.kto_train is not None else []
    if cfg.kto.include_pairs:
        rows += unpair(data.pairs_train)
    return rows


def golden_records(spec: JobSpec, storage: dict[str, str]) -> list[PreferenceRecord] | None:
    if spec.golden_uri is not None and spec.golden_version is not None:
        return read_golden_table(spec.golden_uri, spec.golden_version, storage)
    if spec.golden_eval_path is not None:
        return load_golden(spec.golden_eval_path, sha256=spec.golden_sha256)
    return None


@dataclass(frozen=True, slots=True)
class JobInputs:
    """Everything a job trains and is judged on, and its lineage for the registry and card."""

    data: TrainingData
    records: list[dict[str, Any]]
    held: HeldOut
    held_kto: HeldOut | None
    golden: list[PreferenceRecord] | None
    lineage: dict[str, Any]


def prepare_inputs(spec: JobSpec, registry: Registry, storage: dict[str, str]) -> JobInputs:
    cfg = spec.job
    data = read_job_data(spec, registry, storage)
    records = training_records(data, cfg)
    if not records:
        raise JobError(
            spec.run_id, f"no {cfg.method} training rows in {spec.table_uri}@{spec.dataset_version}"
        )
    lineage = {
        "table_uri": spec.table_uri,
        "dataset_version": spec.dataset_version,
        "rows": data.rows,
        "train_rows": data.pairs_train.num_rows,
        "eval_rows": data.pairs_eval.num_rows,
        "kto_table_uri": spec.kto_table_uri,
        "kto_version": spec.kto_version,
        "kto_rows": data.kto_rows,
        "training_examples": len(records),
        "pairs_by_source": data.pairs_by_source(),
        "split": data.plan.record(),
        "config_hash": spec.config_hash(),
        "recipe_hash": cfg.recipe_hash(),
        "code_version": spec.code_version,
        "golden": spec.golden_label,
    }
    return JobInputs(
        data=data,
        records=records,
        held=data.held_out_pairs(cfg.max_eval_pairs),
        held_kto=data.held_out_kto(cfg.max_eval_pairs),
        golden=golden_records(spec, storage),
        lineage=lineage,
    )
