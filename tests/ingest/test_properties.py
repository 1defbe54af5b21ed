"""Property: whatever a client sends, the webhook answers 202 or a 4xx that names a field, and
what it accepts can be stored. Field names and types come from the OpenAPI document; values are
hostile (NaN, infinities, 1e400, integers past 2**63, lone surrogates, wrong types, huge and
empty strings, deep nesting).

In-process (many examples, no broker): every body ``parse_events`` accepts becomes a record the
Avro codec encodes. Over HTTP (fewer, against the real service): no 5xx, ever.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from flywheel_common import AvroCodec
from flywheel_ingest.errors import RequestRejected
from flywheel_ingest.models import RECORD_NAMES, parse_events, to_record
from flywheel_ingest.openapi import EVENT_ROUTES, build_openapi
from flywheel_ingest.settings import IngestSettings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.ingest.conftest import IngestServer

DOC = build_openapi(IngestSettings(), version="test")
SCHEMAS: dict[str, Any] = DOC["components"]["schemas"]
BASE: dict[str, dict[str, Any]] = {
    "Run": {
        "occurred_at": 1_736_000_000_000,
        "run_id": "r1",
        "prompt": "p",
        "response": "r",
        "model": "m",
    },
    "Feedback": {"occurred_at": 1_736_000_000_000, "run_id": "r1", "kind": "rating", "value": 4},
    "Edit": {
        "occurred_at": 1_736_000_000_000,
        "run_id": "r1",
        "prompt": "p",
        "original": "a",
        "final": "b",
    },
}
ROUTE_OF = {"Run": "/v1/runs", "Feedback": "/v1/feedback", "Edit": "/v1/edits"}
LONG = 2**63

# Raw JSON text: numbers no serializer writes (NaN, Infinity, 1e400, 2**64), as well as the
# ordinary ones, and values of the wrong type.
RAW_NUMBERS = (
    st.sampled_from(
        [
            "NaN",
            "Infinity",
            "-Infinity",
            "1e400",
            "-1e400",
            "1" + "0" * 400,
            str(LONG),
            str(LONG - 1),
            str(-LONG - 1),
            "-1",
            "0",
            "-0.0",
            "1.5",
            "5e-324",
            "1.7976931348623157e308",
        ]
    )
    | st.integers(min_value=-(2**70), max_value=2**70).map(str)
    | st.floats(allow_nan=False, allow_infinity=False).map(lambda f: orjson.dumps(f).decode())
)
RAW_STRINGS = st.text(max_size=40).map(lambda s: orjson.dumps(s).decode()) | st.sampled_from(
    [
        '"\\ud800"',
        '"\\udc00x"',
        '""',
        '"' + "x" * 5000 + '"',
        '"2025-01-01T00:00:00Z"',
        '"1970-01-01T00:00:00+00:00"',
        '"9999-12-31T23:59:59-05:00"',
        '"0001-01-01T00:00:00Z"',
        '"2025-13-45T99:99:99Z"',
    ]
)
RAW_OTHER = st.sampled_from(
    [
        "null",
        "true",
        "[]",
        "{}",
        '[{"role": "user", "content": "x"}]',
        '{"prompt": 1, "completion": NaN}',
        '{"a": "b"}',
        "[" * 300 + "]" * 300,
    ]
)
RAW_VALUE = RAW_NUMBERS | RAW_STRINGS | RAW_OTHER


def _body(model: str, hostile: dict[str, str]) -> bytes:
    """``BASE[model]`` with the fields of ``hostile`` replaced by raw JSON text."""
    fields = {k: orjson.dumps(v).decode() for k, v in BASE[model].items()} | hostile
    return (
        "{" + ", ".join(f"{orjson.dumps(k).decode()}: {v}" for k, v in fields.items()) + "}"
    ).encode()


@st.composite
def hostile_events(draw: st.DrawFn) -> tuple[str, bytes]:
    model = draw(st.sampled_from(sorted(BASE)))
    names = sorted(SCHEMAS[model]["properties"])
    chosen = draw(st.lists(st.sampled_from([*names, "tenant", "extra"]), min_size=1, max_size=3))
    return model, _body(model, {name: draw(RAW_VALUE) for name in chosen})


CODEC = AvroCodec()


@settings(
    max_examples=1000, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(hostile_events())
def test_what_validation_accepts_the_codec_stores(example: tuple[str, bytes]) -> None:
    model, body = example
    route = EVENT_ROUTES[ROUTE_OF[model]][0]
    try:
        [event] = parse_events(body, route=route, max_events=10)
    except RequestRejected as exc:
        assert 400 <= exc.status < 500
        assert exc.errors and all(e["loc"] and e["loc"][0] == "body" for e in exc.errors)
        return
    _, record = to_record(event, tenant="t", received_at_ms=1_736_000_000_000)
    CODEC.encode(RECORD_NAMES[event.type], record)  # raises if the record cannot be stored


@pytest.fixture(scope="module")
def http(reject_ingest: IngestServer) -> Iterator[httpx.Client]:
    with reject_ingest.client() as client:
        yield client


@settings(
    max_examples=150,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(example=hostile_events())
def test_the_webhook_never_answers_5xx(http: httpx.Client, example: tuple[str, bytes]) -> None:
    model, body = example
    resp = http.post(ROUTE_OF[model], content=body, headers={"content-type": "application/json"})
    assert resp.status_code < 500, (body[:300], resp.text)
    if resp.status_code != 202:
        assert resp.json()["errors"][0]["loc"], resp.text


def test_no_server_error_was_counted(reject_ingest: IngestServer, http: httpx.Client) -> None:
    metrics = http.get("/metrics").text
    assert 'status="500"' not in metrics
    assert "flywheel_ingest_requests_total" in metrics
