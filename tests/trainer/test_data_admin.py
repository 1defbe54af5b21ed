"""Pins, restores, history and export on real Delta tables: what a job reads changes with them,
and a restore is recorded with the Kafka offsets it removed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from deltalake import DeltaTable
from flywheel_common.cli import main as flywheel
from flywheel_common.lake import txn_app_id
from flywheel_trainer.dataset import read_rows
from flywheel_trainer.launchers.kubernetes import KubernetesLauncher
from flywheel_trainer.registry import Registry
from flywheel_trainer.settings import KubernetesSettings, TrainerSettings
from flywheel_trainer.split import normalise_text
from flywheel_trainer.synthetic import generate_examples, generate_pairs
from flywheel_trainer.watcher import Watcher

from .conftest import CURATOR_GROUP, TOPIC, append_kto, append_pairs, make_settings, tiny_job


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
    assert read_rows(uri, 0, kind="pairs", seed=0).num_rows == 60
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
    restored = read_rows(uri, 3, kind="pairs", seed=0)
    original = read_rows(uri, 0, kind="pairs", seed=0)
    assert restored.num_rows == 60
    assert restored.column("pair_id").to_pylist() == original.column("pair_id").to_pylist()
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
    rows = read_rows(uri, v4, kind="pairs", seed=0)
    ids = set(rows.column("pair_id").to_pylist())
    assert rows.num_rows == 105
    poisoned_ids = set(read_rows(uri, 2, kind="pairs", seed=0).column("pair_id").to_pylist()) - set(
        original.column("pair_id").to_pylist()
    )
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


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_export_trl_kto_is_what_a_kto_job_trains_on(
    settings: TrainerSettings, tmp_path: Path
) -> None:
    pairs = generate_pairs(40, seed=3, per_prompt=2)
    append_pairs(settings.pairs_uri(), pairs)
    out = tmp_path / "kto.jsonl"
    argv = ["data", "export", "--version", "0", "--format", "trl-kto", "-o", str(out)]
    # No kto_examples table yet: the pairs unpaired, chosen desirable, rejected undesirable.
    assert flywheel(argv) == 0
    rows = _jsonl(out)
    assert len(rows) == 80 and set(rows[0]) == {"prompt", "completion", "label"}
    assert sum(r["label"] for r in rows) == 40
    assert rows[0]["completion"][0]["role"] == "assistant"

    examples = generate_examples(30, seed=5, desirable_share=0.3)
    append_kto(settings.kto_uri(), examples)
    assert flywheel(argv) == 0
    rows = _jsonl(out)
    assert len(rows) == 80 + 30
    rated = {r["completion"][0]["content"]: r["label"] for r in rows[:30]}
    assert rated == {e.completion: e.label for e in examples}

    # The held-out and training exports never share a prompt, in either table.
    train, held = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    assert flywheel([*argv[:-1], str(train), "--split", "train"]) == 0
    assert flywheel([*argv[:-1], str(held), "--split", "eval"]) == 0
    prompts = [
        {normalise_text(r["prompt"][0]["content"]) for r in _jsonl(p)} for p in (train, held)
    ]
    assert prompts[0] and prompts[1] and not prompts[0] & prompts[1]


def test_a_configured_golden_table_is_pinned_and_a_missing_one_blocks_launches(
    settings: TrainerSettings, lake: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    guarded = settings.model_copy(update={"golden_table": "golden"})
    append_pairs(settings.pairs_uri(), generate_pairs(60, seed=10))
    decision = Watcher(guarded, KubernetesLauncher(guarded)).tick()
    assert not decision.launch and "golden table" in decision.reason
    assert "does not exist" in decision.reason
    assert flywheel(["status"]) == 0  # unguarded settings from the environment: said loudly
    out = capsys.readouterr().out
    assert "NO GOLDEN SET CONFIGURED" in out and "!!!!" in out

    append_pairs(str(lake / "golden"), generate_pairs(8, seed=99))
    assert _launch_once(guarded) == 0
    (run,) = Registry(guarded.registry_uri()).runs().values()
    assert run.golden == f"{lake / 'golden'}@0"
    spec = json.loads((Path(run.artifact_uri) / "job.json").read_text())  # type: ignore[arg-type]
    inner = json.loads(spec["spec"]["template"]["spec"]["containers"][0]["args"][1])
    assert (inner["golden_uri"], inner["golden_version"]) == ("/lake/golden", 0)
