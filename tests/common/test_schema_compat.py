"""Schema evolution: every released version in ``schemas/history/`` must stay readable by the
current schema (backward) and must be able to read data written with it (forward).

Releasing a change means copying the new schema to ``schemas/history/<Name>/vN.avsc``; the test
``test_current_schema_is_released`` fails until that is done, and the pairwise checks then fail
if the change was incompatible. The mutation tests prove the check catches incompatible changes.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import avro.schema
import fastavro
import pytest
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType
from fastavro.utils import generate_many
from flywheel_common import AvroCodec, SchemaCatalog, default_schema_dir

SCHEMAS = default_schema_dir()
CURRENT = {json.loads(p.read_text())["name"]: p for p in sorted(SCHEMAS.glob("*.avsc"))}
HISTORY = sorted(SCHEMAS.glob("history/*/*.avsc"))


def incompatibilities(reader: dict[str, Any], writer: dict[str, Any]) -> list[str]:
    """Why data written with ``writer`` cannot be read with ``reader`` (empty: it can)."""
    result = ReaderWriterCompatibilityChecker().get_compatibility(
        avro.schema.parse(json.dumps(reader)), avro.schema.parse(json.dumps(writer))
    )
    if result.compatibility is SchemaCompatibilityType.compatible:
        return []
    return sorted(result.messages) or ["incompatible"]


def both_ways(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return [f"backward: {m}" for m in incompatibilities(new, old)] + [
        f"forward: {m}" for m in incompatibilities(old, new)
    ]


def _load(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text()))


def test_every_schema_has_history() -> None:
    assert {p.parent.name for p in HISTORY} == set(CURRENT)


@pytest.mark.parametrize("name", sorted(CURRENT))
def test_current_schema_is_released(name: str) -> None:
    current = _load(CURRENT[name])
    released = [_load(p) for p in SCHEMAS.glob(f"history/{name}/*.avsc")]
    assert current in released, (
        f"schemas/{CURRENT[name].name} changed: copy it to schemas/history/{name}/vN.avsc"
    )


@pytest.mark.parametrize("path", HISTORY, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_history_is_compatible_both_ways(path: Path) -> None:
    old = _load(path)
    assert both_ways(old, _load(CURRENT[path.parent.name])) == []


@pytest.mark.parametrize("path", HISTORY, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_old_writer_new_reader_and_back(path: Path) -> None:
    """Real bytes: data of the old schema decodes with today's codec, and data of today's
    schema decodes with a reader that only has the old schema as its current one."""
    old = _load(path)
    name = path.parent.name
    today = AvroCodec()
    old_only = AvroCodec(SchemaCatalog([old], history=[_load(CURRENT[name])]))
    for record in generate_many(fastavro.parse_schema(copy.deepcopy(old)), 20):
        assert today.decode(old_only.encode(name, record)).name == name
    for record in generate_many(fastavro.parse_schema(_load(CURRENT[name])), 20):
        decoded = old_only.decode(today.encode(name, record))
        assert set(decoded.record) == {f["name"] for f in old["fields"]}


Mutation = Callable[[dict[str, Any]], None]


def _add_required_field(s: dict[str, Any]) -> None:
    s["fields"].append({"name": "new_required", "type": "string", "doc": "x"})


def _change_field_type(s: dict[str, Any]) -> None:
    field = next(f for f in s["fields"] if f["type"] == "string" and "default" not in f)
    field["type"] = "int"


def _drop_field_without_default(s: dict[str, Any]) -> None:
    field = next(f for f in s["fields"] if "default" not in f and f["name"] != "event_id")
    s["fields"].remove(field)


def _rename_record(s: dict[str, Any]) -> None:
    s["name"] = s["name"] + "V2"


def _add_optional_field(s: dict[str, Any]) -> None:
    s["fields"].append(
        {"name": "new_optional", "type": ["null", "string"], "default": None, "doc": "x"}
    )


def _drop_field_with_default(s: dict[str, Any]) -> None:
    field = next(f for f in s["fields"] if "default" in f)
    s["fields"].remove(field)


@pytest.mark.parametrize(
    "mutate",
    [_add_required_field, _change_field_type, _drop_field_without_default, _rename_record],
)
@pytest.mark.parametrize("name", ["Run", "Feedback", "Edit"])
def test_incompatible_change_is_caught(name: str, mutate: Mutation) -> None:
    old = _load(CURRENT[name])
    new = copy.deepcopy(old)
    mutate(new)
    assert both_ways(old, new) != []


@pytest.mark.parametrize("mutate", [_add_optional_field, _drop_field_with_default])
@pytest.mark.parametrize("name", sorted(CURRENT))
def test_compatible_change_passes(name: str, mutate: Mutation) -> None:
    old = _load(CURRENT[name])
    new = copy.deepcopy(old)
    mutate(new)
    assert both_ways(old, new) == []


def test_new_feedback_kind_reads_as_unknown_on_old_readers() -> None:
    """Enum symbols may be added: an old reader maps a new symbol to its enum default."""
    old = _load(CURRENT["Feedback"])
    new = copy.deepcopy(old)
    kind = next(f for f in new["fields"] if f["name"] == "kind")
    kind["type"]["symbols"].append("share")
    assert both_ways(old, new) == []
    writer = AvroCodec(SchemaCatalog([new]))
    reader = AvroCodec(SchemaCatalog([old], history=[new]))
    record = next(iter(generate_many(fastavro.parse_schema(copy.deepcopy(new)), 1)))
    record["kind"] = "share"
    assert reader.decode(writer.encode("Feedback", record)).record["kind"] == "unknown"
