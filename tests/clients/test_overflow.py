"""The memory bound holds while the server is away, and what the overflow policy drops is
counted, warned about and handed to ``on_error``: never silent, and never sent later."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import pytest
from flywheel_client import EventsDropped, Flywheel
from flywheel_common import KafkaSettings

from tests.clients.ingest_process import ACME_KEY, IngestProcess, landed

OPTIONS = {
    "linger_s": 0.02,
    "backoff_max_s": 0.3,
    "exit_timeout_s": None,
    "max_batch_events": 100,
    "max_queue_events": 1000,
}


def test_drop_policy_counts_warns_and_reports(
    kafka_settings: KafkaSettings, caplog: pytest.LogCaptureFixture
) -> None:
    ingest = IngestProcess(kafka_settings)  # its port is known; it is not started yet
    drops: list[EventsDropped] = []
    fw = Flywheel(ingest.url, ACME_KEY, **OPTIONS, overflow="drop", on_error=drops.append)
    with caplog.at_level(logging.WARNING, logger="flywheel_client"):
        ids = [fw.signal(f"r{i}", "copy") for i in range(1500)]
        stats = fw.stats()
        assert stats.queued <= 1000 and stats.dropped_overflow >= 500
        assert stats.queued + stats.dropped_overflow == 1500
        with ingest:
            assert fw.flush(60)
            fw.close(5)
    dropped = [i for d in drops for i in d.event_ids]
    assert all(d.reason == "overflow" for d in drops)
    assert len(dropped) == stats.dropped_overflow and set(dropped) <= set(ids)
    assert any("overflow" in r.getMessage() for r in caplog.records)
    kept = [i for i in ids if i not in set(dropped)]
    counts = landed(kafka_settings, kept, timeout_s=30)
    assert all(counts[i] == 1 for i in kept) and sum(counts.values()) == len(kept)


def test_block_policy_waits_then_drops_when_the_server_stays_away(
    kafka_settings: KafkaSettings,
) -> None:
    ingest = IngestProcess(kafka_settings)
    fw = Flywheel(
        ingest.url,
        ACME_KEY,
        **{**OPTIONS, "max_queue_events": 200},
        overflow="block",
        block_timeout_s=0.2,
    )
    for i in range(200):
        fw.signal(f"r{i}", "copy")
    started = time.monotonic()
    fw.signal("one-too-many", "copy")
    assert time.monotonic() - started >= 0.15  # it waited for room before giving up
    assert fw.stats().dropped_overflow == 1
    fw.close(0.5)


def test_block_policy_loses_nothing_when_the_app_outpaces_the_server(
    make_ingest: Callable[..., IngestProcess], kafka_settings: KafkaSettings
) -> None:
    ingest = make_ingest()
    fw = Flywheel(ingest.url, ACME_KEY, **OPTIONS, overflow="block", block_timeout_s=60)
    ids = [fw.signal(f"r{i}", "copy") for i in range(5000)]
    assert fw.flush(60)
    stats = fw.stats()
    fw.close(5)
    assert stats.dropped_overflow == 0 and stats.delivered == 5000
    assert sum(landed(kafka_settings, ids, timeout_s=30).values()) == 5000
