"""Every endpoint against the real broker: what was posted is exactly what lands, decoded back
from the topic and compared field by field."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from flywheel_common import KafkaSettings, SchemaCatalog
from flywheel_ingest.auth import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign

from demo.sample import generate_sample
from tests.ingest.conftest import (
    GLOBEX_KEY,
    GLOBEX_SECRET,
    SLOW_KEY,
    IngestServer,
    Landed,
    read_topic,
    topic_sizes,
)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
RECORDS = {"run": "Run", "feedback": "Feedback", "edit": "Edit"}
ROUTES = {"run": "/v1/runs", "feedback": "/v1/feedback", "edit": "/v1/edits"}
CATALOG = SchemaCatalog.load()


def to_ms(value: Any) -> int:
    if isinstance(value, datetime):
        return (value - EPOCH) // timedelta(milliseconds=1)
    if isinstance(value, str):
        return (datetime.fromisoformat(value) - EPOCH) // timedelta(milliseconds=1)
    return int(value)


def assert_landed_as_posted(
    landed: Landed,
    body: dict[str, Any],
    *,
    kind: str,
    tenant: str,
    event_id: str,
    window_ms: tuple[int, int],
) -> None:
    """The decoded record holds exactly the posted fields, the schema defaults for the rest,
    and the server-set fields."""
    record = landed.event.record
    assert landed.event.name == RECORDS[kind]
    assert landed.key == body["run_id"].encode()
    for field in CATALOG.raw(RECORDS[kind])["fields"]:
        name = field["name"]
        got = record[name]
        if name == "event_id":
            assert got == event_id
            if "event_id" in body:
                assert got == str(uuid.UUID(body["event_id"]))
        elif name == "tenant":
            assert got == tenant
        elif name == "received_at":
            assert window_ms[0] <= to_ms(got) <= window_ms[1]
        elif name == "occurred_at":
            assert to_ms(got) == to_ms(body["occurred_at"])
        elif name in body:
            want = body[name]
            if isinstance(want, int) and not isinstance(want, bool) and isinstance(got, float):
                want = float(want)
            assert got == want, f"{kind}.{name}: {got!r} != {want!r}"
        else:
            assert got == field["default"], f"{kind}.{name} should take its default"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def by_event_id(landed: list[Landed]) -> dict[str, Landed]:
    out = {m.event.record["event_id"]: m for m in landed}
    assert len(out) == len(landed), "an event landed twice"
    return out


def test_single_endpoints_produce_exactly_what_was_posted(
    ingest: IngestServer, kafka_settings: KafkaSettings
) -> None:
    sample = [e for e in generate_sample(runs_per_tenant=8) if e.tenant == "acme"]
    # Also an event without event_id and one with an RFC 3339 time: ingest fills/converts.
    extra_run = {
        "occurred_at": "2025-02-01T09:30:00.250+01:00",
        "run_id": "run-no-id",
        "prompt": "plain text prompt",
        "response": "an answer",
        "model": "m",
    }
    posted: list[tuple[str, dict[str, Any], str]] = []
    before = now_ms()
    with ingest.client() as client:
        for event in [*((e.kind, e.body) for e in sample), ("run", extra_run)]:
            kind, body = event
            resp = client.post(ROUTES[kind], json=body)
            assert resp.status_code == 202, resp.text
            [event_id] = resp.json()["event_ids"]
            posted.append((kind, body, event_id))
    after = now_ms()

    for kind in ("run", "feedback", "edit"):
        mine = [(body, eid) for k, body, eid in posted if k == kind]
        topic = kafka_settings.topics.for_event(kind)  # type: ignore[arg-type]
        landed = by_event_id(read_topic(kafka_settings, topic, expected=len(mine)))
        for body, event_id in mine:
            assert_landed_as_posted(
                landed[event_id],
                body,
                kind=kind,
                tenant="acme",
                event_id=event_id,
                window_ms=(before, after),
            )
    generated = next(eid for _k, body, eid in posted if body is extra_run)
    assert uuid.UUID(generated).version == 4
    assert topic_sizes(kafka_settings)[kafka_settings.topics.dlq] == 0


def test_batch_endpoint_produces_exactly_what_was_posted(
    ingest: IngestServer, kafka_settings: KafkaSettings
) -> None:
    sample = [e for e in generate_sample(runs_per_tenant=12) if e.tenant == "acme"]
    events = []
    for i, e in enumerate(sample):
        body = {"type": e.kind, **e.body}
        if i % 5 == 0:
            del body["event_id"]  # generated and returned by ingest
        events.append(body)
    before = now_ms()
    with ingest.client() as client:
        half = len(events) // 2
        ids: list[str] = []
        for chunk in (events[:half], events[half:]):
            resp = client.post("/v1/events", json={"events": chunk})
            assert resp.status_code == 202, resp.text
            ids += resp.json()["event_ids"]
    after = now_ms()
    assert len(ids) == len(events) == len(set(ids))

    landed: dict[str, Landed] = {}
    for kind in ("run", "feedback", "edit"):
        count = sum(1 for e in events if e["type"] == kind)
        topic = kafka_settings.topics.for_event(kind)  # type: ignore[arg-type]
        landed |= by_event_id(read_topic(kafka_settings, topic, expected=count))
    for body, event_id in zip(events, ids, strict=True):
        fields = {k: v for k, v in body.items() if k != "type"}
        assert_landed_as_posted(
            landed[event_id],
            fields,
            kind=body["type"],
            tenant="acme",
            event_id=event_id,
            window_ms=(before, after),
        )
    # Keyed by run_id on co-partitioned topics: a run and its feedback share a partition.
    run_partition = {
        m.event.record["run_id"]: m.partition for m in landed.values() if m.event.name == "Run"
    }
    for m in landed.values():
        if m.event.name != "Run":
            assert m.partition == run_partition[m.event.record["run_id"]]


def test_client_event_id_is_kept_and_tenant_comes_from_the_key(
    ingest: IngestServer, kafka_settings: KafkaSettings
) -> None:
    event_id = str(uuid.uuid4()).upper()  # any UUID spelling; stored canonical
    body = {"event_id": event_id, "occurred_at": now_ms(), "run_id": "r", "kind": "copy"}
    raw = orjson.dumps(body)
    ts = str(int(time.time()))
    headers = {
        "authorization": f"Bearer {GLOBEX_KEY}",
        "content-type": "application/json",
        TIMESTAMP_HEADER: ts,
        SIGNATURE_HEADER: sign(GLOBEX_SECRET.encode(), ts, raw, path="/v1/feedback"),
    }
    with ingest.client(key=None) as client:
        resp = client.post("/v1/feedback", content=raw, headers=headers)
    assert resp.status_code == 202, resp.text
    assert resp.json() == {"event_ids": [event_id.lower()]}
    [landed] = read_topic(kafka_settings, kafka_settings.topics.feedback, expected=1)
    assert landed.event.record["tenant"] == "globex"
    assert landed.event.record["event_id"] == event_id.lower()


def test_rate_limit_answers_429_and_produces_nothing_more(
    ingest: IngestServer, kafka_settings: KafkaSettings
) -> None:
    body = {"occurred_at": now_ms(), "run_id": "r", "kind": "copy"}
    statuses = []
    with ingest.client(key=SLOW_KEY) as client:  # burst 3, refills ~never
        for _ in range(5):
            resp = client.post("/v1/feedback", json=body)
            statuses.append(resp.status_code)
            if resp.status_code == 429:
                # When one token will be back (rate 0.001/s), not a blind "1".
                assert resp.headers["retry-after"] == "1000"
                assert resp.json()["errors"][0]["type"] == "rate_limited"
    assert statuses == [202, 202, 202, 429, 429]
    read_topic(kafka_settings, kafka_settings.topics.feedback, expected=3)


def test_full_producer_queue_answers_503_and_produces_nothing(
    make_ingest: Any, kafka_settings: KafkaSettings
) -> None:
    server: IngestServer = make_ingest(queue_max_messages=5)
    events = [
        {"type": "feedback", "occurred_at": now_ms(), "run_id": f"r{i}", "kind": "copy"}
        for i in range(6)
    ]
    with server.client() as client:
        resp = client.post("/v1/events", json={"events": events})
        assert resp.status_code == 503
        assert resp.headers["retry-after"] == "1"
        assert resp.json()["errors"][0]["type"] == "queue_full"
        assert topic_sizes(kafka_settings)[kafka_settings.topics.feedback] == 0
        resp = client.post("/v1/events", json={"events": events[:5]})
        assert resp.status_code == 202, resp.text
    read_topic(kafka_settings, kafka_settings.topics.feedback, expected=5)


def test_ops_endpoints(ingest: IngestServer) -> None:
    with ingest.client(key=None) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.get("/readyz").status_code == 200
        doc = client.get("/openapi.json").json()
        body = {"occurred_at": now_ms(), "run_id": "r", "kind": "copy"}
        client.post("/v1/feedback", json=body, headers={"authorization": "Bearer nope"})
        metrics = client.get("/metrics").text
    assert doc["openapi"].startswith("3.")
    assert set(doc["paths"]) >= {"/v1/runs", "/v1/feedback", "/v1/edits", "/v1/events"}
    schemas = doc["components"]["schemas"]
    assert {"Run", "Feedback", "Edit", "EventBatch", "ErrorBody", "Accepted"} <= set(schemas)
    assert "tenant" not in schemas["Run"]["properties"]
    json.dumps(doc)  # serialisable as-is
    assert 'flywheel_ingest_requests_total{route="feedback",status="401"} 1.0' in metrics
    assert "flywheel_ingest_broker_up 1.0" in metrics


def test_chunked_body_is_read_whole_and_events_are_counted_by_type(
    ingest: IngestServer, kafka_settings: KafkaSettings
) -> None:
    events = [
        {"type": "feedback", "occurred_at": now_ms(), "run_id": f"r{i}", "kind": "copy"}
        for i in range(3)
    ]
    raw = orjson.dumps({"events": events})

    def chunks() -> Iterator[bytes]:  # no Content-Length: the body arrives in several parts
        for i in range(0, len(raw), 16):
            yield raw[i : i + 16]

    with ingest.client() as client:
        resp = client.post(
            "/v1/events", content=chunks(), headers={"content-type": "application/json"}
        )
        assert resp.status_code == 202, resp.text
        assert len(resp.json()["event_ids"]) == 3
        metrics = client.get("/metrics").text
    assert 'flywheel_ingest_events_produced_total{type="feedback"} 3.0' in metrics
    assert 'flywheel_ingest_requests_total{route="batch",status="202"} 1.0' in metrics
    read_topic(kafka_settings, kafka_settings.topics.feedback, expected=3)
