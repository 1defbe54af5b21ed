"""Rate limits count every request, valid or not; a batch that can never pass says so; refusals
are logged as aggregates; a bad configuration never prints a secret."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable

import pytest
from flywheel_common import KafkaSettings
from flywheel_devkit import free_port

from tests.ingest.conftest import ACME_KEY, SLOW_KEY, IngestServer, topic_sizes, wait_for

NOW_MS = 1_736_000_000_000
COPY = {"occurred_at": NOW_MS, "run_id": "r", "kind": "copy"}
JSON = {"content-type": "application/json"}


def test_invalid_requests_count_against_the_key(ingest: IngestServer) -> None:
    with ingest.client(key=SLOW_KEY) as client:  # burst 3, refills ~never
        for _ in range(3):
            resp = client.post("/v1/feedback", json={**COPY, "kind": "love"})
            assert resp.status_code == 422
        resp = client.post("/v1/feedback", json=COPY)
    assert resp.status_code == 429, resp.text
    assert int(resp.headers["retry-after"]) > 1
    assert set(topic_sizes(ingest.settings.kafka).values()) == {0}


def test_requests_without_a_valid_key_are_limited_per_address(
    make_ingest: Callable[..., IngestServer],
) -> None:
    server = make_ingest(address_burst=5, address_rate_per_s=0.01)
    with server.client(key="guessed-key") as client:
        statuses = [client.post("/v1/feedback", json=COPY).status_code for _ in range(7)]
        limited = client.post("/v1/feedback", json=COPY)
    assert statuses == [401] * 5 + [429] * 2
    assert limited.json()["errors"][0]["type"] == "rate_limited"
    assert int(limited.headers["retry-after"]) >= 50
    # A valid key from the same address is not held back by the guesses.
    with server.client(key=ACME_KEY) as client:
        assert client.post("/v1/feedback", json=COPY).status_code == 202


def test_batch_larger_than_the_burst_is_413_not_a_retry_loop(ingest: IngestServer) -> None:
    events = [{"type": "feedback", **COPY}] * 4
    with ingest.client(key=SLOW_KEY) as client:  # burst 3
        resp = client.post("/v1/events", json={"events": events})
    assert resp.status_code == 413, resp.text
    assert "retry-after" not in resp.headers
    error = resp.json()["errors"][0]
    assert error["type"] == "batch_over_burst"
    assert "burst is 3" in error["msg"]


def test_refusals_are_logged_as_aggregates(
    make_ingest: Callable[..., IngestServer], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="flywheel_ingest")
    server = make_ingest(rejection_log_interval_s=0.2)
    with server.client() as client:
        for _ in range(30):
            assert client.post("/v1/feedback", content=b"{", headers=JSON).status_code == 400
        for _ in range(20):
            assert client.post("/v1/feedback", json={**COPY, "kind": "love"}).status_code == 422

    def logged() -> int:
        return sum(
            r.__dict__.get("total", 0) for r in caplog.records if r.msg == "requests rejected"
        )

    wait_for(lambda: logged() == 50, timeout_s=10)
    lines = [r for r in caplog.records if r.msg == "requests rejected"]
    assert len(lines) <= 5, "one log line per refused request"
    reasons: dict[tuple[int, str], int] = {}
    for line in lines:
        for reason in line.__dict__["by_reason"]:
            key = (reason["status"], reason["type"])
            reasons[key] = reasons.get(key, 0) + reason["count"]
    assert reasons == {(400, "json_invalid"): 30, (422, "literal_error"): 20}
    assert not [r for r in caplog.records if r.msg == "request rejected"]


PLAIN_KEY = "fw_live_this-is-a-real-key-0123456789abcdef"
SECRET = "whsec_this-is-a-signing-secret-0123456789"  # noqa: S105 - a test secret


@pytest.mark.parametrize(
    "api_keys",
    [
        pytest.param(json.dumps([{"tenant": "acme", "key_sha256": PLAIN_KEY}]), id="key as hash"),
        pytest.param(
            json.dumps(
                [
                    {
                        "tenant": "acme",
                        "key_sha256": "0" * 64,
                        "kind": "browser",
                        "allowed_origins": ["https://a.example"],
                        "signing_secret": SECRET,
                    }
                ]
            ),
            id="secret on a browser key",
        ),
        pytest.param(
            json.dumps([{"tenant": "acme", "key_sha256": "0" * 64, "signing_secret": SECRET}])[:-3],
            id="broken JSON around a secret",
        ),
        pytest.param(
            json.dumps([{"tenant": "acme", "key_sha256": "0" * 64, "api_key": PLAIN_KEY}]),
            id="key in an unknown field",
        ),
    ],
)
def test_startup_errors_never_print_secrets(kafka_settings: KafkaSettings, api_keys: str) -> None:
    env = {
        **os.environ,
        "FLYWHEEL_INGEST_PORT": str(free_port()),
        "FLYWHEEL_INGEST_API_KEYS": api_keys,
        "FLYWHEEL_INGEST_KAFKA": kafka_settings.model_dump_json(),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "flywheel_ingest"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output
    assert "api_keys" in output, output
    assert PLAIN_KEY not in output
    assert SECRET not in output
    assert "Traceback" not in output
