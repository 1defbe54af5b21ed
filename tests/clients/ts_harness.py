"""The real service for the TypeScript SDK's tests: a Kafka broker and ingest processes that the
Node tests start, stop and read back through a small local control API.

    .venv/bin/python tests/clients/ts_harness.py

Prints one JSON line, ``{"control": "http://127.0.0.1:PORT"}``, then serves until its standard
input closes (the Node runner holds it, so the harness dies with the runner). Commands are
``POST /<name>`` with a JSON body:

- ``ingest`` ``{"settings": {...}, "api_keys": [...], "start": true}``: fresh uuid-named
  topics and an ingest process on them; answers ``{"id", "url"}``;
- ``stop`` ``{"id", "signal": "SIGTERM"|"SIGKILL"}``, ``start`` ``{"id"}``;
- ``landed`` ``{"id", "ids": [...], "timeout_s"}``: how many times each event id is on Kafka.

Uses ``KAFKA_BOOTSTRAP_SERVERS`` when set, else a local broker of its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from flywheel_devkit import LocalKafka

from tests.clients.ingest_process import API_KEYS, IngestProcess, landed, new_kafka

PARTITIONS = 3


class Harness:
    def __init__(self, bootstrap: str, log_dir: Path) -> None:
        self.bootstrap = bootstrap
        self.log_dir = log_dir
        self.ingests: dict[str, IngestProcess] = {}
        self.lock = threading.Lock()

    def ingest(self, body: dict[str, Any]) -> dict[str, Any]:
        kafka = new_kafka(self.bootstrap)
        with self.lock:
            name = str(len(self.ingests))
            proc = IngestProcess(
                kafka,
                api_keys=body.get("api_keys", API_KEYS),
                log_path=self.log_dir / f"ingest-{name}.log",
                **body.get("settings", {}),
            )
            self.ingests[name] = proc
        if body.get("start", True):
            proc.start()
        return {"id": name, "url": proc.url}

    def stop(self, body: dict[str, Any]) -> dict[str, Any]:
        self.ingests[body["id"]].stop(getattr(signal, body.get("signal", "SIGTERM")))
        return {}

    def start(self, body: dict[str, Any]) -> dict[str, Any]:
        self.ingests[body["id"]].start()
        return {}

    def landed(self, body: dict[str, Any]) -> dict[str, Any]:
        kafka = self.ingests[body["id"]].kafka
        counts = landed(kafka, body["ids"], timeout_s=float(body.get("timeout_s", 30)))
        return {"counts": dict(counts)}

    def close(self) -> None:
        for proc in self.ingests.values():
            proc.__exit__()


def serve(harness: Harness) -> ThreadingHTTPServer:
    commands = {
        "/ingest": harness.ingest,
        "/stop": harness.stop,
        "/start": harness.start,
        "/landed": harness.landed,
    }

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            command = commands.get(self.path)
            length = int(self.headers.get("content-length", "0"))
            body = json.loads(self.rfile.read(length) or b"{}")
            try:
                if command is None:
                    raise KeyError(self.path)
                status, answer = 200, command(body)
            except Exception as exc:  # report to the test, keep serving
                status, answer = 500, {"error": f"{type(exc).__name__}: {exc}"}
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main() -> int:
    with contextlib.ExitStack() as stack:
        bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        if not bootstrap:
            kafka = stack.enter_context(LocalKafka(partitions=PARTITIONS, heap="512m"))
            bootstrap = kafka.bootstrap_servers
        log_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fw-ts-")))
        harness = Harness(bootstrap, log_dir)
        stack.callback(harness.close)
        server = serve(harness)
        stack.callback(server.shutdown)
        sys.stdout.write(json.dumps({"control": f"http://127.0.0.1:{server.server_port}"}) + "\n")
        sys.stdout.flush()
        sys.stdin.read()  # until the runner goes away
    return 0


if __name__ == "__main__":
    sys.exit(main())
