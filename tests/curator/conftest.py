"""Helpers for the curator tests: event factories, a producer that reports where each event
landed, a curator running in a thread or a subprocess, and readers of the real tables."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from deltalake import DeltaTable
from flywheel_common.codec import AvroCodec
from flywheel_common.kafka import make_producer
from flywheel_common.settings import KafkaSettings, LakeSettings
from flywheel_curator.consumer import Curator
from flywheel_curator.settings import BatchSettings, CuratorSettings

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
CODEC = AvroCodec()
NAMES = {"run": "Run", "feedback": "Feedback", "edit": "Edit"}

PROMPT = "Summarise the quarterly report for the board in three sentences."
RESPONSE = "The quarter was fine. Revenue went up. Costs went up too, a bit."
FINAL = "Revenue went up this quarter while costs went up a bit less."


def now() -> datetime:
    return datetime.now(tz=UTC)


def run_event(run_id: str, **kw: Any) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "occurred_at": now(),
        "received_at": now(),
        "tenant": kw.pop("tenant", "acme"),
        "run_id": run_id,
        "prompt": kw.pop("prompt", PROMPT),
        "response": kw.pop("response", RESPONSE),
        "model": kw.pop("model", "m1"),
        "feature": kw.pop("feature", "summary"),
        **kw,
    }


def feedback_event(run_id: str, kind: str, value: float | None = None, **kw: Any) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "occurred_at": now(),
        "received_at": now(),
        "tenant": kw.pop("tenant", "acme"),
        "run_id": run_id,
        "kind": kind,
        "value": value,
        **kw,
    }


def edit_event(run_id: str, **kw: Any) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "occurred_at": now(),
        "received_at": now(),
        "tenant": kw.pop("tenant", "acme"),
        "run_id": run_id,
        "prompt": kw.pop("prompt", PROMPT),
        "original": kw.pop("original", RESPONSE),
        "final": kw.pop("final", FINAL),
        "feature": kw.pop("feature", "summary"),
        **kw,
    }


Coord = tuple[str, int, int]


class EventProducer:
    """Produces encoded events keyed by run_id and records the (topic, partition, offset)."""

    def __init__(self, settings: KafkaSettings) -> None:
        self.settings = settings
        self.producer: Producer = make_producer(settings, linger_ms=2)
        self.delivered: list[Coord] = []
        self.coord_of: dict[str, Coord] = {}  # event_id -> where it landed
        self.errors: list[str] = []

    def _cb(self, err: Any, msg: Any, event_id: str | None = None) -> None:
        if err is not None:
            self.errors.append(str(err))
        else:
            coord = (msg.topic(), msg.partition(), msg.offset())
            self.delivered.append(coord)
            if event_id is not None:
                self.coord_of[event_id] = coord

    def send(self, event_type: str, record: Mapping[str, Any]) -> None:
        value = CODEC.encode(NAMES[event_type], record)
        topic = self.settings.topics.for_event(event_type)  # type: ignore[arg-type]
        self.send_raw(topic, record["run_id"], value, event_id=record["event_id"])

    def send_raw(self, topic: str, key: str, value: bytes, *, event_id: str | None = None) -> None:
        def cb(err: Any, msg: Any) -> None:
            self._cb(err, msg, event_id)

        while True:
            try:
                self.producer.produce(topic, value=value, key=key.encode(), on_delivery=cb)
                break
            except BufferError:
                self.producer.poll(0.05)
        self.producer.poll(0)

    def flush(self) -> list[Coord]:
        assert self.producer.flush(30) == 0
        assert not self.errors, self.errors
        return list(self.delivered)


def settings_for(
    kafka: KafkaSettings,
    lake: Path,
    state: Path,
    *,
    group: str | None = None,
    **kw: Any,
) -> CuratorSettings:
    return CuratorSettings(
        kafka=kafka,
        lake=LakeSettings(uri=str(lake)),
        group_id=group or f"g-{uuid.uuid4().hex[:8]}",
        state_dir=state,
        batch=kw.pop("batch", BatchSettings(max_rows=500, max_seconds=0.3)),
        session_timeout_ms=kw.pop("session_timeout_ms", 6000),
        **kw,
    )


@dataclass
class ThreadedCurator:
    settings: CuratorSettings
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    curator: Curator | None = None
    error: list[BaseException] = field(default_factory=list)

    def start(self) -> ThreadedCurator:
        self.curator = Curator(self.settings)

        def target() -> None:
            try:
                assert self.curator is not None
                self.curator.run(self.stop)
            except BaseException as exc:  # surfaced by close()
                self.error.append(exc)

        self.thread = threading.Thread(target=target, daemon=True)
        self.thread.start()
        return self

    def close(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(60)
            assert not self.thread.is_alive(), "curator did not stop"
        if self.error:
            raise self.error[0]


@pytest.fixture
def curator_factory() -> Iterator[Callable[[CuratorSettings], ThreadedCurator]]:
    started: list[ThreadedCurator] = []

    def make(settings: CuratorSettings) -> ThreadedCurator:
        c = ThreadedCurator(settings).start()
        started.append(c)
        return c

    yield make
    for c in started:
        c.close()


def env_for(settings: CuratorSettings, **extra: str) -> dict[str, str]:
    """The environment that gives a subprocess curator these settings."""
    env = dict(os.environ)
    k = settings.kafka
    env.update(
        {
            "FLYWHEEL_CURATOR_KAFKA__BOOTSTRAP_SERVERS": k.bootstrap_servers,
            "FLYWHEEL_CURATOR_KAFKA__PARTITIONS": str(k.partitions),
            "FLYWHEEL_CURATOR_KAFKA__TOPICS": k.topics.model_dump_json(),
            "FLYWHEEL_CURATOR_LAKE__URI": settings.lake.uri,
            "FLYWHEEL_CURATOR_GROUP_ID": settings.group_id,
            "FLYWHEEL_CURATOR_STATE_DIR": str(settings.state_dir),
            "FLYWHEEL_CURATOR_SESSION_TIMEOUT_MS": str(settings.session_timeout_ms),
            "FLYWHEEL_CURATOR_BATCH": settings.batch.model_dump_json(),
            "FLYWHEEL_CURATOR_LOGGING__LEVEL": "INFO",
        }
    )
    env.update(extra)
    return env


def spawn(settings: CuratorSettings, log: Path, **extra: str) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [PYTHON, "-m", "flywheel_curator"],
            env=env_for(settings, **extra),
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )


def read_table(lake: Path, table: str) -> list[dict[str, Any]]:
    path = lake / table
    if not DeltaTable.is_deltatable(str(path)):
        return []
    rows: list[dict[str, Any]] = DeltaTable(str(path)).to_pyarrow_table().to_pylist()
    return rows


def wait_until(
    check: Callable[[], Any], *, timeout: float = 60.0, interval: float = 0.1, what: str = ""
) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or check}: {last!r}")


def rows_with(lake: Path, table: str, n: int) -> Callable[[], list[dict[str, Any]] | None]:
    def check() -> list[dict[str, Any]] | None:
        rows = read_table(lake, table)
        return rows if len(rows) >= n else None

    return check


def coords(rows: Sequence[Mapping[str, Any]]) -> list[Coord]:
    return [(r["kafka_topic"], r["kafka_partition"], r["kafka_offset"]) for r in rows]


def report(test: str, **figures: object) -> None:
    """One line of figures for RELIABILITY.md (shown with ``pytest -s``)."""
    line = " ".join(f"{k}={v}" for k, v in figures.items())
    print(f"\nFIGURES {test}: {line}")  # noqa: T201 - the figures RELIABILITY.md quotes
