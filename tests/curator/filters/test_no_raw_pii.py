"""No raw PII in any table (any version), dead letter or log line, whatever the PII policy:
the curator process runs against a real broker and real Delta tables over events that carry
every PII kind in every text, then everything it wrote is searched for the raw values."""

from __future__ import annotations

import json
import signal
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer
from deltalake import DeltaTable
from flywheel_common.settings import KafkaSettings

from tests.curator.conftest import (
    CODEC,
    EventProducer,
    edit_event,
    feedback_event,
    read_table,
    run_event,
    settings_for,
    spawn,
    wait_until,
)
from tests.curator.filters.test_redaction import PII_VALUES, assert_clean

TABLES = ("dpo_pairs", "rejected_candidates", "sft_examples")
# Distinct wording per kind, so near-dup detection keeps them apart.
TOPICS = {
    "email": "refund for the damaged kettle",
    "phone": "callback about the delayed parcel",
    "card": "double charge on the March invoice",
    "ip": "outage of the staging database server",
    "national_id": "payroll form that was rejected",
    "secret": "deployment pipeline that stopped working",
}


def _send_all(p: EventProducer, kafka: KafkaSettings) -> int:
    """Every kind in every kind of text; returns the number of candidates it makes."""
    candidates = 0
    for kind, value in PII_VALUES.items():
        topic = TOPICS[kind]
        original = f"We looked into the {topic}. Please wait for an update from the team."
        # An edit the filters accept (redact) or reject (reject), one too similar to keep.
        final = f"We looked into the {topic}. Write to us at {value} and we will reply today."
        p.send("edit", edit_event(str(uuid.uuid4()), prompt=f"About {topic}: {value}",
                                  original=original, final=final))  # fmt: skip
        typo = f"About the {topic}, reach me at {value} today."
        p.send("edit", edit_event(str(uuid.uuid4()), original=typo, final=typo[:-1] + "!"))
        # A correction, and a run rated up that the sampler copies to sft_examples.
        wrong, rated = str(uuid.uuid4()), str(uuid.uuid4())
        p.send("run", run_event(wrong, prompt=f"My details: {value}", response=f"No. {value}"))
        p.send(
            "feedback",
            feedback_event(wrong, "thumbs", -1.0, correction=f"The {topic} is handled by {value}."),
        )
        p.send("run", run_event(rated, prompt=f"Summarise the {topic} for {value}."))
        p.send("feedback", feedback_event(rated, "thumbs", 1.0))
        candidates += 3
        # A body that does not decode, whose error quotes the value.
        body = CODEC.encode("Run", run_event("x", response=f"{topic} {value} XYZ"))
        cut = body.index(b"XYZ")
        p.send_raw(kafka.topics.runs, f"bad-{kind}", body[:cut] + b"\xff" + body[cut + 1 :])
    p.flush()
    return candidates


def _every_version(lake: Path, table: str) -> list[dict[str, Any]]:
    path = str(lake / table)
    if not DeltaTable.is_deltatable(path):
        return []
    latest = DeltaTable(path).version()
    rows: list[dict[str, Any]] = []
    for version in range(latest + 1):
        rows += DeltaTable(path, version=version).to_pyarrow_table().to_pylist()
    return rows


def _dead_letters(kafka: KafkaSettings, n: int) -> list[dict[str, Any]]:
    c = Consumer(
        {
            "bootstrap.servers": kafka.bootstrap_servers,
            "group.id": f"dlq-{uuid.uuid4()}",
            "auto.offset.reset": "earliest",
        }
    )
    c.subscribe([kafka.topics.dlq])
    letters: list[dict[str, Any]] = []

    def enough() -> bool:
        letters.extend(
            CODEC.decode(m.value()).record for m in c.consume(10, timeout=0.5) if not m.error()
        )
        return len(letters) >= n

    try:
        wait_until(enough, what=f"{n} dead letters")
    finally:
        c.close()
    return letters


@pytest.mark.parametrize("policy", ["redact", "reject"])
def test_no_table_dead_letter_or_log_line_holds_raw_pii(
    kafka_settings: KafkaSettings, tmp_path: Path, policy: str
) -> None:
    p = EventProducer(kafka_settings)
    candidates = _send_all(p, kafka_settings)
    lake, log = tmp_path / "lake", tmp_path / "curator.log"
    settings = settings_for(kafka_settings, lake, tmp_path / "state")
    proc = spawn(
        settings,
        log,
        FLYWHEEL_CURATOR_LOGGING__LEVEL="DEBUG",
        FLYWHEEL_CURATOR_SFT_SAMPLE_RATE="1.0",
        FLYWHEEL_CURATOR_FILTERS__PII__POLICY=policy,
    )
    try:
        wait_until(
            lambda: (
                len(read_table(lake, "dpo_pairs")) + len(read_table(lake, "rejected_candidates"))
                >= candidates
                and len(read_table(lake, "sft_examples")) >= len(PII_VALUES)
            ),
            timeout=120,
            what="every candidate decided and every rated run sampled",
        )
        letters = _dead_letters(kafka_settings, len(PII_VALUES))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    rows = {table: _every_version(lake, table) for table in TABLES}
    stored = json.dumps(rows, default=str)
    assert_clean(stored)
    # Redacted, not dropped: every kind's marker is in the tables.
    for kind in PII_VALUES:
        assert f"[{kind.upper()}]" in stored, kind
    if policy == "reject":
        # Every candidate carries PII: all rejected, the detail naming kinds, never values.
        assert rows["dpo_pairs"] == []
        rejected = rows["rejected_candidates"]
        assert len(rejected) == candidates
        assert all("pii" in r["reasons"] and "kinds=" in r["detail"] for r in rejected)
    else:
        assert len(rows["dpo_pairs"]) >= len(PII_VALUES)
    details = json.dumps([letter["detail"] for letter in letters])
    assert_clean(details)
    assert "[EMAIL]" in details  # the decoder's message quoted the body, redacted
    lines = log.read_text(encoding="utf-8").splitlines()
    assert any('"level": "debug"' in line for line in lines), "no debug lines were logged"
    assert_clean("\n".join(lines))
