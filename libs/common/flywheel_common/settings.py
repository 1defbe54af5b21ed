"""Settings shared by every service. Each service builds one frozen settings object in main()
from these parts (pydantic-settings, ``FLYWHEEL_<SVC>_`` prefix, ``__`` for nesting)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from flywheel_common.topics import Topics

__all__ = ["KafkaSettings", "LakeSettings", "LoggingSettings", "Topics"]

DEFAULT_PARTITIONS = 3


class KafkaSettings(BaseModel):
    """How to reach the cluster. Secrets stay masked unless asked for."""

    model_config = ConfigDict(frozen=True)

    bootstrap_servers: str = "127.0.0.1:9092"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    client_id: str = "flywheel"
    partitions: int = Field(default=DEFAULT_PARTITIONS, ge=1)
    replication_factor: int = Field(default=1, ge=1)
    topics: Topics = Topics()
    # Extra librdkafka properties, e.g. {"ssl.ca.location": "/etc/ca.pem"}.
    extra: dict[str, str] = Field(default_factory=dict)


class LakeSettings(BaseModel):
    """Where the Delta tables live: a local path or any object-store URI deltalake supports."""

    model_config = ConfigDict(frozen=True)

    uri: str = "./lake"
    storage_options: dict[str, SecretStr] = Field(default_factory=dict)

    def table_uri(self, table: str) -> str:
        return f"{self.uri.rstrip('/')}/{table}"

    def storage_options_plain(self) -> dict[str, str]:
        return {k: v.get_secret_value() for k, v in self.storage_options.items()}


class LoggingSettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["json", "console"] = "json"
