"""The TRL side of a job: the base model and tokenizer, the LoRA adapter, and the trainer for
the job's method, DPO (``DPOTrainer`` on pairs) or KTO (``KTOTrainer`` on unpaired rows).

KTO's class weights follow TRL's documentation ("Imbalanced data"): up-weight the rarer class so
that desirable_weight x n_desirable : undesirable_weight x n_undesirable lies in [1, 4/3]. We
aim at the middle of that range, 7/6, and leave both weights at 1 when the counts already fall
in it.
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from flywheel_common.errors import ConfigError

from flywheel_trainer.dataset import KtoRecord, PreferenceRecord
from flywheel_trainer.evaluate import tokenize_completions, tokenize_pairs
from flywheel_trainer.settings import JobConfig

__all__ = [
    "KtoWeights",
    "device_and_dtype",
    "kto_weights",
    "load_base",
    "make_trainer",
    "progress_callback",
    "token_lengths",
    "train_stats",
    "trainer_args",
    "with_lora",
]

log = logging.getLogger(__name__)

_KTO_RATIO_LOW, _KTO_RATIO_HIGH = 1.0, 4.0 / 3.0
_KTO_RATIO_TARGET = 7.0 / 6.0


def device_and_dtype(cfg: JobConfig) -> tuple[torch.device, torch.dtype]:
    if torch.cuda.is_available():
        bf16 = cfg.precision == "bf16" or (
            cfg.precision == "auto" and torch.cuda.is_bf16_supported()
        )
        return torch.device("cuda"), torch.bfloat16 if bf16 else torch.float32
    if cfg.precision == "bf16":
        raise ConfigError("precision=bf16 asked for, but no CUDA device is present")
    return torch.device("cpu"), torch.float32


def load_base(cfg: JobConfig, dtype: torch.dtype) -> tuple[Any, Any]:
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
        raise ConfigError(f"{cfg.base_model} has no chat template: conversational data needs one")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(cfg.base_model, dtype=dtype, **kwargs)
    return model, tokenizer


def with_lora(model: Any, cfg: JobConfig) -> Any:
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=cfg.lora.rank,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=list(cfg.lora.target_modules),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


@dataclass(frozen=True, slots=True)
class KtoWeights:
    desirable: int
    undesirable: int
    desirable_weight: float
    undesirable_weight: float

    @property
    def ratio(self) -> float:
        """desirable_weight x n_desirable / (undesirable_weight x n_undesirable)."""
        den = self.undesirable_weight * max(self.undesirable, 1)
        return self.desirable_weight * max(self.desirable, 1) / den


def kto_weights(records: Sequence[KtoRecord], cfg: JobConfig) -> KtoWeights:
    """Configured weights where set; otherwise from the class balance (module docstring)."""
    d = sum(1 for r in records if r["label"])
    u = len(records) - d
    dw, uw = cfg.kto.desirable_weight, cfg.kto.undesirable_weight
    if dw is not None or uw is not None:
        return KtoWeights(d, u, dw or 1.0, uw or 1.0)
    ratio = max(d, 1) / max(u, 1)
    if d == 0 or u == 0 or _KTO_RATIO_LOW <= ratio <= _KTO_RATIO_HIGH:
        return KtoWeights(d, u, 1.0, 1.0)
    if ratio < _KTO_RATIO_LOW:  # fewer desirable rows: up-weight them
        return KtoWeights(d, u, _KTO_RATIO_TARGET / ratio, 1.0)
    return KtoWeights(d, u, 1.0, ratio / _KTO_RATIO_TARGET)


def trainer_args(
    cfg: JobConfig, output_dir: str, device: torch.device, dtype: torch.dtype
) -> dict[str, Any]:
    """The TrainingArguments every method shares (the bench's SFT baseline uses them too)."""
    return {
        "output_dir": output_dir,
        "learning_rate": cfg.learning_rate,
        "num_train_epochs": cfg.epochs,
        "max_steps": cfg.max_steps,
        "per_device_train_batch_size": cfg.batch_size,
        "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
        "gradient_checkpointing": cfg.gradient_checkpointing,
        "bf16": dtype == torch.bfloat16,
        "use_cpu": device.type == "cpu",
        "max_length": cfg.max_length,
        "seed": cfg.seed,
        "logging_steps": cfg.logging_steps,
        "save_strategy": "no",
        "eval_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,  # progress goes to the structured log instead
        "dataloader_num_workers": 0,
    }


def make_trainer(
    *,
    model: Any,
    tokenizer: Any,
    cfg: JobConfig,
    records: Sequence[PreferenceRecord] | Sequence[KtoRecord],
    weights: KtoWeights | None,
    output_dir: str,
    device: torch.device,
    dtype: torch.dtype,
    callbacks: Sequence[Any],
) -> Any:
    """A TRL trainer for ``cfg.method`` on ``records`` (pairs for DPO, unpaired rows for KTO)."""
    from datasets import Dataset
    from transformers import PrinterCallback

    common = {**trainer_args(cfg, output_dir, device, dtype), "beta": cfg.beta}
    if cfg.method == "kto":
        from trl.trainer.kto_config import KTOConfig
        from trl.trainer.kto_trainer import KTOTrainer

        if weights is None:
            raise ConfigError("a KTO trainer needs its class weights (training.kto_weights)")
        rows = list(records)
        # KTO estimates its KL term from the other completions of a batch, read in order
        # (sequential sampling): a seeded shuffle mixes labels and prompts into every batch.
        random.Random(cfg.seed).shuffle(rows)  # noqa: S311 - an ordering, not a secret
        args = KTOConfig(
            **common,
            loss_type=cfg.kto.loss_type,
            desirable_weight=weights.desirable_weight,
            undesirable_weight=weights.undesirable_weight,
        )
        trainer: Any = KTOTrainer(
            model=model,
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
            callbacks=list(callbacks),
        )
    else:
        from trl.trainer.dpo_config import DPOConfig
        from trl.trainer.dpo_trainer import DPOTrainer

        trainer = DPOTrainer(
            model=model,
            args=DPOConfig(**common, loss_type=[cfg.loss_type]),
            train_dataset=Dataset.from_list(list(records)),
            processing_class=tokenizer,
            callbacks=list(callbacks),
        )
    # Without tqdm, transformers prints each log dict; ours logs them structured instead.
    trainer.remove_callback(PrinterCallback)
    return trainer


def train_stats(
    result: Any,
    seconds: float,
    lengths: Sequence[int],
    cfg: JobConfig,
    device: torch.device,
    dtype: torch.dtype,
    weights: KtoWeights | None,
) -> dict[str, Any]:
    steps = int(result.global_step)
    # Examples seen: a full batch per step, but never more than the epochs hold.
    seen = min(
        steps * cfg.batch_size * cfg.gradient_accumulation_steps,
        math.ceil(len(lengths) * cfg.epochs) if cfg.max_steps < 0 else steps * cfg.batch_size,
    )
    tokens = round(sum(lengths) / max(len(lengths), 1) * seen)
    return {
        "method": cfg.method,
        "loss": float(result.training_loss),
        "steps": steps,
        "examples": len(lengths),
        "seconds": seconds,
        "seconds_per_step": seconds / max(steps, 1),
        "tokens": tokens,
        "tokens_per_s": tokens / seconds if seconds > 0 else math.nan,
        "device": device.type,
        "dtype": str(dtype).removeprefix("torch."),
        "peak_gpu_memory_bytes": torch.cuda.max_memory_allocated()
        if device.type == "cuda"
        else None,
        "kto_weights": None
        if weights is None
        else {
            "desirable": weights.desirable,
            "undesirable": weights.undesirable,
            "desirable_weight": weights.desirable_weight,
            "undesirable_weight": weights.undesirable_weight,
            "ratio": weights.ratio,
        },
    }


def token_lengths(tokenizer: Any, records: Sequence[dict[str, Any]], cfg: JobConfig) -> list[int]:
    if cfg.method == "kto":
        return [
            len(r.ids) for r in tokenize_completions(tokenizer, records, max_length=cfg.max_length)
        ]
    pairs = tokenize_pairs(tokenizer, records, max_length=cfg.max_length)
    return [len(p.chosen) + len(p.rejected) for p in pairs]


def progress_callback(run_id: str, progress_path: Path) -> Any:
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
