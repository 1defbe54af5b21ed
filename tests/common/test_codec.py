"""Avro single-object encoding: round trips, the wire format, and every way bytes can be bad."""

from __future__ import annotations

import datetime as dt
import json
import struct
from pathlib import Path
from typing import Any

import fastavro
import pytest
from flywheel_common import (
    MAGIC,
    AvroCodec,
    DecodeError,
    EncodeError,
    SchemaCatalog,
    SchemaError,
    UnknownSchemaError,
    default_schema_dir,
)

NOW = dt.datetime(2026, 11, 22, 12, 0, 0, 123000, tzinfo=dt.UTC)


def _crc64_avro(data: bytes) -> int:
    """Reference CRC-64-AVRO straight from the Avro specification."""
    empty = 0xC15D213AA4D7A795
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (empty & -(fp & 1))
        table.append(fp)
    fp = empty
    for byte in data:
        fp = (fp >> 8) ^ table[(fp ^ byte) & 0xFF]
    return fp


SAMPLES: dict[str, dict[str, Any]] = {
    "Run": {
        "event_id": "6f1c3c52-3a9e-4c38-9d69-0b1e0f6a3b10",
        "occurred_at": NOW,
        "received_at": NOW,
        "tenant": "acme",
        "run_id": "run-1",
        "prompt": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Résumé the meeting 🚀"},
        ],
        "response": "We agreed to ship on Friday.",
        "model": "llama-3-8b",
        "model_version": "v7",
        "feature": "summarize",
        "system_prompt_hash": "abc",
        "tokens": {"prompt": 12, "completion": 7},
        "cost_usd": 0.0012,
        "latency_ms": 812.5,
        "session_id": "s",
        "thread_id": "th",
        "user_id": "u-1",
        "trace_id": "tr",
        "parent_run_id": None,
        "metadata": {"app": "notes", "locale": "fr"},
    },
    "Feedback": {
        "event_id": "0b7f3a1e-8f1e-4c8e-a3a5-2c3f3c0f6e11",
        "occurred_at": NOW,
        "received_at": NOW,
        "tenant": "acme",
        "run_id": "run-1",
        "kind": "rating",
        "value": 2.0,
        "comment": "too long",
        "correction": "Ship Friday.",
        "user_id": "u-1",
        "session_id": None,
        "prompt": "plain text prompt",
        "response": "inline response",
        "model": "m",
        "feature": "summarize",
        "metadata": {},
    },
    "Edit": {
        "event_id": "2a1d9c7e-1c0b-4f0e-9a55-2b3c4d5e6f70",
        "occurred_at": NOW,
        "received_at": NOW,
        "tenant": "acme",
        "run_id": "run-1",
        "prompt": "Write a subject line",
        "original": "Meeting notes",
        "final": "Decision: ship Friday",
        "surface": "inline",
        "time_to_edit_ms": 4200,
        "user_id": "u-1",
        "model": "m",
        "model_version": None,
        "feature": "subject",
        "metadata": {"k": "v"},
    },
    "GoldCommitted": {
        "event_id": "c0ffee00-0000-4000-8000-000000000001",
        "occurred_at": NOW,
        "received_at": NOW,
        "tenants": ["acme", "globex"],
        "table": "dpo_pairs",
        "table_uri": "s3://bucket/lake/dpo_pairs",
        "version": 42,
        "rows_added": 1000,
        "curator": "curator-0",
    },
    "DeadLetter": {
        "event_id": "c0ffee00-0000-4000-8000-000000000002",
        "occurred_at": NOW,
        "received_at": NOW,
        "tenant": None,
        "source_topic": "flywheel.runs.v1",
        "source_partition": 2,
        "source_offset": 12345,
        "key": b"run-1",
        "payload": b"\x00\xff garbage",
        "reason": "bad_magic",
        "detail": "not Avro single-object encoding",
        "component": "curator",
    },
    "PairingFact": {
        "fact_id": "kept:run-2",
        "kind": "kept",
        "key": "run-1",
        "tenant": "acme",
        "ts": 1_795_000_000_000,
        "polarity": 0,
        "run": {
            "run_id": "run-2",
            "event_id": "6f1c3c52-3a9e-4c38-9d69-0b1e0f6a3b11",
            "tenant": "acme",
            "feature": "summarize",
            "prompt": [{"role": "user", "content": "Résumé the meeting 🚀"}],
            "response": "Ship on Friday.",
            "event_time_ms": 1_795_000_000_000,
            "model": "m",
            "model_version": None,
            "user_id": "u-1",
            "parent_run_id": "run-1",
        },
        "signal": {
            "event_id": "0b7f3a1e-8f1e-4c8e-a3a5-2c3f3c0f6e12",
            "kind": "copy",
            "occurred_at": 1_795_000_000_500,
            "user_id": "u-1",
        },
        "origin_topic": "flywheel.feedback.v1",
        "origin_partition": 1,
        "origin_offset": 77,
    },
}


@pytest.fixture(scope="module")
def codec() -> AvroCodec:
    return AvroCodec()


