"""Topics recreated under an existing lake: the curator refuses to start (or to go on), names
the partitions and offsets and the two ways forward, and never lets ``auto.offset.reset`` pick
a position; ``flywheel data reset-offsets`` is the explicit way on, recorded in the tables."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from confluent_kafka import KafkaException
from deltalake import DeltaTable
from flywheel_common.kafka import ensure_topics, make_admin
from flywheel_common.settings import KafkaSettings
from flywheel_curator.settings import CuratorSettings

from tests.curator.conftest import (
    EventProducer,
    ThreadedCurator,
    coords,
    edit_event,
    env_for,
    read_table,
    report,
    settings_for,
    spawn,
    wait_until,
)

ENV = {"FLYWHEEL_CURATOR_FILTERS__TOXICITY__ENABLED": "false"}


def _recreate(kafka: KafkaSettings) -> None:
    """Delete the curator's input topics and create them again, empty."""
    t = kafka.topics
    names = [t.runs, t.feedback, t.edits, t.pairing]
    admin = make_admin(kafka)
    for future in admin.delete_topics(names, operation_timeout=30).values():
        future.result(30)
    wait_until(
        lambda: not set(names) & set(admin.list_topics(timeout=10).topics),
        what="topics deleted",
    )

    def created() -> bool:
        try:
            ensure_topics(kafka, names, partitions=kafka.partitions)
        except KafkaException:
            return False  # still being deleted on the broker
        return True

    wait_until(created, timeout=60, interval=0.5, what="topics created again")


def _edits(producer: EventProducer, n: int, tag: str) -> set[tuple[str, int, int]]:
    sent = []
    for i in range(n):
        edit = edit_event(str(uuid.uuid4()), final=f"Revenue went up, see note {tag}-{i}.")
        producer.send("edit", edit)
        sent.append(edit["event_id"])
    producer.flush()
    return {producer.coord_of[e] for e in sent}


def _rows(lake: Path) -> list[tuple[str, int, int]]:
    return coords(read_table(lake, "dpo_pairs")) + coords(read_table(lake, "rejected_candidates"))


def _flywheel(settings: CuratorSettings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flywheel_common.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**env_for(settings), "FLYWHEEL_CURATOR_KAFKA": settings.kafka.model_dump_json()},
    )


def test_recreated_topics_refuse_a_start_until_an_explicit_reset(
    kafka_settings: KafkaSettings,
    tmp_path: Path,
    curator_factory: Callable[..., ThreadedCurator],
) -> None:
    """(Before: the curator started, ``auto.offset.reset`` moved it to the new topics' start,
    and their first events were skipped as replays of offsets the lake already had.)"""
    lake = tmp_path / "lake"
    settings = settings_for(kafka_settings, lake, tmp_path / "state")
    first = _edits(EventProducer(kafka_settings), 12, "old")
    running = curator_factory(settings)
    wait_until(lambda: first <= set(_rows(lake)), what="the first edits in the lake")
    running.close()

    _recreate(kafka_settings)
    second = _edits(EventProducer(kafka_settings), 3, "new")
    proc = spawn(settings, tmp_path / "refused.log", **ENV)
    assert proc.wait(90) == 2
    said = (tmp_path / "refused.log").read_text()
    assert "were replaced" in said and "its id changed" in said
    assert f"{kafka_settings.topics.edits}:" in said
    assert "flywheel replay" in said and "flywheel data reset-offsets" in said
    assert sorted(_rows(lake)) == sorted(first)  # nothing read, nothing written

    out = _flywheel(
        settings,
        "data",
        "reset-offsets",
        "--lake",
        str(lake),
        "--group",
        settings.group_id,
        "--reason",
        "topics recreated by the test",
        "--actor",
        "t",
    )
    assert out.returncode == 0, out.stderr
    # Every partition of the recreated topics, the one the lake is not ahead of too.
    for p in range(kafka_settings.partitions):
        assert f"{kafka_settings.topics.edits}[{p}]: offset" in out.stdout
    assert "-> 0" in out.stdout
    info = DeltaTable(str(lake / "dpo_pairs")).history(1)[0]
    assert info["flywheel.operation"] == "reset-offsets"
    assert (info["flywheel.actor"], info["flywheel.reason"]) == (
        "t",
        "topics recreated by the test",
    )
    assert {o["to"] for o in json.loads(info["flywheel.offsets"])} == {0}

    again = spawn(settings, tmp_path / "after.log", **ENV)
    try:
        wait_until(lambda: len(_rows(lake)) >= len(first) + len(second), what="the new edits")
    finally:
        again.send_signal(signal.SIGTERM)
        assert again.wait(60) == 0
    # The new topics' offsets restart at 0: old and new rows share coordinates, so count.
    report(
        "topics recreated under the lake",
        events=len(first) + len(second),
        refused_exit_code=2,
        written_while_refused=0,
        lost=len(first) + len(second) - len(_rows(lake)),
    )
    assert len(_rows(lake)) == len(first) + len(second)
    assert second <= set(_rows(lake))


def test_topics_recreated_under_a_running_curator_stop_it(
    kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    """Recreated while the curator runs: it stops with the same explanation rather than let
    the consumer pick a position by itself."""
    lake = tmp_path / "lake"
    settings = settings_for(kafka_settings, lake, tmp_path / "state")
    first = _edits(EventProducer(kafka_settings), 12, "old")
    proc = spawn(settings, tmp_path / "running.log", **ENV)
    try:
        wait_until(lambda: first <= set(_rows(lake)), what="the first edits in the lake")
        _recreate(kafka_settings)
        deadline = time.monotonic() + 90
        while proc.poll() is None and time.monotonic() < deadline:
            _edits(EventProducer(kafka_settings), 1, f"new-{os.getpid()}")
            time.sleep(1)
        code = proc.poll()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
    said = (tmp_path / "running.log").read_text()
    assert code == 2, said[-3000:]
    assert "were replaced" in said and "flywheel data reset-offsets" in said
