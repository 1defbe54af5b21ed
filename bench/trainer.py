"""One real LoRA DPO job on a random-init model of a real architecture; prints tokens/s, time
per step and peak GPU memory.

    # on a GPU: a Qwen2-0.5B-shaped model (~0.5B parameters, bf16)
    .venv-trainer/bin/python bench/trainer.py
    # anywhere: a tiny Llama on CPU, a smoke run of the same path
    .venv-trainer/bin/python bench/trainer.py --smoke

Nothing is downloaded: the tokenizer and model are built on the spot (flywheel_trainer.synthetic),
the pairs go through a real Delta table and the job runs exactly as the trainer runs it.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from deltalake import write_deltalake
from flywheel_common.settings import LakeSettings
from flywheel_trainer.job import run_job
from flywheel_trainer.registry import code_version
from flywheel_trainer.settings import GateSettings, JobConfig, LoraSettings, TrainerSettings
from flywheel_trainer.spec import JobSpec
from flywheel_trainer.synthetic import generate_pairs, pairs_table, save_base_model
from safetensors.torch import load_file
from transformers import TrainerCallback

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


def write_pairs(uri: str, n: int, filler_words: int) -> None:
    pairs = generate_pairs(n, seed=7, filler_words=filler_words)
    table = pairs_table(
        pairs, topic="bench", tenant="bench", feature="bench", curator_version="bench"
    )
    write_deltalake(uri, table, mode="append")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny Llama, CPU is fine")
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

    smoke = args.smoke
    sizes = TINY if smoke else QWEN2_05B
    arch = "llama" if smoke else args.arch
    n_pairs = args.pairs or (200 if smoke else 2_000)
    filler = args.filler_words or (3 if smoke else 120)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="flywheel-bench-"))
    base = save_base_model(work / "base", architecture=arch, **sizes)
    n_params = sum(t.numel() for t in load_file(str(base / "model.safetensors")).values())
    lake = work / "lake"
    settings = TrainerSettings(
        lake=LakeSettings(uri=str(lake)),
        artifact_store=str(work / "runs"),
        job=JobConfig(
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
    write_pairs(settings.pairs_uri(), n_pairs, filler)
    spec = JobSpec(
        run_id="bench",
        table_uri=settings.pairs_uri(),
        dataset_version=0,
        registry_uri=settings.registry_uri(),
        artifact_dir=str(work / "runs" / "bench"),
        job=settings.job,
        gate=settings.gate,
        code_version=code_version(),
    )
    timer = StepTimer()
    outcome = run_job(spec, settings, callbacks=[timer])
    assert outcome is not None
    train = outcome.metrics["train"]
    # The first steps include warm-up (allocator, kernels): report the steady state as well.
    steady = timer.durations[2:] or timer.durations
    tokens_per_step = train["tokens"] / max(train["steps"], 1)
    report = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "architecture": arch,
        "parameters": n_params,
        "dtype": train["dtype"],
        "pairs": n_pairs,
        "steps": train["steps"],
        "batch_size": settings.job.batch_size,
        "seconds_per_step_mean": train["seconds_per_step"],
        "seconds_per_step_steady": sum(steady) / len(steady),
        "tokens_per_s": train["tokens_per_s"],
        "tokens_per_s_steady": tokens_per_step / (sum(steady) / len(steady)),
        "peak_gpu_memory_gib": (train["peak_gpu_memory_bytes"] or 0) / 2**30 or None,
        "accuracy_before": outcome.metrics["before"]["held_out"]["accuracy"],
        "accuracy_after": outcome.metrics["after"]["held_out"]["accuracy"],
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
