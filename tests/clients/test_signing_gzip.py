"""Signing (v2) and gzip against the real ingest: signed and compressed requests are taken,
a wrong secret is refused once and reported, and gzip really shrinks what goes on the wire."""

from __future__ import annotations

from flywheel_client import EventsDropped, Flywheel
from flywheel_common import KafkaSettings

from tests.clients.ingest_process import (
    ACME_KEY,
    SIGNED_KEY,
    SIGNING_SECRET,
    IngestProcess,
    landed,
)

QUICK = {"linger_s": 0.02, "exit_timeout_s": None, "max_batch_events": 200}


def _log(fw: Flywheel, count: int) -> list[str]:
    text = "The same helpful answer, repeated as telemetry usually is. " * 4
    return [fw.thumbs(f"run-{i}", "down", correction=f"{text} #{i}") for i in range(count)]


def test_signed_and_gzipped_batches_are_taken(
    ingest: IngestProcess, kafka_settings: KafkaSettings
) -> None:
    with Flywheel(
        ingest.url, SIGNED_KEY, signing_secret=SIGNING_SECRET, gzip_min_bytes=1024, **QUICK
    ) as fw:
        ids = _log(fw, 1000)
        assert fw.flush(60)
        stats = fw.stats()
    assert (stats.delivered, stats.rejected, stats.retries) == (1000, 0, 0)
    raw = 1000 * 300  # each event's JSON is over 300 bytes
    assert stats.bytes_sent < raw / 4, f"{stats.bytes_sent} bytes sent: not compressed"
    counts = landed(kafka_settings, ids, timeout_s=30)
    assert all(counts[i] == 1 for i in ids) and sum(counts.values()) == 1000


def test_without_gzip_the_wire_carries_the_raw_json(ingest: IngestProcess) -> None:
    with Flywheel(ingest.url, ACME_KEY, gzip_min_bytes=None, **QUICK) as fw:
        _log(fw, 200)
        assert fw.flush(60)
        assert fw.stats().bytes_sent > 200 * 300


def test_a_wrong_signing_secret_is_refused_once(ingest: IngestProcess) -> None:
    drops: list[EventsDropped] = []
    with Flywheel(
        ingest.url,
        SIGNED_KEY,
        signing_secret="not-the-secret",  # noqa: S106 - a wrong secret, on purpose
        on_error=drops.append,
        **QUICK,
    ) as fw:
        ids = _log(fw, 10)
        assert fw.flush(30)
        stats = fw.stats()
    assert (stats.rejected, stats.retries, stats.delivered) == (10, 0, 0)
    assert {i for d in drops for i in d.event_ids} == set(ids)
    assert drops[0].status == 401 and drops[0].errors[0].type == "bad_signature"


def test_a_signing_key_without_the_secret_is_refused(ingest: IngestProcess) -> None:
    drops: list[EventsDropped] = []
    with Flywheel(ingest.url, SIGNED_KEY, on_error=drops.append, **QUICK) as fw:
        _log(fw, 3)
        assert fw.flush(30)
    assert drops and all(d.status == 401 for d in drops)
