"""Delivery against the real ingest process and the real broker: what the app logs lands on
Kafka once; outages and restarts lose nothing; refusals are reported with their field paths
and never retried; ``close()`` keeps its timeout whatever the server does."""

from __future__ import annotations

import asyncio
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from flywheel_client import AsyncFlywheel, EventsDropped, Flywheel
from flywheel_common import KafkaSettings

from tests.clients.ingest_process import (
    ACME_KEY,
    API_KEYS,
    IngestProcess,
    landed,
    wait_for,
)
from tests.ingest.conftest import read_topic

FAST: dict[str, Any] = {
    "linger_s": 0.02,
    "backoff_max_s": 0.5,
    "exit_timeout_s": None,
}


def _send_steadily(fw: Flywheel, count: int, rate: float, ids: list[str]) -> threading.Thread:
    """A thread that logs ``count`` events at about ``rate`` per second."""

    def run() -> None:
        start = time.monotonic()
        for i in range(count):
            ids.append(fw.thumbs(f"run-{i}", "up"))
            ids.append(fw.signal(f"run-{i}", "copy"))
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_every_call_lands_once_with_its_fields(
    ingest: IngestProcess, kafka_settings: KafkaSettings
) -> None:
    with Flywheel(ingest.url, ACME_KEY, **FAST) as fw:
        run_id = fw.log_run(
            prompt=[{"role": "user", "content": "2+2?"}],
            response="5",
            model="m",
            feature="math",
            metadata={"k": "v"},
        )
        ids = [
            fw.thumbs(run_id, "down", correction="4"),
            fw.rate(run_id, 2),
            fw.edit(run_id, original="5", final="4"),
            fw.regenerated(run_id, "r2"),
            fw.signal(run_id, "dwell", 1500),
            fw.signal(run_id, "copy"),
        ]
        assert fw.flush(30)
        assert fw.stats().delivered == 7
    counts = landed(kafka_settings, ids, timeout_s=30)
    assert all(counts[i] == 1 for i in ids) and sum(counts.values()) == 7
    [run] = read_topic(kafka_settings, kafka_settings.topics.runs, expected=1)
    assert run.event.record["run_id"] == run_id
    assert run.event.record["prompt"] == [{"role": "user", "content": "2+2?"}]
    assert run.event.record["metadata"] == {"k": "v"} and run.event.record["tenant"] == "acme"
    [edit] = read_topic(kafka_settings, kafka_settings.topics.edits, expected=1)
    assert edit.event.record["prompt"] == [{"role": "user", "content": "2+2?"}]  # remembered


def test_async_client_delivers_every_call(
    ingest: IngestProcess, kafka_settings: KafkaSettings
) -> None:
    async def app() -> list[str]:
        async with AsyncFlywheel(ingest.url, ACME_KEY, **FAST) as fw:
            ids = []
            for i in range(200):
                run_id = await fw.log_run(prompt=f"q{i}", response="a", model="m")
                ids.append(await fw.rate(run_id, 1 + i % 5))
                ids.append(await fw.signal(run_id, "abandon"))
            assert await fw.flush(30)
            return ids

    ids = asyncio.run(app())
    counts = landed(kafka_settings, ids, timeout_s=30)
    assert all(counts[i] == 1 for i in ids) and sum(counts.values()) == 600


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_ingest_stopped_and_restarted_while_the_app_sends(
    make_ingest: Callable[..., IngestProcess], kafka_settings: KafkaSettings, how: str
) -> None:
    """After recovery every event is on Kafka, each under its own id. A graceful stop answers
    every request it took, so nothing is doubled; a SIGKILL can cut a request after the broker
    stored it, and the retry sends the same ids again: counted, and deduplicated downstream."""
    ingest = make_ingest()
    drops: list[EventsDropped] = []
    fw = Flywheel(ingest.url, ACME_KEY, **FAST, on_error=drops.append, max_queue_events=50_000)
    sent: list[str] = []
    sender = _send_steadily(fw, 3000, rate=1500, ids=sent)
    wait_for(lambda: fw.stats().delivered > 1000, timeout_s=60)
    ingest.stop(signal.SIGTERM if how == "sigterm" else signal.SIGKILL)
    wait_for(lambda: fw.stats().retries >= 2, timeout_s=30)
    ingest.start()
    sender.join(120)
    assert fw.flush(120), fw.stats()
    fw.close(5)
    counts = landed(kafka_settings, sent, timeout_s=60)
    stats = fw.stats()
    assert not drops and stats.delivered == 6000 and stats.retries >= 2
    missing = [i for i in sent if counts[i] == 0]
    assert not missing, f"{len(missing)} events lost"
    doubled = sum(c - 1 for c in counts.values())
    print(f"{how}: 6000 events, 0 lost, {doubled} extra copies (same event_id)")  # noqa: T201
    if how == "sigterm":
        assert doubled == 0
    else:  # at most the batches in flight when the process died
        assert doubled <= 2 * 500


