"""The ingest service's one settings object, built once in ``main()`` from the environment.

Variables are prefixed ``FLYWHEEL_INGEST_`` and nest with ``__``, e.g.
``FLYWHEEL_INGEST_KAFKA__BOOTSTRAP_SERVERS=broker:9092``. API keys come as JSON:
``FLYWHEEL_INGEST_API_KEYS='[{"tenant": "acme", "key_sha256": "<hex>"}]'`` — only the SHA-256
of each key is configured, never the key itself (``python -m flywheel_ingest hash-key``).
"""

from __future__ import annotations

from typing import Annotated, Literal

from flywheel_common import KafkaSettings, LoggingSettings
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = [
    "ALL_SCOPES",
    "DEFAULT_ACK_TIMEOUT_S",
    "DEFAULT_BURST",
    "DEFAULT_RATE_PER_S",
    "MAX_BATCH_EVENTS",
    "MAX_BODY_BYTES",
    "MAX_MESSAGE_BYTES",
    "SIGNATURE_TOLERANCE_S",
    "ApiKey",
    "IngestSettings",
    "KeyKind",
    "Scope",
]

MAX_MESSAGE_BYTES = 1_000_000
"""Largest Kafka message the producer sends (librdkafka's ``message.max.bytes`` default); an
event whose encoding is larger is refused with 413. The broker's topic limit, read at start,
can only lower it."""
MAX_BODY_BYTES = MAX_MESSAGE_BYTES
"""Largest request body accepted (413 above it), on the wire and after gzip decompression.
Equal to the message limit: a JSON event is larger than its Avro encoding by more than the few
bytes the server adds, so a single event that fits the body fits a message."""
MAX_BATCH_EVENTS = 1000
"""Most events in one ``POST /v1/events`` (413 above it)."""
DEFAULT_RATE_PER_S = 5000.0
"""Sustained events per second per API key before 429 (token bucket refill)."""
DEFAULT_BURST = 10_000
"""Token bucket size per key: the events a key may send at once after idling; a batch larger
than this can never pass and is refused with 413."""
ADDRESS_RATE_PER_S = 10.0
"""Requests per second per client address that carry no valid key (401s) before 429."""
ADDRESS_BURST = 100
SIGNATURE_TOLERANCE_S = 300.0
"""Replay window: a signed request whose timestamp is further from now is refused."""
DEFAULT_ACK_TIMEOUT_S = 5.0
"""How long a request waits for the broker's acknowledgement before answering 503."""
RETRY_AFTER_S = 1
"""``Retry-After`` sent with 503."""
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
HEADER_TIMEOUT_S = 10.0
"""A connection must deliver a request's complete headers within this long of opening (or of
its first byte after a response); a slow-loris client is disconnected."""
BODY_TIMEOUT_S = 30.0
"""The whole body must arrive within this long of the headers (1 MB at 33 KB/s); else 408."""
KEEP_ALIVE_TIMEOUT_S = 5.0
"""An idle keep-alive connection is closed after this long."""
MAX_HEADER_BYTES = 16 * 1024
"""Request line plus headers; above it, 431 and the connection is closed."""
MAX_HEADERS = 100
MAX_CONCURRENCY = 1000
"""Open connections (and requests in flight) beyond which uvicorn answers 503."""
REJECTION_LOG_INTERVAL_S = 10.0
"""Refused requests are logged as one aggregate line per interval, not one line each."""

Scope = Literal["runs", "feedback", "edits"]
ALL_SCOPES: tuple[Scope, ...] = ("runs", "feedback", "edits")
KeyKind = Literal["server", "browser"]
# An exact origin as browsers send it: scheme, host, optional port; no path, no slash.
Origin = Annotated[
    str, Field(pattern=r"^https?://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?$")
]


class ApiKey(BaseModel):
    """One API key of a tenant: its SHA-256, what it may send, and from where.

    ``server`` keys (the default) may carry a ``signing_secret``: every request made with the
    key must then carry a valid ``X-Flywheel-Signature``. ``browser`` keys live in web pages,
    so they are public: they cannot sign, they need ``allowed_origins`` (checked against the
    ``Origin`` header and answered in CORS), and they are usually scoped to ``feedback``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    tenant: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    key_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    signing_secret: SecretStr | None = None
    rate_per_s: float | None = Field(default=None, gt=0)
    burst: int | None = Field(default=None, ge=1)
    scopes: frozenset[Scope] = Field(default=frozenset(ALL_SCOPES), min_length=1)
    kind: KeyKind = "server"
    allowed_origins: tuple[Origin, ...] = ()

    @model_validator(mode="after")
    def _browser_rules(self) -> ApiKey:
        # Messages name fields only: a config error must never echo a secret.
        if self.kind == "browser":
            if self.signing_secret is not None:
                raise ValueError("a browser key cannot have a signing_secret (it is public)")
            if not self.allowed_origins:
                raise ValueError("a browser key needs allowed_origins")
        elif self.allowed_origins:
            raise ValueError("allowed_origins is for browser keys only")
        return self


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
    max_message_bytes: int = Field(default=MAX_MESSAGE_BYTES, ge=1024, le=1_000_000_000)
    max_batch_events: int = Field(default=MAX_BATCH_EVENTS, ge=1)
    rate_per_s: float = Field(default=DEFAULT_RATE_PER_S, gt=0)
    burst: int = Field(default=DEFAULT_BURST, ge=1)
    address_rate_per_s: float = Field(default=ADDRESS_RATE_PER_S, gt=0)
    address_burst: int = Field(default=ADDRESS_BURST, ge=1)
    signature_tolerance_s: float = Field(default=SIGNATURE_TOLERANCE_S, gt=0)
    ack_timeout_s: float = Field(default=DEFAULT_ACK_TIMEOUT_S, gt=0)
    retry_after_s: int = Field(default=RETRY_AFTER_S, ge=1)
    health_probe_interval_s: float = Field(default=HEALTH_PROBE_INTERVAL_S, gt=0)
    linger_ms: float = Field(default=LINGER_MS, ge=0)
    queue_max_messages: int = Field(default=QUEUE_MAX_MESSAGES, ge=1)
    delivery_timeout_ms: int = Field(default=DELIVERY_TIMEOUT_MS, ge=1000)
    header_timeout_s: float = Field(default=HEADER_TIMEOUT_S, gt=0)
    body_timeout_s: float = Field(default=BODY_TIMEOUT_S, gt=0)
    keep_alive_timeout_s: float = Field(default=KEEP_ALIVE_TIMEOUT_S, gt=0)
    max_header_bytes: int = Field(default=MAX_HEADER_BYTES, ge=1024)
    max_headers: int = Field(default=MAX_HEADERS, ge=8)
    max_concurrency: int = Field(default=MAX_CONCURRENCY, ge=1)
    rejection_log_interval_s: float = Field(default=REJECTION_LOG_INTERVAL_S, gt=0)
    access_log: bool = False
    kafka: KafkaSettings = KafkaSettings(client_id="flywheel-ingest")
    logging: LoggingSettings = LoggingSettings()
