"""The HTTP side: worker threads that each send one batch at a time and hand back the answer.

Workers never decide anything; the dispatcher reads each ``Answer`` (see ``_outcome``). A
worker catches every error of its request, so a batch always comes back, answered or not.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from flywheel_client._config import ClientConfig
from flywheel_client._store import Pending
from flywheel_client._wire import batch_body, request_headers

__all__ = ["Answer", "Job", "Transport"]

log = logging.getLogger("flywheel_client")


@dataclass(frozen=True, slots=True)
class Job:
    batch: list[Pending]
    timeout_s: float


@dataclass(frozen=True, slots=True)
class Answer:
    job: Job
    status: int | None  # None: no answer (connection refused, timeout, ...)
    content: bytes
    retry_after: str | None
    error: str | None = None  # why there was no answer
    wire_bytes: int = 0


class Transport:
    """``max_in_flight`` daemon threads over one connection pool."""

    def __init__(self, config: ClientConfig, deliver: Callable[[Answer], None]) -> None:
        self._config = config
        self._deliver = deliver
        self._secret = config.signing_secret.encode() if config.signing_secret else None
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        limits = httpx.Limits(
            max_connections=config.max_in_flight, max_keepalive_connections=config.max_in_flight
        )
        self._http = httpx.Client(limits=limits, timeout=config.request_timeout_s)
        self._threads = [
            threading.Thread(target=self._work, name=f"flywheel-client-send-{n}", daemon=True)
            for n in range(config.max_in_flight)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, job: Job) -> None:
        self._jobs.put(job)

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            self._deliver(self._send(job))

    def _send(self, job: Job) -> Answer:
        config = self._config
        try:
            body, headers = request_headers(
                batch_body([item.body for item in job.batch]),
                api_key=config.api_key,
                path=config.events_path,
                signing_secret=self._secret,
                gzip_min_bytes=config.gzip_min_bytes,
            )
            response = self._http.post(
                config.events_url, content=body, headers=headers, timeout=job.timeout_s
            )
        except httpx.HTTPError as exc:
            return Answer(job, None, b"", None, error=f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # never lose a batch to a surprise; it is retried
            log.exception("flywheel client: sending a batch failed unexpectedly")
            return Answer(job, None, b"", None, error=f"{type(exc).__name__}: {exc}")
        return Answer(
            job,
            response.status_code,
            response.content,
            response.headers.get("retry-after"),
            wire_bytes=len(body),
        )

    def stop(self, timeout_s: float) -> bool:
        """Let the workers finish their request; True when all did within ``timeout_s``.
        Workers stuck past it are left to end on their own (they are daemons)."""
        for _ in self._threads:
            self._jobs.put(None)
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        done = not any(thread.is_alive() for thread in self._threads)
        if done:
            self._http.close()
        return done

    def abandon(self) -> None:
        """After ``fork()``: the threads do not exist in the child and the pool's sockets
        are the parent's; drop both without closing anything."""
        self._threads = []
