"""Counters of what a client did with its events; ``stats()`` returns a snapshot."""

from __future__ import annotations

import threading
from dataclasses import dataclass

__all__ = ["ClientStats", "Counters"]


@dataclass(frozen=True, slots=True)
class ClientStats:
    """A snapshot of a client's counters (since it was made, or since ``fork()`` in a child).

    Attributes:
        queued: events held now, in memory or in the spool, in flight included.
        spooled: events written to the spool.
        delivered: events the server acknowledged (202).
        rejected: events the server refused for good (4xx); see ``EventsDropped``.
        dropped_overflow: events dropped because the in-memory queue was full.
        dropped_spool_full: events evicted from a full spool (the oldest), or whose spool
            write failed.
        dropped_closed: events still undelivered when ``close()`` gave up (memory only; a
            spool keeps them for the next start).
        requests: requests sent; retries: requests answered with a retryable failure.
        bytes_sent: request body bytes on the wire (after gzip), of answered requests.
        callback_errors: exceptions raised by ``on_error`` (logged, then ignored).
    """

    queued: int = 0
    spooled: int = 0
    delivered: int = 0
    rejected: int = 0
    dropped_overflow: int = 0
    dropped_spool_full: int = 0
    dropped_closed: int = 0
    requests: int = 0
    retries: int = 0
    bytes_sent: int = 0
    callback_errors: int = 0


class Counters:
    """The live counters behind ``ClientStats``; updated from several threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, int] = {
            name: 0 for name in ClientStats.__slots__ if name != "queued"
        }

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, count in counts.items():
                self._values[name] += count

    def snapshot(self, *, queued: int) -> ClientStats:
        with self._lock:
            return ClientStats(queued=queued, **self._values)
