"""Session fixtures: a real Kafka broker for the whole run, uuid-named topics per test.

Broker selection, in order:
1. ``KAFKA_BOOTSTRAP_SERVERS`` set: use that existing cluster.
2. ``FLYWHEEL_TEST_KAFKA=docker`` and a Docker engine answers: testcontainers' Kafka module.
3. Otherwise: ``flywheel_devkit.LocalKafka`` (Apache Kafka jars from Maven Central).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flywheel_common.kafka import ensure_topics, wait_for_broker
from flywheel_common.settings import KafkaSettings, Topics
from flywheel_devkit import LocalKafka

PARTITIONS = 3


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        wait_for_broker(KafkaSettings(bootstrap_servers=external))
        yield external
        return
    if os.environ.get("FLYWHEEL_TEST_KAFKA") == "docker":
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer().with_kraft() as container:
            yield container.get_bootstrap_server()
        return
    with LocalKafka(partitions=PARTITIONS) as kafka:
        # The topics of DESIGN.md under their real names, as a deployment has them; each test
        # still works on its own uuid-named copies (the ``topics`` fixture).
        ensure_topics(
            KafkaSettings(bootstrap_servers=kafka.bootstrap_servers, partitions=PARTITIONS)
        )
        yield kafka.bootstrap_servers


@pytest.fixture
def topics(kafka_bootstrap: str) -> Topics:
    """A fresh set of the five topics, named with a uuid4 so tests never share data."""
    t = Topics.with_prefix(f"t{uuid.uuid4().hex[:12]}")
    ensure_topics(kafka_settings_for(kafka_bootstrap, t), partitions=PARTITIONS)
    return t


@pytest.fixture
def kafka_settings(kafka_bootstrap: str, topics: Topics) -> KafkaSettings:
    return kafka_settings_for(kafka_bootstrap, topics)


def kafka_settings_for(bootstrap: str, topics: Topics) -> KafkaSettings:
    return KafkaSettings(bootstrap_servers=bootstrap, topics=topics, partitions=PARTITIONS)


@pytest.fixture
def private_kafka(tmp_path: Path) -> Iterator[LocalKafka]:
    """A broker of the test's own, for tests that stop, kill or restart it."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        pytest.skip("needs a broker it can stop; KAFKA_BOOTSTRAP_SERVERS points at a shared one")
    kafka = LocalKafka(partitions=PARTITIONS, data_dir=tmp_path / "kafka", heap="512m")
    try:
        yield kafka.start()
    finally:
        kafka.close()


@pytest.fixture
def new_id() -> Callable[[], str]:
    return lambda: str(uuid.uuid4())


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A run in which nothing passed is a failure, never a quiet green."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None or exitstatus != 0:
        return
    if not reporter.stats.get("passed"):
        session.exitstatus = pytest.ExitCode.NO_TESTS_COLLECTED
