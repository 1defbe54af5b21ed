"""The watcher against the real broker and real tables: the threshold triggers one job, which
the local launcher runs as a real (tiny) training subprocess; a SIGKILLed and restarted trainer
adopts the running job instead of launching a second one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from flywheel_common.settings import KafkaSettings
from flywheel_trainer.launchers.local import LocalLauncher
from flywheel_trainer.registry import Registry
from flywheel_trainer.synthetic import generate_pairs
from flywheel_trainer.watcher import Watcher

from .conftest import announce, append_pairs, make_settings, tiny_job, wait_for

pytestmark = pytest.mark.trainer

JOB_TIMEOUT_S = 240  # a job subprocess imports torch + transformers + TRL (~25 s on 2 cores)


def test_threshold_triggers_one_job_end_to_end(
    kafka_settings: KafkaSettings, lake: Path, base_model: Path
) -> None:
    # A long poll interval: after the first tick only a GoldCommitted event wakes the watcher.
    settings = make_settings(
        lake, tiny_job(base_model, epochs=1.0), kafka=kafka_settings, poll_interval_s=600
    )
    uri = settings.pairs_uri()
    watcher = Watcher(settings, LocalLauncher(settings))
    registry = watcher.registry
    stop = threading.Event()
    thread = threading.Thread(target=watcher.run, args=(stop,), daemon=True)
    thread.start()
    try:
        v0 = append_pairs(uri, generate_pairs(30, seed=1))
        announce(kafka_settings, uri, v0, 30)
        wait_for(lambda: watcher.events_seen >= 1, timeout=30, what="the first gold event")
        assert registry.runs() == {}  # 30 < threshold 40

        v1 = append_pairs(uri, generate_pairs(20, seed=2), first_offset=30)
        announce(kafka_settings, uri, v1, 20)
        run = wait_for(
            lambda: next(iter(registry.runs().values()), None), timeout=30, what="a launch"
        )
        assert run.dataset_version == v1 and run.rows == 50
        done = wait_for(
            lambda: (
                (r := registry.run(run.run_id)).status not in ("pending", "launched", "running")
                and r
            ),
            timeout=JOB_TIMEOUT_S,
            what="the job to finish",
        )
        log = (Path(done.artifact_uri) / "job.log").read_text()
        assert done.status in ("promoted", "rejected", "inconclusive"), log
        assert '"msg": "train step"' in log  # progress was logged while it ran
        # More events for the same version launch nothing.
        announce(kafka_settings, uri, v1, 0)
        wait_for(lambda: watcher.events_seen >= 3, timeout=30, what="the third gold event")
        assert len(registry.runs()) == 1
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive()


def _start_trainer(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "flywheel_trainer"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def test_killed_and_restarted_trainer_does_not_launch_twice(
    kafka_settings: KafkaSettings, lake: Path, base_model: Path, tmp_path: Path
) -> None:
    settings = make_settings(lake, tiny_job(base_model, epochs=1.0), kafka=kafka_settings)
    uri = settings.pairs_uri()
    append_pairs(uri, generate_pairs(50, seed=5))
    env = {
        **os.environ,
        "FLYWHEEL_TRAINER_KAFKA": kafka_settings.model_dump_json(),
        "FLYWHEEL_TRAINER_LAKE__URI": str(lake),
        "FLYWHEEL_TRAINER_ARTIFACT_STORE": settings.artifact_store,
        "FLYWHEEL_TRAINER_JOB": settings.job.model_dump_json(),
        "FLYWHEEL_TRAINER_THRESHOLD": "40",
        "FLYWHEEL_TRAINER_MIN_INTERVAL_S": "0",
        "FLYWHEEL_TRAINER_POLL_INTERVAL_S": "0.5",
    }
    registry = Registry(settings.registry_uri())
    first_log, second_log = tmp_path / "trainer-1.log", tmp_path / "trainer-2.log"
    first = _start_trainer(env, first_log)
    try:
        run = wait_for(
            lambda: next((r for r in registry.runs().values() if r.status == "launched"), None),
            timeout=60,
            what="the first trainer to launch",
        )
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    assert registry.run(run.run_id).active  # the job outlives the trainer

    second = _start_trainer(env, second_log)
    try:
        wait_for(
            lambda: "adopted run of an earlier trainer" in second_log.read_text(),
            timeout=60,
            what="the restarted trainer to adopt the job",
        )
        done = wait_for(
            lambda: not (r := registry.run(run.run_id)).active and r,
            timeout=JOB_TIMEOUT_S,
            what="the adopted job to finish",
        )
        assert done.status in ("promoted", "rejected", "inconclusive"), done.reason
        # The restarted trainer looks again after the job ended and still launches nothing.
        wait_for(
            lambda: "already has run" in second_log.read_text(),
            timeout=30,
            what="a decision after the job ended",
        )
        assert list(registry.runs()) == [run.run_id]
    finally:
        second.send_signal(signal.SIGTERM)
        code = second.wait(timeout=30)
    assert code == 0, second_log.read_text()[-2000:]
