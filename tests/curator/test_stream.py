"""The curator against a real broker and real Delta tables: each source accepting and
rejecting, out-of-order joins, restart, DLQ, an empty start, replay."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

from deltalake import DeltaTable
from flywheel_common.codec import AvroCodec
from flywheel_common.lake import txn_app_id
from flywheel_common.partitioner import partition_for
from flywheel_common.settings import KafkaSettings

from tests.curator.conftest import (
    CODEC,
    EventProducer,
    ThreadedCurator,
    edit_event,
    feedback_event,
    read_table,
    rows_with,
    run_event,
    settings_for,
    wait_until,
)

Factory = Callable[..., ThreadedCurator]
CORRECTION = "Revenue increased this quarter and costs increased a bit less."
KEPT = "Revenue rose this quarter; costs rose a little less than revenue did."


def _sources(lake: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for row in read_table(lake, "dpo_pairs"):
        out[row["source"]] = out.get(row["source"], 0) + 1
    return out


def test_each_source_accepts_and_rejects(
    kafka_settings: KafkaSettings, tmp_path: Path, curator_factory: Factory
) -> None:
    p = EventProducer(kafka_settings)
    # edit: accepted, and one rejected as a typo fix (similarity above the band).
    r1, r2 = str(uuid.uuid4()), str(uuid.uuid4())
    p.send("edit", edit_event(r1))
    p.send(
        "edit",
        edit_event(r2, final="The quarter was fine. Revenue went up. Costs went up too, a bit!"),
    )
    # correction: the feedback comes first and waits for its run; a too-short one is rejected.
    r3, r4 = str(uuid.uuid4()), str(uuid.uuid4())
    p.send("feedback", feedback_event(r3, "thumbs", -1.0, correction=CORRECTION))
    p.send("run", run_event(r3))
    p.send("run", run_event(r4))
    p.send("feedback", feedback_event(r4, "rating", 1.0, correction="x!"))
    # regenerate: parent run, child run (parent_run_id), the child is copied. Each is keyed by
    # its own run_id, so they land in two partitions and meet through the pairing topic.
    parent, child = _on_two_partitions(kafka_settings.partitions)
    p.send("run", run_event(parent, response="Costs went up. The quarter was fine overall."))
    p.send("run", run_event(child, response=KEPT, parent_run_id=parent))
    p.send("feedback", feedback_event(child, "copy"))
    # paired outcome: same prompt and feature, one up and one down (inline runs, no join).
    prompt = "Write a haiku about Kafka partitions."
    up, down = str(uuid.uuid4()), str(uuid.uuid4())
    p.send(
        "feedback",
        feedback_event(
            up,
            "thumbs",
            1.0,
            prompt=prompt,
            response="Logs flow in order / each partition keeps its line / keys find their home",
            feature="poems",
        ),
    )
    p.send(
        "feedback",
        feedback_event(
            down,
            "thumbs",
            -1.0,
            prompt=prompt,
            response="Kafka is a broker. It has partitions. Done.",
            feature="poems",
        ),
    )
    p.flush()
    lake = tmp_path / "lake"
    curator_factory(settings_for(kafka_settings, lake, tmp_path / "state"))

    def done() -> bool:
        s = _sources(lake)
        return (
            s.get("edit", 0) >= 1
            and s.get("correction", 0) >= 1
            and len(read_table(lake, "rejected_candidates")) >= 2
        )

    wait_until(done, what="pairs and rejections")
    s = _sources(lake)
    assert s.get("edit") == 1 and s.get("correction") == 1
    rejected = {r["source"]: r["reasons"] for r in read_table(lake, "rejected_candidates")}
    assert "too_similar" in rejected["edit"]
    assert "too_dissimilar" in rejected["correction"]
    wait_until(
        lambda: {"regenerate", "paired_outcome"} <= set(_sources(lake)),
        what="regenerate and paired outcome",
    )
    pairs = {r["source"]: r for r in read_table(lake, "dpo_pairs")}
    assert (pairs["regenerate"]["chosen_run_id"], pairs["regenerate"]["rejected_run_id"]) == (
        child,
        parent,
    )
    assert (
        pairs["paired_outcome"]["chosen_run_id"],
        pairs["paired_outcome"]["rejected_run_id"],
    ) == (
        up,
        down,
    )
    assert _sources(lake) == {"edit": 1, "correction": 1, "regenerate": 1, "paired_outcome": 1}


def _on_two_partitions(partitions: int) -> tuple[str, str]:
    while True:
        a, b = str(uuid.uuid4()), str(uuid.uuid4())
        if partition_for(a, partitions) != partition_for(b, partitions):
            return a, b


def test_undecodable_and_invalid_go_to_the_dlq(
    kafka_settings: KafkaSettings, tmp_path: Path, curator_factory: Factory
) -> None:
    from confluent_kafka import Consumer

    p = EventProducer(kafka_settings)
    p.send_raw(kafka_settings.topics.runs, "k1", b"not avro at all")
    bad = run_event("")  # empty run_id: invalid
    p.send("run", bad)
    # The internal pairing topic is guarded the same way: an unknown schema, another record type.
    p.send_raw(kafka_settings.topics.pairing, "k2", b"\xc3\x01 truncated")
    p.send_raw(kafka_settings.topics.pairing, "k3", CODEC.encode("Run", run_event("r-on-pairing")))
    rid = str(uuid.uuid4())
    p.send("edit", edit_event(rid))  # the consumer goes on
    p.flush()
    lake = tmp_path / "lake"
    curator_factory(settings_for(kafka_settings, lake, tmp_path / "state"))
    wait_until(rows_with(lake, "dpo_pairs", 1), what="the good event")
    c = Consumer(
        {
            "bootstrap.servers": kafka_settings.bootstrap_servers,
            "group.id": f"dlq-{uuid.uuid4()}",
            "auto.offset.reset": "earliest",
        }
    )
    c.subscribe([kafka_settings.topics.dlq])
    codec = AvroCodec()
    reasons: list[str] = []

    def four() -> bool:
        for m in c.consume(10, timeout=0.5):
            if m.error() is None:
                record = codec.decode(m.value()).record
                reasons.append((record["source_topic"].rsplit(".", 2)[-2], record["reason"]))
        return len(reasons) >= 4

    try:
        wait_until(four, what="four dead letters")
    finally:
        c.close()
    assert sorted(reasons) == [
        ("pairing", "invalid_event"),
        ("pairing", "unknown_fingerprint"),
        ("runs", "invalid_event"),
        ("runs", "undecodable"),
    ]


def test_empty_topics_and_offset_zero(
    kafka_settings: KafkaSettings, tmp_path: Path, curator_factory: Factory
) -> None:
    lake = tmp_path / "lake"
    settings = settings_for(kafka_settings, lake, tmp_path / "state")
    c = curator_factory(settings)
    wait_until(lambda: c.curator is not None and c.curator.assigned, what="assignment")
    assert read_table(lake, "dpo_pairs") == []  # tables exist, empty
    rid = str(uuid.uuid4())
    p = EventProducer(kafka_settings)
    p.send("edit", edit_event(rid))
    (coord,) = p.flush()
    rows = wait_until(rows_with(lake, "dpo_pairs", 1), what="the first pair")
    assert coord == (rows[0]["kafka_topic"], rows[0]["kafka_partition"], rows[0]["kafka_offset"])
    assert coord[2] == 0
    dt = DeltaTable(str(lake / "dpo_pairs"))
    app = txn_app_id(settings.group_id, coord[0], coord[1])
    wait_until(
        lambda: DeltaTable(str(lake / "dpo_pairs")).transaction_version(app) == 1, what="txn"
    )
    assert dt.version() >= 1


def test_restart_keeps_join_and_dedup_state(
    kafka_settings: KafkaSettings, tmp_path: Path, curator_factory: Factory
) -> None:
    lake, state = tmp_path / "lake", tmp_path / "state"
    settings = settings_for(kafka_settings, lake, state)
    p = EventProducer(kafka_settings)
    rid = str(uuid.uuid4())
    p.send("edit", edit_event(rid))
    # Feedback whose run is not there yet: it waits in the state store.
    late = str(uuid.uuid4())
    p.send("feedback", feedback_event(late, "thumbs", -1.0, correction=CORRECTION))
    p.flush()
    first = curator_factory(settings)
    wait_until(rows_with(lake, "dpo_pairs", 1), what="first pair")
    wait_until(
        lambda: (
            first.curator is not None
            and first.curator.store.sizes()["pending"] == 1
            and not first.curator._end
        ),
        what="feedback pending",
    )
    first.close()
    # Same pair again (a client re-sent it with a new event id) and the late run arrive.
    p.send("edit", edit_event(rid))
    p.send("run", run_event(late))
    p.flush()
    curator_factory(settings)
    wait_until(rows_with(lake, "dpo_pairs", 2), what="the joined correction")
    wait_until(rows_with(lake, "rejected_candidates", 1), what="the duplicate")
    pairs = read_table(lake, "dpo_pairs")
    assert sorted(r["source"] for r in pairs) == ["correction", "edit"]
    assert "duplicate" in read_table(lake, "rejected_candidates")[0]["reasons"]
