"""The client's settings: one frozen object, checked once when the client is made.

The constructors take these as keyword arguments (``ClientOptions``); ``tests/clients``
checks that the two lists name the same settings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Literal, TypedDict
from urllib.parse import urlsplit

from flywheel_client._errors import ClientConfigError, EventsDropped

__all__ = ["ClientConfig", "ClientOptions", "OverflowPolicy"]

OverflowPolicy = Literal["drop", "block"]
"""When the in-memory queue is full: drop the new event (counted, warned, reported to
``on_error``), or block the caller up to ``block_timeout_s`` and then drop it."""

MAX_BATCH_EVENTS = 500
"""Events per request; the ingest takes up to 1000 by default."""
MAX_BATCH_BYTES = 512 * 1024
"""Uncompressed body bytes per request; the ingest takes up to 1 MiB by default."""
LINGER_S = 0.2
"""How long a partial batch waits for more events before it is sent."""
MAX_QUEUE_EVENTS = 10_000
"""Events held in memory (queued, batched or in flight) before the overflow policy applies."""
MAX_IN_FLIGHT = 2
"""Requests at once: the server overlaps one batch's broker acknowledgement with the next."""
GZIP_MIN_BYTES = 16 * 1024
"""Bodies at least this large are sent gzipped (``None`` turns gzip off)."""
SPOOL_MAX_BYTES = 64 * 1024 * 1024
"""Bytes of events the spool keeps; past it the oldest are dropped (counted)."""
EXIT_TIMEOUT_S = 5.0
"""How long the exit hook waits for queued events to be delivered."""


class ClientOptions(TypedDict, total=False):
    """The optional settings, as the clients' keyword arguments (see ``ClientConfig``)."""

    signing_secret: str | None
    max_batch_events: int
    max_batch_bytes: int
    linger_s: float
    max_queue_events: int
    overflow: OverflowPolicy
    block_timeout_s: float
    max_in_flight: int
    request_timeout_s: float
    backoff_base_s: float
    backoff_max_s: float
    gzip_min_bytes: int | None
    spool_path: str | Path | None
    spool_max_bytes: int
    exit_timeout_s: float | None
    remember_runs: int
    on_error: Callable[[EventsDropped], None] | None


@dataclass(frozen=True, kw_only=True)
class ClientConfig:
    """Everything a client can be told.

    Attributes:
        url: the ingest's base URL, e.g. ``https://flywheel.example.com``.
        api_key: a server key (sent as ``Authorization: Bearer``).
        signing_secret: the key's HMAC secret when the tenant signs requests.
        max_batch_events, max_batch_bytes, linger_s: a batch is sent when it holds this many
            events or bytes, or its oldest event has waited this long.
        max_queue_events, overflow, block_timeout_s: the memory bound and what a call does
            when it is reached.
        max_in_flight: concurrent requests.
        request_timeout_s: one request's timeout.
        backoff_base_s, backoff_max_s: retry delays grow from base to max, with jitter; a
            ``Retry-After`` from the server is honoured.
        gzip_min_bytes: gzip bodies at least this large (``None``: never).
        spool_path: a SQLite file that keeps events until the server has them, across
            outages and restarts (``None``: memory only).
        spool_max_bytes: the spool's bound; the oldest events are dropped past it.
        exit_timeout_s: at interpreter exit, wait this long for delivery (``None``: no hook).
        remember_runs: runs whose prompt ``edit()`` can fill in (most recent first).
        on_error: called (on the client's thread) with every ``EventsDropped``.
    """

    url: str
    api_key: str = field(repr=False)
    signing_secret: str | None = field(default=None, repr=False)
    max_batch_events: int = MAX_BATCH_EVENTS
    max_batch_bytes: int = MAX_BATCH_BYTES
    linger_s: float = LINGER_S
    max_queue_events: int = MAX_QUEUE_EVENTS
    overflow: OverflowPolicy = "drop"
    block_timeout_s: float = 1.0
    max_in_flight: int = MAX_IN_FLIGHT
    request_timeout_s: float = 30.0
    backoff_base_s: float = 0.1
    backoff_max_s: float = 30.0
    gzip_min_bytes: int | None = GZIP_MIN_BYTES
    spool_path: str | Path | None = None
    spool_max_bytes: int = SPOOL_MAX_BYTES
    exit_timeout_s: float | None = EXIT_TIMEOUT_S
    remember_runs: int = 256
    on_error: Callable[[EventsDropped], None] | None = None

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ClientConfigError(f"url must be http(s)://host[:port][/prefix], not {self.url!r}")
        if parts.query or parts.fragment:
            raise ClientConfigError("url must not carry a query or fragment")
        if not self.api_key:
            raise ClientConfigError("api_key is required")
        if self.overflow not in ("drop", "block"):
            raise ClientConfigError(f"overflow must be 'drop' or 'block', not {self.overflow!r}")
        positive = {
            "max_batch_events": self.max_batch_events,
            "max_batch_bytes": self.max_batch_bytes,
            "max_queue_events": self.max_queue_events,
            "max_in_flight": self.max_in_flight,
            "request_timeout_s": self.request_timeout_s,
            "backoff_base_s": self.backoff_base_s,
            "backoff_max_s": self.backoff_max_s,
            "spool_max_bytes": self.spool_max_bytes,
        }
        for name, value in positive.items():
            if not value > 0:
                raise ClientConfigError(f"{name} must be > 0, not {value!r}")
        for name, optional in (
            ("linger_s", self.linger_s),
            ("block_timeout_s", self.block_timeout_s),
            ("remember_runs", self.remember_runs),
            ("gzip_min_bytes", self.gzip_min_bytes),
            ("exit_timeout_s", self.exit_timeout_s),
        ):
            if optional is not None and not optional >= 0:
                raise ClientConfigError(f"{name} must be >= 0, not {optional!r}")
        if self.max_queue_events < self.max_batch_events:
            raise ClientConfigError("max_queue_events must hold at least one batch")

    @property
    def events_url(self) -> str:
        return self.url.rstrip("/") + "/v1/events"

    @property
    def events_path(self) -> str:
        """The path the server sees, which request signing covers."""
        return urlsplit(self.url).path.rstrip("/") + "/v1/events"


OPTION_NAMES = frozenset(f.name for f in fields(ClientConfig)) - {"url", "api_key"}
