"""The offline and maintenance commands: ``flywheel curate``, ``flywheel replay`` and
``flywheel data compact``, as subprocesses against real files, a real broker and real tables."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
from confluent_kafka import Producer
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
from flywheel_common.kafka import producer_config
from flywheel_common.lake import DPO_PAIRS, txn_app_id
from flywheel_common.settings import KafkaSettings

from tests.curator.conftest import (
    CODEC,
    PROMPT,
    RESPONSE,
    EventProducer,
    edit_event,
    read_table,
)

# Three unrelated edits, so near-duplicate detection keeps all three.
EDITS = [
    (
        "Draft a polite reminder about the unpaid invoice.",
        "Pay the invoice now.",
        "Hi Sam, a friendly reminder that invoice 1042 is still open; could you settle it?",
    ),
    (
        "Explain what a Kafka partition is to a new engineer.",
        "A partition is a part.",
        "A partition is an ordered, append-only log; a topic is split into several of them.",
    ),
    (
        "Suggest a title for a post about database migrations.",
        "Schema migrations.",
        "Zero-downtime schema migrations: expand, migrate, contract",
    ),
]
FINALS = [final for _, _, final in EDITS]
CURATED = "Revenue went up this quarter while costs went up a bit less."


def flywheel(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flywheel_common.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=env,
    )


def _line(event_type: str, **fields: Any) -> str:
    return json.dumps({"type": event_type, **fields})


def test_curate_summarises_a_file_and_names_each_bad_line(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    edit = {
        "run_id": "r1",
        "prompt": PROMPT,
        "original": RESPONSE,
        "final": CURATED,
        "occurred_at": 1767225600000,
        "feature": "summary",
    }
    typo = {**edit, "run_id": "r2", "final": RESPONSE + "!"}
    events.write_text(
        "\n".join(
            [
                _line("edit", **edit),
                _line("edit", **typo),
                "{not json",
                _line("poem", run_id="x"),
                _line(
                    "run", run_id="r3", prompt="p", response="x", model="m", occurred_at="yesterday"
                ),
                "",
            ]
        )
    )
    lake = tmp_path / "lake"
    out = flywheel("curate", "--input", str(events), "--lake", str(lake))
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["candidates"] == {"edit": 2}
    assert summary["accepted"] == {"edit": 1}
    assert summary["rejected"] == {"too_similar": 1}
    assert summary["dlq"] == {"undecodable": 2, "invalid_event": 1}
    assert f"{events}:3: undecodable: not JSON" in out.stderr
    assert f"{events}:4: undecodable: 'type' must be one of" in out.stderr
    assert f"{events}:5: invalid_event:" in out.stderr and "yesterday" in out.stderr
    assert [r["chosen"] for r in read_table(lake, "dpo_pairs")] == [CURATED]

    dry = flywheel("curate", "--input", str(events))
    assert dry.returncode == 0 and json.loads(dry.stdout)["written"] is None
    missing = flywheel("curate", "--input", str(tmp_path / "nope.jsonl"))
    assert missing.returncode == 2 and "cannot read" in missing.stderr


def test_curate_pairs_regenerations_and_ratings_of_a_file(tmp_path: Path) -> None:
    """One reader sees every partition: pairing facts are fed straight back, and a regeneration
    left alone for the quiet period (in the file's own time) counts as kept."""
    t0, minute = 1767225600000, 60_000
    run = {"prompt": PROMPT, "model": "m", "feature": "summary"}
    events = tmp_path / "events.jsonl"
    lines = [
        _line("run", run_id="a", response=RESPONSE, occurred_at=t0, **run),
        _line(
            "run", run_id="b", response=CURATED, parent_run_id="a", occurred_at=t0 + minute, **run
        ),
        _line("feedback", run_id="a", kind="thumbs", value=-1.0, occurred_at=t0 + 2 * minute),
        _line("feedback", run_id="b", kind="thumbs", value=1.0, occurred_at=t0 + 3 * minute),
        # another regeneration of "a", never touched again: kept once the quiet period passes
        _line("run", run_id="c", response=FINALS[1], parent_run_id="a", occurred_at=t0, **run),
        _line("run", run_id="z", prompt="x", response="y", model="m", occurred_at=t0 + 30 * minute),
    ]
    events.write_text("\n".join(lines) + "\n")
    out = flywheel("curate", "--input", str(events))
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    # b kept (rated up) over a; c kept by default over a; b rated up against a rated down.
    assert summary["candidates"] == {"regenerate": 2, "paired_outcome": 1}
    assert summary["pairing_facts"] == {"regenerated": 2, "kept": 2, "rated": 2}
    assert summary["dlq"] == {}


def test_replay_rebuilds_the_same_table_and_starts_where_told(
    kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    producer = EventProducer(kafka_settings)
    # One run_id, so all three edits share a partition and their offsets are 0, 1, 2.
    run_id = str(uuid.uuid4())
    for prompt, original, final in EDITS:
        producer.send("edit", edit_event(run_id, prompt=prompt, original=original, final=final))
    producer.flush()
    env = {**os.environ, "FLYWHEEL_CURATOR_KAFKA": kafka_settings.model_dump_json()}

    def replay(lake: Path, *start: str) -> list[dict[str, Any]]:
        out = flywheel("replay", "--lake", str(lake), *start, env=env)
        assert out.returncode == 0, out.stderr[-3000:]
        return read_table(lake, "dpo_pairs")

    first = replay(tmp_path / "a", "--from-beginning")
    again = replay(tmp_path / "b", "--from-beginning")
    assert len(first) == len(FINALS)
    assert sorted(r["pair_id"] for r in first) == sorted(r["pair_id"] for r in again)
    later = replay(tmp_path / "c", "--from-offset", "1")
    assert sorted(r["kafka_offset"] for r in later) == [1, 2]
    # Replaying into a lake that already holds the offsets adds nothing (exactly once).
    assert len(replay(tmp_path / "a", "--from-beginning")) == len(FINALS)


def test_replay_from_the_beginning_ends_on_transactional_topics(
    kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    """A transactional producer's last offset in a partition is a commit (or abort) marker: no
    message carries it, so a replay that waited for the last message's offset to reach the end
    never ended (it hung here before). It ends from the consumer's positions, and the aborted
    edit is not in the table."""
    producer = Producer(
        producer_config(
            kafka_settings, profile="transactional", transactional_id=f"tx-{uuid.uuid4()}"
        )
    )
    producer.init_transactions(30)
    run_id = str(uuid.uuid4())
    for batch, outcome in ((EDITS[:2], "commit"), (EDITS[2:], "abort")):
        producer.begin_transaction()
        for prompt, original, final in batch:
            edit = edit_event(run_id, prompt=prompt, original=original, final=final)
            producer.produce(
                kafka_settings.topics.edits,
                key=run_id.encode(),
                value=CODEC.encode("Edit", edit),
            )
        producer.flush(30)
        if outcome == "commit":
            producer.commit_transaction(30)
        else:
            producer.abort_transaction(30)
    env = {**os.environ, "FLYWHEEL_CURATOR_KAFKA": kafka_settings.model_dump_json()}
    out = flywheel(
        "replay", "--lake", str(tmp_path / "lake"), "--from-beginning", env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = read_table(tmp_path / "lake", "dpo_pairs")
    assert sorted(r["chosen"] for r in rows) == sorted(final for _, _, final in EDITS[:2])


def _pairs(n: int, start: int) -> pa.Table:
    now = pa.scalar(1767225600000, pa.timestamp("ms", tz="UTC"))
    rows = [
        {
            "pair_id": f"p{start + i}",
            "prompt": [{"role": "user", "content": "q"}],
            "chosen": "a",
            "rejected": "b",
            "source": "edit",
            "run_id": "r",
            "event_id": "e",
            "tenant": "t",
            "feature": "f",
            "weight": 1.0,
            "event_time": now.as_py(),
            "curated_at": now.as_py(),
            "curator_version": "test",
            "filter_config_hash": "h",
            "kafka_topic": "t",
            "kafka_partition": 0,
            "kafka_offset": start + i,
        }
        for i in range(n)
    ]
    return pa.Table.from_pylist(rows, schema=DPO_PAIRS)


def test_compact_merges_small_files_and_keeps_the_offsets(tmp_path: Path) -> None:
    uri = str(tmp_path / "lake" / "dpo_pairs")
    app_id = txn_app_id("curator", "t", 0)
    for batch in range(12):
        write_deltalake(
            uri,
            _pairs(5, batch * 5),
            mode="append",
            commit_properties=CommitProperties(
                app_transactions=[Transaction(app_id=app_id, version=batch * 5 + 5)]
            ),
        )
    before = DeltaTable(uri)
    assert len(before.file_uris()) == 12
    out = flywheel("data", "compact", "--lake", str(tmp_path / "lake"), "--table", "dpo_pairs")
    assert out.returncode == 0, out.stderr
    assert "files added 1, removed 12" in out.stdout
    after = DeltaTable(uri)
    assert len(after.file_uris()) == 1
    assert after.to_pyarrow_table().num_rows == 60
    assert after.transaction_version(app_id) == 60
    absent = flywheel("data", "compact", "--lake", str(tmp_path / "empty"))
    assert absent.returncode == 0 and "no table at" in absent.stdout
