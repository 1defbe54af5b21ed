"""Regenerate and paired-outcome pairs whose two runs live in different partitions, owned by
different curators: pairing facts are routed by Kafka's partitioner to where the other side is
joined. Here each "curator" is a pipeline over its own state store and the router plays the
pairing topic, so every order and duplicate can be forced; test_group.py runs the same over a
real broker with two processes."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flywheel_common.partitioner import partition_for
from flywheel_curator.candidate import Candidate, KafkaOrigin, Verdict
from flywheel_curator.facts import Fact, LoopbackFacts
from flywheel_curator.joins import JoinStore
from flywheel_curator.pipeline import CuratedRow, Pipeline

from tests.curator.conftest import feedback_event, run_event

PARTITIONS = 2
QUIET_MS = 600_000
T0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
PARENT_TEXT = "Costs went up. The quarter was fine overall, more or less as planned."
KEPT_TEXT = "Revenue rose this quarter; costs rose a little less than revenue did."
OTHER_TEXT = "The board should know that margins improved slightly over the quarter."


class AcceptAll:
    """The pair logic under test, without the filters (they have their own tests)."""

    def run_many(self, candidates: Sequence[Candidate]) -> list[Verdict]:
        return [Verdict.accept(c) for c in candidates]

    def commit(self) -> None:
        pass

    def rollback(self) -> None:
        pass


class Cluster:
    """``PARTITIONS`` curators, each owning one partition index of every topic."""

    def __init__(self, *, quiet_ms: int = QUIET_MS, window_ms: int = 7 * 24 * 3600 * 1000) -> None:
        self.facts = [LoopbackFacts() for _ in range(PARTITIONS)]
        self.pipelines = [
            Pipeline(
                store=JoinStore(None, identity="test"),
                chain=AcceptAll(),
                filter_config_hash="h",
                curator_version="test",
                sft_sample_rate=0.0,
                join_window_ms=window_ms,
                facts=self.facts[p],
                regenerate_quiet_ms=quiet_ms,
            )
            for p in range(PARTITIONS)
        ]
        self.offsets = itertools.count()
        self.delivered: list[tuple[int, Fact]] = []
        self.rows: list[CuratedRow] = []

    def send(self, event_type: str, record: dict[str, Any]) -> None:
        p = partition_for(record["run_id"], PARTITIONS)
        origin = KafkaOrigin(f"flywheel.{event_type}", p, next(self.offsets))
        self.pipelines[p].process(event_type, record, origin)  # type: ignore[arg-type]
        self.route()

    def route(self, *, times: int = 1) -> None:
        """Deliver every pending fact to the partition its key maps to (``times`` copies, as a
        replaying sender would)."""
        while any(True for f in self.facts if f._queue):
            for facts in self.facts:
                for fact in facts.take():
                    p = partition_for(fact.key, PARTITIONS)
                    for _ in range(times):
                        origin = KafkaOrigin("pairing", p, next(self.offsets))
                        self.pipelines[p].process_fact(fact, origin)
                        self.delivered.append((p, fact))

    def tick(self) -> None:
        for pipeline in self.pipelines:
            pipeline.fire_timers()
        self.route()

    def drain(self) -> list[dict[str, Any]]:
        for pipeline in self.pipelines:
            self.rows.extend(pipeline.drain())
        return [r.row for r in self.rows if r.table == "dpo_pairs"]


def _ids_on_two_partitions() -> tuple[str, str, str]:
    """A parent and two children, the parent on another partition than the first child."""
    while True:
        parent, child, other = (str(uuid.uuid4()) for _ in range(3))
        if partition_for(parent, PARTITIONS) != partition_for(child, PARTITIONS):
            return parent, child, other


def _at(minutes: float) -> dict[str, datetime]:
    t = T0 + timedelta(minutes=minutes)
    return {"occurred_at": t, "received_at": t}


def _advance(cluster: Cluster, minutes: float) -> None:
    """Move stream time on every partition with a run nobody pairs."""
    for p in range(PARTITIONS):
        while True:
            rid = str(uuid.uuid4())
            if partition_for(rid, PARTITIONS) == p:
                break
        cluster.send("run", run_event(rid, **_at(minutes)))
    cluster.tick()


def test_a_kept_regeneration_pairs_with_its_parent_across_partitions() -> None:
    parent, child, _ = _ids_on_two_partitions()
    c = Cluster()
    c.send("run", run_event(parent, response=PARENT_TEXT, **_at(0)))
    c.send("run", run_event(child, response=KEPT_TEXT, parent_run_id=parent, **_at(1)))
    c.send("feedback", feedback_event(child, "copy", **_at(2)))
    # More signals that it was kept make no second pair.
    c.send("feedback", feedback_event(child, "thumbs", 1.0, **_at(3)))
    c.send("feedback", feedback_event(child, "accept", **_at(4)))
    pairs = c.drain()
    assert [(r["source"], r["chosen"], r["rejected"]) for r in pairs] == [
        ("regenerate", KEPT_TEXT, PARENT_TEXT)
    ]
    assert pairs[0]["chosen_run_id"] == child and pairs[0]["rejected_run_id"] == parent
    # Formed where the parent lives; provenance is the copy event in the child's partition.
    formed = next(r for r in c.rows if r.table == "dpo_pairs")
    assert {o.partition for o in formed.ingredients} == {partition_for(parent, PARTITIONS)}
    assert pairs[0]["kafka_topic"] == "flywheel.feedback"
    assert pairs[0]["kafka_partition"] == partition_for(child, PARTITIONS)


def test_no_further_regenerate_counts_as_kept_after_the_quiet_period() -> None:
    parent, child, _ = _ids_on_two_partitions()
    c = Cluster()
    c.send("run", run_event(parent, response=PARENT_TEXT, **_at(0)))
    child_run = run_event(child, response=KEPT_TEXT, parent_run_id=parent, **_at(1))
    c.send("run", child_run)
    _advance(c, 10)  # 9 minutes after the child: still inside the quiet period
    assert c.drain() == []
    _advance(c, 11.5)
    pairs = c.drain()
    assert [(r["source"], r["chosen_run_id"], r["rejected_run_id"]) for r in pairs] == [
        ("regenerate", child, parent)
    ]
    # The run itself is the signal: its event and its coordinates.
    assert pairs[0]["event_id"] == child_run["event_id"]
    assert pairs[0]["kafka_topic"] == "flywheel.run"
    _advance(c, 60)
    assert len(c.drain()) == 1  # a timer fires once


def test_a_regeneration_turned_away_from_is_not_kept() -> None:
    parent, child, other = _ids_on_two_partitions()
    grandchild, rated_down = str(uuid.uuid4()), str(uuid.uuid4())
    c = Cluster()
    c.send("run", run_event(parent, response=PARENT_TEXT, **_at(0)))
    # child is regenerated again (grandchild): only the grandchild is kept, over the child.
    c.send("run", run_event(child, response=OTHER_TEXT, parent_run_id=parent, **_at(1)))
    c.send("run", run_event(grandchild, response=KEPT_TEXT, parent_run_id=child, **_at(2)))
    # another regeneration of the parent, rated down; one more, explicitly rejected.
    c.send("run", run_event(rated_down, response="Nope.", parent_run_id=parent, **_at(1)))
    c.send("feedback", feedback_event(rated_down, "thumbs", -1.0, **_at(1.5)))
    c.send("run", run_event(other, response="Also no.", parent_run_id=parent, **_at(1)))
    c.send("feedback", feedback_event(other, "reject", **_at(1.5)))
    _advance(c, 30)
    pairs = c.drain()
    assert [(r["chosen_run_id"], r["rejected_run_id"]) for r in pairs] == [(grandchild, child)]


def test_a_kept_fact_waits_for_a_late_parent() -> None:
    parent, child, _ = _ids_on_two_partitions()
    c = Cluster()
    c.send("run", run_event(child, response=KEPT_TEXT, parent_run_id=parent, **_at(1)))
    c.send("feedback", feedback_event(child, "copy", **_at(2)))
    assert c.drain() == []
    c.send("run", run_event(parent, response=PARENT_TEXT, **_at(3)))
    assert [r["chosen_run_id"] for r in c.drain()] == [child]


def test_facts_sent_twice_count_once() -> None:
    """A curator that crashed before its commit re-sends its facts on replay."""
    parent, child, _ = _ids_on_two_partitions()
    up, down = str(uuid.uuid4()), str(uuid.uuid4())
    c = Cluster()
    c.send("run", run_event(parent, response=PARENT_TEXT, **_at(0)))
    for event_type, record in [
        ("run", run_event(child, response=KEPT_TEXT, parent_run_id=parent, **_at(1))),
        ("feedback", feedback_event(child, "copy", **_at(2))),
        ("run", run_event(up, response=KEPT_TEXT, **_at(3))),
        ("run", run_event(down, response=PARENT_TEXT, **_at(3))),
        ("feedback", feedback_event(up, "thumbs", 1.0, **_at(4))),
        ("feedback", feedback_event(down, "rating", 1.0, **_at(4))),
    ]:
        p = partition_for(record["run_id"], PARTITIONS)
        c.pipelines[p].process(event_type, record, KafkaOrigin(event_type, p, next(c.offsets)))  # type: ignore[arg-type]
        c.route(times=3)
    assert sorted(r["source"] for r in c.drain()) == ["paired_outcome", "regenerate"]
    dupes = sum(p.summary.duplicate_facts for p in c.pipelines)
    assert dupes == 2 * len({f.fact_id for _, f in c.delivered})


def test_opposite_ratings_of_one_prompt_pair_across_partitions() -> None:
    c = Cluster()
    runs: dict[int, str] = {}
    while len(runs) < PARTITIONS:
        rid = str(uuid.uuid4())
        runs.setdefault(partition_for(rid, PARTITIONS), rid)
    up, down = runs[0], runs[1]
    c.send("run", run_event(up, response=KEPT_TEXT, **_at(0)))
    c.send("run", run_event(down, response=PARENT_TEXT, **_at(0)))
    c.send("feedback", feedback_event(up, "thumbs", 1.0, **_at(1)))
    c.send("feedback", feedback_event(down, "rating", 2.0, **_at(2)))
    # A run's later ratings do not take part again.
    c.send("feedback", feedback_event(up, "thumbs", -1.0, **_at(3)))
    c.send("feedback", feedback_event(down, "thumbs", 1.0, **_at(3)))
    pairs = c.drain()
    assert [(r["source"], r["chosen_run_id"], r["rejected_run_id"]) for r in pairs] == [
        ("paired_outcome", up, down)
    ]


def test_another_prompt_or_feature_never_pairs() -> None:
    c = Cluster()
    a, b, d = (str(uuid.uuid4()) for _ in range(3))
    c.send("run", run_event(a, response=KEPT_TEXT, **_at(0)))
    c.send("run", run_event(b, response=PARENT_TEXT, prompt="Something else entirely.", **_at(0)))
    c.send("run", run_event(d, response=PARENT_TEXT, feature="other", **_at(0)))
    c.send("feedback", feedback_event(a, "thumbs", 1.0, **_at(1)))
    c.send("feedback", feedback_event(b, "thumbs", -1.0, **_at(1)))
    c.send("feedback", feedback_event(d, "thumbs", -1.0, **_at(1)))
    assert c.drain() == []


@pytest.mark.parametrize("quiet_ms", [0])
def test_the_quiet_period_can_be_turned_off(quiet_ms: int) -> None:
    parent, child, _ = _ids_on_two_partitions()
    c = Cluster(quiet_ms=quiet_ms)
    c.send("run", run_event(parent, response=PARENT_TEXT, **_at(0)))
    c.send("run", run_event(child, response=KEPT_TEXT, parent_run_id=parent, **_at(1)))
    _advance(c, 120)
    assert c.drain() == []
    c.send("feedback", feedback_event(child, "copy", **_at(121)))
    assert [r["chosen_run_id"] for r in c.drain()] == [child]


def test_feedback_waits_for_its_run_until_the_window_ends() -> None:
    """Feedback before its run joins when the run comes within the window, and gives up (is
    counted) when it does not."""
    hour = 60
    c = Cluster(window_ms=2 * 3600 * 1000)
    early, lost = str(uuid.uuid4()), str(uuid.uuid4())
    fix = "Revenue grew 4 % while costs grew 3 %, so the margin improved a little."
    c.send("feedback", feedback_event(early, "thumbs", -1.0, correction=fix, **_at(0)))
    c.send("feedback", feedback_event(lost, "thumbs", -1.0, correction=fix, **_at(0)))
    c.send("run", run_event(early, response=PARENT_TEXT, **_at(1.5 * hour)))  # inside
    for pipeline in c.pipelines:
        pipeline.expire(force=True)
    assert [r["run_id"] for r in c.drain()] == [early]
    _advance(c, 2.5 * hour)
    for pipeline in c.pipelines:
        pipeline.expire(force=True)
    c.send("run", run_event(lost, response=PARENT_TEXT, **_at(2.6 * hour)))  # too late
    assert [r["run_id"] for r in c.drain()] == [early]
    assert sum(p.summary.pending_expired for p in c.pipelines) == 1
