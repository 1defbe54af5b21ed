"""Pins, restores, history and export on real Delta tables: what a job reads changes with them,
and a restore is recorded with the Kafka offsets it removed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from deltalake import DeltaTable
from flywheel_common.cli import main as flywheel
from flywheel_common.lake import txn_app_id
from flywheel_trainer.dataset import is_eval_pair, read_snapshot
from flywheel_trainer.launchers.kubernetes import KubernetesLauncher
from flywheel_trainer.registry import Registry
from flywheel_trainer.settings import KubernetesSettings, TrainerSettings
from flywheel_trainer.synthetic import generate_pairs
from flywheel_trainer.watcher import Watcher

from .conftest import CURATOR_GROUP, TOPIC, append_pairs, make_settings, tiny_job


@pytest.fixture
def settings(lake: Path, monkeypatch: pytest.MonkeyPatch) -> TrainerSettings:
    monkeypatch.setenv("FLYWHEEL_TRAINER_LAKE__URI", str(lake))
    # The kubernetes launcher without a cluster only renders its manifest: a real launcher path
    # that starts nothing, so these tests see exactly which version a job would be given.
    return make_settings(
        lake, tiny_job(Path("unused")), launcher="kubernetes", kubernetes=KubernetesSettings()
    )


def _launch_once(settings: TrainerSettings) -> int | None:
    """Let the watcher decide; return the dataset version of the run it recorded, if any."""
    watcher = Watcher(settings, KubernetesLauncher(settings))
    decision = watcher.tick()
    if not decision.launch:
        return None
    runs = sorted(watcher.registry.runs().values(), key=lambda r: r.created_at)
    return runs[-1].dataset_version


def _fail_active(settings: TrainerSettings) -> None:
    """End the recorded (never started) runs so the next decision is not blocked by them."""
    registry = Registry(settings.registry_uri())
    for run in registry.runs().values():
        if run.active:
            registry.transition(run.run_id, "failed", actor="test", reason="not started")


def test_split_is_deterministic_and_monotone() -> None:
    ids = [f"pair-{i}" for i in range(2000)]
    small = {i for i in ids if is_eval_pair(i, 0.1)}
    large = {i for i in ids if is_eval_pair(i, 0.2)}
    assert small <= large  # raising the fraction never moves an eval pair into training
    assert 150 < len(small) < 250
    assert small == {i for i in ids if is_eval_pair(i, 0.1)}


def test_pin_then_restore_change_what_a_job_reads(
    settings: TrainerSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    uri = settings.pairs_uri()
    good = generate_pairs(60, seed=10)
    poisoned = generate_pairs(45, seed=66)
    v0 = append_pairs(uri, good, partition=0, first_offset=0)
    v1 = append_pairs(uri, poisoned[:30], partition=0, first_offset=60)
    v2 = append_pairs(uri, poisoned[30:], partition=1, first_offset=500)
    assert (v0, v1, v2) == (0, 1, 2)

    # Pinned at v0: the job is given v0 and reads exactly its 60 rows.
    assert flywheel(["data", "pin", "--version", "0", "--reason", "suspicious batch"]) == 0
    pinned = _launch_once(settings)
    assert pinned == 0
    assert read_snapshot(uri, 0, eval_fraction=0.2).rows == 60
    _fail_active(settings)
    assert _launch_once(settings) is None  # v0 already has a run: never twice

    # Restore to v0: the table's head now holds v0's rows, and the poisoned offsets are recorded.
    assert flywheel(["data", "restore", "--version", "0", "--reason", "poisoned edits"]) == 0
    out = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert out["new_version"] == 3
    assert out["removed_offsets"] == [
        {"topic": TOPIC, "partition": 0, "first": 60, "last": 89, "count": 30},
        {"topic": TOPIC, "partition": 1, "first": 500, "last": 514, "count": 15},
    ]
    dt = DeltaTable(uri)
    assert dt.version() == 3
    restored = read_snapshot(uri, 3, eval_fraction=0.2)
    original = read_snapshot(uri, 0, eval_fraction=0.2)
    assert restored.rows == 60
    assert set(restored.train.column("pair_id").to_pylist()) == set(
        original.train.column("pair_id").to_pylist()
    )
    # The curator's offsets stay past the poisoned batch: it will not consume it again.
    assert dt.transaction_version(txn_app_id(CURATOR_GROUP, TOPIC, 0)) == 90
    assert dt.transaction_version(txn_app_id(CURATOR_GROUP, TOPIC, 1)) == 515
    record = Registry(settings.registry_uri()).restores()[-1]
    assert (record.from_version, record.to_version, record.commit_version) == (2, 0, 3)
    assert record.reason == "poisoned edits" and record.actor.startswith("cli:")

    # Unpinned, new clean pairs arrive: the job reads the restored rows plus the new ones only.
    assert flywheel(["data", "unpin"]) == 0
    v4 = append_pairs(uri, generate_pairs(45, seed=11), partition=0, first_offset=90)
    assert _launch_once(settings) == v4
    rows = read_snapshot(uri, v4, eval_fraction=0.2)
    ids = set(rows.train.column("pair_id").to_pylist()) | set(
        rows.eval.column("pair_id").to_pylist()
    )
    assert rows.rows == 105
    poisoned_ids = set(
        read_snapshot(uri, 2, eval_fraction=0.2).train.column("pair_id").to_pylist()
    ) - set(original.train.column("pair_id").to_pylist())
    assert poisoned_ids and not (poisoned_ids & ids)

    capsys.readouterr()
    assert flywheel(["data", "history", "--json"]) == 0
    hist = json.loads(capsys.readouterr().out)
    by_version = {h["version"]: h for h in hist["versions"]}
    assert by_version[3]["operation"] == "RESTORE" and "poisoned edits" in by_version[3]["note"]
    assert by_version[0]["runs"] and by_version[4]["runs"]
    assert by_version[2]["rows"] == 105 and by_version[3]["rows"] == 60


def test_export_is_trl_conversational_jsonl(settings: TrainerSettings, tmp_path: Path) -> None:
    uri = settings.pairs_uri()
    append_pairs(uri, generate_pairs(50, seed=3))
    append_pairs(uri, generate_pairs(10, seed=4), first_offset=50)
    out = tmp_path / "v0.jsonl"
    assert flywheel(["data", "export", "--version", "0", "--format", "trl", "-o", str(out)]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 50
    first = records[0]
    assert set(first) == {"prompt", "chosen", "rejected"}
    assert first["prompt"][0]["role"] == "user"
    assert first["chosen"] == [{"role": "assistant", "content": first["chosen"][0]["content"]}]
    assert first["rejected"][0]["role"] == "assistant"
    ev = tmp_path / "eval.jsonl"
    assert flywheel(["data", "export", "--version", "0", "--split", "eval", "-o", str(ev)]) == 0
    assert 0 < len(ev.read_text().splitlines()) < 50
