"""A batch is all-or-nothing from the client's view: an event Kafka cannot store is refused
before anything is produced, and a broker failure mid-batch says exactly which ids are stored."""

from __future__ import annotations

import base64
import os
from collections.abc import Callable

import httpx
import orjson
from confluent_kafka.admin import (
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ResourceType,
)
from flywheel_common import KafkaSettings
from flywheel_common.kafka import make_admin
from flywheel_ingest.messages import topic_message_limit
from flywheel_ingest.settings import IngestSettings

from tests.ingest.conftest import IngestServer, read_topic, topic_sizes, wait_for

NOW_MS = 1_736_000_000_000


def _copy(i: int, **extra: object) -> dict[str, object]:
    return {"type": "feedback", "occurred_at": NOW_MS, "run_id": f"r{i}", "kind": "copy", **extra}


def _run(i: int, response: str) -> dict[str, object]:
    return {
        "type": "run",
        "occurred_at": NOW_MS,
        "run_id": f"r{i}",
        "prompt": "p",
        "response": response,
        "model": "m",
    }


def _post(server: IngestServer, events: list[dict[str, object]]) -> httpx.Response:
    with server.client() as client:
        return client.post(
            "/v1/events",
            content=orjson.dumps({"events": events}),
            headers={"content-type": "application/json"},
        )


def test_body_limit_is_aligned_with_the_message_limit() -> None:
    settings = IngestSettings()
    assert settings.max_body_bytes == settings.max_message_bytes


def test_event_over_the_producer_limit_is_413_and_nothing_is_produced(
    make_ingest: Callable[..., IngestServer], kafka_settings: KafkaSettings
) -> None:
    # A body limit above the message limit, as a careless operator may set it.
    server = make_ingest(max_body_bytes=2_000_000)
    events = [_copy(0), _copy(1), _run(2, "x" * 1_010_000), _copy(3)]
    resp = _post(server, events)
    assert resp.status_code == 413, resp.text
    error = resp.json()["errors"][0]
    assert error["type"] == "event_too_large"
    assert error["loc"] == ["body", "events", 2, "response"]
    assert set(topic_sizes(kafka_settings).values()) == {0}, "part of the batch was produced"


def _limit_topics(kafka: KafkaSettings, max_message_bytes: int) -> None:
    admin = make_admin(kafka)
    topics = kafka.topics
    entry = ConfigEntry(
        "max.message.bytes", str(max_message_bytes), incremental_operation=AlterConfigOpType.SET
    )
    resources = [
        ConfigResource(ResourceType.TOPIC, name, incremental_configs=[entry])
        for name in (topics.runs, topics.feedback, topics.edits)
    ]
    for future in admin.incremental_alter_configs(resources).values():
        future.result(timeout=30)
    # The broker applies the change a moment after acknowledging it.
    wait_for(lambda: topic_message_limit(kafka) == max_message_bytes, timeout_s=30, every_s=0.1)


def _incompressible(size: int) -> str:
    """Text lz4 cannot shrink: the broker sees about as many bytes as the producer."""
    return base64.b64encode(os.urandom(size * 3 // 4)).decode()


def test_event_over_the_topic_limit_is_413_and_small_batches_still_fit(
    make_ingest: Callable[..., IngestServer], kafka_settings: KafkaSettings
) -> None:
    _limit_topics(kafka_settings, 200_000)
    server = make_ingest()
    resp = _post(server, [_copy(0), _run(1, _incompressible(250_000))])
    assert resp.status_code == 413, resp.text
    assert resp.json()["errors"][0]["loc"] == ["body", "events", 1, "response"]
    assert set(topic_sizes(kafka_settings).values()) == {0}
    # 600 KB of small events in one request: the producer's batches stay under the topic's
    # limit (each would be refused by the broker as a whole otherwise).
    events = [_run(i, _incompressible(10_000)) for i in range(60)]
    resp = _post(server, events)
    assert resp.status_code == 202, resp.text
    read_topic(kafka_settings, kafka_settings.topics.runs, expected=60)


def test_broker_failure_mid_batch_lists_the_stored_event_ids(
    make_ingest: Callable[..., IngestServer], kafka_settings: KafkaSettings
) -> None:
    # A producer buffer of 1 KB: the second event of the batch does not fit.
    tight = kafka_settings.model_copy(update={"extra": {"queue.buffering.max.kbytes": "1"}})
    server = make_ingest(tight)
    events = [_copy(i, comment="c" * 600) for i in range(3)]
    resp = _post(server, events)
    assert resp.status_code == 503, resp.text
    body = resp.json()
    assert body["errors"][0]["type"] == "queue_full"
    assert len(body["event_ids"]) == 3
    assert body["stored_event_ids"] == body["event_ids"][:1]
    [landed] = read_topic(kafka_settings, kafka_settings.topics.feedback, expected=1)
    assert landed.event.record["event_id"] == body["event_ids"][0]
