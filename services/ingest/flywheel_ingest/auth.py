"""Who is calling, and may they: API keys, their scopes and origins, HMAC request signatures.

API keys are high-entropy random tokens, so they are stored as their SHA-256 (a slow password
hash would buy nothing against guessing and cost every request); a presented key is hashed and
looked up. The tenant always comes from the key, never from the body.

Signing, scheme v2 (per key, on when the key has a ``signing_secret``): the client sends
``X-Flywheel-Timestamp: <unix seconds>`` (digits, optionally ``.`` and 1-6 digits) and
``X-Flywheel-Signature: sha256=<hex HMAC-SHA256(secret, message)>`` where message is
``f"{timestamp}\\n{METHOD}\\n{path}\\n".encode() + body``: the method, the path (no query
string) and the body exactly as sent (compressed bytes under ``Content-Encoding: gzip``). A
signature for one route does not pass on another. A timestamp further than the tolerance from
the server clock is refused, which bounds replays to that window; a replay inside it re-sends
the same ``event_id``s, which downstream deduplicates.

Browser keys are public (they ship in web pages): they cannot sign, each request must come
from one of their ``allowed_origins``, and they may be presented as ``?api_key=`` because
``navigator.sendBeacon`` cannot set headers. A server key in a query string is refused.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qs

from flywheel_ingest.errors import Forbidden, Unauthorized
from flywheel_ingest.settings import ApiKey, KeyKind

__all__ = [
    "API_KEY_QUERY",
    "SIGNATURE_HEADER",
    "SIGNATURE_SCHEME",
    "TIMESTAMP_HEADER",
    "Authenticator",
    "Caller",
    "generate_api_key",
    "hash_api_key",
    "sign",
    "signed_message",
]

SIGNATURE_HEADER = "x-flywheel-signature"
TIMESTAMP_HEADER = "x-flywheel-timestamp"
SIGNATURE_SCHEME = "sha256="
API_KEY_QUERY = "api_key"
_API_KEY_HEADER = "x-api-key"
_BEARER = "bearer "
_API_KEY_BYTES = 32
# ASCII digits only: float() would also take "nan", "inf", "1e9", "-1" and non-ASCII digits.
_TIMESTAMP = re.compile(r"[0-9]{1,12}(?:\.[0-9]{1,6})?")


def hash_api_key(key: str) -> str:
    """The form a key is configured in: hex SHA-256 of its UTF-8 bytes."""
    return hashlib.sha256(key.encode()).hexdigest()


def generate_api_key() -> str:
    """A new random key (256 bits, url-safe)."""
    return "fw_" + secrets.token_urlsafe(_API_KEY_BYTES)


def signed_message(timestamp: str, body: bytes, *, method: str, path: str) -> bytes:
    """The bytes a v2 signature covers (see the module docstring)."""
    return f"{timestamp}\n{method.upper()}\n{path}\n".encode() + body


def sign(secret: bytes, timestamp: str, body: bytes, *, path: str, method: str = "POST") -> str:
    """The ``X-Flywheel-Signature`` value for ``body`` sent at ``timestamp`` to ``path``."""
    message = signed_message(timestamp, body, method=method, path=path)
    return SIGNATURE_SCHEME + hmac.new(secret, message, hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True, eq=False)
class Caller:
    """The holder of one configured API key (compared by identity: one per key)."""

    tenant: str
    kind: KeyKind = "server"
    scopes: frozenset[str] = frozenset(("runs", "feedback", "edits"))
    allowed_origins: frozenset[str] = frozenset()
    signing_secret: bytes | None = field(default=None, repr=False)
    rate_per_s: float = 0.0
    burst: int = 0


class Authenticator:
    """Maps a presented API key to its ``Caller`` and checks origins and signatures."""

    def __init__(
        self,
        keys: Iterable[ApiKey],
        *,
        rate_per_s: float,
        burst: int,
        tolerance_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._by_hash: dict[str, Caller] = {}
        for key in keys:
            secret = key.signing_secret.get_secret_value().encode() if key.signing_secret else None
            self._by_hash[key.key_sha256] = Caller(
                tenant=key.tenant,
                kind=key.kind,
                scopes=frozenset(key.scopes),
                allowed_origins=frozenset(key.allowed_origins),
                signing_secret=secret,
                rate_per_s=key.rate_per_s or rate_per_s,
                burst=key.burst or burst,
            )
        self.browser_origins = frozenset(
            origin for caller in self._by_hash.values() for origin in caller.allowed_origins
        )
        """Every browser key's origins: what a CORS preflight may be granted for."""
        self._tolerance_s = tolerance_s
        self._clock = clock

    def authenticate(self, headers: Mapping[str, str], query_string: bytes = b"") -> Caller:
        """The caller of the request's ``Authorization: Bearer``, ``X-API-Key`` or (browser
        keys only) ``?api_key=`` key."""
        key, loc = _presented_key(headers)
        if query_string and API_KEY_QUERY.encode() in query_string:
            in_query = parse_qs(query_string.decode("latin-1")).get(API_KEY_QUERY, [""])[-1]
            if key and in_query:
                raise Unauthorized(
                    "send the API key once: in a header or in ?api_key=, not both",
                    loc=("query", API_KEY_QUERY),
                    type="ambiguous_key",
                )
            if in_query:
                key, loc = in_query, ("query", API_KEY_QUERY)
        if not key:
            raise Unauthorized("an API key is required", loc=loc, type="missing_key")
        caller = self._by_hash.get(hash_api_key(key))
        if caller is None:
            raise Unauthorized("unknown API key", loc=loc, type="unknown_key")
        if loc[0] == "query" and caller.kind != "browser":
            raise Unauthorized(
                "server keys are never accepted in the query string (URLs are logged); "
                "send it in the Authorization header, and replace this key",
                loc=loc,
                type="key_in_query",
            )
        return caller

    @staticmethod
    def check_origin(caller: Caller, headers: Mapping[str, str]) -> None:
        """A browser key's request must come from one of its origins."""
        if caller.kind == "browser" and headers.get("origin") not in caller.allowed_origins:
            raise Forbidden(
                "this browser key is not allowed from this Origin",
                loc=("header", "origin"),
                type="origin_denied",
            )

    def verify_signature(
        self, caller: Caller, headers: Mapping[str, str], body: bytes, *, method: str, path: str
    ) -> None:
        """Check the request signature when the caller's key requires one."""
        if caller.signing_secret is None:
            return
        timestamp = headers.get(TIMESTAMP_HEADER)
        signature = headers.get(SIGNATURE_HEADER)
        if timestamp is None:
            raise Unauthorized(
                "signed requests need a timestamp",
                loc=("header", TIMESTAMP_HEADER),
                type="missing_timestamp",
            )
        if not signature:
            raise Unauthorized(
                "this key requires a request signature",
                loc=("header", SIGNATURE_HEADER),
                type="missing_signature",
            )
        if _TIMESTAMP.fullmatch(timestamp) is None:
            raise Unauthorized(
                "timestamp must be unix seconds: ASCII digits, optionally '.' and 1-6 digits",
                loc=("header", TIMESTAMP_HEADER),
                type="bad_timestamp",
            )
        if abs(self._clock() - float(timestamp)) > self._tolerance_s:
            raise Unauthorized(
                f"timestamp is outside the {self._tolerance_s:g}s replay window",
                loc=("header", TIMESTAMP_HEADER),
                type="stale_timestamp",
            )
        expected = sign(caller.signing_secret, timestamp, body, path=path, method=method)
        if not hmac.compare_digest(expected.encode(), signature.strip().encode()):
            raise Unauthorized(
                "signature does not match the timestamp, method, path and body",
                loc=("header", SIGNATURE_HEADER),
                type="bad_signature",
            )


def _presented_key(headers: Mapping[str, str]) -> tuple[str, tuple[str, str]]:
    auth = headers.get("authorization")
    if auth is not None:
        if auth[: len(_BEARER)].lower() != _BEARER:
            raise Unauthorized(
                "Authorization must be 'Bearer <api key>'",
                loc=("header", "authorization"),
                type="bad_scheme",
            )
        return auth[len(_BEARER) :].strip(), ("header", "authorization")
    return headers.get(_API_KEY_HEADER, ""), ("header", _API_KEY_HEADER)
