"""The guard against learning the wrong thing: a job trained on label-swapped pairs fits its
own (equally swapped) held-out pairs, so held-out accuracy alone would promote it; a golden set
curated by humans, read by time travel at its pinned version, refuses it, and the refusal is
recorded with its reason."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from deltalake import DeltaTable
from flywheel_trainer.job import run_job
from flywheel_trainer.registry import Registry, code_version
from flywheel_trainer.spec import JobSpec
from flywheel_trainer.synthetic import generate_pairs

from .conftest import append_pairs, make_settings, tiny_job

pytestmark = pytest.mark.trainer


def test_label_swapped_job_is_refused_by_the_golden_set(tmp_path: Path, base_model: Path) -> None:
    settings = make_settings(tmp_path / "lake", tiny_job(base_model, epochs=1.0))
    golden_uri = str(tmp_path / "lake" / "golden")
    golden_v0 = append_pairs(golden_uri, generate_pairs(40, seed=99))
    # A later golden version the run must not see: it was pinned at launch.
    append_pairs(golden_uri, generate_pairs(4, seed=98), first_offset=40)
    swapped = [
        replace(p, chosen=p.rejected, rejected=p.chosen) for p in generate_pairs(200, seed=1)
    ]
    version = append_pairs(settings.pairs_uri(), swapped)
    spec = JobSpec(
        run_id="run-swapped",
        table_uri=settings.pairs_uri(),
        dataset_version=version,
        registry_uri=settings.registry_uri(),
        artifact_dir=str(tmp_path / "runs" / "run-swapped"),
        job=settings.job,
        gate=settings.gate,
        golden_uri=golden_uri,
        golden_version=golden_v0,
        code_version=code_version(),
    )
    outcome = run_job(spec, settings)
    assert outcome is not None
    verdict = outcome.verdict
    assert outcome.status == "rejected"
    # It learned its labels: the held-out gain alone clears the margin...
    assert verdict.interval is not None
    assert verdict.interval.low >= settings.gate.min_accuracy_gain
    # ...but the golden set says it learned them backwards.
    golden = verdict.golden
    assert golden["configured"] and golden["pairs"] == 40
    assert golden["candidate"] < 0.3 and golden["champion"] == pytest.approx(0.5)
    assert verdict.reason.startswith("golden-set accuracy regressed 0.5000 ->")

    registry = Registry(settings.registry_uri())
    run = registry.run("run-swapped")
    assert run.status == "rejected" and run.reason == verdict.reason
    assert run.golden == f"{golden_uri}@{golden_v0}" and DeltaTable(golden_uri).version() == 1
    assert run.gate_summary()["golden"]["candidate"] == golden["candidate"]
    assert registry.champion() is None  # the base model keeps serving
    card = (outcome.adapter_dir / "README.md").read_text()
    assert f"golden set: {golden_uri}@{golden_v0}" in card and "**Gate: reject**" in card
    assert f"golden set: {golden['candidate']:.3f} vs champion 0.500 on 40 pairs" in card
