"""One real LoRA training run on a random-init model of a real architecture, by method: DPO and
KTO exactly as the trainer runs a job (``run_job``), and an SFT baseline on the chosen answers
of the same pairs with the same model, LoRA and batch settings. Prints tokens/s, examples/s,
time per step and peak GPU memory; with ``--method all`` the three side by side and the ratios
DPO/SFT and KTO/SFT.

    # on a GPU: a Qwen2-0.5B-shaped model (~0.5B parameters, bf16)
    .venv-trainer/bin/python bench/trainer.py --method all
    # anywhere: a tiny Llama on CPU, a smoke run of the same paths
    .venv-trainer/bin/python bench/trainer.py --smoke --method all

Nothing is downloaded: the tokenizer and model are built on the spot (flywheel_trainer.synthetic),
the pairs go through a real Delta table. Tokens are those each method forwards per example
(prompt + chosen + rejected for a DPO pair, prompt + completion for a KTO row or an SFT example).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from deltalake import write_deltalake
from flywheel_common.settings import LakeSettings
from flywheel_trainer.dataset import load_training_data, read_rows, to_trl
from flywheel_trainer.evaluate import tokenize_completions
from flywheel_trainer.job import run_job
from flywheel_trainer.registry import code_version
from flywheel_trainer.settings import GateSettings, JobConfig, LoraSettings, TrainerSettings
from flywheel_trainer.spec import JobSpec
from flywheel_trainer.split import PriorSplit
from flywheel_trainer.synthetic import generate_pairs, pairs_table, save_base_model
from flywheel_trainer.training import device_and_dtype, load_base, trainer_args, with_lora
from safetensors.torch import load_file
from transformers import PrinterCallback, TrainerCallback

# Qwen2.5-0.5B's shape: 24 layers, 896 wide, 14 heads / 2 KV heads, 151,936-token vocabulary.
QWEN2_05B = {
    "hidden_size": 896,
    "layers": 24,
    "heads": 14,
    "kv_heads": 2,
    "intermediate_size": 4864,
    "vocab_size": 151_936,
    "max_positions": 4096,
}
TINY = {"hidden_size": 64, "layers": 2, "heads": 4, "intermediate_size": 128}
METHODS = ("dpo", "kto", "sft")


class StepTimer(TrainerCallback):
    def __init__(self) -> None:
        self.durations: list[float] = []
        self._t = 0.0

    def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self._t = time.perf_counter()

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.durations.append(time.perf_counter() - self._t)


def _settings(work: Path, base: Path, args: argparse.Namespace, method: str) -> TrainerSettings:
    smoke = args.smoke
    return TrainerSettings(
        lake=LakeSettings(uri=str(work / "lake")),
        artifact_store=str(work / "runs"),
        job=JobConfig(
            method="kto" if method == "kto" else "dpo",
            base_model=str(base),
            local_files_only=True,
            lora=LoraSettings(rank=8 if smoke else 16, alpha=16 if smoke else 32, dropout=0.0),
            learning_rate=5e-3 if smoke else 1e-4,
            epochs=1.0,
            max_steps=args.max_steps or (-1 if smoke else 30),
            batch_size=args.batch_size or (16 if smoke else 8),
            max_length=args.max_length or (64 if smoke else 1024),
            gradient_checkpointing=args.gradient_checkpointing,
            eval_fraction=0.1,
            max_eval_pairs=64 if not smoke else 2_000,
            logging_steps=1,
        ),
        gate=GateSettings(auto_promote=False),
    )


def _figures(
    timer: StepTimer, steps: int, examples_per_step: float, tokens: float, seconds: float
) -> dict[str, Any]:
    # The first steps include warm-up (allocator, kernels): report the steady state as well.
    steady = timer.durations[2:] or timer.durations
    per_step = sum(steady) / len(steady)
    tokens_per_step = tokens / max(steps, 1)
    return {
        "steps": steps,
        "seconds_per_step_mean": seconds / max(steps, 1),
        "seconds_per_step_steady": per_step,
        "tokens_per_s": tokens / seconds if seconds > 0 else None,
        "tokens_per_s_steady": tokens_per_step / per_step,
        "examples_per_s_steady": examples_per_step / per_step,
    }


def run_preference(method: str, work: Path, base: Path, args: argparse.Namespace) -> dict[str, Any]:
    """DPO or KTO through the trainer's own job path."""
    settings = _settings(work, base, args, method)
    spec = JobSpec(
        run_id=f"bench-{method}",
        table_uri=settings.pairs_uri(),
        dataset_version=0,
        registry_uri=settings.registry_uri(),
        artifact_dir=str(work / "runs" / f"bench-{method}"),
        job=settings.job,
        gate=settings.gate,
        code_version=code_version(),
    )
    timer = StepTimer()
    outcome = run_job(spec, settings, callbacks=[timer])
    assert outcome is not None
    train = outcome.metrics["train"]
    per_step = settings.job.batch_size * settings.job.gradient_accumulation_steps
    return {
        **_figures(timer, train["steps"], per_step, train["tokens"], train["seconds"]),
        "dtype": train["dtype"],
        "peak_gpu_memory_gib": (train["peak_gpu_memory_bytes"] or 0) / 2**30 or None,
        "accuracy_before": outcome.metrics["before"]["held_out"]["accuracy"],
        "accuracy_after": outcome.metrics["after"]["held_out"]["accuracy"],
    }


