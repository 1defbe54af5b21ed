"""The broker goes away mid-test: the webhook answers 503 with Retry-After (never 202 for an
event it could not get acknowledged), and once the broker is back every 202'd event is there."""

from __future__ import annotations

import sys
import time
import uuid
from collections import Counter

import pytest
from flywheel_common import AvroCodec, KafkaSettings, Topics
from flywheel_common.kafka import ensure_topics, make_consumer
from flywheel_devkit import LocalKafka

from tests.conftest import PARTITIONS, kafka_settings_for
from tests.ingest.conftest import IngestServer, ingest_settings, serve

ACK_TIMEOUT_S = 2.0


def _post(client: object, i: int) -> tuple[int, str, float]:
    event_id = str(uuid.uuid4())
    body = {
        "event_id": event_id,
        "occurred_at": time.time_ns() // 1_000_000,
        "run_id": f"run-{i}",
        "kind": "copy",
    }
    started = time.monotonic()
    resp = client.post("/v1/feedback", json=body)  # type: ignore[attr-defined]
    elapsed = time.monotonic() - started
    if resp.status_code == 503:
        assert resp.headers["retry-after"] == "1"
        assert resp.json()["errors"][0]["type"] in ("broker_down", "ack_timeout")
    else:
        assert resp.status_code == 202, resp.text
        assert resp.json() == {"event_ids": [event_id]}
    return resp.status_code, event_id, elapsed


def _event_ids_on(
    kafka: KafkaSettings, topic: str, want: set[str], timeout_s: float
) -> Counter[str]:
    """Read ``topic`` from the start until every id in ``want`` is seen or time runs out; how
    many times each id was seen."""
    from confluent_kafka import OFFSET_BEGINNING, TopicPartition

    codec = AvroCodec()
    consumer = make_consumer(kafka, group_id=f"g{uuid.uuid4().hex}")
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
    seen: Counter[str] = Counter()
    deadline = time.monotonic() + timeout_s
    try:
        while not want <= seen.keys() and time.monotonic() < deadline:
            for msg in consumer.consume(1000, timeout=0.2):
                if not msg.error():
                    seen[codec.decode(msg.value()).record["event_id"]] += 1
        # Whatever else is there (a duplicate would come after the first copy).
        for msg in consumer.consume(1000, timeout=1.0):
            if not msg.error():
                seen[codec.decode(msg.value()).record["event_id"]] += 1
    finally:
        consumer.close()
    return seen


def test_broker_outage_answers_503_and_loses_no_accepted_event(
    private_kafka: LocalKafka, capsys: pytest.CaptureFixture[str]
) -> None:
    topics = Topics.with_prefix(f"t{uuid.uuid4().hex[:12]}")
    kafka = kafka_settings_for(private_kafka.bootstrap_servers, topics)
    ensure_topics(kafka, partitions=PARTITIONS)
    # The client's one connection idles while the broker stops and starts (seconds): a
    # keep-alive timeout shorter than that closes it under the next request (a reset, not an
    # answer), which is the client's race, not what this test is about.
    settings = ingest_settings(
        kafka,
        ack_timeout_s=ACK_TIMEOUT_S,
        health_probe_interval_s=0.2,
        keep_alive_timeout_s=300.0,
    )
    accepted: list[str] = []
    statuses: Counter[int] = Counter()
    server: IngestServer
    with serve(settings) as server, server.client() as client:
        i = 0

        def post() -> tuple[int, float]:
            nonlocal i
            i += 1
            status, event_id, elapsed = _post(client, i)
            statuses[status] += 1
            if status == 202:
                accepted.append(event_id)
            return status, elapsed

        for _ in range(20):
            assert post()[0] == 202

        private_kafka.stop()
        # Requests racing the shutdown may still be acknowledged; soon every answer is 503.
        deadline = time.monotonic() + 30
        while post()[0] != 503:
            assert time.monotonic() < deadline, "never answered 503 with the broker down"
        assert client.get("/readyz").status_code == 503
        # Once the outage is known, 503 comes at once, not after the ack timeout.
        for _ in range(10):
            status, elapsed = post()
            assert status == 503
            assert elapsed < ACK_TIMEOUT_S / 2
        metrics = client.get("/metrics").text
        assert "flywheel_ingest_broker_up 0.0" in metrics

        private_kafka.start()
        deadline = time.monotonic() + 60
        while post()[0] != 202:
            assert time.monotonic() < deadline, "never recovered after the broker came back"
        for _ in range(20):
            assert post()[0] == 202
        assert client.get("/readyz").status_code == 200

    want = set(accepted)
    seen = _event_ids_on(kafka, topics.feedback, want, timeout_s=30)
    lost = len(want - seen.keys())
    duplicated = sum(n - 1 for n in seen.values())
    with capsys.disabled():  # the figures RELIABILITY.md quotes
        sys.stdout.write(
            f"\noutage: {sum(statuses.values())} requests, 1 broker stop/start, "
            f"{statuses[202]} accepted, {statuses[503]} answered 503, lost {lost}, "
            f"duplicated {duplicated}, server errors {statuses[500]}\n"
        )
    assert not lost, f"{lost} events answered 202 are missing"
    assert statuses[500] == 0
    # Only 202'd events were retried by nobody here: a 503'd event may land (not known to be
    # stored), but none may land twice.
    assert not duplicated
