"""The client's exception tree.

    FlywheelClientError
    ├── ClientConfigError     a setting is wrong: raised by the constructor, fix the config
    ├── InvalidEventError     a call's arguments can never make a valid event (also a ValueError):
    │                         raised by the call itself, before anything is queued
    └── EventsDropped         events the client will never deliver, and why: handed to the
                              ``on_error`` callback and logged, never raised by a call

The client never raises on the network's account: delivery happens in the background, and what
cannot be delivered is reported through ``EventsDropped`` and counted in ``stats()``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = [
    "ClientConfigError",
    "DropReason",
    "ErrorDetail",
    "EventsDropped",
    "FlywheelClientError",
    "InvalidEventError",
]

DropReason = Literal["rejected", "overflow", "spool_full", "closed"]
"""Why events were dropped: refused by the server (4xx, never retried); the in-memory queue was
full; the spool was full (the oldest go); the client closed before they were delivered."""


class FlywheelClientError(Exception):
    """Root of every error the client raises or reports."""


class ClientConfigError(FlywheelClientError):
    """A client setting is wrong; retrying will not help."""


class InvalidEventError(FlywheelClientError, ValueError):
    """The arguments of a call cannot make a valid event (e.g. a rating of 7)."""


@dataclass(frozen=True, slots=True)
class ErrorDetail:
    """One error the server gave: the path of the wrong field, e.g.
    ``("body", "events", 3, "kind")``, a message and a machine-readable type."""

    loc: tuple[str | int, ...]
    msg: str
    type: str


class EventsDropped(FlywheelClientError):
    """Events that will never be delivered.

    Attributes:
        reason: why (see ``DropReason``).
        event_ids: the events concerned.
        status: the HTTP status the server answered, for ``rejected``; else ``None``.
        errors: the server's errors for these events, with field paths (``rejected`` only).
    """

    def __init__(
        self,
        reason: DropReason,
        event_ids: tuple[str, ...],
        *,
        status: int | None = None,
        errors: tuple[ErrorDetail, ...] = (),
    ) -> None:
        where = "; ".join(f"{'.'.join(map(str, e.loc))}: {e.msg}" for e in errors[:3])
        super().__init__(
            f"{len(event_ids)} event(s) dropped ({reason}"
            + (f", HTTP {status}" if status is not None else "")
            + (f": {where}" if where else "")
            + ")"
        )
        self.reason: DropReason = reason
        self.event_ids = event_ids
        self.status = status
        self.errors = errors
