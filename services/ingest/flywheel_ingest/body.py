"""A request body, read within its limits (its deadline is the server protocol's: see
``server``): content type and encoding checked, gzip decompressed in bounded steps (the limit
applies on the wire and after decompression, so a decompression bomb costs at most
``limit + 1`` bytes of output, then 413)."""

from __future__ import annotations

import zlib
from collections.abc import Mapping

from starlette.requests import ClientDisconnect
from starlette.types import Receive

from flywheel_ingest.errors import (
    InvalidBody,
    PayloadTooLarge,
    UnsupportedMediaType,
)

__all__ = ["check_content_type", "check_encoding", "gunzip", "read_body"]

_JSON = "application/json"
_TEXT = "text/plain"  # what navigator.sendBeacon can send without a preflight (browser keys)
_GZIP_WBITS = 16 + zlib.MAX_WBITS  # gzip header and trailer, nothing else


def check_content_type(headers: Mapping[str, str], *, browser: bool) -> None:
    """JSON in UTF-8; browser keys may also label it ``text/plain``."""
    raw = headers.get("content-type", "")
    media, _, params = raw.partition(";")
    media = media.strip().lower()
    charset = params.strip().lower()
    if (media == _JSON or (browser and media == _TEXT)) and charset in ("", "charset=utf-8"):
        return
    allowed = f"{_JSON} or {_TEXT}" if browser else _JSON
    raise UnsupportedMediaType(
        f"Content-Type must be {allowed} (UTF-8), not {raw[:100] or 'missing'!r}",
        loc=("header", "content-type"),
        type="unsupported_media_type",
    )


def check_encoding(headers: Mapping[str, str]) -> bool:
    """Whether the body is gzip; any encoding but gzip (or identity) is refused."""
    encoding = headers.get("content-encoding", "").strip().lower()
    if encoding == "gzip":
        return True
    if encoding in ("", "identity"):
        return False
    raise UnsupportedMediaType(
        f"Content-Encoding must be gzip or absent, not {encoding[:100]!r}",
        loc=("header", "content-encoding"),
        type="unsupported_encoding",
    )


def _too_large(limit: int, what: str) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"{what} larger than {limit} bytes", loc=("body",), type="body_too_large"
    )


async def read_body(headers: Mapping[str, str], receive: Receive, *, limit: int) -> bytes:
    """The body as sent, refused with 413 as soon as it is known to exceed ``limit`` bytes.

    Raises:
        ClientDisconnect: the client went away (or the server closed a body past its
            deadline); there is no one to answer.
    """
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit, "body")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(limit, "body")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def gunzip(data: bytes, *, limit: int) -> bytes:
    """Decompress a gzip body (one or more members) to at most ``limit`` bytes.

    Raises:
        PayloadTooLarge: the decompressed body would exceed ``limit``.
        InvalidBody: 400, the bytes are not a complete gzip stream.
    """
    out: list[bytes] = []
    size = 0
    while data:
        member = zlib.decompressobj(wbits=_GZIP_WBITS)
        pending = data
        try:
            while pending and not member.eof:
                chunk = member.decompress(pending, limit + 1 - size)
                size += len(chunk)
                if size > limit:
                    raise _too_large(limit, "decompressed body")
                out.append(chunk)
                pending = member.unconsumed_tail
        except zlib.error as exc:
            raise _corrupt(f"the body is not valid gzip: {exc}") from exc
        if not member.eof:
            raise _corrupt("the gzip body is truncated")
        data = member.unused_data
    return b"".join(out)


def _corrupt(msg: str) -> InvalidBody:
    return InvalidBody([{"loc": ["body"], "msg": msg, "type": "gzip_invalid"}], status=400)
