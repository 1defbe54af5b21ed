"""Flywheel's exception tree.

    FlywheelError
    ├── ConfigError              misuse or bad configuration; fix the config, do not retry
    ├── SchemaError              a schema file is missing, invalid or incompatible
    ├── EncodeError              a record does not fit its schema
    ├── DecodeError              bytes could not be turned into a record (goes to the DLQ)
    │   └── UnknownSchemaError   the writer fingerprint is not known to this reader
    ├── BrokerUnavailableError   Kafka could not be reached or did not acknowledge
    └── LakeError                a Delta table operation failed
        └── SinkCommitError      a commit to a gold table did not happen

Runtime errors carry the context needed to act on them (topic, partition, offset) and wrap
their cause with ``raise ... from exc``.
"""

from __future__ import annotations

__all__ = [
    "BrokerUnavailableError",
    "ConfigError",
    "DecodeError",
    "EncodeError",
    "FlywheelError",
    "LakeError",
    "SchemaError",
    "SinkCommitError",
    "UnknownSchemaError",
]


class FlywheelError(Exception):
    """Root of every error Flywheel raises on purpose."""


class ConfigError(FlywheelError):
    """The configuration or the call is wrong; retrying will not help."""


class SchemaError(FlywheelError):
    """A schema is missing, malformed or incompatible with its history."""


class EncodeError(FlywheelError):
    """A record could not be encoded with its schema."""

    def __init__(self, schema: str, reason: str) -> None:
        super().__init__(f"cannot encode {schema}: {reason}")
        self.schema = schema
        self.reason = reason


class DecodeError(FlywheelError):
    """Bytes could not be decoded into a record.

    ``topic``, ``partition`` and ``offset`` are set when the bytes came from Kafka, so the
    message can be dead-lettered with its coordinates.
    """

    reason_code = "undecodable"

    def __init__(
        self,
        reason: str,
        *,
        topic: str | None = None,
        partition: int | None = None,
        offset: int | None = None,
    ) -> None:
        where = f" at {topic}[{partition}]@{offset}" if topic is not None else ""
        super().__init__(f"{reason}{where}")
        self.reason = reason
        self.topic = topic
        self.partition = partition
        self.offset = offset


class UnknownSchemaError(DecodeError):
    """The message names a writer schema (by fingerprint) that this reader does not know."""

    reason_code = "unknown_fingerprint"


class BrokerUnavailableError(FlywheelError):
    """Kafka is unreachable, or did not acknowledge in time."""


class LakeError(FlywheelError):
    """A Delta Lake operation failed."""


class SinkCommitError(LakeError):
    """A batch could not be committed to a gold table; its rows are not in the table."""

    def __init__(self, table: str, reason: str) -> None:
        super().__init__(f"commit to {table} failed: {reason}")
        self.table = table
        self.reason = reason
