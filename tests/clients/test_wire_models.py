"""The SDK's request models cannot drift from the server's: its wire types are checked against
the ingest's OpenAPI document and the Avro schemas, and every event a call builds is validated
by the server's own models."""

from __future__ import annotations

import typing
from dataclasses import fields
from datetime import UTC, datetime
from importlib.metadata import version
from typing import Any, get_args, get_origin

import flywheel_client
import pytest
from flywheel_client import ClientConfig, ClientOptions
from flywheel_client._calls import Calls
from flywheel_client._config import OPTION_NAMES
from flywheel_client._events import (
    EXPLICIT_KINDS,
    IMPLICIT_KINDS,
    ChatMessage,
    EditEvent,
    EditOptions,
    FeedbackEvent,
    FeedbackKind,
    FeedbackOptions,
    RunEvent,
    RunOptions,
    TokenUsage,
)
from flywheel_client._wire import batch_body, encode_event
from flywheel_common import SchemaCatalog
from flywheel_ingest.models import EventBatch
from flywheel_ingest.openapi import build_openapi
from flywheel_ingest.settings import IngestSettings

WIRE = {"Run": RunEvent, "Feedback": FeedbackEvent, "Edit": EditEvent}
OPTIONS = {"Run": RunOptions, "Feedback": FeedbackOptions, "Edit": EditOptions}
CLIENT_REQUIRED = {"event_id", "type"}  # optional for the server; always sent (batch discriminator)
CALL_ARGUMENTS = {  # set by a call's positional/named arguments rather than its options
    "Run": {"type", "event_id", "prompt", "response", "model"},
    "Feedback": {"type", "event_id", "run_id", "kind", "value", "comment", "correction"},
    "Edit": {"type", "event_id", "run_id", "prompt", "original", "final"},
}


@pytest.fixture(scope="module")
def openapi() -> dict[str, Any]:
    return build_openapi(IngestSettings(), version=version("flywheel-ingest"))


def _json_types(annotation: Any) -> set[str]:
    """The JSON schema types a Python annotation of the wire types allows."""
    origin = get_origin(annotation)
    if origin in (typing.Required, typing.NotRequired):
        return _json_types(get_args(annotation)[0])
    if origin in (typing.Union, __import__("types").UnionType):
        return set().union(*(_json_types(a) for a in get_args(annotation)))
    if origin is typing.Literal:
        return {"string"}
    if origin is list:
        return {"array"}
    if origin is dict or annotation in (TokenUsage, ChatMessage):
        return {"object"}
    return {str: {"string"}, int: {"integer"}, float: {"number"}, type(None): {"null"}}[annotation]


def _schema_types(schema: dict[str, Any], defs: dict[str, Any]) -> set[str]:
    if "$ref" in schema:
        schema = defs[schema["$ref"].rsplit("/", 1)[-1]]
    if "anyOf" in schema:
        return set().union(*(_schema_types(s, defs) for s in schema["anyOf"]))
    if "const" in schema or "enum" in schema:
        return {"string"}
    if "properties" in schema:
        return {"object"}
    kind = schema["type"]
    return set(kind) if isinstance(kind, list) else {kind}


@pytest.mark.parametrize("record", sorted(WIRE))
def test_wire_type_matches_the_openapi_document(openapi: dict[str, Any], record: str) -> None:
    defs = openapi["components"]["schemas"]
    server = defs[record]
    wire = WIRE[record]
    hints = typing.get_type_hints(wire, include_extras=True)
    assert set(hints) == set(server["properties"]), record
    assert set(server.get("required", [])) | CLIENT_REQUIRED == set(wire.__required_keys__)
    for name, schema in server["properties"].items():
        allowed = _schema_types(schema, defs) - {"null"}
        # An epoch-ms int is one of the server's timestamp forms, and a float field takes ints.
        mine = _json_types(hints[name])
        assert mine <= allowed | ({"integer"} if "number" in allowed else set()), (name, mine)


