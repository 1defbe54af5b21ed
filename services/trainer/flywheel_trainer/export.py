"""``flywheel data export``: one pinned version as TRL JSONL, split exactly as the next job
would split it (the same prompt groups, thresholds and pins the registry recorded).

- ``trl``: conversational preference format, the pairs of ``dpo_pairs``.
- ``trl-kto``: conversational unpaired format, the rows of ``kto_examples`` (when it exists)
  plus the pairs unpaired (chosen desirable, rejected undesirable) unless
  ``job.kto.include_pairs`` is off: what a KTO job trains on.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Literal, TextIO

import pyarrow as pa

from flywheel_trainer.dataset import (
    TrainingData,
    head_version,
    load_training_data,
    read_rows,
    to_trl,
    to_trl_kto,
    unpair,
)
from flywheel_trainer.registry import Registry
from flywheel_trainer.settings import TrainerSettings
from flywheel_trainer.split import merge_records

__all__ = ["ExportFormat", "SplitName", "export", "split_for_export"]

ExportFormat = Literal["trl", "trl-kto"]
SplitName = Literal["all", "train", "eval"]


def split_for_export(settings: TrainerSettings, version: int) -> TrainingData:
    """Pairs at ``version`` and ``kto_examples`` at its newest version, split as a job would."""
    cfg, storage = settings.job, settings.lake.storage_options_plain()
    registry = Registry(settings.registry_uri(), storage_options=storage)
    uri = settings.pairs_uri()
    prior = merge_records(registry.split_records(uri), seed=cfg.split_seed, table_uri=uri)
    pairs = read_rows(uri, version, kind="pairs", seed=cfg.split_seed, storage=storage)
    kto_version = head_version(settings.kto_uri(), storage)
    kto = None
    if kto_version is not None:
        kto = read_rows(
            settings.kto_uri(), kto_version, kind="kto", seed=cfg.split_seed, storage=storage
        )
    return load_training_data(
        pairs=pairs,
        kto=kto,
        fraction=cfg.eval_fraction,
        seed=cfg.split_seed,
        min_feature_groups=cfg.eval_min_feature_groups,
        prior=prior,
    )


def _parts(train: pa.Table | None, held: pa.Table | None, split: SplitName) -> list[pa.Table]:
    chosen = {"all": (train, held), "train": (train,), "eval": (held,)}[split]
    return [t for t in chosen if t is not None]


def export(
    settings: TrainerSettings,
    version: int,
    out: TextIO,
    *,
    fmt: ExportFormat = "trl",
    split: SplitName = "all",
) -> int:
    """Write one version as JSONL; returns the number of records."""
    data = split_for_export(settings, version)
    records: Iterable[dict[str, object]]
    pairs = _parts(data.pairs_train, data.pairs_eval, split)
    if fmt == "trl":
        records = (rec for part in pairs for rec in to_trl(part))
    else:
        kto = _parts(data.kto_train, data.kto_eval, split)
        records = [rec for part in kto for rec in to_trl_kto(part)]
        if settings.job.kto.include_pairs:
            records += [rec for part in pairs for rec in unpair(part)]
    n = 0
    for rec in records:
        out.write(json.dumps(rec, ensure_ascii=False) + "\n")
        n += 1
    return n
