"""CORS for browser keys: preflights granted to the origins of the browser keys, and the
headers that let a page read the answer to its request. Server keys get no CORS headers."""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["ALLOWED_HEADERS", "allow_origin", "preflight"]

ALLOWED_HEADERS = "authorization, x-api-key, content-type, content-encoding"
_MAX_AGE_S = "600"


def allow_origin(origin: str) -> dict[str, str]:
    """The headers of an answer a page at ``origin`` may read."""
    return {"access-control-allow-origin": origin, "vary": "Origin"}


def preflight(
    headers: Mapping[str, str], allowed: frozenset[str]
) -> tuple[int, dict[str, str], dict[str, object] | None]:
    """The answer to an ``OPTIONS`` preflight: status, headers, and an error body or None.

    204 with ``Access-Control-Allow-Origin`` when the origin belongs to a browser key and the
    method is POST; 403 without it otherwise.
    """
    origin = headers.get("origin")
    method = headers.get("access-control-request-method", "POST")
    if origin is None or origin not in allowed:
        return 403, {"vary": "Origin"}, _denied("origin_denied", "no browser key allows origin")
    if method != "POST":
        return 403, {"vary": "Origin"}, _denied("method_denied", "only POST is allowed")
    return (
        204,
        {
            **allow_origin(origin),
            "access-control-allow-methods": "POST",
            "access-control-allow-headers": ALLOWED_HEADERS,
            "access-control-max-age": _MAX_AGE_S,
        },
        None,
    )


def _denied(type_: str, msg: str) -> dict[str, object]:
    loc = ["header", "origin" if type_ == "origin_denied" else "access-control-request-method"]
    return {"errors": [{"loc": loc, "msg": msg, "type": type_}]}
