"""Key scopes, browser keys and CORS, gzip bodies (CONTRACTS.md): each refusal is a 4xx naming
what is wrong with nothing produced; each allowed request lands exactly once."""

from __future__ import annotations

import gzip
import time
import zlib
from typing import Any

import httpx
import orjson
import pytest
from flywheel_common import KafkaSettings
from flywheel_ingest.auth import SIGNATURE_HEADER, TIMESTAMP_HEADER, hash_api_key, sign
from flywheel_ingest.settings import ApiKey
from pydantic import ValidationError

from tests.ingest.conftest import (
    ACME_KEY,
    APP_ORIGIN,
    BROWSER_KEY,
    FEEDBACK_KEY,
    GLOBEX_KEY,
    GLOBEX_SECRET,
    IngestServer,
    read_topic,
    topic_sizes,
)

NOW_MS = 1_736_000_000_000
RUN = {"occurred_at": NOW_MS, "run_id": "r1", "prompt": "p", "response": "r", "model": "m"}
COPY = {"occurred_at": NOW_MS, "run_id": "r1", "kind": "copy"}
JSON = {"content-type": "application/json"}


def _post(
    server: IngestServer, path: str, body: bytes, headers: dict[str, str], **params: str
) -> httpx.Response:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        return client.post(path, content=body, headers=headers, params=params)


def _error(resp: httpx.Response) -> dict[str, Any]:
    first: dict[str, Any] = resp.json()["errors"][0]
    return first


def _nothing_produced(server: IngestServer) -> None:
    assert set(topic_sizes(server.settings.kafka).values()) == {0}


# -- scopes --------------------------------------------------------------------------


def test_event_outside_the_scopes_is_403_and_nothing_of_the_batch_is_produced(
    reject_ingest: IngestServer,
) -> None:
    batch = {"events": [{"type": "feedback", **COPY}, {"type": "run", **RUN}]}
    headers = {**JSON, "authorization": f"Bearer {FEEDBACK_KEY}"}
    resp = _post(reject_ingest, "/v1/events", orjson.dumps(batch), headers)
    assert resp.status_code == 403, resp.text
    error = _error(resp)
    assert error["type"] == "scope_denied"
    assert error["loc"] == ["body", "events", 1, "type"]
    assert "event 1" in error["msg"] and "'run'" in error["msg"]
    resp = _post(reject_ingest, "/v1/runs", orjson.dumps(RUN), headers)
    assert resp.status_code == 403
    assert _error(resp)["type"] == "scope_denied"
    _nothing_produced(reject_ingest)


def test_event_inside_the_scopes_lands(ingest: IngestServer, kafka_settings: KafkaSettings) -> None:
    headers = {**JSON, "authorization": f"Bearer {FEEDBACK_KEY}"}
    resp = _post(
        ingest, "/v1/events", orjson.dumps({"events": [{"type": "feedback", **COPY}]}), headers
    )
    assert resp.status_code == 202, resp.text
    read_topic(kafka_settings, kafka_settings.topics.feedback, expected=1)


# -- browser keys ----------------------------------------------------------------------


def test_browser_key_from_its_origin_lands_with_cors_headers(
    ingest: IngestServer, kafka_settings: KafkaSettings
) -> None:
    # As navigator.sendBeacon sends it: key in the query string, text/plain, no other header.
    resp = _post(
        ingest,
        "/v1/feedback",
        orjson.dumps(COPY),
        {"content-type": "text/plain;charset=UTF-8", "origin": APP_ORIGIN},
        api_key=BROWSER_KEY,
    )
    assert resp.status_code == 202, resp.text
    assert resp.headers["access-control-allow-origin"] == APP_ORIGIN
    assert resp.headers["vary"] == "Origin"
    # And as fetch sends it, key in a header.
    resp = _post(
        ingest,
        "/v1/feedback",
        orjson.dumps(COPY),
        {**JSON, "origin": APP_ORIGIN, "x-api-key": BROWSER_KEY},
    )
    assert resp.status_code == 202, resp.text
    [first, second] = read_topic(kafka_settings, kafka_settings.topics.feedback, expected=2)
    assert {first.event.record["tenant"], second.event.record["tenant"]} == {"acme"}


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "type_"),
    [
        pytest.param(
            "/v1/runs",
            RUN,
            {"origin": APP_ORIGIN},
            403,
            "scope_denied",
            id="browser key sends a run",
        ),
        pytest.param(
            "/v1/feedback",
            COPY,
            {"origin": "https://evil.example"},
            403,
            "origin_denied",
            id="wrong origin",
        ),
        pytest.param("/v1/feedback", COPY, {}, 403, "origin_denied", id="no origin"),
        pytest.param(
            "/v1/feedback",
            COPY,
            {"origin": APP_ORIGIN + "/"},
            403,
            "origin_denied",
            id="origin with a slash",
        ),
    ],
)
def test_browser_key_refusals(
    reject_ingest: IngestServer,
    path: str,
    body: dict[str, Any],
    headers: dict[str, str],
    status: int,
    type_: str,
) -> None:
    resp = _post(reject_ingest, path, orjson.dumps(body), {**JSON, **headers}, api_key=BROWSER_KEY)
    assert resp.status_code == status, resp.text
    assert _error(resp)["type"] == type_
    if type_ == "origin_denied":
        assert "access-control-allow-origin" not in resp.headers
    _nothing_produced(reject_ingest)