def test_every_schema_has_a_sample() -> None:
    assert set(SchemaCatalog.load().names) == set(SAMPLES)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_round_trip_every_record(codec: AvroCodec, name: str) -> None:
    data = codec.encode(name, SAMPLES[name])
    decoded = codec.decode(data)
    assert decoded.name == name
    assert decoded.record == SAMPLES[name]


def test_plain_text_and_chat_prompts_both_round_trip(codec: AvroCodec) -> None:
    for prompt in ("just text", [{"role": "user", "content": "hi"}], []):
        record = {**SAMPLES["Run"], "prompt": prompt}
        assert codec.decode(codec.encode("Run", record)).record["prompt"] == prompt


def test_defaults_fill_omitted_optional_fields(codec: AvroCodec) -> None:
    minimal = {
        k: SAMPLES["Run"][k]
        for k in (
            "event_id",
            "occurred_at",
            "received_at",
            "tenant",
            "run_id",
            "prompt",
            "response",
            "model",
        )
    }
    record = codec.decode(codec.encode("Run", minimal)).record
    assert record["feature"] == "default"
    assert record["metadata"] == {}
    assert record["parent_run_id"] is None


def test_wire_format_is_single_object_encoding(codec: AvroCodec) -> None:
    data = codec.encode("Run", SAMPLES["Run"])
    assert data[:2] == MAGIC == b"\xc3\x01"
    canonical = fastavro.schema.to_parsing_canonical_form(codec.catalog.raw("Run"))
    (fingerprint,) = struct.unpack("<Q", data[2:10])
    assert fingerprint == _crc64_avro(canonical.encode())


def test_crc64_matches_the_spec_test_vector() -> None:
    # The Avro spec's fingerprint of the schema "null" (as a signed long: 7195948357588979594).
    assert _crc64_avro(b'"null"') == 7195948357588979594


def test_encode_rejects_a_record_that_does_not_fit(codec: AvroCodec) -> None:
    with pytest.raises(EncodeError, match="Run"):
        codec.encode("Run", {**SAMPLES["Run"], "cost_usd": "free"})
    with pytest.raises(EncodeError):
        codec.encode("Run", {k: v for k, v in SAMPLES["Run"].items() if k != "response"})


def test_encode_unknown_record_name_is_a_schema_error(codec: AvroCodec) -> None:
    with pytest.raises(SchemaError, match="no schema named 'Nope'"):
        codec.encode("Nope", {})


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", DecodeError),
        (b"\xc3", DecodeError),
        (b'{"json": true}', DecodeError),
        (MAGIC + b"\x00" * 8 + b"body", UnknownSchemaError),
    ],
)
def test_decode_rejects_bad_bytes(codec: AvroCodec, data: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        codec.decode(data, topic="t", partition=1, offset=7)


def test_decode_error_carries_kafka_coordinates(codec: AvroCodec) -> None:
    with pytest.raises(UnknownSchemaError) as info:
        codec.decode(MAGIC + b"\x01" * 8, topic="flywheel.runs.v1", partition=2, offset=99)
    err = info.value
    assert (err.topic, err.partition, err.offset) == ("flywheel.runs.v1", 2, 99)
    assert err.reason_code == "unknown_fingerprint"
    assert "flywheel.runs.v1[2]@99" in str(err)


def test_decode_rejects_truncated_and_padded_bodies(codec: AvroCodec) -> None:
    data = codec.encode("Run", SAMPLES["Run"])
    with pytest.raises(DecodeError, match="corrupt Run body"):
        codec.decode(data[:-5])
    with pytest.raises(DecodeError, match="trailing bytes"):
        codec.decode(data + b"\x00\x00")


def test_catalog_load_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(SchemaError, match="not found"):
        SchemaCatalog.load(tmp_path / "missing")
    with pytest.raises(SchemaError, match=r"no \*\.avsc"):
        SchemaCatalog.load(tmp_path)
    (tmp_path / "bad.avsc").write_text("{not json")
    with pytest.raises(SchemaError, match=r"bad\.avsc"):
        SchemaCatalog.load(tmp_path)
    (tmp_path / "bad.avsc").write_text(json.dumps({"type": "record", "name": "X", "fields": 3}))
    with pytest.raises(SchemaError, match="invalid Avro schema"):
        SchemaCatalog.load(tmp_path)


def test_default_schema_dir_is_the_repository_schemas() -> None:
    here = Path(__file__).resolve().parents[2] / "schemas"
    assert default_schema_dir().resolve() == here


def test_every_field_is_documented() -> None:
    def walk(schema: Any, where: str) -> list[str]:
        missing: list[str] = []
        if isinstance(schema, list):
            for s in schema:
                missing += walk(s, where)
        elif isinstance(schema, dict):
            if schema.get("type") == "record":
                if not schema.get("doc"):
                    missing.append(f"{where}: record {schema['name']}")
                for field in schema["fields"]:
                    if not field.get("doc"):
                        missing.append(f"{where}.{field['name']}")
                    missing += walk(field["type"], f"{where}.{field['name']}")
            elif schema.get("type") in ("array", "map"):
                missing += walk(schema.get("items", schema.get("values")), where)
        return missing

    catalog = SchemaCatalog.load()
    undocumented = [m for name in catalog.names for m in walk(dict(catalog.raw(name)), name)]
    assert undocumented == []
