"""Ingest fixtures: the real app served by uvicorn on a real port in a thread, producing to the
real broker, and helpers that read back what landed on a topic."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import uvicorn
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition
from flywheel_common import AvroCodec, Decoded, KafkaSettings, Topics
from flywheel_common.kafka import ensure_topics, make_consumer
from flywheel_ingest.app import IngestApp, create_app
from flywheel_ingest.auth import hash_api_key
from flywheel_ingest.server import server_config
from flywheel_ingest.settings import ApiKey, IngestSettings
from pydantic import SecretStr

from tests.conftest import PARTITIONS, kafka_settings_for

ACME_KEY = "test-key-acme-0123456789"
GLOBEX_KEY = "test-key-globex-0123456789"
GLOBEX_SECRET = "globex-signing-secret"  # noqa: S105 - a test secret
SLOW_KEY = "test-key-slow-0123456789"
BROWSER_KEY = "test-key-browser-0123456789"
FEEDBACK_KEY = "test-key-feedback-0123456789"
APP_ORIGIN = "https://app.example.com"

API_KEYS = (
    ApiKey(tenant="acme", key_sha256=hash_api_key(ACME_KEY)),
    ApiKey(
        tenant="globex",
        key_sha256=hash_api_key(GLOBEX_KEY),
        signing_secret=SecretStr(GLOBEX_SECRET),
    ),
    ApiKey(tenant="slow", key_sha256=hash_api_key(SLOW_KEY), rate_per_s=0.001, burst=3),
    ApiKey(
        tenant="acme",
        key_sha256=hash_api_key(BROWSER_KEY),
        kind="browser",
        scopes=frozenset({"feedback"}),
        allowed_origins=(APP_ORIGIN, "http://localhost:3000"),
    ),
    ApiKey(tenant="acme", key_sha256=hash_api_key(FEEDBACK_KEY), scopes=frozenset({"feedback"})),
)
_START_TIMEOUT_S = 30.0


@dataclass
class IngestServer:
    url: str
    settings: IngestSettings
    server: uvicorn.Server
    app: IngestApp

    def client(self, key: str | None = ACME_KEY) -> httpx.Client:
        headers = {"authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30.0)


@contextlib.contextmanager
def serve(settings: IngestSettings) -> Iterator[IngestServer]:
    """Serve the app on a free loopback port until the block ends."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    app = create_app(settings)
    # The deployed server configuration: every bound and guard of ``server_config`` applies.
    server = uvicorn.Server(server_config(app, settings, on_refused=app.record_refused_connection))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started or not thread.is_alive(), timeout_s=_START_TIMEOUT_S)
        assert server.started, "ingest did not start"
        yield IngestServer(f"http://127.0.0.1:{port}", settings, server, app)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def ingest_settings(kafka: KafkaSettings, **overrides: Any) -> IngestSettings:
    return IngestSettings(api_keys=API_KEYS, kafka=kafka, **overrides)


@pytest.fixture
def ingest(kafka_settings: KafkaSettings) -> Iterator[IngestServer]:
    """The service on this test's own topics, default limits."""
    with serve(ingest_settings(kafka_settings)) as server:
        yield server


@pytest.fixture
def make_ingest(
    kafka_settings: KafkaSettings,
) -> Iterator[Callable[..., IngestServer]]:
    """Start the service with setting overrides (several may run at once)."""
    with contextlib.ExitStack() as stack:

        def make(kafka: KafkaSettings | None = None, **overrides: Any) -> IngestServer:
            return stack.enter_context(serve(ingest_settings(kafka or kafka_settings, **overrides)))

        yield make


@pytest.fixture(scope="module")
def reject_ingest(kafka_bootstrap: str) -> Iterator[IngestServer]:
    """One service per module for requests that must be refused: its topics must stay empty."""
    topics = Topics.with_prefix(f"t{uuid.uuid4().hex[:12]}")
    kafka = kafka_settings_for(kafka_bootstrap, topics)
    ensure_topics(kafka, partitions=PARTITIONS)
    with serve(ingest_settings(kafka, max_body_bytes=64 * 1024, max_batch_events=20)) as server:
        yield server


def wait_for(condition: Callable[[], object], *, timeout_s: float, every_s: float = 0.02) -> None:
    """Poll ``condition`` until it is truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s}s")
        time.sleep(every_s)


def topic_sizes(kafka: KafkaSettings) -> dict[str, int]:
    """Messages on each event topic (high minus low watermark, summed over partitions)."""
    consumer = make_consumer(kafka, group_id=f"g{uuid.uuid4().hex}")
    deadline = time.monotonic() + 20
    try:
        sizes = {}
        for topic in kafka.topics.all():
            total = 0
            for p in range(PARTITIONS):
                while True:
                    try:
                        low, high = consumer.get_watermark_offsets(
                            TopicPartition(topic, p), timeout=10
                        )
                        break
                    except KafkaException:  # a fresh topic's leader is still being elected
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.1)
                total += high - low
            sizes[topic] = total
        return sizes
    finally:
        consumer.close()


@dataclass(frozen=True)
class Landed:
    """One message read back from a topic."""

    topic: str
    partition: int
    key: bytes
    event: Decoded


def read_topic(
    kafka: KafkaSettings, topic: str, *, expected: int, timeout_s: float = 20.0
) -> list[Landed]:
    """Every message on ``topic``, once ``expected`` of them have arrived; then checks, with the
    watermarks, that there are no more than that."""
    codec = AvroCodec()
    consumer: Consumer = make_consumer(kafka, group_id=f"g{uuid.uuid4().hex}")
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
    out: list[Landed] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(out) < expected and time.monotonic() < deadline:
            for msg in consumer.consume(1000, timeout=0.2):
                if msg.error():
                    raise AssertionError(f"consume error: {msg.error()}")
                out.append(
                    Landed(
                        topic, msg.partition(), msg.key(), codec.decode(msg.value(), topic=topic)
                    )
                )
    finally:
        consumer.close()
    assert len(out) == expected, f"{topic}: {len(out)} events landed, expected {expected}"
    assert topic_sizes(kafka)[topic] == expected, f"{topic} holds more than was read"
    return out
