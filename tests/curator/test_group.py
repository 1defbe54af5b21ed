"""Two curators in one group: a rebalance, and a zombie paused with SIGSTOP past its session
timeout that wakes up after the other took its partitions. Nothing lost, nothing twice."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from flywheel_common.partitioner import partition_for
from flywheel_common.settings import KafkaSettings
from flywheel_curator.settings import BatchSettings

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
    report(
        "rebalance and SIGSTOP zombie",
        events=len(p.delivered),
        faults="1 rebalance, 1 SIGSTOP past the session",
        lost=len(edits - set(counts)),
        duplicated=sum(n - 1 for n in duplicated.values()),
    )
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


def _last_assignment(log: Path) -> set[tuple[str, int]]:
    """The partitions of the newest "assigned" line in a curator's JSON log."""
    lines = [json.loads(x) for x in log.read_text().splitlines() if '"msg": "assigned"' in x]
    out: set[tuple[str, int]] = set()
    for name in lines[-1]["partitions"] if lines else {}:
        topic, _, rest = name.rpartition("[")
        out.add((topic, int(rest.rstrip("]"))))
    return out


def _stopped(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rpartition(")")[2].split()[0] == "T"


@dataclass(frozen=True)
class _Commit:
    table: str
    version: int
    at_ms: int
    instance: str | None
    operation: str | None
    rows: int


def _commits(lake: Path) -> list[_Commit]:
    """Every commit of the three tables, read from the Delta logs themselves."""
    out = []
    for table in ("sft_examples", "rejected_candidates", "dpo_pairs"):
        for path in sorted((lake / table / "_delta_log").glob("*.json")):
            actions = [json.loads(line) for line in path.read_text().splitlines() if line]
            info = next(a["commitInfo"] for a in actions if "commitInfo" in a)
            rows = sum(json.loads(a["add"]["stats"])["numRecords"] for a in actions if "add" in a)
            who, operation = info.get("flywheel.curator.instance"), info.get("flywheel.operation")
            out.append(_Commit(table, int(path.stem), info["timestamp"], who, operation, rows))
    return out


def _assigned_at_ms(log: Path) -> list[int]:
    """When each "assigned" line of a curator's JSON log was written (epoch ms)."""
    out = []
    for line in log.read_text().splitlines():
        if '"msg": "assigned"' in line:
            ts = datetime.strptime(json.loads(line)["ts"], "%Y-%m-%dT%H:%M:%S.%fZ")
            out.append(int(ts.replace(tzinfo=UTC).timestamp() * 1000))
    return out


@pytest.mark.slow
def test_a_resumed_zombie_lands_nothing_after_the_takeover(
    kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    """A curator stops itself (SIGSTOP, a fault point) as it begins to commit a batch and loses
    its partitions to the other; resumed (SIGCONT) at once, before the new owner commits
    anything there, it must not land its batch on any table: the new owner recorded its claim
    in the lake at the takeover. (Before: the fence compared offsets only, so the zombie's
    commit passed until the new owner's first commit; this test counted its rows.)"""
    lake = tmp_path / "lake"
    group = f"g-{uuid.uuid4().hex[:8]}"
    slow = BatchSettings(max_rows=100_000, max_seconds=5.0)
    a_settings = settings_for(kafka_settings, lake, tmp_path / "a", group=group, batch=slow)
    b_settings = settings_for(kafka_settings, lake, tmp_path / "b", group=group, batch=slow)
    a_log, b_log = tmp_path / "a.log", tmp_path / "b.log"
    # a pauses itself as its first batch begins to commit (before the fence), once.
    pause = '{"crash_at": ["before_parquet_write"], "probability": 1.0, "mode": "stop", '
    a = spawn(a_settings, a_log, FLYWHEEL_CURATOR_FAULTS=pause + '"max_faults": 1}', **ENV)
    b = spawn(b_settings, b_log, **ENV)
    edits_topic = kafka_settings.topics.edits
    p = EventProducer(kafka_settings)
    try:
        wait_until(
            lambda: _assignments(a_log) >= 1 and _assignments(b_log) >= 1, what="both assigned"
        )

        def settled() -> bool:
            mine, theirs = _last_assignment(a_log), _last_assignment(b_log)
            return len(mine | theirs) == 4 * kafka_settings.partitions and not mine & theirs

        wait_until(settled, what="the group settled")
        mine = sorted(part for t, part in _last_assignment(a_log) if t == edits_topic)
        assert mine, "a owns no partition of the edits topic"
        keys = _keys_on(mine[0], 40, kafka_settings.partitions)
        for i, key in enumerate(keys):
            p.send("edit", edit_event(key, final=f"Revenue went up, see note {i}."))
        p.flush()
        seen_b = _assignments(b_log)
        wait_until(lambda: _stopped(a.pid), timeout=60, what="a paused in its commit")
        wait_until(
            lambda: (
                _assignments(b_log) > seen_b and (edits_topic, mine[0]) in _last_assignment(b_log)
            ),
            timeout=60,
            what="b takes a's partitions",
        )
        takeover_ms = int(time.time() * 1000)
        a.send_signal(signal.SIGCONT)  # before b's first commit there (5 s batches)
        want = {c for c in p.delivered if c[0] == edits_topic}
        wait_until(
            lambda: (
                len(
                    set(
                        coords(
                            read_table(lake, "rejected_candidates") + read_table(lake, "dpo_pairs")
                        )
                    )
                )
                >= len(want)
            ),
            timeout=90,
            interval=0.5,
            what="every edit in the lake",
        )
    finally:
        for proc in (a, b):
            proc.send_signal(signal.SIGCONT)
            proc.send_signal(signal.SIGTERM)
        for proc in (a, b):
            proc.wait(60)
    # The zombie's window: from the takeover until the group gives a partitions again.
    rejoined = min((t for t in _assigned_at_ms(a_log) if t > takeover_ms), default=2**62)
    b_instance = f"{socket.gethostname()}-{b.pid}"
    zombie_commits = [
        c
        for c in _commits(lake)
        if takeover_ms <= c.at_ms < rejoined and c.instance != b_instance and c.operation != "claim"
    ]
    zombie_rows = sum(c.rows for c in zombie_commits)
    found = coords(read_table(lake, "dpo_pairs")) + coords(read_table(lake, "rejected_candidates"))
    counts = Counter(found)
    report(
        "zombie resumed before the new owner commits",
        events=len(want),
        faults="1 SIGSTOP in a commit, resumed after the takeover",
        zombie_rows=zombie_rows,
        zombie_commits=len(zombie_commits),
        lost=len(want - set(counts)),
        duplicated=sum(n - 1 for n in counts.values()),
    )
    assert (zombie_rows, len(zombie_commits)) == (0, 0), zombie_commits
    assert set(counts) == want and max(counts.values()) == 1, "lost or duplicated"
