"""The ingest service's one settings object, built once in ``main()`` from the environment.

Variables are prefixed ``FLYWHEEL_INGEST_`` and nest with ``__``, e.g.
``FLYWHEEL_INGEST_KAFKA__BOOTSTRAP_SERVERS=broker:9092``. API keys come as JSON:
``FLYWHEEL_INGEST_API_KEYS='[{"tenant": "acme", "key_sha256": "<hex>"}]'`` — only the SHA-256
of each key is configured, never the key itself (``python -m flywheel_ingest hash-key``).
"""

from __future__ import annotations

from flywheel_common import KafkaSettings, LoggingSettings
from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = [
    "DEFAULT_ACK_TIMEOUT_S",
    "DEFAULT_BURST",
    "DEFAULT_RATE_PER_S",
    "MAX_BATCH_EVENTS",
    "MAX_BODY_BYTES",
    "SIGNATURE_TOLERANCE_S",
    "ApiKey",
    "IngestSettings",
]

MAX_BODY_BYTES = 1 << 20
"""Largest request body accepted (413 above it); bounds a batch in bytes."""
MAX_BATCH_EVENTS = 1000
"""Most events in one ``POST /v1/events`` (413 above it)."""
DEFAULT_RATE_PER_S = 5000.0
"""Sustained events per second per tenant before 429 (token bucket refill)."""
DEFAULT_BURST = 10_000
"""Token bucket size per tenant: the events a tenant may send at once after idling."""
SIGNATURE_TOLERANCE_S = 300.0
"""Replay window: a signed request whose timestamp is further from now is refused."""
DEFAULT_ACK_TIMEOUT_S = 5.0
"""How long a request waits for the broker's acknowledgement before answering 503."""
RETRY_AFTER_S = 1
"""``Retry-After`` sent with 429 and 503."""
HEALTH_PROBE_INTERVAL_S = 1.0
"""How often the publisher asks the broker for metadata to know whether it is reachable."""
LINGER_MS = 5.0
"""Producer batching delay: the floor of every request's latency, and what makes batches."""
QUEUE_MAX_MESSAGES = 100_000
"""Producer queue bound: events waiting for an ack beyond it get 503, not unbounded memory."""
DELIVERY_TIMEOUT_MS = 30_000
"""librdkafka keeps retrying an event this long; longer than the ack wait on purpose (see
``publisher``: an event answered 503 may still land, and the client's retry is deduplicated
downstream by ``event_id``)."""


class ApiKey(BaseModel):
    """One API key of a tenant: its SHA-256, and optionally an HMAC signing secret.

    When ``signing_secret`` is set, every request made with this key must carry a valid
    ``X-Flywheel-Signature`` over its timestamp and body.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    tenant: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    key_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    signing_secret: SecretStr | None = None
    rate_per_s: float | None = Field(default=None, gt=0)
    burst: int | None = Field(default=None, ge=1)


class IngestSettings(BaseSettings):
    """Everything the ingest service can be told. Frozen: built once, passed down."""

    model_config = SettingsConfigDict(
        env_prefix="FLYWHEEL_INGEST_",
        env_nested_delimiter="__",
        frozen=True,
        extra="forbid",
    )

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    api_keys: tuple[ApiKey, ...] = ()
    max_body_bytes: int = Field(default=MAX_BODY_BYTES, ge=1024)
    max_batch_events: int = Field(default=MAX_BATCH_EVENTS, ge=1)
    rate_per_s: float = Field(default=DEFAULT_RATE_PER_S, gt=0)
    burst: int = Field(default=DEFAULT_BURST, ge=1)
    signature_tolerance_s: float = Field(default=SIGNATURE_TOLERANCE_S, gt=0)
    ack_timeout_s: float = Field(default=DEFAULT_ACK_TIMEOUT_S, gt=0)
    retry_after_s: int = Field(default=RETRY_AFTER_S, ge=1)
    health_probe_interval_s: float = Field(default=HEALTH_PROBE_INTERVAL_S, gt=0)
    linger_ms: float = Field(default=LINGER_MS, ge=0)
    queue_max_messages: int = Field(default=QUEUE_MAX_MESSAGES, ge=1)
    delivery_timeout_ms: int = Field(default=DELIVERY_TIMEOUT_MS, ge=1000)
    access_log: bool = False
    kafka: KafkaSettings = KafkaSettings(client_id="flywheel-ingest")
    logging: LoggingSettings = LoggingSettings()
