"""The client across process events: interpreter exit (the exit hook delivers, with a bounded
wait) and ``fork()`` (parent and child each deliver their own events, none twice)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from flywheel_common import KafkaSettings

from tests.clients.ingest_process import IngestProcess, landed
from tests.clients.test_spool import App


def test_exit_hook_delivers_what_the_app_did_not_flush(
    make_ingest: Callable[..., IngestProcess], kafka_settings: KafkaSettings
) -> None:
    ingest = make_ingest()
    app = App(ingest.url, "--count", "500", "--then", "exit")
    app.finish()
    counts = landed(kafka_settings, app.created, timeout_s=30)
    assert len(app.created) == 500
    assert all(counts[i] == 1 for i in app.created) and sum(counts.values()) == 500


def test_exit_hook_waits_no_longer_than_its_timeout(kafka_settings: KafkaSettings) -> None:
    ingest = IngestProcess(kafka_settings)  # never started: nobody answers
    started = time.monotonic()
    app = App(ingest.url, "--count", "50", "--then", "exit", "--exit-timeout", "1.0")
    app.finish(timeout_s=60)
    # Interpreter start and imports included; without the bound it would retry forever.
    assert time.monotonic() - started < 15


@pytest.mark.parametrize("spool", [False, True], ids=["memory", "spool"])
def test_parent_and_forked_child_each_deliver_their_own(
    make_ingest: Callable[..., IngestProcess],
    kafka_settings: KafkaSettings,
    tmp_path: Path,
    spool: bool,
) -> None:
    ingest = make_ingest()
    args = ["--count", "2000", "--fork", "--then", "close"]
    if spool:
        args += ["--spool", str(tmp_path / "spool.db")]
    app = App(ingest.url, *args)
    app.finish()
    assert len(app.created) == 3000  # parent, then child and parent after the fork
    counts = landed(kafka_settings, app.created, timeout_s=60)
    twice = [i for i, c in counts.items() if c > 1]
    assert not twice, f"{len(twice)} events sent by both processes"
    assert all(counts[i] == 1 for i in app.created) and sum(counts.values()) == 3000
    if spool:  # the child used a slot of its own, and left nothing in it
        with sqlite3.connect(tmp_path / "spool.db.1") as db:
            assert db.execute("SELECT COUNT(*) FROM events").fetchone() == (0,)
        db.close()
