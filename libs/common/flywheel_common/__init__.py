"""Flywheel's shared contracts: the Avro codec, Kafka client factories, settings, errors and
structured logging. Small and explicit; services import from here, never from each other."""

from flywheel_common.codec import MAGIC, AvroCodec, Decoded, SchemaCatalog, default_schema_dir
from flywheel_common.errors import (
    BrokerUnavailableError,
    ConfigError,
    DecodeError,
    EncodeError,
    FlywheelError,
    LakeError,
    SchemaError,
    SinkCommitError,
    UnknownSchemaError,
)
from flywheel_common.logs import JsonFormatter, configure_logging
from flywheel_common.settings import KafkaSettings, LakeSettings, LoggingSettings
from flywheel_common.topics import EventType, Topics

__all__ = [
    "MAGIC",
    "AvroCodec",
    "BrokerUnavailableError",
    "ConfigError",
    "DecodeError",
    "Decoded",
    "EncodeError",
    "EventType",
    "FlywheelError",
    "JsonFormatter",
    "KafkaSettings",
    "LakeError",
    "LakeSettings",
    "LoggingSettings",
    "SchemaCatalog",
    "SchemaError",
    "SinkCommitError",
    "Topics",
    "UnknownSchemaError",
    "configure_logging",
    "default_schema_dir",
]
