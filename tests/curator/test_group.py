"""Two curators in one group: a rebalance, and a zombie paused with SIGSTOP past its session
timeout that wakes up after the other took its partitions. Nothing lost, nothing twice."""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from flywheel_common.partitioner import partition_for
from flywheel_common.settings import KafkaSettings

from tests.curator.conftest import (
    EventProducer,
    coords,
    edit_event,
    feedback_event,
    read_table,
    run_event,
    settings_for,
    spawn,
    wait_until,
)

EDITS = 1_500
ENV = {"FLYWHEEL_CURATOR_FILTERS__TOXICITY__ENABLED": "false"}


def _assignments(log: Path) -> int:
    return log.read_text().count('"msg": "assigned"') if log.exists() else 0


def _written(lake: Path) -> int:
    # Most of these edits are near-duplicates of each other: count both pair tables.
    return len(read_table(lake, "rejected_candidates")) + len(read_table(lake, "dpo_pairs"))


@pytest.mark.slow
def test_rebalance_and_sigstop_zombie(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    group = f"g-{uuid.uuid4().hex[:8]}"
    a_settings = settings_for(kafka_settings, lake, tmp_path / "a", group=group)
    b_settings = settings_for(kafka_settings, lake, tmp_path / "b", group=group)
    p = EventProducer(kafka_settings)
    done = threading.Event()

    def feed() -> None:
        for i in range(EDITS):
            p.send("edit", edit_event(str(uuid.uuid4()), final=f"Revenue went up, see note {i}."))
            if i % 20 == 0:  # about 30 s of traffic: it flows through the takeover
                p.producer.flush(10)
                time.sleep(0.4)
        p.flush()
        done.set()

    a_log, b_log = tmp_path / "a.log", tmp_path / "b.log"
    a = spawn(a_settings, a_log, **ENV)
    wait_until(lambda: _assignments(a_log) >= 1, what="a assigned")
    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    b = spawn(b_settings, b_log, **ENV)
    try:
        # The rebalance: b joins, both get a share.
        wait_until(lambda: _assignments(b_log) >= 1 and _assignments(a_log) >= 2, what="rebalance")
        wait_until(lambda: _written(lake) > 50, what="progress")
        a.send_signal(signal.SIGSTOP)
        seen_b = _assignments(b_log)
        # b takes everything once a's session (6 s) expires, and commits a's partitions.
        wait_until(lambda: _assignments(b_log) > seen_b, timeout=60, what="b takes over")
        assert not done.is_set(), "traffic should still flow during the takeover"

        at_takeover = _written(lake)
        wait_until(lambda: _written(lake) > at_takeover + 20, what="b commits after the takeover")
        a.send_signal(signal.SIGCONT)  # the zombie wakes with a buffer and stale offsets
        wait_until(done.is_set, timeout=120, what="producer")
        edits = {c for c in p.delivered if c[0] == kafka_settings.topics.edits}

        def all_in() -> bool:
            found = coords(read_table(lake, "dpo_pairs")) + coords(
                read_table(lake, "rejected_candidates")
            )
            return len(set(found)) >= len(edits)

        wait_until(all_in, timeout=120, interval=0.5, what="every edit in the lake")
    finally:
        for proc in (a, b):
            proc.send_signal(signal.SIGCONT)
            proc.send_signal(signal.SIGTERM)
        for proc in (a, b):
            proc.wait(60)
    found = coords(read_table(lake, "dpo_pairs")) + coords(read_table(lake, "rejected_candidates"))
    counts = Counter(found)
    duplicated = {c: n for c, n in counts.items() if n > 1}
    assert not duplicated, f"{len(duplicated)} rows written twice"
    assert set(counts) == edits


def _keys_on(partition: int, n: int, partitions: int) -> list[str]:
    keys: list[str] = []
    while len(keys) < n:
        key = str(uuid.uuid4())
        if partition_for(key, partitions) == partition:
            keys.append(key)
    return keys


@pytest.mark.slow
def test_pairs_across_two_processes(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    """A regeneration and its parent, or two ratings of one prompt, in partitions owned by two
    different curator processes still make exactly one pair each."""
    lake = tmp_path / "lake"
    group = f"g-{uuid.uuid4().hex[:8]}"
    a_log, b_log = tmp_path / "a.log", tmp_path / "b.log"
    a = spawn(settings_for(kafka_settings, lake, tmp_path / "a", group=group), a_log, **ENV)
    b = spawn(settings_for(kafka_settings, lake, tmp_path / "b", group=group), b_log, **ENV)
    n, parts = 6, kafka_settings.partitions
    # With range assignment over 3 partitions, partitions 0 and 2 always go to different members.
    first, last = _keys_on(0, 2 * n, parts), _keys_on(parts - 1, 2 * n, parts)
    try:
        wait_until(
            lambda: _assignments(a_log) >= 1 and _assignments(b_log) >= 1,
            timeout=60,
            what="both assigned",
        )
        time.sleep(3)  # let the group settle into its final assignment
        p = EventProducer(kafka_settings)
        want: set[tuple[str, str, str]] = set()
        for i in range(n):
            # Regenerations: the parent on one side, the kept child on the other, both ways.
            parent, child = (first[i], last[i]) if i % 2 else (last[i], first[i])
            p.send("run", run_event(parent, response=f"Costs went up in quarter {i}, as feared."))
            kept = f"Revenue rose in quarter {i}; costs rose a little less than revenue."
            p.send("run", run_event(child, response=kept, parent_run_id=parent))
            p.send("feedback", feedback_event(child, "accept"))
            want.add(("regenerate", child, parent))
            # Opposite ratings of one prompt, one on each side.
            up, down = (first[n + i], last[n + i]) if i % 2 else (last[n + i], first[n + i])
            prompt = f"Explain partition {i} of the topic."
            p.send("run", run_event(up, prompt=prompt, response=f"Partition {i} orders keys."))
            p.send("run", run_event(down, prompt=prompt, response=f"Partition {i} is a fish."))
            p.send("feedback", feedback_event(up, "rating", 5.0))
            p.send("feedback", feedback_event(down, "rating", 1.0))
            want.add(("paired_outcome", up, down))
        p.flush()

        def pairs() -> list[tuple[str, str, str]] | None:
            rows = read_table(lake, "dpo_pairs")
            got = [(r["source"], r["chosen_run_id"], r["rejected_run_id"]) for r in rows]
            return got if len(got) >= len(want) else None

        got = wait_until(pairs, timeout=90, interval=0.5, what="every pair")
        time.sleep(2)  # anything written twice would show up by now
        got = pairs() or got
    finally:
        for proc in (a, b):
            proc.send_signal(signal.SIGTERM)
        for proc in (a, b):
            assert proc.wait(60) == 0
    assert sorted(got) == sorted(want)
    assert _assignments(a_log) >= 1 and _assignments(b_log) >= 1
    assert not read_table(lake, "rejected_candidates")
