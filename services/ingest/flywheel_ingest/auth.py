"""Who is calling, and may they: API keys, HMAC body signatures, per-tenant rate limits.

API keys are high-entropy random tokens, so they are stored as their SHA-256 (a slow password
hash would buy nothing against guessing and cost every request); a presented key is hashed and
looked up. The tenant always comes from the key, never from the body.

Signing (per key, on when the key has a ``signing_secret``): the client sends
``X-Flywheel-Timestamp: <unix seconds>`` and
``X-Flywheel-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>." + body)>``. A timestamp
further than the tolerance from the server clock is refused, which bounds replays to that
window; a replay inside it re-sends the same ``event_id``s, which downstream deduplicates.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from flywheel_ingest.errors import RateLimited, Unauthorized
from flywheel_ingest.settings import ApiKey

__all__ = [
    "SIGNATURE_HEADER",
    "SIGNATURE_SCHEME",
    "TIMESTAMP_HEADER",
    "Authenticator",
    "RateLimiter",
    "Tenant",
    "generate_api_key",
    "hash_api_key",
    "sign",
]

SIGNATURE_HEADER = "x-flywheel-signature"
TIMESTAMP_HEADER = "x-flywheel-timestamp"
SIGNATURE_SCHEME = "sha256="
_API_KEY_HEADER = "x-api-key"
_BEARER = "bearer "
_API_KEY_BYTES = 32


def hash_api_key(key: str) -> str:
    """The form a key is configured in: hex SHA-256 of its UTF-8 bytes."""
    return hashlib.sha256(key.encode()).hexdigest()


def generate_api_key() -> str:
    """A new random key (256 bits, url-safe)."""
    return "fw_" + secrets.token_urlsafe(_API_KEY_BYTES)


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The ``X-Flywheel-Signature`` value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256)
    return SIGNATURE_SCHEME + mac.hexdigest()


@dataclass(frozen=True, slots=True)
class Tenant:
    """The caller, as established from its API key."""

    name: str
    signing_secret: bytes | None = field(default=None, repr=False)
    rate_per_s: float = 0.0
    burst: int = 0


class Authenticator:
    """Maps a presented API key to its ``Tenant`` and checks body signatures."""

    def __init__(
        self,
        keys: Iterable[ApiKey],
        *,
        rate_per_s: float,
        burst: int,
        tolerance_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._by_hash: dict[str, Tenant] = {}
        for key in keys:
            secret = key.signing_secret.get_secret_value().encode() if key.signing_secret else None
            self._by_hash[key.key_sha256] = Tenant(
                name=key.tenant,
                signing_secret=secret,
                rate_per_s=key.rate_per_s or rate_per_s,
                burst=key.burst or burst,
            )
        self._tolerance_s = tolerance_s
        self._clock = clock

    def authenticate(self, headers: Mapping[str, str]) -> Tenant:
        """The tenant of the request's ``Authorization: Bearer`` or ``X-API-Key`` key."""
        auth = headers.get("authorization")
        if auth is not None:
            if auth[: len(_BEARER)].lower() != _BEARER:
                raise Unauthorized(
                    "Authorization must be 'Bearer <api key>'",
                    loc=("header", "authorization"),
                    type="bad_scheme",
                )
            key = auth[len(_BEARER) :].strip()
            loc = ("header", "authorization")
        else:
            key = headers.get(_API_KEY_HEADER, "")
            loc = ("header", _API_KEY_HEADER)
        if not key:
            raise Unauthorized("an API key is required", loc=loc, type="missing_key")
        tenant = self._by_hash.get(hash_api_key(key))
        if tenant is None:
            raise Unauthorized("unknown API key", loc=loc, type="unknown_key")
        return tenant

    def verify_signature(self, tenant: Tenant, headers: Mapping[str, str], body: bytes) -> None:
        """Check the body signature when the tenant's key requires one."""
        if tenant.signing_secret is None:
            return
        timestamp = headers.get(TIMESTAMP_HEADER)
        signature = headers.get(SIGNATURE_HEADER)
        if not timestamp:
            raise Unauthorized(
                "signed requests need a timestamp",
                loc=("header", TIMESTAMP_HEADER),
                type="missing_timestamp",
            )
        if not signature:
            raise Unauthorized(
                "this key requires a body signature",
                loc=("header", SIGNATURE_HEADER),
                type="missing_signature",
            )
        try:
            sent_at = float(timestamp)
        except ValueError:
            raise Unauthorized(
                "timestamp must be unix seconds",
                loc=("header", TIMESTAMP_HEADER),
                type="bad_timestamp",
            ) from None
        if abs(self._clock() - sent_at) > self._tolerance_s:
            raise Unauthorized(
                f"timestamp is outside the {self._tolerance_s:g}s replay window",
                loc=("header", TIMESTAMP_HEADER),
                type="stale_timestamp",
            )
        expected = sign(tenant.signing_secret, timestamp, body)
        if not hmac.compare_digest(expected.encode(), signature.strip().encode()):
            raise Unauthorized(
                "signature does not match the body",
                loc=("header", SIGNATURE_HEADER),
                type="bad_signature",
            )


class RateLimiter:
    """A token bucket per tenant, counted in events; in-process, so per ingest replica."""

    def __init__(self, *, retry_after_s: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._buckets: dict[str, list[float]] = {}  # tenant -> [tokens, last refill]
        self._retry_after = str(retry_after_s)
        self._clock = clock
        self._lock = threading.Lock()  # the app is single-threaded; this keeps it safe anyway

    def acquire(self, tenant: Tenant, events: int) -> None:
        """Take ``events`` tokens from the tenant's bucket, or raise ``RateLimited``."""
        now = self._clock()
        with self._lock:
            bucket = self._buckets.get(tenant.name)
            if bucket is None:
                bucket = self._buckets[tenant.name] = [float(tenant.burst), now]
            tokens = min(float(tenant.burst), bucket[0] + (now - bucket[1]) * tenant.rate_per_s)
            bucket[1] = now
            if tokens < events:
                bucket[0] = tokens
                raise RateLimited(
                    f"tenant {tenant.name} is over its rate of {tenant.rate_per_s:g} events/s",
                    type="rate_limited",
                    headers={"retry-after": self._retry_after},
                )
            bucket[0] = tokens - events
