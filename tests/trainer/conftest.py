"""Trainer fixtures: a tiny random-init Llama and a tokenizer trained on the spot (no download),
real Delta tables under tmp_path, and helpers that write ``dpo_pairs`` and ``kto_examples`` rows
the way the curator does (the DPO_PAIRS / KTO_EXAMPLES schemas of flywheel_common.lake, Kafka
coordinates) and announce them with GoldCommitted events."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
from flywheel_common.codec import AvroCodec
from flywheel_common.kafka import make_producer
from flywheel_common.lake import txn_app_id
from flywheel_common.settings import KafkaSettings, LakeSettings
from flywheel_trainer.settings import GateSettings, JobConfig, LoraSettings, TrainerSettings
from flywheel_trainer.synthetic import (
    SyntheticExample,
    SyntheticPair,
    generate_pairs,
    kto_table,
    pairs_table,
    save_base_model,
)

# torch / transformers / TRL warn about their own deprecations on every run; pytest turns
# warnings into errors, so these (and only these) are let through for the trainer tests.
TRAINER_WARNING_FILTERS = (
    "ignore:.*is deprecated and will be removed in v6.*:FutureWarning",
    "ignore:.*torch.utils._pytree._register_pytree_node.*:FutureWarning",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            for spec in TRAINER_WARNING_FILTERS:
                item.add_marker(pytest.mark.filterwarnings(spec))


CURATOR_GROUP = "flywheel-curator-test"
TOPIC = "flywheel.edits.v1"
FEEDBACK_TOPIC = "flywheel.feedback.v1"


@pytest.fixture(scope="session")
def base_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 64-wide random-init Llama with the synthetic word-level tokenizer."""
    return save_base_model(tmp_path_factory.mktemp("base") / "tiny-llama", hidden_size=64, layers=2)


def tiny_job(base: Path, **overrides: Any) -> JobConfig:
    """A job that learns the synthetic preference in seconds on one CPU core."""
    fields: dict[str, Any] = {
        "base_model": str(base),
        "local_files_only": True,
        "lora": LoraSettings(rank=8, alpha=16, dropout=0.0),
        "learning_rate": 5e-3,
        "epochs": 3.0,
        "batch_size": 16,
        "max_length": 64,
        "eval_fraction": 0.2,
        "eval_batch_size": 32,
        "precision": "fp32",
    }
    fields.update(overrides)
    return JobConfig(**fields)


def make_settings(
    lake: Path,
    job: JobConfig,
    *,
    kafka: KafkaSettings | None = None,
    **overrides: Any,
) -> TrainerSettings:
    fields: dict[str, Any] = {
        "lake": LakeSettings(uri=str(lake)),
        "artifact_store": str(lake.parent / "runs"),
        "job": job,
        "gate": GateSettings(min_accuracy_gain=0.05),
        "threshold": 40,
        "min_interval_s": 0,
        "poll_interval_s": 1.0,
    }
    if kafka is not None:
        fields["kafka"] = kafka
    fields.update(overrides)
    return TrainerSettings(**fields)


def pair_table(
    pairs: Sequence[SyntheticPair], *, partition: int = 0, first_offset: int = 0
) -> pa.Table:
    return pairs_table(
        pairs,
        topic=TOPIC,
        partition=partition,
        first_offset=first_offset,
        curator_version="test",
    )


def append_pairs(
    uri: str, pairs: Sequence[SyntheticPair], *, partition: int = 0, first_offset: int = 0
) -> int:
    """Append like the curator (offsets travel as a txn id); return the new version."""
    txn = Transaction(
        app_id=txn_app_id(CURATOR_GROUP, TOPIC, partition), version=first_offset + len(pairs)
    )
    write_deltalake(
        uri,
        pair_table(pairs, partition=partition, first_offset=first_offset),
        mode="append",
        commit_properties=CommitProperties(app_transactions=[txn]),
    )
    return DeltaTable(uri).version()


def append_kto(
    uri: str, examples: Sequence[SyntheticExample], *, partition: int = 0, first_offset: int = 0
) -> int:
    """Append ``kto_examples`` rows like the curator will (KTO_EXAMPLES schema, offsets in a
    txn id); return the new version."""
    txn = Transaction(
        app_id=txn_app_id(CURATOR_GROUP, FEEDBACK_TOPIC, partition),
        version=first_offset + len(examples),
    )
    table = kto_table(
        examples,
        topic=FEEDBACK_TOPIC,
        partition=partition,
        first_offset=first_offset,
        curator_version="test",
    )
    write_deltalake(
        uri, table, mode="append", commit_properties=CommitProperties(app_transactions=[txn])
    )
    return DeltaTable(uri).version()


def announce(kafka: KafkaSettings, uri: str, version: int, rows: int) -> None:
    """Produce the curator's GoldCommitted event for a commit."""
    now = int(time.time() * 1000)
    value = AvroCodec().encode(
        "GoldCommitted",
        {
            "event_id": str(uuid.uuid4()),
            "occurred_at": now,
            "received_at": now,
            "tenants": ["acme"],
            "table": "dpo_pairs",
            "table_uri": uri,
            "version": version,
            "rows_added": rows,
            "curator": "test",
        },
    )
    producer = make_producer(kafka)
    producer.produce(kafka.topics.gold, key=b"dpo_pairs", value=value)
    assert producer.flush(10) == 0


def wait_for(
    condition: Callable[[], Any], *, timeout: float, what: str, every: float = 0.25
) -> Any:
    """Poll ``condition`` until truthy or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture
def lake(tmp_path: Path) -> Path:
    path = tmp_path / "lake"
    path.mkdir()
    return path


@pytest.fixture
def pairs() -> Callable[..., list[SyntheticPair]]:
    return generate_pairs
