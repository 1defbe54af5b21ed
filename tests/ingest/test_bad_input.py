"""The bad-input matrix: each bad request gets its status and an error naming what is wrong, and
nothing reaches Kafka. One service for the whole module; its topics must stay empty."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import httpx
import orjson
import pytest
from flywheel_ingest.auth import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign

from tests.ingest.conftest import (
    ACME_KEY,
    GLOBEX_KEY,
    GLOBEX_SECRET,
    IngestServer,
    topic_sizes,
)

NOW_MS = 1_736_000_000_000
RUN = {"occurred_at": NOW_MS, "run_id": "r1", "prompt": "hi", "response": "yo", "model": "m"}
FEEDBACK = {"occurred_at": NOW_MS, "run_id": "r1", "kind": "thumbs", "value": 1}
EDIT = {"occurred_at": NOW_MS, "run_id": "r1", "prompt": "p", "original": "a", "final": "b"}
JSON = {"content-type": "application/json"}
ACME = {"authorization": f"Bearer {ACME_KEY}", **JSON}
GLOBEX = {"authorization": f"Bearer {GLOBEX_KEY}", **JSON}


def with_(base: dict[str, object], **changes: object) -> bytes:
    body = {**base, **changes}
    return orjson.dumps({k: v for k, v in body.items() if v is not DROP})


DROP = object()


def _now() -> str:
    return str(int(time.time()))


def signed_v1(body: bytes) -> dict[str, str]:
    """Headers signed the v1 way: HMAC over "<timestamp>." + body, no method, no path."""
    ts = _now()
    mac = hmac.new(GLOBEX_SECRET.encode(), f"{ts}.".encode() + body, hashlib.sha256)
    return {**signed(body, ts=ts), SIGNATURE_HEADER: "sha256=" + mac.hexdigest()}


def signed(
    body: bytes,
    *,
    ts: str | None = None,
    sig_body: bytes | None = None,
    path: str = "/v1/runs",
) -> dict[str, str]:
    ts = ts if ts is not None else _now()
    secret = GLOBEX_SECRET.encode()
    return {
        **GLOBEX,
        TIMESTAMP_HEADER: ts,
        SIGNATURE_HEADER: sign(secret, ts, body if sig_body is None else sig_body, path=path),
    }


@dataclass
class Case:
    path: str
    body: bytes | Iterator[bytes]
    status: int
    loc: list[str | int] | None = None  # the first error's loc, when it names a field
    type: str | None = None
    # A callable is called at request time: signed headers carry a fresh timestamp, however
    # long after collection the case runs (a slow run outlived the replay window).
    headers: dict[str, str] | Callable[[], dict[str, str]] = field(
        default_factory=lambda: dict(ACME)
    )


def _chunks(total: int) -> Iterator[bytes]:
    """A body sent chunked (no Content-Length), larger than the limit."""
    yield b'{"events": ['
    for _ in range(total // 1024):
        yield b" " * 1024
    yield b"]}"


def raw(base: dict[str, object], **fields: object) -> bytes:
    """``base`` plus fields written as raw JSON text: NaN, Infinity and 2**64 cannot be dumped."""
    head = orjson.dumps(base)[:-1]
    return head + b"".join(f', "{k}": {v}'.encode() for k, v in fields.items()) + b"}"


def raw_run(**fields: object) -> bytes:
    return raw(RUN, **fields)


BIG = 64 * 1024  # reject_ingest's max_body_bytes
LONG_MAX = 2**63 - 1
BATCH = 20  # reject_ingest's max_batch_events

CASES: dict[str, Case] = {
    # 400: not JSON
    "malformed json": Case("/v1/runs", b'{"run_id": ', 400, ["body"], "json_invalid"),
    "empty body": Case("/v1/runs", b"", 400, ["body"], "json_invalid"),
    "not utf-8": Case("/v1/runs", b'{"run_id": "\xff\xfe"}', 400, ["body"], "json_invalid"),
    # 422: JSON with wrong fields
    "json array": Case("/v1/runs", b"[]", 422, ["body"], "model_type"),
    "missing field": Case("/v1/runs", with_(RUN, response=DROP), 422, ["body", "response"]),
    "null required": Case("/v1/runs", with_(RUN, model=None), 422, ["body", "model"]),
    "mistyped string": Case("/v1/runs", with_(RUN, run_id=7), 422, ["body", "run_id"]),
    "mistyped number": Case("/v1/runs", with_(RUN, cost_usd="0.1"), 422, ["body", "cost_usd"]),
    "mistyped nested": Case(
        "/v1/runs",
        with_(RUN, tokens={"prompt": "12", "completion": 3}),
        422,
        ["body", "tokens", "prompt"],
    ),
    "bad chat message": Case(
        "/v1/runs", with_(RUN, prompt=[{"role": "user"}]), 422, ["body", "prompt"]
    ),
    "naive timestamp": Case(
        "/v1/runs", with_(RUN, occurred_at="2025-01-01T00:00:00"), 422, ["body", "occurred_at"]
    ),
    "epoch seconds": Case(
        "/v1/runs", with_(RUN, occurred_at=1_736_000_000), 422, ["body", "occurred_at"]
    ),
    "bad event_id": Case("/v1/runs", with_(RUN, event_id="42"), 422, ["body", "event_id"]),
    "unknown field": Case(
        "/v1/runs", with_(RUN, respones="typo"), 422, ["body", "respones"], "extra_forbidden"
    ),
    "tenant in body": Case(
        "/v1/runs", with_(RUN, tenant="other"), 422, ["body", "tenant"], "extra_forbidden"
    ),
    "received_at in body": Case(
        "/v1/runs", with_(RUN, received_at=NOW_MS), 422, ["body", "received_at"]
    ),
    "wrong type for route": Case("/v1/runs", with_(RUN, type="edit"), 422, ["body", "type"]),
    "unknown feedback kind": Case(
        "/v1/feedback", with_(FEEDBACK, kind="love"), 422, ["body", "kind"]
    ),
    "thumbs out of range": Case("/v1/feedback", with_(FEEDBACK, value=3), 422, ["body", "value"]),
    "rating without value": Case(
        "/v1/feedback", with_(FEEDBACK, kind="rating", value=DROP), 422, ["body", "value"]
    ),
    "correction without text": Case(
        "/v1/feedback", with_(FEEDBACK, kind="correction", value=DROP), 422, ["body", "correction"]
    ),
    "too much metadata": Case(
        "/v1/runs", with_(RUN, metadata={str(i): "v" for i in range(65)}), 422, ["body", "metadata"]
    ),
    "unknown event type": Case(
        "/v1/events",
        orjson.dumps({"events": [{"type": "run", **RUN}, {"type": "purchase", **RUN}]}),
        422,
        ["body", "events", 1],
        "union_tag_invalid",
    ),
    "batch event without type": Case(
        "/v1/events", orjson.dumps({"events": [RUN]}), 422, ["body", "events", 0]
    ),
    "bad field deep in batch": Case(
        "/v1/events",
        orjson.dumps({"events": [{"type": "run", **RUN}, {"type": "run", **RUN, "model": 1}]}),
        422,
        ["body", "events", 1, "model"],
    ),
    "empty batch": Case("/v1/events", b'{"events": []}', 422, ["body", "events"]),
    "batch not a list": Case("/v1/events", b'{"events": {}}', 422, ["body", "events"]),
    # 422: numbers the schema cannot hold or the domain forbids (each was a 500 or stored)
    "NaN below a bound": Case("/v1/runs", raw_run(latency_ms="NaN"), 422, ["body", "latency_ms"]),
    "NaN": Case("/v1/runs", raw_run(cost_usd="NaN"), 422, ["body", "cost_usd"], "finite_number"),
    "Infinity": Case("/v1/runs", raw_run(latency_ms="Infinity"), 422, ["body", "latency_ms"]),
    "-Infinity": Case("/v1/runs", raw_run(cost_usd="-Infinity"), 422, ["body", "cost_usd"]),
    "1e400": Case("/v1/runs", raw_run(latency_ms="1e400"), 422, ["body", "latency_ms"]),
    "huge integer as float": Case(
        "/v1/runs", raw_run(latency_ms="1" + "0" * 400), 422, ["body", "latency_ms"]
    ),
    "integer over Avro long": Case(
        "/v1/runs",
        raw_run(tokens=f'{{"prompt": {LONG_MAX + 1}, "completion": 1}}'),
        422,
        ["body", "tokens", "prompt"],
    ),
    "integer far over Avro long, failing": Case(
        "/v1/runs",
        raw_run(tokens=f'{{"prompt": -1, "completion": {10**30}}}'),
        422,
        ["body", "tokens", "prompt"],
    ),
    "time_to_edit over Avro long": Case(
        "/v1/edits", raw(EDIT, time_to_edit_ms=2**64), 422, ["body", "time_to_edit_ms"]
    ),
    "dwell Infinity": Case(
        "/v1/feedback",
        raw({**FEEDBACK, "kind": "dwell"} | {"value": None}, value="Infinity").replace(
            b'"value":null,', b""
        ),
        422,
        ["body", "value"],
    ),
    "negative latency": Case("/v1/runs", with_(RUN, latency_ms=-1.0), 422, ["body", "latency_ms"]),
    "occurred_at string in 1970": Case(
        "/v1/runs", with_(RUN, occurred_at="1970-01-01T00:00:00Z"), 422, ["body", "occurred_at"]
    ),
    "occurred_at string past 9999 in UTC": Case(
        "/v1/runs",
        with_(RUN, occurred_at="9999-12-31T23:59:59-05:00"),
        422,
        ["body", "occurred_at"],
    ),
    "deeply nested JSON": Case("/v1/runs", b"[" * 5000 + b"]" * 5000, 400, ["body"]),
    "lone surrogate": Case("/v1/runs", raw_run(user_id='"\\ud800"'), 400, ["body"], "json_invalid"),
    # 413: too large
    "oversized body": Case(
        "/v1/runs", with_(RUN, response="x" * BIG), 413, ["body"], "body_too_large"
    ),
    "oversized chunked body": Case("/v1/events", _chunks(2 * BIG), 413, ["body"]),
    "oversized batch": Case(
        "/v1/events",
        orjson.dumps({"events": [{"type": "run", **RUN}] * (BATCH + 1)}),
        413,
        ["body", "events"],
        "too_many_events",
    ),
    # 415: content type
    "text/plain": Case("/v1/runs", with_(RUN), 415, headers={**ACME, "content-type": "text/plain"}),
    "form": Case(
        "/v1/runs",
        b"run_id=r1",
        415,
        headers={**ACME, "content-type": "application/x-www-form-urlencoded"},
    ),
    "no content type": Case(
        "/v1/runs",
        with_(RUN),
        415,
        ["header", "content-type"],
        headers={"authorization": f"Bearer {ACME_KEY}"},
    ),
    "latin-1 json": Case(
        "/v1/runs",
        with_(RUN),
        415,
        headers={**ACME, "content-type": "application/json; charset=latin-1"},
    ),
    # 401: auth
    "missing key": Case("/v1/runs", with_(RUN), 401, type="missing_key", headers=dict(JSON)),
    "wrong key": Case(
        "/v1/runs",
        with_(RUN),
        401,
        ["header", "authorization"],
        "unknown_key",
        headers={**JSON, "authorization": "Bearer not-a-key"},
    ),
    "wrong x-api-key": Case(
        "/v1/runs",
        with_(RUN),
        401,
        ["header", "x-api-key"],
        "unknown_key",
        headers={**JSON, "x-api-key": "not-a-key"},
    ),
    "basic auth": Case(
        "/v1/runs",
        with_(RUN),
        401,
        type="bad_scheme",
        headers={**JSON, "authorization": "Basic dXNlcjpwYXNz"},
    ),
    "missing signature": Case(
        "/v1/runs", with_(RUN), 401, type="missing_timestamp", headers=dict(GLOBEX)
    ),
    "bad signature": Case(
        "/v1/runs",
        with_(RUN),
        401,
        ["header", SIGNATURE_HEADER],
        "bad_signature",
        headers=lambda: signed(with_(RUN), sig_body=with_(RUN, run_id="r2")),
    ),
    "stale signature": Case(
        "/v1/runs",
        with_(RUN),
        401,
        ["header", TIMESTAMP_HEADER],
        "stale_timestamp",
        headers=lambda: signed(with_(RUN), ts=str(int(time.time()) - 3600)),
    ),
    "future signature": Case(
        "/v1/runs",
        with_(RUN),
        401,
        type="stale_timestamp",
        headers=lambda: signed(with_(RUN), ts=str(int(time.time()) + 3600)),
    ),
    "signature of another route": Case(
        "/v1/runs",
        with_(RUN),
        401,
        ["header", SIGNATURE_HEADER],
        "bad_signature",
        headers=lambda: signed(with_(RUN), path="/v1/feedback"),
    ),
    "signature v1 (no method, no path)": Case(
        "/v1/runs",
        with_(RUN),
        401,
        type="bad_signature",
        headers=lambda: signed_v1(with_(RUN)),
    ),
    **{
        f"timestamp {ts!r}": Case(
            "/v1/runs",
            with_(RUN),
            401,
            ["header", TIMESTAMP_HEADER],
            "bad_timestamp",
            headers=signed(with_(RUN), ts=ts),
        )
        for ts in ("NaN", "nan", "inf", "Infinity", "-1", "1e9", "", "1_700_000_000", "+1700000000")
    },
    "timestamp NaN, valid HMAC over it": Case(
        "/v1/runs", with_(RUN), 401, type="bad_timestamp", headers=signed(with_(RUN), ts="nan")
    ),
    "signature of another tenant's secret": Case(
        "/v1/runs",
        with_(RUN),
        401,
        type="bad_signature",
        headers=lambda: {
            **signed(with_(RUN)),
            SIGNATURE_HEADER: sign(b"wrong-secret", _now(), with_(RUN), path="/v1/runs"),
        },
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_request_is_refused_and_produces_nothing(
    reject_ingest: IngestServer, name: str
) -> None:
    case = CASES[name]
    with httpx.Client(base_url=reject_ingest.url, timeout=30) as client:
        headers = case.headers() if callable(case.headers) else case.headers
        resp = client.post(case.path, content=case.body, headers=headers)
        assert resp.status_code == case.status, resp.text
        errors = resp.json()["errors"]
        assert errors and all(set(e) == {"loc", "msg", "type"} for e in errors)
        if case.loc is not None:
            assert errors[0]["loc"] == case.loc, errors
        if case.type is not None:
            assert errors[0]["type"] == case.type, errors
        # The service is still up and well after it.
        assert client.get("/healthz").status_code == 200
    assert set(topic_sizes(reject_ingest.settings.kafka).values()) == {0}


def test_wrong_method_and_path(reject_ingest: IngestServer) -> None:
    with httpx.Client(base_url=reject_ingest.url, timeout=30) as client:
        assert client.get("/v1/runs").status_code == 405
        assert client.post("/v1/purchases", json={}).status_code == 404
