"""Why the webhook refuses a request: each refusal is an exception that knows its HTTP answer.

    FlywheelError
    └── RequestRejected            carries status, error details and extra headers
        ├── Unauthorized           401: missing/unknown key, bad or stale signature
        ├── PayloadTooLarge        413: body over the byte limit, batch over the count limit
        ├── UnsupportedMediaType   415: not application/json
        ├── InvalidBody            400 (not JSON) / 422 (JSON, but wrong fields)
        ├── RateLimited            429: the tenant's token bucket is empty
        └── Unavailable            503: the broker is down, the queue is full, or no ack in time

Raised before anything is produced, except ``Unavailable``, which may come after some events of
a request were handed to the producer (see ``publisher``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flywheel_common import FlywheelError

__all__ = [
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
    ) -> None:
        super().__init__(msg)
        self.errors = errors or [{"loc": list(loc), "msg": msg, "type": type}]
        self.headers = headers or {}


class Unauthorized(RequestRejected):
    status = 401


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
