"""Exactly once under kill -9: the curator is killed at random moments and at the named fault
points (before the Parquet write, between the write and the Delta commit, between the Delta
commit and the Kafka commit) while events flow; afterwards every input event that makes a row
is in the tables exactly once."""

from __future__ import annotations

import random
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from flywheel_common.settings import KafkaSettings

from tests.curator.conftest import (
    EventProducer,
    coords,
    edit_event,
    read_table,
    run_event,
    settings_for,
    spawn,
    wait_until,
)

KILLS = 20
MAX_ROUNDS = 40
POINTS = ("before_parquet_write", "after_write_before_commit", "after_commit_before_kafka_commit")


def _produce(p: EventProducer, stop: threading.Event, done: threading.Event) -> None:
    """About 150 edits (and half as many runs) a second until told to stop."""
    i = 0
    while not stop.is_set():
        for _ in range(30):
            rid = str(uuid.uuid4())
            if i % 2 == 0:
                p.send("run", run_event(rid))
            # A unique final text per edit: every edit makes exactly one row (pair or rejection).
            p.send("edit", edit_event(rid, final=f"Revenue went up this quarter, note {i}."))
            i += 1
        p.producer.flush(10)
        time.sleep(0.2)
    p.flush()
    done.set()


@pytest.mark.slow
def test_kill_9_loses_and_duplicates_nothing(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    settings = settings_for(kafka_settings, lake, tmp_path / "state")
    producer = EventProducer(kafka_settings)
    stop_feeding, produced = threading.Event(), threading.Event()
    feeder = threading.Thread(target=_produce, args=(producer, stop_feeding, produced), daemon=True)
    feeder.start()

    rng = random.Random(11)
    kills = Counter[str]()
    env = {
        # Static membership: a restart takes the partitions back without a session timeout.
        "FLYWHEEL_CURATOR_STATIC_MEMBER_ID": "crash-test",
        # Toxicity scoring is beside the point here and its model is slow to load.
        "FLYWHEEL_CURATOR_FILTERS__TOXICITY__ENABLED": "false",
    }
    # Events flow the whole time; each round kills the curator mid-stream.
    while kills.total() < MAX_ROUNDS and (
        kills.total() < KILLS or not all(kills[p] for p in POINTS)
    ):
        log = tmp_path / f"curator-{kills.total()}.log"
        # Each run arms one fault point in turn; every fourth run only meets the external kill.
        n = kills.total()
        point = POINTS[n % 3]
        faults = f'{{"crash_at": ["{point}"], "probability": {0.0 if n % 4 == 3 else 0.3}}}'
        proc = spawn(settings, log, FLYWHEEL_CURATOR_FAULTS=faults, **env)
        # Kill only once it consumes: a kill during interpreter start-up tests nothing.
        wait_until(
            lambda log=log, proc=proc: proc.poll() is not None or "assigned" in log.read_text(),
            timeout=60,
            what="curator assigned",
        )
        try:
            proc.wait(timeout=rng.uniform(0.3, 3.0))
            assert proc.returncode == -signal.SIGKILL, f"curator exited {proc.returncode}"
            kills[point] += 1
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            kills["external"] += 1
    stop_feeding.set()
    feeder.join()
    assert kills.total() >= KILLS
    assert all(kills[p] >= 1 for p in POINTS), kills

    edits = {c for c in producer.delivered if c[0] == kafka_settings.topics.edits}
    assert len(edits) > 1_000

    final = spawn(
        settings,
        tmp_path / "final.log",
        **env,
    )
    try:
        wait_until(lambda: "assigned" in (tmp_path / "final.log").read_text(), what="assigned")

        def all_in() -> list[tuple[str, int, int]] | None:
            found = coords(read_table(lake, "dpo_pairs")) + coords(
                read_table(lake, "rejected_candidates")
            )
            return found if len(set(found)) >= len(edits) else None

        found = wait_until(all_in, timeout=120, interval=0.5, what="every edit in the lake")
    finally:
        final.send_signal(signal.SIGTERM)
        assert final.wait(60) == 0
    found = coords(read_table(lake, "dpo_pairs")) + coords(read_table(lake, "rejected_candidates"))
    counts = Counter(found)
    duplicated = sum(n - 1 for n in counts.values() if n > 1)
    lost = len(edits - set(counts))
    extra = set(counts) - edits
    summary = f"kills={dict(kills)} lost={lost} duplicated={duplicated} extra={len(extra)}"
    assert (lost, duplicated, len(extra)) == (0, 0, 0), summary
