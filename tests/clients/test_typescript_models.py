"""The TypeScript SDK's wire types cannot drift either: its interfaces (read from
``clients/typescript/src/events.ts``) are checked field by field against the ingest's OpenAPI
document, and its kind lists against the Avro schema and the Python SDK."""

from __future__ import annotations

import json
import re
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from flywheel_client._events import IMPLICIT_KINDS
from flywheel_common import SchemaCatalog
from flywheel_ingest.openapi import build_openapi
from flywheel_ingest.settings import IngestSettings

SOURCE = Path(__file__).resolve().parents[2] / "clients/typescript/src/events.ts"
TS_TYPES = {  # TypeScript type -> the JSON schema types it may produce
    "string": {"string"},
    "number": {"number", "integer"},
    "WirePrompt": {"string", "array"},
    "TokenUsage": {"object"},
    "Record<string, string>": {"object"},
    "FeedbackKind": {"string"},
}
CLIENT_REQUIRED = {"event_id", "type"}  # optional for the server; the SDK always sends them


def _interface(source: str, name: str) -> dict[str, tuple[str, bool]]:
    """field -> (type, required) of ``interface name`` and what it extends."""
    match = re.search(
        rf"interface {name}(?: extends (\w+))? \{{\n(.*?)\n\}}", source, flags=re.DOTALL
    )
    assert match, f"interface {name} not found in {SOURCE.name}"
    fields = _interface(source, match[1]) if match[1] else {}
    for line in match[2].splitlines():
        field = re.match(r"\s+(\w+)(\??): (.+);$", line)
        if field:
            fields[field[1]] = (field[3], not field[2])
    return fields


def _const_list(source: str, name: str) -> list[str]:
    match = re.search(rf"export const {name} = \[(.*?)\] as const;", source, flags=re.DOTALL)
    assert match, name
    return [json.loads(item) for item in re.findall(r'"\w+"', match[1])]


def _schema_types(schema: dict[str, Any], defs: dict[str, Any]) -> set[str]:
    if "$ref" in schema:
        schema = defs[schema["$ref"].rsplit("/", 1)[-1]]
    if "anyOf" in schema:
        return set().union(*(_schema_types(s, defs) for s in schema["anyOf"]))
    if "const" in schema or "enum" in schema:
        return {"string"}
    if "properties" in schema:
        return {"object"}
    return {schema["type"]}


@pytest.mark.parametrize("record", ["Run", "Feedback", "Edit"])
def test_typescript_wire_types_match_the_openapi_document(record: str) -> None:
    source = SOURCE.read_text()
    openapi = build_openapi(IngestSettings(), version=version("flywheel-ingest"))
    defs = openapi["components"]["schemas"]
    server = defs[record]
    mine = _interface(source, f"{record}Event")
    assert set(mine) == set(server["properties"])
    required = {name for name, (_, req) in mine.items() if req}
    assert required == set(server.get("required", [])) | CLIENT_REQUIRED
    for name, (ts_type, _) in mine.items():
        produced = TS_TYPES.get(ts_type, {"string"} if ts_type.startswith('"') else None)
        assert produced is not None, f"{record}.{name}: no mapping for {ts_type}; extend the test"
        allowed = _schema_types(server["properties"][name], defs) - {"null"}
        assert produced & allowed and produced - {"integer"} <= allowed | {"number"}, name


def test_typescript_kinds_are_the_avro_symbols() -> None:
    source = SOURCE.read_text()
    kind = next(f for f in SchemaCatalog.load().raw("Feedback")["fields"] if f["name"] == "kind")
    assert set(_const_list(source, "FEEDBACK_KINDS")) == set(kind["type"]["symbols"]) - {"unknown"}
    assert set(_const_list(source, "IMPLICIT_KINDS")) == IMPLICIT_KINDS
