"""The service as deployed: ``python -m flywheel_ingest`` configured from the environment, and a
clean stop on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import httpx
from flywheel_common import KafkaSettings
from flywheel_devkit import free_port

from tests.ingest.conftest import ACME_KEY, API_KEYS, read_topic, wait_for


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def test_main_serves_from_env_and_stops_cleanly_on_sigterm(kafka_settings: KafkaSettings) -> None:
    port = free_port()
    env = {
        **os.environ,
        "FLYWHEEL_INGEST_PORT": str(port),
        "FLYWHEEL_INGEST_API_KEYS": json.dumps(
            [{"tenant": k.tenant, "key_sha256": k.key_sha256} for k in API_KEYS[:1]]
        ),
        "FLYWHEEL_INGEST_KAFKA": kafka_settings.model_dump_json(),
        "FLYWHEEL_INGEST_LOGGING__FORMAT": "json",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "flywheel_ingest"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: proc.poll() is not None or _healthy(url), timeout_s=30, every_s=0.1)
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        resp = httpx.post(
            f"{url}/v1/runs",
            json={
                "occurred_at": time.time_ns() // 1_000_000,
                "run_id": "r1",
                "prompt": "hi",
                "response": "hello",
                "model": "m",
            },
            headers={"authorization": f"Bearer {ACME_KEY}"},
        )
        assert resp.status_code == 202, resp.text
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr
    logs = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    messages = [line["msg"] for line in logs]
    assert "ingest ready" in messages
    assert "ingest stopped" in messages
    assert all({"ts", "level", "logger", "msg"} <= set(line) for line in logs)
    read_topic(kafka_settings, kafka_settings.topics.runs, expected=1)
