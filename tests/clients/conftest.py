"""SDK fixtures: the real ingest service as a process on the session broker, on this test's
own uuid-named topics."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flywheel_common import KafkaSettings

from tests.clients.ingest_process import IngestProcess


@pytest.fixture
def make_ingest(
    kafka_settings: KafkaSettings, tmp_path: Path
) -> Iterator[Callable[..., IngestProcess]]:
    """Start the service with setting overrides; every one is stopped at the end."""
    started: list[IngestProcess] = []

    def make(**settings: Any) -> IngestProcess:
        proc = IngestProcess(
            kafka_settings, log_path=tmp_path / f"ingest-{len(started)}.log", **settings
        )
        started.append(proc)
        return proc.start()

    try:
        yield make
    finally:
        for proc in started:
            proc.__exit__()


@pytest.fixture
def ingest(make_ingest: Callable[..., IngestProcess]) -> IngestProcess:
    return make_ingest()
