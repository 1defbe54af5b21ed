"""The real ingest service as its own process (``python -m flywheel_ingest``), which a test may
stop, kill and start again on the same port, and readers that count what landed on Kafka by
``event_id``. Shared by the Python SDK tests and the TypeScript tests' harness."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import httpx
from confluent_kafka import OFFSET_BEGINNING, TopicPartition
from flywheel_common import AvroCodec, KafkaSettings, Topics
from flywheel_common.kafka import ensure_topics, make_consumer
from flywheel_devkit import free_port
from flywheel_ingest.auth import hash_api_key

PARTITIONS = 3
ACME_KEY = "sdk-test-key-acme-0123456789"
SIGNED_KEY = "sdk-test-key-signed-0123456789"
SIGNING_SECRET = "sdk-test-signing-secret"  # noqa: S105 - a test secret
BROWSER_KEY = "sdk-test-key-browser-0123456789"
BROWSER_ORIGIN = "https://app.example.com"
API_KEYS: list[dict[str, Any]] = [
    {"tenant": "acme", "key_sha256": hash_api_key(ACME_KEY)},
    {"tenant": "signed", "key_sha256": hash_api_key(SIGNED_KEY), "signing_secret": SIGNING_SECRET},
    {  # a page's key: feedback only, from one origin
        "tenant": "web",
        "key_sha256": hash_api_key(BROWSER_KEY),
        "kind": "browser",
        "allowed_origins": [BROWSER_ORIGIN],
        "scopes": ["feedback"],
    },
]
_START_TIMEOUT_S = 60.0
_ROOT = Path(__file__).resolve().parents[2]


def wait_for(condition: Callable[[], object], *, timeout_s: float, every_s: float = 0.02) -> None:
    """Poll ``condition`` until it is truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s}s")
        time.sleep(every_s)


def new_kafka(bootstrap: str) -> KafkaSettings:
    """Settings on a fresh, uuid-named set of topics."""
    topics = Topics.with_prefix(f"t{uuid.uuid4().hex[:12]}")
    kafka = KafkaSettings(bootstrap_servers=bootstrap, topics=topics, partitions=PARTITIONS)
    ensure_topics(kafka, partitions=PARTITIONS)
    return kafka


class IngestProcess:
    """``flywheel-ingest`` on a fixed port; ``stop()``/``kill()`` and ``start()`` again."""

    def __init__(
        self,
        kafka: KafkaSettings,
        *,
        api_keys: Sequence[dict[str, Any]] = API_KEYS,
        log_path: Path | None = None,
        **settings: Any,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.kafka = kafka
        self._log_path = log_path
        self._env = {
            **os.environ,
            "FLYWHEEL_INGEST_PORT": str(self.port),
            "FLYWHEEL_INGEST_API_KEYS": json.dumps(list(api_keys)),
            "FLYWHEEL_INGEST_KAFKA": kafka.model_dump_json(),
            "FLYWHEEL_INGEST_LOGGING__FORMAT": "json",
            **{f"FLYWHEEL_INGEST_{k.upper()}": str(v) for k, v in settings.items()},
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> IngestProcess:
        log = open(self._log_path, "ab") if self._log_path else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "flywheel_ingest"],
            env=self._env,
            cwd=_ROOT,
            stdout=log,
            stderr=log,
        )
        if log is not subprocess.DEVNULL:
            log.close()
        proc = self.proc
        wait_for(lambda: proc.poll() is not None or self.ready(), timeout_s=_START_TIMEOUT_S)
        if proc.poll() is not None:
            raise AssertionError(f"ingest exited with {proc.returncode}; log: {self._log_path}")
        return self

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        self.proc.wait(timeout_s)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def __enter__(self) -> IngestProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def event_topics(kafka: KafkaSettings) -> list[str]:
    return [kafka.topics.runs, kafka.topics.feedback, kafka.topics.edits]


def landed(kafka: KafkaSettings, want: Iterable[str], *, timeout_s: float = 30.0) -> Counter[str]:
    """How many times each event id is on the event topics: read from the start until every
    id in ``want`` was seen (or ``timeout_s``), then to the end of every partition."""
    want = set(want)
    codec = AvroCodec()
    consumer = make_consumer(kafka, group_id=f"g{uuid.uuid4().hex}")
    parts = [
        TopicPartition(t, p, OFFSET_BEGINNING)
        for t in event_topics(kafka)
        for p in range(PARTITIONS)
    ]
    ends = {
        (tp.topic, tp.partition): consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in parts
    }
    consumer.assign(parts)
    seen: Counter[str] = Counter()
    deadline = time.monotonic() + timeout_s
    position: dict[tuple[str, int], int] = {}
    try:
        while time.monotonic() < deadline:
            for msg in consumer.consume(1000, timeout=0.2):
                if msg.error():
                    raise AssertionError(f"consume error: {msg.error()}")
                seen[codec.decode(msg.value()).record["event_id"]] += 1
                position[(msg.topic(), msg.partition())] = msg.offset() + 1
            if want <= seen.keys():
                # Refresh the ends (late copies of an event count too), then read to them.
                ends = {
                    (tp.topic, tp.partition): consumer.get_watermark_offsets(tp, timeout=10)[1]
                    for tp in parts
                }
                if all(position.get(k, 0) >= end for k, end in ends.items()):
                    break
    finally:
        consumer.close()
    return seen


def tenants_of(kafka: KafkaSettings) -> Counter[str]:
    """Events per tenant on the event topics (reads everything there is now)."""
    codec = AvroCodec()
    consumer = make_consumer(kafka, group_id=f"g{uuid.uuid4().hex}")
    parts = [
        TopicPartition(t, p, OFFSET_BEGINNING)
        for t in event_topics(kafka)
        for p in range(PARTITIONS)
    ]
    total = sum(consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in parts)
    consumer.assign(parts)
    out: Counter[str] = Counter()
    deadline = time.monotonic() + 30
    try:
        while sum(out.values()) < total and time.monotonic() < deadline:
            for msg in consumer.consume(1000, timeout=0.2):
                out[codec.decode(msg.value()).record["tenant"]] += 1
    finally:
        consumer.close()
    return out