def test_refused_events_are_reported_with_field_paths_and_not_retried(
    ingest: IngestProcess, kafka_settings: KafkaSettings
) -> None:
    drops: list[EventsDropped] = []
    fw = Flywheel(ingest.url, ACME_KEY, **{**FAST, "linger_s": 5.0}, on_error=drops.append)
    good = [fw.signal(f"run-{i}", "copy") for i in range(9)]
    bad = fw.signal("x" * 300, "copy")  # run_id over the server's 256 characters
    good += [fw.signal(f"run-{i}", "accept") for i in range(9, 12)]
    assert fw.flush(30)
    stats = fw.stats()
    assert (stats.delivered, stats.rejected, stats.retries) == (12, 1, 0)
    assert stats.requests == 2  # the batch, then the good events again: nothing retried
    [drop] = drops
    assert drop.reason == "rejected" and drop.status == 422 and drop.event_ids == (bad,)
    [error] = drop.errors
    assert error.loc == ("body", "events", 9, "run_id") and error.type == "string_too_long"
    counts = landed(kafka_settings, good, timeout_s=30)
    assert sum(counts.values()) == 12 and bad not in counts
    fw.close(5)


def test_a_wrong_key_is_refused_once(ingest: IngestProcess) -> None:
    drops: list[EventsDropped] = []
    with Flywheel(ingest.url, "not-a-key", **FAST, on_error=drops.append) as fw:
        ids = [fw.signal(f"r{i}", "copy") for i in range(5)]
        assert fw.flush(10)  # nothing held: nothing left to retry
        stats = fw.stats()
    assert (stats.rejected, stats.retries, stats.delivered) == (5, 0, 0)
    assert stats.requests == len(drops)  # one answer per batch, none asked again
    assert {i for d in drops for i in d.event_ids} == set(ids)
    assert all(d.status == 401 for d in drops)
    assert drops[0].errors[0].loc == ("header", "authorization")


def _unanswering_server() -> tuple[socket.socket, str]:
    """A port that accepts connections and never answers: the "flush hangs" case."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    return sock, f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.mark.parametrize("server", ["refusing", "silent"])
def test_close_returns_within_its_timeout_when_the_server_is_down(server: str) -> None:
    sock, url = _unanswering_server()
    if server == "refusing":
        sock.close()
    drops: list[EventsDropped] = []
    fw = Flywheel(url, ACME_KEY, linger_s=0.01, on_error=drops.append, exit_timeout_s=None)
    ids = [fw.signal(f"r{i}", "copy") for i in range(100)]
    wait_for(lambda: fw.stats().requests >= 1, timeout_s=10)
    started = time.monotonic()
    assert fw.close(timeout=1.0) is False
    elapsed = time.monotonic() - started
    sock.close()
    assert elapsed < 1.5, f"close(1.0) took {elapsed:.2f}s"
    assert fw.stats().dropped_closed == 100
    assert {i for d in drops if d.reason == "closed" for i in d.event_ids} == set(ids)
    fw.signal("r", "copy")  # after close: dropped and counted, never raised
    assert fw.stats().dropped_closed == 101


def test_retry_after_is_honoured(
    make_ingest: Callable[..., IngestProcess], kafka_settings: KafkaSettings
) -> None:
    ingest = make_ingest(
        api_keys=[{**API_KEYS[0], "rate_per_s": 100, "burst": 100}], retry_after_s=1
    )
    with Flywheel(ingest.url, ACME_KEY, **FAST, max_batch_events=50) as fw:
        started = time.monotonic()
        ids = [fw.signal(f"r{i}", "copy") for i in range(300)]
        assert fw.flush(60)
        elapsed = time.monotonic() - started
        stats = fw.stats()
    assert stats.delivered == 300 and stats.retries >= 1
    # 429s each said "Retry-After: 1": the client waited at least that once.
    assert elapsed >= 1.0
    assert sum(landed(kafka_settings, ids, timeout_s=30).values()) == 300
