"""Why the webhook refuses a request: each refusal is an exception that knows its HTTP answer.

    FlywheelError
    └── RequestRejected            carries status, error details and extra headers
        ├── Unauthorized           401: missing/unknown key, bad or stale signature
        ├── Forbidden              403: event type outside the key's scopes, origin not allowed
        ├── PayloadTooLarge        413: body (wire or decompressed), batch count or burst, or
        │                               one event over the Kafka message limit
        ├── UnsupportedMediaType   415: not application/json, or an encoding other than gzip
        ├── InvalidBody            400 (not JSON, corrupt gzip) / 422 (JSON, but wrong fields)
        ├── RateLimited            429: the key's (or the client address's) bucket is empty
        └── Unavailable            503: the broker is down, the queue is full, or no ack in time

Raised before anything is produced, except ``Unavailable``, which may come after some events of
a request were handed to the producer: its body then lists the ids the broker acknowledged
(see ``publisher``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flywheel_common import FlywheelError

__all__ = [
    "Forbidden",
    "InvalidBody",
    "PayloadTooLarge",
    "RateLimited",
    "RequestRejected",
    "Unauthorized",
    "Unavailable",
    "UnsupportedMediaType",
]

Loc = Sequence[str | int]


class RequestRejected(FlywheelError):
    """A request the service answers with ``status`` and ``{"errors": [...]}``."""

    status = 400

    def __init__(
        self,
        msg: str,
        *,
        loc: Loc = (),
        type: str = "invalid",
        headers: dict[str, str] | None = None,
        errors: list[dict[str, Any]] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(msg)
        self.errors = errors or [{"loc": list(loc), "msg": msg, "type": type}]
        self.headers = headers or {}
        self.extra = extra or {}
        """More top-level fields of the answer (e.g. ``stored_event_ids`` of a 503)."""

    def body(self) -> dict[str, Any]:
        """The JSON answer: ``{"errors": [...]}`` plus ``extra``."""
        return {"errors": self.errors, **self.extra}


class Unauthorized(RequestRejected):
    status = 401


class Forbidden(RequestRejected):
    status = 403


class PayloadTooLarge(RequestRejected):
    status = 413


class UnsupportedMediaType(RequestRejected):
    status = 415


class InvalidBody(RequestRejected):
    """400 when the body is not JSON at all, 422 when its fields are wrong."""

    def __init__(self, errors: list[dict[str, Any]], *, status: int) -> None:
        super().__init__(errors[0]["msg"] if errors else "invalid body", errors=errors)
        self.status = status


class RateLimited(RequestRejected):
    status = 429


class Unavailable(RequestRejected):
    status = 503