def run_sft(work: Path, base: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The baseline: TRL's SFTTrainer on prompt + chosen answer of the same training pairs
    (the job's split), same model, LoRA and batch settings."""
    from datasets import Dataset
    from trl.trainer.sft_config import SFTConfig
    from trl.trainer.sft_trainer import SFTTrainer

    settings = _settings(work, base, args, "sft")
    cfg = settings.job
    rows = read_rows(settings.pairs_uri(), 0, kind="pairs", seed=cfg.split_seed)
    data = load_training_data(
        pairs=rows,
        kto=None,
        fraction=cfg.eval_fraction,
        seed=cfg.split_seed,
        min_feature_groups=cfg.eval_min_feature_groups,
        prior=PriorSplit(),
    )
    device, dtype = device_and_dtype(cfg)
    model, tokenizer = load_base(cfg, dtype)
    model = with_lora(model, cfg).to(device)
    records = [{"prompt": r["prompt"], "completion": r["chosen"]} for r in to_trl(data.pairs_train)]
    timer = StepTimer()
    trainer = SFTTrainer(
        model=model,
        args=SFTConfig(**trainer_args(cfg, str(work / "runs" / "sft"), device, dtype)),
        train_dataset=Dataset.from_list(records),
        processing_class=tokenizer,
        callbacks=[timer],
    )
    trainer.remove_callback(PrinterCallback)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - started
    steps = int(result.global_step)
    lengths = [
        len(r.ids) for r in tokenize_completions(tokenizer, records, max_length=cfg.max_length)
    ]
    seen = steps * cfg.batch_size
    if cfg.max_steps < 0:  # the last batch of an epoch may be short
        seen = min(seen, math.ceil(len(lengths) * cfg.epochs))
    tokens = sum(lengths) / len(lengths) * seen
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    return {
        **_figures(timer, steps, cfg.batch_size, tokens, seconds),
        "dtype": str(dtype).removeprefix("torch."),
        "peak_gpu_memory_gib": peak,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny Llama, CPU is fine")
    ap.add_argument("--method", choices=[*METHODS, "all"], default="dpo")
    ap.add_argument("--arch", choices=["qwen2", "llama"], default="qwen2")
    ap.add_argument("--pairs", type=int, default=None)
    ap.add_argument("--filler-words", type=int, default=None, help="words per prompt/answer part")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--max-length", type=int, default=None)
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    sizes = TINY if args.smoke else QWEN2_05B
    arch = "llama" if args.smoke else args.arch
    n_pairs = args.pairs or (200 if args.smoke else 2_000)
    filler = args.filler_words or (3 if args.smoke else 120)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="flywheel-bench-"))
    base = save_base_model(work / "base", architecture=arch, **sizes)
    pairs = pairs_table(
        generate_pairs(n_pairs, seed=7, filler_words=filler),
        topic="bench",
        tenant="bench",
        feature="bench",
        curator_version="bench",
    )
    methods = METHODS if args.method == "all" else (args.method,)
    results: dict[str, Any] = {}
    for method in methods:
        folder = work / method
        (folder / "lake").mkdir(parents=True, exist_ok=True)
        write_deltalake(str(folder / "lake" / "dpo_pairs"), pairs, mode="append")
        if method == "sft":
            results[method] = run_sft(folder, base, args)
        else:
            results[method] = run_preference(method, folder, base, args)
    n_params = sum(t.numel() for t in load_file(str(base / "model.safetensors")).values())
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "architecture": arch,
        "parameters": n_params,
        "pairs": n_pairs,
        "methods": results,
    }
    if "sft" in results:
        sft = results["sft"]
        for method in ("dpo", "kto"):
            if method in results:
                report[f"{method}_over_sft"] = {
                    k: results[method][k] / sft[k]
                    for k in ("tokens_per_s_steady", "examples_per_s_steady")
                }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
