"""KTO end to end on CPU: a tiny random-init Llama trained by TRL's KTOTrainer on generated
unpaired ratings alone (kto_examples, imbalanced classes) learns the preference: held-out pair
accuracy rises from chance to >= 0.8, judged by the same gate as DPO."""

from __future__ import annotations

from pathlib import Path

import pytest
from flywheel_trainer.job import run_job
from flywheel_trainer.registry import Registry, code_version
from flywheel_trainer.settings import KtoSettings
from flywheel_trainer.spec import JobSpec
from flywheel_trainer.synthetic import generate_examples, generate_pairs

from .conftest import append_kto, append_pairs, make_settings, tiny_job

pytestmark = pytest.mark.trainer


def test_kto_on_unpaired_ratings_lifts_held_out_accuracy(tmp_path: Path, base_model: Path) -> None:
    # Pairs only to measure on: include_pairs=False trains on the ratings alone.
    job = tiny_job(base_model, method="kto", kto=KtoSettings(include_pairs=False), epochs=2.0)
    settings = make_settings(tmp_path / "lake", job)
    version = append_pairs(settings.pairs_uri(), generate_pairs(200, seed=1))
    ratings = generate_examples(240, seed=2, desirable_share=0.35)
    kto_version = append_kto(settings.kto_uri(), ratings)
    spec = JobSpec(
        run_id="run-kto",
        table_uri=settings.pairs_uri(),
        dataset_version=version,
        kto_table_uri=settings.kto_uri(),
        kto_version=kto_version,
        registry_uri=settings.registry_uri(),
        artifact_dir=str(tmp_path / "runs" / "run-kto"),
        job=job,
        gate=settings.gate,
        code_version=code_version(),
    )
    outcome = run_job(spec, settings)
    assert outcome is not None
    m = outcome.metrics
    before, after = m["before"]["held_out"], m["after"]["held_out"]
    assert before["accuracy"] == pytest.approx(0.5)  # untrained adapter: every margin ties
    assert after["accuracy"] >= 0.8, after
    assert m["after"]["kto"]["separation_auc"] >= 0.8 > m["before"]["kto"]["separation_auc"]
    assert outcome.status == "promoted", outcome.verdict.reason

    # Trained on the ratings only, weighted from their class balance as TRL documents.
    train = m["train"]
    held_kto = m["after"]["kto"]["rows"]
    assert train["examples"] == len(ratings) - held_kto
    weights = train["kto_weights"]
    assert weights["desirable"] < weights["undesirable"]
    assert weights["desirable_weight"] > 1.0 == weights["undesirable_weight"]
    assert 1.0 <= weights["ratio"] <= 4 / 3

    run = Registry(settings.registry_uri()).run("run-kto")
    assert (run.method, run.kto_version, run.kto_rows) == ("kto", kto_version, len(ratings))
    card = (outcome.adapter_dir / "README.md").read_text()
    assert "TRL KTOTrainer" in card and "tags: [flywheel, trl, kto, lora]" in card
