"""Exactly once under kill -9: the curator is killed at random moments and at the named fault
points (before the Parquet write, between the write and the Delta commit, between the Delta
commit and the Kafka commit) while events flow; afterwards every input event that makes a row
is in the tables exactly once. The traffic includes regenerations and opposite ratings, whose
pairs form through the pairing topic: its facts are in flight at every kill too."""

from __future__ import annotations

import contextlib
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
    feedback_event,
    read_table,
    report,
    run_event,
    settings_for,
    spawn,
    wait_until,
)

KILLS = 20
MAX_ROUNDS = 40
POINTS = ("before_parquet_write", "after_write_before_commit", "after_commit_before_kafka_commit")


class Expected:
    """Event ids whose coordinates must each be in the tables once, and groups of which
    exactly one must be (a paired outcome is written at whichever rating completes it)."""

    def __init__(self) -> None:
        self.once: list[str] = []
        self.one_of: list[tuple[str, str]] = []


def _produce(
    p: EventProducer, stop: threading.Event, done: threading.Event, want: Expected
) -> None:
    """About 150 edits (and half as many runs) a second, plus a regeneration that is copied
    and a prompt rated both ways every 30 edits, until told to stop."""
    i = 0
    while not stop.is_set():
        for _ in range(30):
            rid = str(uuid.uuid4())
            if i % 2 == 0:
                p.send("run", run_event(rid))
            # A unique final text per edit: every edit makes exactly one row (pair or rejection).
            edit = edit_event(rid, final=f"Revenue went up this quarter, note {i}.")
            p.send("edit", edit)
            want.once.append(edit["event_id"])
            i += 1
        parent, child = str(uuid.uuid4()), str(uuid.uuid4())
        p.send("run", run_event(parent, response=f"Costs went up in quarter {i}, as feared."))
        text = f"Revenue rose in quarter {i}; costs rose a little less than revenue."
        p.send("run", run_event(child, response=text, parent_run_id=parent))
        copy = feedback_event(child, "copy")
        p.send("feedback", copy)
        want.once.append(copy["event_id"])
        up, down = str(uuid.uuid4()), str(uuid.uuid4())
        prompt = f"Explain partition {i} of the topic."
        p.send("run", run_event(up, prompt=prompt, response=f"Partition {i} orders its keys."))
        p.send("run", run_event(down, prompt=prompt, response=f"Partition {i} is a kind of fish."))
        ratings = feedback_event(up, "thumbs", 1.0), feedback_event(down, "thumbs", -1.0)
        for rating in ratings:
            p.send("feedback", rating)
        want.one_of.append((ratings[0]["event_id"], ratings[1]["event_id"]))
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
    want = Expected()
    feeder = threading.Thread(
        target=_produce, args=(producer, stop_feeding, produced, want), daemon=True
    )
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

    once = {producer.coord_of[e] for e in want.once}
    groups = [(producer.coord_of[a], producer.coord_of[b]) for a, b in want.one_of]
    assert len(once) > 1_000 and len(groups) > 30

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
            return found if len(set(found)) >= len(once) + len(groups) else None

        # A timeout is not the verdict: what is missing is counted below.
        with contextlib.suppress(AssertionError):
            wait_until(all_in, timeout=120, interval=0.5, what="every pair in the lake")
    finally:
        final.send_signal(signal.SIGTERM)
        assert final.wait(60) == 0
    found = coords(read_table(lake, "dpo_pairs")) + coords(read_table(lake, "rejected_candidates"))
    counts = Counter(found)
    duplicated = sum(n - 1 for n in counts.values() if n > 1)
    # A paired outcome written at both of its ratings is a duplicate too.
    duplicated += sum(1 for a, b in groups if a in counts and b in counts)
    missing = sorted(once - set(counts)) + [
        a for a, b in groups if a not in counts and b not in counts
    ]
    lost = len(missing)
    extra = set(counts) - once - {c for g in groups for c in g}
    by_topic = Counter(t.rsplit(".", 2)[-2] for t, _, _ in missing)
    summary = (
        f"kills={dict(kills)} lost={lost} {dict(by_topic)} duplicated={duplicated} "
        f"extra={len(extra)}; first lost: {missing[:3]}"
    )
    report(
        "kill -9 loop",
        events=len(producer.delivered),
        rows_expected=len(once) + len(groups),
        kills=dict(kills),
        lost=lost,
        duplicated=duplicated,
    )
    assert (lost, duplicated, len(extra)) == (0, 0, 0), summary
