"""The curator against a real broker and real Delta tables: each source, joins, DLQ."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

from flywheel_common.settings import KafkaSettings

from tests.curator.conftest import (
    EventProducer,
    ThreadedCurator,
    edit_event,
    rows_with,
    run_event,
    settings_for,
    wait_until,
)

Factory = Callable[..., ThreadedCurator]


def test_edit_becomes_a_pair(
    kafka_settings: KafkaSettings, tmp_path: Path, curator_factory: Factory
) -> None:
    p = EventProducer(kafka_settings)
    rid = str(uuid.uuid4())
    p.send("run", run_event(rid))
    p.send("edit", edit_event(rid))
    p.flush()
    lake = tmp_path / "lake"
    curator_factory(settings_for(kafka_settings, lake, tmp_path / "state"))
    rows = wait_until(rows_with(lake, "dpo_pairs", 1), what="a pair")
    assert rows[0]["source"] == "edit"
    assert rows[0]["run_id"] == rid
    assert rows[0]["kafka_topic"] == kafka_settings.topics.edits
