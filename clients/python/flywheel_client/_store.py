"""Where encoded events wait until the server has them: memory, or a SQLite spool on disk.

Both keep events in arrival order and lend them out in batches: ``take`` marks a batch in
flight, ``finish`` forgets it (delivered, or refused for good), ``release`` puts it back at the
front to be retried. Only the client's dispatcher thread touches a store.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterable, Sequence
from typing import NamedTuple, Protocol

from flywheel_client._wire import BATCH_OVERHEAD

__all__ = ["MemoryStore", "Pending", "Store", "fill_batch"]


class Pending(NamedTuple):
    """One encoded event: its store key, id and JSON."""

    key: int
    event_id: str
    body: bytes


class Store(Protocol):
    @property
    def ready(self) -> int:
        """Events waiting to be sent (not in flight)."""

    @property
    def ready_bytes(self) -> int: ...

    @property
    def held(self) -> int:
        """Events ready or in flight."""

    @property
    def in_memory(self) -> int:
        """Events this store keeps in memory (counted against the memory bound)."""

    def add(self, items: Sequence[tuple[str, bytes]]) -> list[str]:
        """Keep ``(event_id, json)`` items; returns the ids evicted to make room."""

    def take(self, max_events: int, max_bytes: int) -> list[Pending]:
        """The oldest events not in flight, within the limits (at least one), now in flight."""

    def finish(self, batch: Iterable[Pending]) -> None:
        """Forget events in flight: delivered, or refused for good."""

    def release(self, batch: Iterable[Pending]) -> None:
        """Put events in flight back, first in line."""

    def close(self) -> None: ...


def fill_batch(candidates: Iterable[Pending], max_events: int, max_bytes: int) -> list[Pending]:
    """The longest prefix of ``candidates`` within both limits; at least one event, so that an
    event larger than ``max_bytes`` is still sent (alone) and the server says whether it fits."""
    batch: list[Pending] = []
    size = BATCH_OVERHEAD
    for item in candidates:
        size += len(item.body) + (1 if batch else 0)
        if batch and (size > max_bytes or len(batch) >= max_events):
            break
        batch.append(item)
    return batch


class MemoryStore:
    """Events in a deque; gone if the process dies."""

    def __init__(self) -> None:
        self._ready: deque[Pending] = deque()
        self._ready_bytes = 0
        self._in_flight: dict[int, Pending] = {}
        self._keys = itertools.count()

    @property
    def ready(self) -> int:
        return len(self._ready)

    @property
    def ready_bytes(self) -> int:
        return self._ready_bytes

    @property
    def held(self) -> int:
        return len(self._ready) + len(self._in_flight)

    @property
    def in_memory(self) -> int:
        return self.held

    def add(self, items: Sequence[tuple[str, bytes]]) -> list[str]:
        for event_id, body in items:
            self._ready.append(Pending(next(self._keys), event_id, body))
            self._ready_bytes += len(body)
        return []

    def take(self, max_events: int, max_bytes: int) -> list[Pending]:
        if not self._ready:
            return []
        batch = fill_batch(self._ready, max_events, max_bytes)
        for item in batch:
            self._ready.popleft()
            self._ready_bytes -= len(item.body)
            self._in_flight[item.key] = item
        return batch

    def finish(self, batch: Iterable[Pending]) -> None:
        for item in batch:
            self._in_flight.pop(item.key, None)

    def release(self, batch: Iterable[Pending]) -> None:
        items = [item for item in batch if self._in_flight.pop(item.key, None) is not None]
        self._ready_bytes += sum(len(item.body) for item in items)
        self._ready.extendleft(reversed(items))

    def drain(self) -> list[Pending]:
        """Everything held, in flight included, now forgotten (the client is closing)."""
        items = [*self._in_flight.values(), *self._ready]
        self._in_flight.clear()
        self._ready.clear()
        self._ready_bytes = 0
        return items

    def close(self) -> None:
        self.drain()
