"""Avro single-object encoding for every Flywheel event.

Wire format (Avro spec, "Single-object encoding"): ``C3 01`` + the writer schema's 8-byte
little-endian CRC-64-AVRO fingerprint + the Avro binary body. A reader looks the writer schema
up by fingerprint and resolves it into its own current schema of the same name, so producers
and consumers can be upgraded in any order as long as every schema change is backward and
forward compatible (``tests/common/test_schema_compat.py`` enforces that against
``schemas/history/``).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form

from flywheel_common.errors import DecodeError, EncodeError, SchemaError, UnknownSchemaError

__all__ = ["MAGIC", "AvroCodec", "Decoded", "SchemaCatalog", "default_schema_dir"]

MAGIC = b"\xc3\x01"
_HEADER_LEN = len(MAGIC) + 8


def default_schema_dir() -> Path:
    """``schemas/`` of the repository, reached through the package (a link in a checkout)."""
    return Path(str(resources.files("flywheel_common").joinpath("schemas")))


@dataclass(frozen=True, slots=True)
class _Schema:
    name: str  # short name, e.g. "Run"
    full_name: str  # e.g. "io.flywheel.events.Run"
    raw: dict[str, Any]
    parsed: Any
    fingerprint: bytes


def _compile(raw: dict[str, Any], origin: str) -> _Schema:
    try:
        # A fresh namespace per file: each file is self-contained, and two files may define
        # the same nested type (ChatMessage).
        parsed = fastavro.parse_schema(raw, named_schemas={})
        canonical = to_parsing_canonical_form(raw)
    except Exception as exc:  # fastavro raises several unrelated types for bad schemas
        raise SchemaError(f"invalid Avro schema in {origin}: {exc}") from exc
    if raw.get("type") != "record":
        raise SchemaError(f"{origin}: top-level schema must be a record")
    full_name = (
        str(raw["name"])
        if "." in str(raw["name"])
        else f"{raw.get('namespace', '')}.{raw['name']}".lstrip(".")
    )
    return _Schema(
        name=full_name.rsplit(".", 1)[-1],
        full_name=full_name,
        raw=raw,
        parsed=parsed,
        fingerprint=bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO")),
    )


class SchemaCatalog:
    """The current schema of each record plus every historical writer schema, by fingerprint."""

    def __init__(
        self, current: Iterable[dict[str, Any]], history: Iterable[dict[str, Any]] = ()
    ) -> None:
        self._current: dict[str, _Schema] = {}
        self._by_fingerprint: dict[bytes, _Schema] = {}
        for raw in current:
            schema = _compile(raw, raw.get("name", "?"))
            if schema.name in self._current:
                raise SchemaError(f"two current schemas named {schema.name}")
            self._current[schema.name] = schema
            self._by_fingerprint[schema.fingerprint] = schema
        for raw in history:
            schema = _compile(raw, f"history of {raw.get('name', '?')}")
            self._by_fingerprint.setdefault(schema.fingerprint, schema)

    @classmethod
    def load(cls, directory: Path | None = None) -> SchemaCatalog:
        """``*.avsc`` in ``directory`` are current; ``history/<Name>/*.avsc`` are past writers."""
        directory = directory or default_schema_dir()
        if not directory.is_dir():
            raise SchemaError(f"schema directory not found: {directory}")
        current = [_read(p) for p in sorted(directory.glob("*.avsc"))]
        if not current:
            raise SchemaError(f"no *.avsc schemas in {directory}")
        history = [_read(p) for p in sorted(directory.glob("history/*/*.avsc"))]
        return cls(current, history)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self._current))

    def current(self, name: str) -> _Schema:
        try:
            return self._current[name]
        except KeyError:
            raise SchemaError(f"no schema named {name!r}; known: {', '.join(self.names)}") from None

    def writer(self, fp: bytes) -> _Schema | None:
        return self._by_fingerprint.get(fp)

    def raw(self, name: str) -> Mapping[str, Any]:
        return self.current(name).raw


def _read(path: Path) -> dict[str, Any]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise SchemaError(f"cannot read schema {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise SchemaError(f"{path}: a schema file must hold one JSON object")
    return raw


@dataclass(frozen=True, slots=True)
class Decoded:
    """A decoded event: the record name (current schema) and its fields."""

    name: str
    record: dict[str, Any]


class AvroCodec:
    """Encodes and decodes events in single-object encoding against a ``SchemaCatalog``."""

    def __init__(self, catalog: SchemaCatalog | None = None) -> None:
        self.catalog = catalog or SchemaCatalog.load()

    def encode(self, name: str, record: Mapping[str, Any]) -> bytes:
        schema = self.catalog.current(name)
        buf = io.BytesIO()
        buf.write(MAGIC)
        buf.write(schema.fingerprint)
        try:
            fastavro.schemaless_writer(buf, schema.parsed, record)
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
            raise EncodeError(name, str(exc)) from exc
        return buf.getvalue()

    def decode(
        self,
        data: bytes,
        *,
        topic: str | None = None,
        partition: int | None = None,
        offset: int | None = None,
    ) -> Decoded:
        """Decode into the current schema of the writer's record name.

        Raises ``UnknownSchemaError`` for an unknown fingerprint and ``DecodeError`` for
        anything else that is not a valid single-object-encoded event.
        """

        def fail(cls: type[DecodeError], reason: str) -> DecodeError:
            return cls(reason, topic=topic, partition=partition, offset=offset)

        if len(data) < _HEADER_LEN or data[:2] != MAGIC:
            raise fail(DecodeError, "not Avro single-object encoding (bad magic)")
        writer = self.catalog.writer(bytes(data[2:_HEADER_LEN]))
        if writer is None:
            fp = bytes(data[2:_HEADER_LEN]).hex()
            raise fail(UnknownSchemaError, f"unknown writer schema fingerprint {fp}")
        reader = self.catalog.current(writer.name) if writer.name in self.catalog.names else None
        if reader is None:
            raise fail(UnknownSchemaError, f"no current schema for record {writer.full_name}")
        buf = io.BytesIO(data)
        buf.seek(_HEADER_LEN)
        try:
            if reader.fingerprint == writer.fingerprint:
                record = fastavro.schemaless_reader(buf, writer.parsed, None)
            else:
                record = fastavro.schemaless_reader(buf, writer.parsed, reader.parsed)
        except Exception as exc:  # fastavro raises EOFError, ValueError, UnicodeDecodeError, ...
            raise fail(DecodeError, f"corrupt {writer.name} body: {exc!r}") from exc
        if buf.tell() != len(data):
            raise fail(
                DecodeError, f"{len(data) - buf.tell()} trailing bytes after {writer.name} body"
            )
        if not isinstance(record, dict):
            raise fail(DecodeError, f"{writer.name} body is not a record")
        return Decoded(reader.name, record)