@pytest.mark.parametrize("record", sorted(WIRE))
def test_call_options_are_wire_fields(record: str) -> None:
    options = set(OPTIONS[record].__optional_keys__) - {"occurred_at", "run_id"}
    wire = set(WIRE[record].__required_keys__ | WIRE[record].__optional_keys__)
    assert options <= wire
    # Every wire field is reachable from some call.
    assert wire - options - {"occurred_at", "metadata", "run_id"} <= CALL_ARGUMENTS[record]


def test_feedback_kinds_are_the_avro_symbols() -> None:
    kind = next(f for f in SchemaCatalog.load().raw("Feedback")["fields"] if f["name"] == "kind")
    assert set(get_args(FeedbackKind)) == set(kind["type"]["symbols"]) - {"unknown"}
    # The schema's own doc draws the line between explicit and implicit.
    assert "Explicit: thumbs, rating, helpful, comment, correction." in kind["type"]["doc"]
    assert {"thumbs", "rating", "helpful", "comment", "correction"} == EXPLICIT_KINDS
    assert set(get_args(FeedbackKind)) == IMPLICIT_KINDS | EXPLICIT_KINDS


def _every_call() -> list[dict[str, Any]]:
    calls = Calls(remember_runs=8)
    meta = {"metadata": {"k": "v"}, "occurred_at": datetime(2026, 1, 2, tzinfo=UTC)}
    run_id, run = calls.run(
        prompt=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "2+2?"}],
        response="4",
        model="m",
        options={
            "run_id": "r1",
            "model_version": "v1",
            "feature": "math",
            "system_prompt_hash": "h",
            "tokens": {"prompt": 3, "completion": 1},
            "cost_usd": 0.001,
            "latency_ms": 12,
            "session_id": "s",
            "thread_id": "t",
            "user_id": "u",
            "trace_id": "tr",
            "parent_run_id": "r0",
            **meta,  # type: ignore[typeddict-item]
        },
    )
    inline: FeedbackOptions = {
        "user_id": "u",
        "session_id": "s",
        "prompt": "2+2?",
        "response": "4",
        "model": "m",
        "feature": "math",
        **meta,  # type: ignore[typeddict-item]
    }
    events: list[Any] = [
        run,
        calls.thumbs(run_id, "down", comment="no", correction="four", options=inline),
        calls.thumbs(run_id, "up", comment=None, correction=None, options={}),
        calls.rate(run_id, 5, comment="great", correction=None, options=inline),
        calls.edit(
            run_id,
            original="4",
            final="Four.",
            prompt=None,
            options={
                "surface": "inline",
                "time_to_edit_ms": 900,
                "user_id": "u",
                "model": "m",
                "model_version": "v1",
                "feature": "math",
                **meta,  # type: ignore[typeddict-item]
            },
        ),
        calls.regenerated(run_id, "r2", options={}),
    ]
    for kind in sorted(IMPLICIT_KINDS):
        events.append(calls.signal(run_id, kind, 1500.0 if kind == "dwell" else None, options={}))  # type: ignore[arg-type]
    return events


def test_every_call_builds_what_the_server_accepts() -> None:
    events = _every_call()
    batch = EventBatch.model_validate_json(batch_body([encode_event(e) for e in events]))
    assert [str(e.event_id) for e in batch.events] == [e["event_id"] for e in events]
    assert {e.type for e in batch.events} == {"run", "feedback", "edit"}
    assert len({e["event_id"] for e in events}) == len(events)


def test_options_name_the_config_fields() -> None:
    assert set(ClientOptions.__optional_keys__) == OPTION_NAMES
    assert {f.name for f in fields(ClientConfig)} - {"url", "api_key"} == OPTION_NAMES


def test_all_is_the_public_surface() -> None:
    public = {name for name in dir(flywheel_client) if not name.startswith("_")}
    assert set(flywheel_client.__all__) == public
