"""The ingest stage of the demo: post the sample through HTTP as client apps would, then read
back what landed on each topic."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
from confluent_kafka import OFFSET_BEGINNING, TopicPartition
from flywheel_common import AvroCodec, KafkaSettings
from flywheel_common.kafka import make_consumer
from flywheel_ingest.auth import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign

from demo.sample import SampleEvent
from demo.stack import DemoTenant

__all__ = ["PostReport", "TopicSummary", "post_sample", "read_topics"]

_BATCH = 25
_READ_TIMEOUT_S = 30.0


@dataclass
class PostReport:
    accepted: Counter[str] = field(default_factory=Counter)  # "tenant/type" -> events
    requests: int = 0
    rejected_example: dict[str, Any] | None = None
    seconds: float = 0.0


def post_sample(
    url: str,
    sample: Sequence[SampleEvent],
    tenants: Sequence[DemoTenant],
    *,
    progress: Callable[[int, int], None],
) -> PostReport:
    """Tenants without a signing secret post one event per request to its route; signing
    tenants post signed batches to ``/v1/events``. One bad request shows a 422."""
    report = PostReport()
    started = time.monotonic()
    done = 0
    with httpx.Client(base_url=url, timeout=30.0) as client:
        for tenant in tenants:
            mine = [e for e in sample if e.tenant == tenant.name]
            auth = {"authorization": f"Bearer {tenant.api_key}"}
            if tenant.signing_secret is None:
                for event in mine:
                    resp = client.post(event.route, json=event.body, headers=auth)
                    resp.raise_for_status()
                    report.requests += 1
                    report.accepted[f"{tenant.name}/{event.kind}"] += 1
                    done += 1
                    progress(done, len(sample))
            else:
                for i in range(0, len(mine), _BATCH):
                    chunk = mine[i : i + _BATCH]
                    body = orjson.dumps({"events": [{"type": e.kind, **e.body} for e in chunk]})
                    ts = str(int(time.time()))
                    headers = {
                        **auth,
                        "content-type": "application/json",
                        TIMESTAMP_HEADER: ts,
                        SIGNATURE_HEADER: sign(
                            tenant.signing_secret.encode(), ts, body, path="/v1/events"
                        ),
                    }
                    resp = client.post("/v1/events", content=body, headers=headers)
                    resp.raise_for_status()
                    report.requests += 1
                    for e in chunk:
                        report.accepted[f"{tenant.name}/{e.kind}"] += 1
                    done += len(chunk)
                    progress(done, len(sample))
        # What a client sees for a bad event: the path of each wrong field, nothing produced.
        bad = {"occurred_at": "yesterday", "run_id": "r-bad", "kind": "thumbs", "value": 5}
        plain = next(t for t in tenants if t.signing_secret is None)
        resp = client.post(
            "/v1/feedback", json=bad, headers={"authorization": f"Bearer {plain.api_key}"}
        )
        report.rejected_example = {"status": resp.status_code, **resp.json()}
    report.seconds = time.monotonic() - started
    return report


@dataclass
class TopicSummary:
    topic: str
    count: int
    by_tenant: Counter[str]
    by_detail: Counter[str]  # feature for runs, kind for feedback, surface for edits
    example: dict[str, Any] | None


def read_topics(kafka: KafkaSettings) -> list[TopicSummary]:
    """Every message on each topic, decoded, summarised."""
    codec = AvroCodec()
    consumer = make_consumer(kafka, group_id=f"demo-{uuid.uuid4().hex[:8]}")
    summaries = []
    try:
        for topic in kafka.topics.all():
            parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
            end = 0
            for p in parts:
                low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                end += high - low
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
            records: list[dict[str, Any]] = []
            deadline = time.monotonic() + _READ_TIMEOUT_S
            while len(records) < end and time.monotonic() < deadline:
                for msg in consumer.consume(500, timeout=0.2):
                    if not msg.error() and msg.value() is not None:
                        records.append(codec.decode(msg.value() or b"", topic=topic).record)
            consumer.unassign()
            detail_key = {"runs": "feature", "feedback": "kind", "edits": "surface"}
            key = next((v for k, v in detail_key.items() if f".{k}." in f".{topic}"), None)
            summaries.append(
                TopicSummary(
                    topic=topic,
                    count=len(records),
                    by_tenant=Counter(r.get("tenant", "?") for r in records),
                    by_detail=Counter(str(r.get(key)) for r in records) if key else Counter(),
                    example=_richest(records),
                )
            )
    finally:
        consumer.close()
    return summaries


def _richest(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The record with the most fields set: the most telling example."""
    if not records:
        return None
    return max(records, key=lambda r: sum(v not in (None, {}, []) for v in r.values()))
