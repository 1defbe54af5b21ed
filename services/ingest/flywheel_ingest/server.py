"""The HTTP server as deployed: uvicorn (httptools, uvloop) with its own bounds set from the
settings, plus the guards it lacks.

uvicorn bounds idle keep-alive connections (``timeout_keep_alive``) and open connections and
requests (``limit_concurrency``, 503 beyond it), but with httptools it neither bounds the size
or count of request headers nor times out a connection that trickles them (every byte re-arms
nothing: the keep-alive timer is cancelled on data and no other timer exists). So the protocol
below adds:

- a header deadline: a request's headers must be complete within ``header_timeout_s`` of the
  connection opening or of the request's first byte (between requests uvicorn's keep-alive
  timeout closes an idle connection); else 408 and the connection is closed;
- a body deadline: the body must be complete within ``body_timeout_s`` of the headers; else
  408 (when no answer has started) and the connection is closed; the app, waiting for the
  body, sees a disconnect;
- header bounds: at most ``max_header_bytes`` of request line and headers and ``max_headers``
  headers; else 431 and the connection is closed, before the app sees the request.

Both deadlines share one timer per connection, re-armed only when it fires: a request costs
two clock reads, not timers of its own (a ``call_later`` and ``asyncio.timeout`` per request
were a fifth of the CPU of a single-event request).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from flywheel_ingest.settings import IngestSettings

__all__ = ["guarded_protocol", "server_config"]

RefusalHook = Callable[[str], None]


def _refusal(status: bytes, type_: str, msg: str) -> bytes:
    body = orjson.dumps({"errors": [{"loc": ["header"], "msg": msg, "type": type_}]})
    return (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body
    )


def guarded_protocol(
    *,
    header_timeout_s: float,
    body_timeout_s: float,
    max_header_bytes: int,
    max_headers: int,
    on_refused: RefusalHook,
) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol with header and body deadlines and header bounds."""
    timeout_answer = _refusal(
        b"408 Request Timeout",
        "header_timeout",
        f"request headers not complete within {header_timeout_s:g}s",
    )
    body_timeout_answer = _refusal(
        b"408 Request Timeout",
        "body_timeout",
        f"the body did not arrive within {body_timeout_s:g}s",
    )
    period_s = min(header_timeout_s, body_timeout_s)
    too_large_answer = _refusal(
        b"431 Request Header Fields Too Large",
        "headers_too_large",
        f"request headers over {max_header_bytes} bytes or {max_headers} fields",
    )

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._timer: asyncio.TimerHandle | None = None
            self._waiting_since: float | None = None  # when the current headers began
            self._body_since: float | None = None  # when the current body began
            self._header_bytes = 0  # bytes received since the headers began
            self._refused = False

        # -- deadlines ------------------------------------------------------------------
        def _await_headers(self) -> None:
            # From the connection's start or the next request's first byte; in between,
            # uvicorn's keep-alive timeout bounds an idle connection.
            if self._waiting_since is None:
                self._waiting_since = self.loop.time()

        def _check_deadlines(self) -> None:
            self._timer = None
            if self.transport.is_closing():
                return
            now = self.loop.time()
            left = period_s
            if self._waiting_since is not None:
                left = self._waiting_since + header_timeout_s - now
                if left <= 0:
                    self._expire("header_timeout", timeout_answer)
                    return
            elif self._body_since is not None:
                left = self._body_since + body_timeout_s - now
                if left <= 0:
                    self._expire("body_timeout", body_timeout_answer)
                    return
            self._timer = self.loop.call_later(left, self._check_deadlines)

        def _expire(self, reason: str, answer: bytes) -> None:
            on_refused(reason)
            cycle = self.cycle
            if cycle is not None and cycle.response_started and not cycle.response_complete:
                cycle.keep_alive = False  # an answer is on its way: close after it
                return
            if cycle is None or not cycle.response_started:
                self.transport.write(answer)
            self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._await_headers()
            self._timer = self.loop.call_later(period_s, self._check_deadlines)

        def connection_lost(self, exc: Exception | None) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            super().connection_lost(exc)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._await_headers()

        # -- header bounds --------------------------------------------------------------
        def data_received(self, data: bytes) -> None:
            if self._refused:
                return
            # Bytes outside a body are headers (of this request or the next): counted before
            # the parser buffers them. A body that outlives its early answer is not counted.
            if self._body_since is None:
                self._header_bytes += len(data)
            super().data_received(data)
            # Still in headers after this many bytes: too many. (This also bounds their
            # count: each takes at least 4 bytes.)
            if self._body_since is None and self._header_bytes > max_header_bytes:
                self._refused = True
            if self._refused and not self.transport.is_closing():
                on_refused("headers_too_large")
                self.transport.write(too_large_answer)
                self.transport.close()

        def on_headers_complete(self) -> None:
            self._waiting_since = None
            self._body_since = self.loop.time()
            headers = self.headers
            received, self._header_bytes = self._header_bytes, 0
            if len(headers) > max_headers or (
                # Only when the bytes received could hold that much: the exact sum is rare.
                received > max_header_bytes
                and len(self.url) + sum(len(n) + len(v) + 4 for n, v in headers) > max_header_bytes
            ):
                self._refused = True
                return
            super().on_headers_complete()

        def on_body(self, body: bytes) -> None:
            if not self._refused:
                super().on_body(body)

        def on_message_complete(self) -> None:
            self._body_since = None
            if not self._refused:
                super().on_message_complete()

    return GuardedHttpToolsProtocol


def server_config(
    app: Any, settings: IngestSettings, *, on_refused: RefusalHook, **overrides: Any
) -> uvicorn.Config:
    """uvicorn's configuration for ``app``, every bound from ``settings``."""
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "loop": "uvloop",
        "http": guarded_protocol(
            header_timeout_s=settings.header_timeout_s,
            body_timeout_s=settings.body_timeout_s,
            max_header_bytes=settings.max_header_bytes,
            max_headers=settings.max_headers,
            on_refused=on_refused,
        ),
        "ws": "none",
        "lifespan": "on",
        "log_config": None,  # our JSON logging
        "access_log": settings.access_log,
        # X-Forwarded-For only changes the client address, which only the access log and the
        # per-address limit of keyless requests use; without it, the middleware is per-request
        # cost for nothing.
        "proxy_headers": settings.access_log,
        "server_header": False,
        "timeout_keep_alive": settings.keep_alive_timeout_s,
        "limit_concurrency": settings.max_concurrency,
        "h11_max_incomplete_event_size": settings.max_header_bytes,
    }
    return uvicorn.Config(app, **{**options, **overrides})
