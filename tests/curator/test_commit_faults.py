"""A batch is committed whole or not at all: what the real producer refuses (a dead letter or a
pairing fact larger than its topic accepts) is cut down or dead-lettered, a malformed pairing
fact is dead-lettered, and an unexpected error abandons the batch, commits nothing of it and
ends the process non-zero. Each test counts what was lost: an input event neither in the tables
nor dead-lettered."""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType
from deltalake import DeltaTable
from flywheel_common.kafka import make_admin
from flywheel_common.lake import txn_app_id
from flywheel_common.partitioner import partition_for
from flywheel_common.settings import KafkaSettings

from tests.curator.conftest import (
    CODEC,
    EventProducer,
    ThreadedCurator,
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

SMALL = 4096  # max.message.bytes of the topic under test
ENV = {"FLYWHEEL_CURATOR_FILTERS__TOXICITY__ENABLED": "false"}


def limit_topic(kafka: KafkaSettings, topic: str, max_bytes: int) -> None:
    resource = ConfigResource(
        ResourceType.TOPIC,
        topic,
        incremental_configs=[
            ConfigEntry(
                "max.message.bytes", str(max_bytes), incremental_operation=AlterConfigOpType.SET
            )
        ],
    )
    admin = make_admin(kafka)  # held until the futures are done
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(30)


def dead_letters(
    kafka: KafkaSettings, *, want: int, max_size: int = 1_000_000, timeout: float = 30
) -> list[dict[str, Any]]:
    """Read the DLQ from the start until ``want`` letters arrived (or the timeout); each must
    be within ``max_size`` bytes (key and value)."""
    consumer = Consumer(
        {
            "bootstrap.servers": kafka.bootstrap_servers,
            "group.id": f"dlq-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.assign([TopicPartition(kafka.topics.dlq, p, 0) for p in range(kafka.partitions)])
    letters: list[dict[str, Any]] = []
    sizes: list[int] = []

    def more() -> bool:
        for msg in consumer.consume(100, 0.2):
            if msg.error() is None:
                sizes.append(len(msg.value() or b"") + len(msg.key() or b""))
                letters.append(CODEC.decode(msg.value() or b"").record)
        return len(letters) >= want

    try:
        wait_until(more, timeout=timeout, interval=0, what=f"{want} dead letters")
    finally:
        consumer.close()
    assert all(size <= max_size for size in sizes), sizes
    return letters


def pair_coords(lake: Path) -> list[tuple[str, int, int]]:
    return coords(read_table(lake, "dpo_pairs")) + coords(read_table(lake, "rejected_candidates"))


def lost_of(lake: Path, want: set[tuple[str, int, int]], letters: list[dict[str, Any]]) -> int:
    lettered = {(d["source_topic"], d["source_partition"], d["source_offset"]) for d in letters}
    return len(want - set(pair_coords(lake)) - lettered)


def test_an_oversized_dead_letter_carries_an_excerpt_and_nothing_is_lost(
    kafka_settings: KafkaSettings,
    tmp_path: Path,
    curator_factory: Callable[..., ThreadedCurator],
) -> None:
    """The DLQ accepts 4 KiB; a 20 KB undecodable message is dead-lettered with an excerpt and
    its position, and the edits around it are committed. (Before: the broker refused the letter
    and the batch was retried forever; nothing after the bad message was ever committed.)"""
    limit_topic(kafka_settings, kafka_settings.topics.dlq, SMALL)
    producer = EventProducer(kafka_settings)
    run_id = str(uuid.uuid4())  # one key: the bad message sits between the edits
    edits = [edit_event(run_id, final=f"Revenue went up, see note {i}.") for i in range(6)]
    for edit in edits[:3]:
        producer.send("edit", edit)
    bad = os.urandom(20_000)
    producer.send_raw(kafka_settings.topics.edits, run_id, bad)
    for edit in edits[3:]:
        producer.send("edit", edit)
    delivered = producer.flush()
    bad_at = delivered[3]
    curator_factory(settings_for(kafka_settings, tmp_path / "lake", tmp_path / "state"))
    want = {producer.coord_of[e["event_id"]] for e in edits} | {bad_at}

    letters = dead_letters(kafka_settings, want=1, max_size=SMALL)
    [letter] = letters
    assert (letter["source_topic"], letter["source_partition"], letter["source_offset"]) == bad_at
    assert letter["reason"] == "undecodable"
    assert bad.startswith(letter["payload"]) and 0 < len(letter["payload"]) < SMALL
    assert "20000 bytes" in letter["detail"]

    def settled() -> bool:
        return lost_of(tmp_path / "lake", want, letters) == 0

    wait_until(settled, timeout=60, interval=0.3, what="every edit in the lake")
    lost = lost_of(tmp_path / "lake", want, letters)
    report("oversized dead letter", events=len(want), refused_before=1, lost=lost)
    assert lost == 0


def _keys_on(partition: int, n: int, partitions: int) -> list[str]:
    keys: list[str] = []
    while len(keys) < n:
        key = str(uuid.uuid4())
        if partition_for(key, partitions) == partition:
            keys.append(key)
    return keys


def test_a_pairing_fact_larger_than_its_topic_is_dead_lettered_not_lost(
    kafka_settings: KafkaSettings,
    tmp_path: Path,
    curator_factory: Callable[..., ThreadedCurator],
) -> None:
    """A kept regeneration whose text makes its fact larger than the pairing topic accepts is
    dead-lettered under the position of the signal that made it; the small regeneration beside
    it still pairs. (Before: the refused fact failed every retry of the batch.)"""
    limit_topic(kafka_settings, kafka_settings.topics.pairing, SMALL)
    producer = EventProducer(kafka_settings)
    parents = [str(uuid.uuid4()), str(uuid.uuid4())]
    children = [str(uuid.uuid4()), str(uuid.uuid4())]
    texts = [
        "Revenue rose this quarter; costs rose a little less than revenue did. " * 100,
        "Revenue rose this quarter; costs rose a little less than revenue did.",
    ]
    copies = []
    for parent, child, text in zip(parents, children, texts, strict=True):
        producer.send("run", run_event(parent, response="Costs went up, as feared."))
        producer.send("run", run_event(child, response=text, parent_run_id=parent))
        copy = feedback_event(child, "copy")
        producer.send("feedback", copy)
        copies.append(copy)
    producer.flush()
    curator_factory(settings_for(kafka_settings, tmp_path / "lake", tmp_path / "state"))

    [letter] = dead_letters(kafka_settings, want=1)
    big = producer.coord_of[copies[0]["event_id"]]
    assert (letter["source_topic"], letter["source_partition"], letter["source_offset"]) == big
    assert letter["reason"] == "fact_too_large"
    pairs = wait_until(lambda: read_table(tmp_path / "lake", "dpo_pairs"), what="the small pair")
    got = [(p["source"], p["chosen_run_id"]) for p in pairs]
    report(
        "oversized pairing fact", events=6, dead_lettered=1, pairs=len(got), lost=2 - 1 - len(got)
    )
    assert got == [("regenerate", children[1])]


def test_a_malformed_pairing_fact_is_dead_lettered_not_asserted(
    kafka_settings: KafkaSettings,
    tmp_path: Path,
    curator_factory: Callable[..., ThreadedCurator],
) -> None:
    """A ``kept`` fact without the run it says was kept (valid Avro, wrong meaning) lands where
    its parent run is joined. (Before: an assertion failed, and the close path committed the
    half-processed batch without the fact's dead letter.)"""
    producer = EventProducer(kafka_settings)
    parent = str(uuid.uuid4())
    producer.send("run", run_event(parent))
    fact = {
        "fact_id": uuid.uuid4().hex,
        "kind": "kept",
        "key": parent,
        "tenant": "acme",
        "ts": 1767225600000,
        "polarity": 0,
        "run": None,
        "signal": None,
        "origin_topic": kafka_settings.topics.feedback,
        "origin_partition": 0,
        "origin_offset": 0,
    }
    producer.send_raw(kafka_settings.topics.pairing, parent, CODEC.encode("PairingFact", fact))
    after = edit_event(parent, final="Revenue went up while costs went up a bit less.")
    producer.send("edit", after)
    delivered = producer.flush()
    curator = curator_factory(settings_for(kafka_settings, tmp_path / "lake", tmp_path / "state"))

    [letter] = dead_letters(kafka_settings, want=1)
    assert (letter["source_topic"], letter["source_offset"]) == (
        kafka_settings.topics.pairing,
        delivered[1][2],
    )
    assert letter["reason"] == "invalid_fact" and "run" in letter["detail"]
    edit_at = producer.coord_of[after["event_id"]]
    wait_until(lambda: edit_at in pair_coords(tmp_path / "lake"), what="the edit after the fact")
    assert curator.thread is not None and curator.thread.is_alive()
    report("malformed pairing fact", events=3, dead_lettered=1, lost=0, curator_alive=True)


def _lake_offsets(lake: Path, group: str, tps: list[tuple[str, int]]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for table in ("sft_examples", "rejected_candidates", "dpo_pairs"):
        dt = DeltaTable(str(lake / table))
        out[table] = [dt.transaction_version(txn_app_id(group, t, p)) for t, p in tps]
    return out


def test_an_unexpected_error_abandons_the_batch_and_exits_non_zero(
    kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    """An exception half-way through a message (injected) ends the process with a non-zero
    status and nothing of its batch in any table; the next start re-reads it and writes every
    row once. (Before: the close path's revoke callback flushed the half-done batch.)"""
    producer = EventProducer(kafka_settings)
    edits = [
        edit_event(str(uuid.uuid4()), final=f"Revenue went up, see note {i}.") for i in range(40)
    ]
    for edit in edits:
        producer.send("edit", edit)
    producer.flush()
    lake = tmp_path / "lake"
    settings = settings_for(kafka_settings, lake, tmp_path / "state")
    faults = '{"crash_at": ["while_handling"], "probability": 1.0, "mode": "raise"}'
    proc = spawn(settings, tmp_path / "faulty.log", FLYWHEEL_CURATOR_FAULTS=faults, **ENV)
    code = proc.wait(120)
    log = (tmp_path / "faulty.log").read_text()
    assert code == 1, f"exit {code}: {log[-2000:]}"
    assert "fault injected: raise" in log and "batch abandoned" in log
    tps = [(kafka_settings.topics.edits, p) for p in range(kafka_settings.partitions)]
    # The first batch was abandoned before any commit, so no table moved.
    assert _lake_offsets(lake, settings.group_id, tps) == {
        t: [None] * len(tps) for t in ("sft_examples", "rejected_candidates", "dpo_pairs")
    }

    clean = spawn(settings, tmp_path / "clean.log", **ENV)
    want = {producer.coord_of[e["event_id"]] for e in edits}
    try:
        wait_until(lambda: want <= set(pair_coords(lake)), timeout=60, what="every edit")
    finally:
        clean.send_signal(signal.SIGTERM)
        assert clean.wait(60) == 0
    found = pair_coords(lake)
    report(
        "unexpected error mid-batch",
        events=len(want),
        faults="1 raise while handling",
        exit_code=code,
        committed_by_the_failed_run=0,
        lost=len(want - set(found)),
        duplicated=len(found) - len(set(found)),
    )
    assert sorted(found) == sorted(want), "lost or duplicated"
