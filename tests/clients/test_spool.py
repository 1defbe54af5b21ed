"""The spool, against real processes: an app SIGKILLed with events spooled delivers them on
its next start, none twice; a full spool drops its oldest events, counted and reported."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flywheel_client import EventsDropped, Flywheel
from flywheel_common import KafkaSettings

from tests.clients.ingest_process import ACME_KEY, IngestProcess, landed, wait_for

APP = Path(__file__).with_name("app.py")


class App:
    """``app.py`` as a process; its JSON lines are read as they come."""

    def __init__(self, url: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(APP), url, ACME_KEY, *args],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.created: list[str] = []
        self.spooled = 0
        self.done = False

    def read_until(self, condition: Callable[[App], bool], timeout_s: float = 120) -> None:
        assert self.proc.stdout is not None
        while not condition(self):
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(f"app exited ({self.proc.wait()}) before the condition")
            self._take(json.loads(line))

    def _take(self, fields: dict[str, Any]) -> None:
        if "created" in fields:
            self.created.append(fields["created"])
        if "spooled" in fields:
            self.spooled = fields["spooled"]
        self.done = self.done or bool(fields.get("done"))

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        assert self.proc.stdout is not None
        self.proc.stdout.close()

    def finish(self, timeout_s: float = 180) -> None:
        out, _ = self.proc.communicate(timeout=timeout_s)
        for line in out.splitlines():
            self._take(json.loads(line))
        assert self.proc.returncode == 0


def test_sigkilled_during_an_outage_delivers_everything_on_the_next_start(
    kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    spool = str(tmp_path / "spool.db")
    ingest = IngestProcess(kafka_settings)  # down while the app logs
    app = App(ingest.url, "--count", "2000", "--spool", spool, "--then", "hang")
    app.read_until(lambda a: a.done and a.spooled == 2000)
    app.kill()
    assert len(app.created) == 2000 and app.spooled == 2000
    with ingest:
        again = App(ingest.url, "--spool", spool, "--then", "close")
        again.finish()
    counts = landed(kafka_settings, app.created, timeout_s=60)
    assert all(counts[i] == 1 for i in app.created), "an event was lost or sent twice"
    assert sum(counts.values()) == 2000


def test_sigkilled_while_sending_loses_no_spooled_event(
    make_ingest: Callable[..., IngestProcess], kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    """Killed at an arbitrary point under load: every event the spool had taken is delivered
    by the next start. Copies are possible only for batches the server had stored when the
    app died (the ack was in flight): counted here, and bounded by the batches in flight."""
    spool = str(tmp_path / "spool.db")
    ingest = make_ingest()
    app = App(ingest.url, "--count", "20000", "--spool", spool, "--then", "hang")
    app.read_until(lambda a: len(a.created) >= 6000)
    app.kill()
    durable = app.created[: app.spooled]  # written in order: the first `spooled` are on disk
    again = App(ingest.url, "--spool", spool, "--then", "close")
    again.finish()
    counts = landed(kafka_settings, durable, timeout_s=60)
    lost = [i for i in durable if counts[i] == 0]
    doubled = sum(c - 1 for c in counts.values())
    unknown = set(counts) - set(app.created)
    unspooled = len(app.created) - len(durable)
    print(  # noqa: T201
        f"created {len(app.created)}, spooled {len(durable)}, lost {len(lost)}, "
        f"extra copies {doubled}, not yet spooled at the kill {unspooled}"
    )
    assert not lost and not unknown
    assert doubled <= 2 * 100  # max_in_flight x max_batch_events of app.py


def test_a_full_spool_drops_its_oldest_events(
    kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    ingest = IngestProcess(kafka_settings)
    drops: list[EventsDropped] = []
    fw = Flywheel(
        ingest.url,
        ACME_KEY,
        spool_path=tmp_path / "spool.db",
        spool_max_bytes=20_000,
        max_batch_events=20,
        linger_s=0.02,
        backoff_max_s=0.3,
        exit_timeout_s=None,
        on_error=drops.append,
    )
    ids = [fw.signal(f"run-{i}", "copy") for i in range(500)]
    wait_for(lambda: fw.stats().spooled == 500, timeout_s=30)
    stats = fw.stats()
    evicted = [i for d in drops if d.reason == "spool_full" for i in d.event_ids]
    assert stats.dropped_spool_full == len(evicted) > 0
    # The oldest went first; only events in flight at the time (at most two batches) are
    # older than an evicted one and kept.
    position = {event_id: n for n, event_id in enumerate(ids)}
    assert [position[i] for i in evicted] == sorted(position[i] for i in evicted)
    older_kept = [i for i in ids[: position[evicted[-1]]] if i not in set(evicted)]
    assert len(older_kept) <= 2 * 20
    with ingest:
        assert fw.flush(60)
        fw.close(5)
    kept = ids[len(evicted) :]
    counts = landed(kafka_settings, kept, timeout_s=30)
    assert all(counts[i] == 1 for i in kept) and sum(counts.values()) == len(kept)
