"""The processes the demo runs: a Kafka broker and the services, each a context manager that
leaves nothing behind when the block ends (also on Ctrl-C)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
from flywheel_common import KafkaSettings, Topics
from flywheel_common.kafka import ensure_topics, wait_for_broker
from flywheel_devkit import LocalKafka, free_port
from flywheel_ingest.auth import hash_api_key

__all__ = ["DemoTenant", "IngestProcess", "ingest_service", "kafka_cluster"]

_PARTITIONS = 3
_READY_TIMEOUT_S = 60.0
_STOP_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class DemoTenant:
    name: str
    api_key: str
    signing_secret: str | None = None


@contextlib.contextmanager
def kafka_cluster(bootstrap: str | None) -> Iterator[KafkaSettings]:
    """A fresh local broker, or ``bootstrap``'s cluster with uuid-prefixed topics so the demo
    shows only its own events. Topics are created with the same partition count."""
    if bootstrap:
        wait_for_broker(KafkaSettings(bootstrap_servers=bootstrap))
        topics = Topics.with_prefix(f"demo-{uuid.uuid4().hex[:8]}")
        settings = KafkaSettings(bootstrap_servers=bootstrap, topics=topics, partitions=_PARTITIONS)
        ensure_topics(settings)
        yield settings
        return
    with LocalKafka(partitions=_PARTITIONS) as kafka:
        settings = KafkaSettings(bootstrap_servers=kafka.bootstrap_servers, partitions=_PARTITIONS)
        ensure_topics(settings)
        yield settings


@dataclass(frozen=True)
class IngestProcess:
    url: str
    pid: int
    log_file: Path


@contextlib.contextmanager
def ingest_service(
    kafka: KafkaSettings, tenants: list[DemoTenant], *, log_dir: Path
) -> Iterator[IngestProcess]:
    """``python -m flywheel_ingest`` on a free port, configured through its environment as in
    production; SIGTERM (then SIGKILL) when the block ends."""
    port = free_port()
    keys = [
        {
            "tenant": t.name,
            "key_sha256": hash_api_key(t.api_key),
            **({"signing_secret": t.signing_secret} if t.signing_secret else {}),
        }
        for t in tenants
    ]
    env = {
        **os.environ,
        "FLYWHEEL_INGEST_PORT": str(port),
        "FLYWHEEL_INGEST_API_KEYS": json.dumps(keys),
        "FLYWHEEL_INGEST_KAFKA": kafka.model_dump_json(),
    }
    log_dir.mkdir(parents=True, exist_ok=True)
    log_file = log_dir / "ingest.log"
    with open(log_file, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "flywheel_ingest"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + _READY_TIMEOUT_S
        while not _ready(url):
            if proc.poll() is not None:
                raise RuntimeError(f"ingest exited with {proc.returncode}; see {log_file}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"ingest not ready in {_READY_TIMEOUT_S}s; see {log_file}")
            time.sleep(0.1)
        yield IngestProcess(url, proc.pid, log_file)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=1.0).status_code == 200
    except httpx.TransportError:
        return False