def test_server_key_in_the_query_string_is_refused(reject_ingest: IngestServer) -> None:
    resp = _post(reject_ingest, "/v1/feedback", orjson.dumps(COPY), JSON, api_key=ACME_KEY)
    assert resp.status_code == 401
    assert _error(resp)["type"] == "key_in_query"
    assert _error(resp)["loc"] == ["query", "api_key"]
    # text/plain stays refused for server keys.
    headers = {"content-type": "text/plain", "authorization": f"Bearer {ACME_KEY}"}
    resp = _post(reject_ingest, "/v1/feedback", orjson.dumps(COPY), headers)
    assert resp.status_code == 415
    _nothing_produced(reject_ingest)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"kind": "browser"}, "needs allowed_origins"),
        (
            {"kind": "browser", "allowed_origins": [APP_ORIGIN], "signing_secret": "s3cret"},
            "cannot have a signing_secret",
        ),
        ({"allowed_origins": [APP_ORIGIN]}, "browser keys only"),
        ({"kind": "browser", "allowed_origins": ["app.example.com"]}, "pattern"),
        ({"scopes": []}, "at least 1"),
        ({"scopes": ["purchases"]}, "runs"),
    ],
)
def test_key_config_errors(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as info:
        ApiKey.model_validate({"tenant": "t", "key_sha256": hash_api_key("k"), **changes})
    assert message in str(info.value)
    assert "s3cret" not in str(info.value.errors(include_input=False))


# -- CORS preflight ---------------------------------------------------------------------


def _preflight(server: IngestServer, origin: str | None, method: str = "POST") -> httpx.Response:
    headers = {"access-control-request-method": method}
    if origin is not None:
        headers["origin"] = origin
    with httpx.Client(base_url=server.url) as client:
        return client.options("/v1/feedback", headers=headers)


def test_preflight_is_granted_to_browser_key_origins_only(reject_ingest: IngestServer) -> None:
    ok = _preflight(reject_ingest, APP_ORIGIN)
    assert ok.status_code == 204
    assert ok.headers["access-control-allow-origin"] == APP_ORIGIN
    assert ok.headers["access-control-allow-methods"] == "POST"
    allowed = {h.strip() for h in ok.headers["access-control-allow-headers"].split(",")}
    assert allowed == {"authorization", "x-api-key", "content-type", "content-encoding"}
    for origin, method in (("https://evil.example", "POST"), (None, "POST"), (APP_ORIGIN, "PUT")):
        denied = _preflight(reject_ingest, origin, method)
        assert denied.status_code == 403, (origin, method)
        assert "access-control-allow-origin" not in denied.headers
    _nothing_produced(reject_ingest)


# -- gzip ------------------------------------------------------------------------------


def test_gzip_body_lands_and_is_signed_as_sent(
    ingest: IngestServer, kafka_settings: KafkaSettings
) -> None:
    events = [{"type": "feedback", **COPY, "run_id": f"r{i}"} for i in range(50)]
    wire = gzip.compress(orjson.dumps({"events": events}))
    ts = str(int(time.time()))
    headers = {
        **JSON,
        "content-encoding": "gzip",
        "authorization": f"Bearer {GLOBEX_KEY}",
        TIMESTAMP_HEADER: ts,
        SIGNATURE_HEADER: sign(GLOBEX_SECRET.encode(), ts, wire, path="/v1/events"),
    }
    resp = _post(ingest, "/v1/events", wire, headers)
    assert resp.status_code == 202, resp.text
    assert len(resp.json()["event_ids"]) == 50
    read_topic(kafka_settings, kafka_settings.topics.feedback, expected=50)


def _bomb(size: int) -> bytes:
    """``size`` zero bytes, gzipped: about a thousandth of that on the wire (48 MiB fit
    reject_ingest's 64 KiB wire limit, so only the decompressed limit can refuse them)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = b"\0" * (1 << 20)
    out = [compressor.compress(chunk) for _ in range(size // len(chunk))]
    return b"".join([*out, compressor.flush()])


@pytest.mark.parametrize(
    ("body", "headers", "status", "type_"),
    [
        pytest.param(
            _bomb(48 << 20), {"content-encoding": "gzip"}, 413, "body_too_large", id="bomb"
        ),
        pytest.param(
            gzip.compress(b"{" + b" " * (65 * 1024) + b"}"),
            {"content-encoding": "gzip"},
            413,
            "body_too_large",
            id="just over the limit decompressed",
        ),
        pytest.param(
            b"not gzip at all", {"content-encoding": "gzip"}, 400, "gzip_invalid", id="corrupt"
        ),
        pytest.param(
            gzip.compress(orjson.dumps(COPY))[:-8],
            {"content-encoding": "gzip"},
            400,
            "gzip_invalid",
            id="truncated",
        ),
        pytest.param(
            orjson.dumps(COPY), {"content-encoding": "br"}, 415, "unsupported_encoding", id="brotli"
        ),
        pytest.param(
            orjson.dumps(COPY),
            {"content-encoding": "deflate"},
            415,
            "unsupported_encoding",
            id="deflate",
        ),
    ],
)
def test_gzip_refusals(
    reject_ingest: IngestServer, body: bytes, headers: dict[str, str], status: int, type_: str
) -> None:
    all_headers = {**JSON, "authorization": f"Bearer {ACME_KEY}", **headers}
    resp = _post(reject_ingest, "/v1/feedback", body, all_headers)
    assert resp.status_code == status, resp.text
    assert _error(resp)["type"] == type_
    if status == 413:
        assert "decompressed" in _error(resp)["msg"]
    _nothing_produced(reject_ingest)
