"""The local broker and the Kafka factories, against the real broker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import TopicPartition
from flywheel_common import ConfigError, KafkaSettings, Topics
from flywheel_common.errors import BrokerUnavailableError
from flywheel_common.kafka import (
    consumer_config,
    ensure_topics,
    make_admin,
    make_consumer,
    make_producer,
    producer_config,
    wait_for_broker,
)
from flywheel_devkit import LocalKafka, free_port
from pydantic import SecretStr


def _wait_until(predicate, timeout_s: float = 20.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_topics_exist_with_the_same_partition_count(kafka_settings: KafkaSettings) -> None:
    md = make_admin(kafka_settings).list_topics(timeout=10).topics
    counts = {t: len(md[t].partitions) for t in kafka_settings.topics.all()}
    assert set(counts.values()) == {kafka_settings.partitions}


def test_the_design_topics_exist_with_one_partition_count(kafka_bootstrap: str) -> None:
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        pytest.skip("an existing cluster's topics are its operators' business")
    design = Topics()
    md = make_admin(KafkaSettings(bootstrap_servers=kafka_bootstrap)).list_topics(timeout=10)
    assert {len(md.topics[t].partitions) for t in design.all()} == {3}


def test_ensure_topics_is_idempotent_and_refuses_other_counts(
    kafka_settings: KafkaSettings,
) -> None:
    assert ensure_topics(kafka_settings) == []
    with pytest.raises(ConfigError, match="co-partitioning"):
        ensure_topics(kafka_settings, partitions=kafka_settings.partitions + 1)


def test_same_key_lands_in_the_same_partition_on_every_topic(
    kafka_settings: KafkaSettings,
) -> None:
    """The co-partitioning contract: run_id keys hash alike on every topic."""
    producer = make_producer(kafka_settings)
    landed: dict[tuple[str, str], int] = {}

    def on_delivery(err, msg) -> None:  # type: ignore[no-untyped-def]
        assert err is None
        landed[(msg.topic(), msg.key().decode())] = msg.partition()

    t = kafka_settings.topics
    keys = [f"run-{i}" for i in range(30)]
    for key in keys:
        for topic in (t.runs, t.feedback, t.edits):
            producer.produce(topic, b"x", key=key.encode(), on_delivery=on_delivery)
    assert producer.flush(30) == 0
    for key in keys:
        assert landed[(t.runs, key)] == landed[(t.feedback, key)] == landed[(t.edits, key)]


def test_reliable_producer_and_manual_commit_consumer(kafka_settings: KafkaSettings) -> None:
    conf = producer_config(kafka_settings)
    assert conf["acks"] == "all" and conf["enable.idempotence"] is True
    cconf = consumer_config(kafka_settings, group_id="g")
    assert cconf["enable.auto.commit"] is False

    producer = make_producer(kafka_settings)
    for i in range(100):
        producer.produce(kafka_settings.topics.runs, str(i).encode(), key=b"k")
    assert producer.flush(30) == 0
    consumer = make_consumer(kafka_settings, group_id=f"g-{uuid.uuid4()}")
    consumer.assign(
        [TopicPartition(kafka_settings.topics.runs, p, 0) for p in range(kafka_settings.partitions)]
    )
    seen: list[bytes] = []
    deadline = time.monotonic() + 20
    while len(seen) < 100 and time.monotonic() < deadline:
        seen += [m.value() for m in consumer.consume(500, timeout=0.5) if not m.error()]
    consumer.close()
    assert sorted(int(v) for v in seen) == list(range(100))


def test_sasl_settings_need_credentials_and_mask_the_secret() -> None:
    settings = KafkaSettings(
        sasl_mechanism="PLAIN", sasl_username="u", sasl_password=SecretStr("hunter2")
    )
    assert "hunter2" not in repr(settings)
    assert producer_config(settings)["sasl.password"] == "hunter2"
    with pytest.raises(ConfigError, match="sasl_username"):
        producer_config(KafkaSettings(sasl_mechanism="PLAIN"))


def test_wait_for_broker_names_the_address_when_nothing_answers() -> None:
    settings = KafkaSettings(bootstrap_servers=f"127.0.0.1:{free_port()}", extra={"log_level": "0"})
    with pytest.raises(BrokerUnavailableError, match=r"127\.0\.0\.1"):
        wait_for_broker(settings, timeout_s=1.0)


def test_topics_with_prefix_are_distinct() -> None:
    a, b = Topics.with_prefix("a"), Topics.with_prefix("b")
    assert set(a.all()).isdisjoint(b.all())
    assert a.event_type_of(a.feedback) == "feedback" and a.event_type_of(b.runs) is None


def test_broker_restart_keeps_acknowledged_data(private_kafka: LocalKafka) -> None:
    settings = KafkaSettings(
        bootstrap_servers=private_kafka.bootstrap_servers, topics=Topics.with_prefix("restart")
    )
    ensure_topics(settings)
    producer = make_producer(settings)
    for i in range(50):
        producer.produce(settings.topics.runs, str(i).encode(), key=str(i).encode())
    assert producer.flush(30) == 0
    private_kafka.stop()
    assert not private_kafka.running
    private_kafka.start()
    consumer = make_consumer(settings, group_id="restart")
    consumer.assign([TopicPartition(settings.topics.runs, p, 0) for p in range(3)])
    seen: set[int] = set()
    deadline = time.monotonic() + 30
    while len(seen) < 50 and time.monotonic() < deadline:
        seen |= {int(m.value()) for m in consumer.consume(100, timeout=0.5) if not m.error()}
    consumer.close()
    assert seen == set(range(50))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is gone for our purpose.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def test_no_orphan_broker_after_the_parent_is_killed(tmp_path: Path) -> None:
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        pytest.skip("uses the local broker launcher")
    script = (
        "import sys, time\n"
        "from flywheel_devkit import LocalKafka\n"
        f"k = LocalKafka(data_dir=__import__('pathlib').Path({str(tmp_path)!r}), heap='256m')\n"
        "k.start()\n"
        "print(k._proc.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    with subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True
    ) as parent:
        assert parent.stdout is not None
        jvm_pid = int(parent.stdout.readline())
        assert _pid_alive(jvm_pid)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    assert _wait_until(lambda: not _pid_alive(jvm_pid), timeout_s=15), "broker JVM orphaned"
