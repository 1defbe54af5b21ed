"""Settings shared by every service. Each service builds one frozen settings object in main()
from these parts (pydantic-settings, ``FLYWHEEL_<SVC>_`` prefix, ``__`` for nesting)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator

from flywheel_common.topics import Topics

__all__ = ["KafkaSettings", "LakeSettings", "LoggingSettings", "Topics", "s3_commit_problem"]

DEFAULT_PARTITIONS = 3
# Lake URIs deltalake writes through its S3 object store.
_S3_SCHEMES = ("s3://", "s3a://")


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
    """Where the Delta tables live: a local path or any object-store URI deltalake supports.

    Several processes commit to the same tables (curator replicas, the trainer, the CLI). On a
    file system and on GCS/Azure a commit is an atomic create-if-absent; on S3 it is one only
    with conditional puts, so an ``s3://`` lake without them is refused (docs/deploy.md).
    """

    model_config = ConfigDict(frozen=True)

    # Declared before ``uri`` so that the check below sees them, and validated on ``uri`` so
    # that an error echoes the URI, never the options (they carry credentials).
    storage_options: dict[str, SecretStr] = Field(default_factory=dict)
    uri: str = "./lake"

    @field_validator("uri")
    @classmethod
    def _commits_are_safe_under_concurrency(cls, uri: str, info: ValidationInfo) -> str:
        options = info.data.get("storage_options") or {}
        problem = s3_commit_problem(uri, {k: v.get_secret_value() for k, v in options.items()})
        if problem is not None:
            raise ValueError(problem)
        return uri

    def table_uri(self, table: str) -> str:
        return f"{self.uri.rstrip('/')}/{table}"

    def storage_options_plain(self) -> dict[str, str]:
        return {k: v.get_secret_value() for k, v in self.storage_options.items()}


def s3_commit_problem(uri: str, options: dict[str, str]) -> str | None:
    """Why concurrent commits to the lake at ``uri`` could overwrite each other, or None.

    deltalake 1.x commits a version by creating its log file only if absent; on S3 that is a
    conditional put (``If-None-Match``), configured with ``aws_conditional_put``. Its DynamoDB
    locking provider (``AWS_S3_LOCKING_PROVIDER``) is gone since deltalake 1.0: naming it
    protects nothing. Option names are case-insensitive, as deltalake reads them.
    """
    if not uri.lower().startswith(_S3_SCHEMES):
        return None
    lowered = {k.lower(): v.strip().lower() for k, v in options.items()}
    mode = lowered.get("aws_conditional_put", lowered.get("conditional_put"))
    if mode == "etag":
        return None
    fix = (
        'set the lake storage option "aws_conditional_put": "etag" '
        "(FLYWHEEL_<SERVICE>_LAKE__STORAGE_OPTIONS), on a store that honours If-None-Match "
        "(AWS S3, MinIO, Cloudflare R2 do)"
    )
    if mode is not None:
        return f"lake {uri}: aws_conditional_put={mode!r} lets concurrent commits clash; {fix}"
    provider = lowered.get("aws_s3_locking_provider")
    if provider is not None:
        return (
            f"lake {uri}: AWS_S3_LOCKING_PROVIDER={provider!r} has no effect since deltalake "
            f"1.0 (its DynamoDB log store was removed), so concurrent commits are not "
            f"protected; {fix}"
        )
    return (
        f"lake {uri}: an s3 lake without conditional puts can lose commits when several "
        f"writers commit at once; {fix}"
    )


class LoggingSettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["json", "console"] = "json"
