"""The real job end to end on CPU: a tiny random-init Llama learns the synthetic preference
with TRL's DPOTrainer + a LoRA adapter; the gate promotes it, rejects a job that does not beat
the champion (leaving the champion alone), and ``flywheel models`` promotes and rolls back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from flywheel_common.cli import main as flywheel
from flywheel_trainer.job import JobOutcome, run_job
from flywheel_trainer.registry import Registry, code_version
from flywheel_trainer.settings import GateSettings, TrainerSettings
from flywheel_trainer.spec import JobSpec
from flywheel_trainer.synthetic import generate_pairs

from .conftest import append_pairs, make_settings, tiny_job

pytestmark = pytest.mark.trainer


def _spec(settings: TrainerSettings, run_id: str, version: int) -> JobSpec:
    return JobSpec(
        run_id=run_id,
        table_uri=settings.pairs_uri(),
        dataset_version=version,
        registry_uri=settings.registry_uri(),
        artifact_dir=str(Path(settings.artifact_store) / run_id),
        job=settings.job,
        gate=settings.gate,
        golden_eval_path=settings.golden_eval_path,
        code_version=code_version(),
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, base_model: Path) -> dict[str, Any]:
    """One promoted job on version 0 (shared by the tests below: training is the slow part)."""
    lake = tmp_path_factory.mktemp("train") / "lake"
    settings = make_settings(lake, tiny_job(base_model))
    v0 = append_pairs(settings.pairs_uri(), generate_pairs(320, seed=1))
    outcome = run_job(_spec(settings, "run-first", v0), settings)
    assert outcome is not None
    return {"settings": settings, "outcome": outcome, "lake": lake}


def test_preference_accuracy_rises_from_chance(trained: dict[str, Any]) -> None:
    m = trained["outcome"].metrics
    before, after = m["before"]["held_out"], m["after"]["held_out"]
    # Untrained LoRA (B = 0): policy == reference, every margin ties: exactly chance.
    assert before["accuracy"] == pytest.approx(0.5)
    # The random-init model itself has no idea either.
    assert 0.25 <= before["logp_accuracy"] <= 0.75
    assert after["accuracy"] >= 0.8
    assert after["reward_margin"] > 0
    assert after["logp_accuracy"] >= 0.8
    assert m["lineage"]["eval_rows"] == before["pairs"] > 30


def test_first_job_is_promoted_with_lineage(trained: dict[str, Any]) -> None:
    settings: TrainerSettings = trained["settings"]
    outcome: JobOutcome = trained["outcome"]
    assert outcome.status == "promoted", outcome.verdict.reason
    registry = Registry(settings.registry_uri())
    champion = registry.champion()
    assert champion is not None and champion.run_id == "run-first"
    run = registry.run("run-first")
    assert run.dataset_version == 0 and run.rows == 320
    assert run.train_rows + run.eval_rows == 320
    assert sum(run.pairs_by_source.values()) == 320
    spec = _spec(settings, "run-first", 0)
    assert run.config_hash == spec.config_hash() and run.method == "dpo"
    # The gate's evidence is in the registry: a significant gain, the worst slice and the gap.
    assert run.gain_ci_low is not None and run.gain_ci_low >= settings.gate.min_accuracy_gain
    assert run.gain_ci_high is not None and run.gain_ci_high >= run.gain_ci_low
    assert run.worst_slice == "feature:chat" and run.slice_gap == 0.0
    gate = run.gate_summary()
    assert gate["decision"] == "promote" and gate["interval"]["groups"] == run.eval_rows
    assert {s["name"] for s in gate["slices"]} >= {"feature:chat", "source:edit"}
    assert gate["golden"] == {"configured": False}
    adapter = outcome.adapter_dir
    assert (adapter / "adapter_model.safetensors").is_file()
    assert (adapter / "adapter_config.json").is_file()
    assert (adapter / "tokenizer.json").is_file()
    card = (adapter / "README.md").read_text()
    assert f"{settings.pairs_uri()}` at Delta version **0**" in card
    assert spec.config_hash() in card and code_version() in card
    assert "interval [" in card and "| feature:chat |" in card
    assert "NO GOLDEN SET CONFIGURED" in card
    saved = json.loads((adapter.parent / "metrics.json").read_text())
    assert saved["gate"]["promote"] is True
    assert (adapter.parent / "progress.json").is_file()  # per-step progress while it ran


def test_too_few_held_out_pairs_is_inconclusive_and_the_champion_stays(
    trained: dict[str, Any], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    base: TrainerSettings = trained["settings"]
    # One training step is enough: the point is the decision, on a gate that needs more pairs.
    settings = base.model_copy(
        update={
            "job": base.job.model_copy(update={"max_steps": 1}),
            "gate": GateSettings(min_eval_pairs=10_000),
        }
    )
    v1 = append_pairs(settings.pairs_uri(), generate_pairs(20, seed=3), first_offset=320)
    outcome = run_job(_spec(settings, "run-few", v1), settings)
    assert outcome is not None and outcome.status == "inconclusive"
    assert "too few to decide (need 10000 pairs" in outcome.verdict.reason
    registry = Registry(settings.registry_uri())
    assert registry.champion().run_id == "run-first"  # type: ignore[union-attr]
    run = registry.run("run-few")
    assert run.status == "inconclusive" and run.gain_ci_low is None
    # The split only grew: every group run-first held out is still held out.
    first, few = registry.run("run-first").split, run.split
    assert first is not None and few is not None and few["threshold"] >= first["threshold"]
    monkeypatch.setenv("FLYWHEEL_TRAINER_LAKE__URI", str(trained["lake"]))
    capsys.readouterr()
    assert flywheel(["models", "show", "run-few"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["status"] == "inconclusive" and shown["gate"]["decision"] == "inconclusive"
    assert "NO GOLDEN SET CONFIGURED" in shown["gate"]["golden"]["warning"]


def test_rejected_job_leaves_champion_and_rollback_restores_it(
    trained: dict[str, Any], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    base: TrainerSettings = trained["settings"]
    # A gate no model can pass: the second job must be rejected (a few steps show it).
    settings = base.model_copy(
        update={
            "job": base.job.model_copy(update={"max_steps": 4}),
            "gate": GateSettings(min_accuracy_gain=0.9),
        }
    )
    v2 = append_pairs(settings.pairs_uri(), generate_pairs(80, seed=2), first_offset=340)
    outcome = run_job(_spec(settings, "run-second", v2), settings)
    assert outcome is not None and outcome.status == "rejected"
    assert "lower bound below the required 0.9000" in outcome.verdict.reason
    # Compared against the champion on the same held-out pairs, not against the base model.
    assert outcome.metrics["champion_run_id"] == "run-first"
    assert outcome.metrics["champion"]["held_out"]["accuracy"] >= 0.8
    registry = Registry(settings.registry_uri())
    assert registry.champion().run_id == "run-first"  # type: ignore[union-attr]
    assert registry.run("run-second").reason == outcome.verdict.reason

    # An operator promotes the rejected run by hand, then rolls it back.
    monkeypatch.setenv("FLYWHEEL_TRAINER_LAKE__URI", str(trained["lake"]))
    assert flywheel(["models", "promote", "run-second", "--reason", "manual override"]) == 0
    assert registry.champion().run_id == "run-second"  # type: ignore[union-attr]
    assert flywheel(["models", "rollback", "--reason", "bad answers in prod"]) == 0
    assert registry.champion().run_id == "run-first"  # type: ignore[union-attr]
    assert registry.run("run-second").status == "rolled_back"
    capsys.readouterr()
    assert flywheel(["models", "list", "--json"]) == 0
    listed = {r["run_id"]: r for r in json.loads(capsys.readouterr().out)}
    assert listed["run-first"]["champion"] and not listed["run-second"]["champion"]
    assert flywheel(["models", "show", "run-first"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["metrics"]["after"]["held_out"]["accuracy"] >= 0.8
    assert shown["worst_slice"] == "feature:chat" and shown["slice_gap"] == 0.0
    assert shown["gate"]["interval"]["low"] == shown["gain_interval"][0] > 0
    # Rolling back the last champion leaves the base model; once more is an error.
    assert flywheel(["models", "rollback", "--reason", "back to base"]) == 0
    assert registry.champion() is None
    assert flywheel(["models", "rollback", "--reason", "again"]) == 2


def test_a_finished_run_is_not_trained_again(trained: dict[str, Any]) -> None:
    settings: TrainerSettings = trained["settings"]
    again = run_job(_spec(settings, "run-first", 0), settings)
    assert again is None
    runs = Registry(settings.registry_uri()).runs()
    assert [r.run_id for r in runs.values()].count("run-first") == 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_job_trains_in_bf16_on_a_gpu(tmp_path: Path, base_model: Path) -> None:
    settings = make_settings(tmp_path / "lake", tiny_job(base_model, precision="bf16"))
    v0 = append_pairs(settings.pairs_uri(), generate_pairs(320, seed=1))
    outcome = run_job(_spec(settings, "run-gpu", v0), settings)
    assert outcome is not None
    train = outcome.metrics["train"]
    assert (train["device"], train["dtype"]) == ("cuda", "bfloat16")
    assert train["peak_gpu_memory_bytes"] > 0
    assert outcome.metrics["after"]["held_out"]["accuracy"] >= 0.8
