"""Pure decisions and shapes, no broker or model: when to launch, what the config hash covers,
the registry fold (and its schema growing under an old table), and the Kubernetes Job
manifest. The promotion gate's own tests are in test_gate.py."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake
from flywheel_trainer.launchers.kubernetes import GPU_RESOURCE, render_job
from flywheel_trainer.policy import decide_launch
from flywheel_trainer.registry import TRAINING_RUNS, Registry, RegistryEvent, TrainingRun
from flywheel_trainer.settings import GateSettings, JobConfig, KubernetesSettings, TrainerSettings
from flywheel_trainer.spec import JobSpec

NOW = datetime(2026, 1, 1, tzinfo=UTC)
_NEW_COLUMNS = (
    "method",
    "kto_table_uri",
    "kto_version",
    "kto_rows",
    "golden",
    "worst_slice",
    "slice_gap",
    "gain_ci_low",
    "gain_ci_high",
)
URI = "/lake/dpo_pairs"


def _run(
    run_id: str, version: int, rows: int, status: str = "promoted", **kw: object
) -> TrainingRun:
    return TrainingRun(
        run_id=run_id,
        status=status,  # type: ignore[arg-type]
        created_at=kw.pop("created_at", NOW - timedelta(hours=2)),  # type: ignore[arg-type]
        updated_at=NOW,
        table_uri=URI,
        dataset_version=version,
        rows=rows,
        config=kw.pop("config", {"split_seed": 0}),  # type: ignore[arg-type]
        kto_version=kw.pop("kto_version", None),  # type: ignore[arg-type]
        kto_rows=kw.pop("kto_rows", None),  # type: ignore[arg-type]
    )


def _decide(runs: list[TrainingRun], version: int | None, rows: int, **kw: object):  # type: ignore[no-untyped-def]
    args = {
        "table_uri": URI,
        "target_version": version,
        "target_rows": rows,
        "runs": runs,
        "now": NOW,
        "threshold": 1000,
        "min_interval_s": 3600.0,
        "max_concurrent": 1,
        "split_seed": 0,
    }
    args.update(kw)
    return decide_launch(**args)  # type: ignore[arg-type]


def test_threshold_counts_pairs_since_the_last_job() -> None:
    assert not _decide([], None, 0).launch
    assert not _decide([], 3, 999).launch
    assert _decide([], 3, 1000).launch
    last = _run("a", 3, 1000)
    assert not _decide([last], 7, 1999).launch
    d = _decide([last], 8, 2000)
    assert d.launch and d.version == 8 and d.new_pairs == 1000


def test_never_twice_on_a_version_and_failed_runs_do_not_count() -> None:
    failed = _run("f", 8, 2000, status="failed")
    d = _decide([_run("a", 3, 1000), failed], 8, 2000)
    assert not d.launch and "already has run f" in d.reason
    # A newer version: counted from run a (the failed run trained nothing).
    assert _decide([_run("a", 3, 1000), failed], 9, 2001).launch


def test_min_interval_and_concurrency() -> None:
    recent = _run("a", 3, 1000, created_at=NOW - timedelta(minutes=5))
    assert "min interval" in _decide([recent], 9, 5000).reason
    running = _run("b", 9, 5000, status="running")
    assert "running" in _decide([_run("a", 3, 1000), running], 10, 9000).reason
    assert _decide([_run("a", 3, 1000), running], 10, 9000, max_concurrent=2).launch


def test_changing_the_split_seed_is_refused() -> None:
    other = _run("a", 3, 1000, config={"split_seed": 1})
    assert "split_seed 0 differs from run a's 1" in _decide([other], 9, 5000).reason


def test_kto_counts_rated_rows_and_pins_both_tables() -> None:
    last = _run("a", 3, 1000, kto_version=5, kto_rows=4000)
    # 500 new pairs alone are below the threshold; with 600 new ratings a KTO job starts.
    assert not _decide([last], 4, 1500, method="kto", kto_version=6, kto_rows=4000).launch
    kto = _decide([last], 4, 1500, method="kto", kto_version=6, kto_rows=4600)
    assert kto.launch and kto.new_pairs == 1100 and "pairs and KTO rows" in kto.reason
    # A DPO job ignores ratings; a KTO job may run on the same pairs once the ratings grew.
    assert not _decide([last], 4, 1500, kto_version=6, kto_rows=4600).launch
    assert _decide([last], 3, 1000, method="kto", kto_version=6, kto_rows=5000).launch
    assert "already has run a" in _decide([last], 3, 1000, method="kto", kto_version=5).reason


def test_config_hash_covers_what_determines_the_result() -> None:
    base = JobSpec(
        run_id="r",
        table_uri="/lake/dpo_pairs",
        dataset_version=3,
        kto_table_uri="/lake/kto_examples",
        kto_version=1,
        registry_uri="/lake/training_runs",
        artifact_dir="/runs/r",
        job=JobConfig(),
        gate=GateSettings(),
        code_version="0.1.0+gabc",
    )
    job = base.job
    variants = {
        "dataset uri": {"table_uri": "/other/dpo_pairs"},
        "dataset version": {"dataset_version": 4},
        "kto version": {"kto_version": 2},
        "split seed": {"job": job.model_copy(update={"split_seed": 1})},
        "method": {"job": job.model_copy(update={"method": "kto"})},
        "hyper-parameter": {"job": job.model_copy(update={"learning_rate": 1e-5})},
        "base model": {"job": job.model_copy(update={"base_model": "other/model"})},
        "code version": {"code_version": "0.1.0+gdef"},
    }
    hashes = {name: base.model_copy(update=u).config_hash() for name, u in variants.items()}
    assert base.config_hash() not in hashes.values()
    assert len(set(hashes.values())) == len(variants)
    # Where the run writes its files and how it is gated do not change the trained model.
    same = base.model_copy(
        update={"artifact_dir": "/elsewhere", "gate": GateSettings(confidence=0.9)}
    )
    assert same.config_hash() == base.config_hash()


def test_registry_fold_and_champion_stack(tmp_path: Path) -> None:
    reg = Registry(str(tmp_path / "training_runs"))
    t = NOW
    reg.append(
        RegistryEvent(
            kind="run",
            run_id="r1",
            status="pending",
            actor="w",
            dataset_version=1,
            rows=10,
            recorded_at=t,
        ),
        RegistryEvent(
            kind="run",
            run_id="r1",
            status="running",
            actor="j",
            train_rows=9,
            recorded_at=t + timedelta(seconds=1),
        ),
        RegistryEvent(
            kind="run",
            run_id="r1",
            status="succeeded",
            actor="j",
            reason="ok",
            artifact_uri="/a/r1",
            metrics_json=json.dumps({"x": 1}),
            recorded_at=t + timedelta(seconds=2),
        ),
        RegistryEvent(
            kind="run",
            run_id="r2",
            status="rejected",
            actor="j",
            reason="no gain",
            artifact_uri="/a/r2",
            recorded_at=t + timedelta(seconds=3),
        ),
    )
    r1 = reg.run("r1")
    assert (r1.status, r1.dataset_version, r1.rows, r1.train_rows, r1.reason) == (
        "succeeded",
        1,
        10,
        9,
        "ok",
    )
    assert r1.metrics == {"x": 1} and r1.created_at == t
    reg.promote("r1", actor="me")
    reg.promote("r2", actor="me", reason="override")
    assert reg.champion_stack() == ["r1", "r2"]
    with pytest.raises(Exception, match="already the champion"):
        reg.promote("r2", actor="me")
    assert reg.rollback(actor="me").run_id == "r1"  # type: ignore[union-attr]
    assert reg.run("r2").status == "rolled_back"
    assert reg.champion().run_id == "r1"  # type: ignore[union-attr]
    reg.pin(5, actor="me")
    reg.pin(None, actor="me")
    assert reg.pinned_version() is None


def test_a_registry_from_before_the_gate_columns_gains_them(tmp_path: Path) -> None:
    uri = str(tmp_path / "training_runs")
    old_schema = pa.schema([f for f in TRAINING_RUNS if f.name not in _NEW_COLUMNS])
    old = RegistryEvent(kind="run", run_id="old", status="promoted", actor="w", recorded_at=NOW)
    row = {k: v for k, v in old.row().items() if k in old_schema.names}
    write_deltalake(uri, pa.Table.from_pylist([row], schema=old_schema))
    reg = Registry(uri)
    reg.append(
        RegistryEvent(
            kind="run",
            run_id="new",
            status="inconclusive",
            actor="j",
            method="kto",
            worst_slice="feature:rare",
            slice_gap=0.25,
            gain_ci_low=-0.01,
            gain_ci_high=0.04,
            recorded_at=NOW + timedelta(seconds=1),
        )
    )
    runs = reg.runs()
    assert runs["old"].status == "promoted" and runs["old"].worst_slice is None
    new = runs["new"]
    assert (new.method, new.worst_slice, new.slice_gap) == ("kto", "feature:rare", 0.25)
    assert new.summary()["gain_interval"] == [-0.01, 0.04]
    assert set(_NEW_COLUMNS) <= set(DeltaTable(uri).schema().to_arrow().names)


def test_kubernetes_job_manifest_shape(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    settings = TrainerSettings(
        lake={"uri": str(lake)},  # type: ignore[arg-type]
        launcher="kubernetes",
        kubernetes=KubernetesSettings(
            gpus=2,
            env_secret="flywheel-secrets",  # noqa: S106 - a Secret's name
            node_selector={"gpu": "h100"},
        ),
    )
    spec = JobSpec(
        run_id="20260101-000000-abcdef12",
        table_uri=str(lake / "dpo_pairs"),
        dataset_version=42,
        registry_uri=str(lake / "training_runs"),
        artifact_dir=str(tmp_path / "runs" / "x"),
        job=JobConfig(),
        gate=GateSettings(),
        code_version="0.1.0",
    )
    m = render_job(spec, settings)
    assert m["apiVersion"] == "batch/v1" and m["kind"] == "Job"
    assert m["metadata"]["name"] == "flywheel-train-20260101-000000-abcdef12"
    assert m["spec"]["backoffLimit"] == 0  # a retried pod would train the version twice
    pod = m["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["nodeSelector"] == {"gpu": "h100"}
    (c,) = pod["containers"]
    assert c["resources"]["limits"][GPU_RESOURCE] == "2"
    assert {v["mountPath"] for v in c["volumeMounts"]} == {"/lake", "/artifacts"}
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]}
    assert claims == {"lake": "flywheel-lake", "artifacts": "flywheel-artifacts"}
    assert c["envFrom"] == [{"secretRef": {"name": "flywheel-secrets"}}]
    assert c["command"] == ["python", "-m", "flywheel_trainer.job"]
    inner = JobSpec.model_validate_json(c["args"][c["args"].index("--spec-json") + 1])
    # The pod sees the pinned version at the mounted paths.
    assert inner.dataset_version == 42
    assert inner.table_uri == "/lake/dpo_pairs" and inner.registry_uri == "/lake/training_runs"
    assert inner.artifact_dir == "/artifacts/20260101-000000-abcdef12"
