"""Rate limits: a token bucket per API key (counted in events) and one per client address for
requests that carry no valid key. In-process, so per ingest replica.

Every request costs: an accepted one its events, a refused one (bad body, bad signature, wrong
scope) one token of its key, and a request without a valid key one token of its address. So
neither a flood of invalid requests nor a key-guessing client runs free.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable

from flywheel_ingest.auth import Caller
from flywheel_ingest.errors import PayloadTooLarge, RateLimited

__all__ = ["RateLimiter"]

_MAX_ADDRESSES = 100_000
"""Address buckets kept (least recently used dropped): bounded memory under a spoofed flood."""


class _Buckets:
    """Token buckets by key; ``take`` and ``wait`` answer how long to wait (0.0: go)."""

    def __init__(self, clock: Callable[[], float], *, max_size: int | None = None) -> None:
        self._state: OrderedDict[object, list[float]] = OrderedDict()  # key -> [tokens, at]
        self._clock = clock
        self._max_size = max_size

    def _refilled(self, key: object, rate: float, burst: int) -> list[float]:
        now = self._clock()
        bucket = self._state.get(key)
        if bucket is None:
            bucket = self._state[key] = [float(burst), now]
            if self._max_size is not None and len(self._state) > self._max_size:
                self._state.popitem(last=False)
        else:
            if self._max_size is not None:
                self._state.move_to_end(key)
            bucket[0] = min(float(burst), bucket[0] + (now - bucket[1]) * rate)
            bucket[1] = now
        return bucket

    def wait(self, key: object, n: float, *, rate: float, burst: int) -> float:
        """How long until ``n`` tokens are there; takes nothing."""
        tokens = self._refilled(key, rate, burst)[0]
        return 0.0 if tokens >= n else (n - tokens) / rate

    def take(self, key: object, n: float, *, rate: float, burst: int, partial: bool) -> float:
        """Take ``n`` tokens; when short, take none (or, with ``partial``, what is left)."""
        bucket = self._refilled(key, rate, burst)
        if bucket[0] >= n:
            bucket[0] -= n
            return 0.0
        wait = (n - bucket[0]) / rate
        if partial:
            bucket[0] = 0.0
        return wait


class RateLimiter:
    """The service's buckets (the app runs on one thread: no locks)."""

    def __init__(
        self,
        *,
        address_rate_per_s: float,
        address_burst: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._keys = _Buckets(clock)
        self._addresses = _Buckets(clock, max_size=_MAX_ADDRESSES)
        self._address_rate = address_rate_per_s
        self._address_burst = address_burst

    def admit(self, caller: Caller) -> None:
        """Refuse a request at once, before reading its body, when its key has no token left."""
        wait = self._keys.wait(caller, 1, rate=caller.rate_per_s, burst=caller.burst)
        if wait:
            raise _limited(f"this API key is over its rate of {caller.rate_per_s:g} events/s", wait)

    def acquire(self, caller: Caller, events: int) -> None:
        """Take ``events`` tokens, or refuse: 413 when the batch can never fit the bucket."""
        if events > caller.burst:
            raise PayloadTooLarge(
                f"this batch holds {events} events but this API key's burst is {caller.burst}: "
                f"it can never pass; send batches of at most {caller.burst} events",
                loc=("body", "events"),
                type="batch_over_burst",
            )
        wait = self._keys.take(
            caller, events, rate=caller.rate_per_s, burst=caller.burst, partial=False
        )
        if wait:
            raise _limited(f"this API key is over its rate of {caller.rate_per_s:g} events/s", wait)

    def charge(self, caller: Caller) -> None:
        """A refused request of ``caller`` costs one token (what is left, when less)."""
        self._keys.take(caller, 1, rate=caller.rate_per_s, burst=caller.burst, partial=True)

    def charge_address(self, address: str) -> None:
        """A request without a valid key costs its address a token; 429 when none is left."""
        wait = self._addresses.take(
            address, 1, rate=self._address_rate, burst=self._address_burst, partial=False
        )
        if wait:
            raise _limited("too many requests without a valid API key from this address", wait)


def _limited(msg: str, wait_s: float) -> RateLimited:
    return RateLimited(
        msg, type="rate_limited", headers={"retry-after": str(max(1, math.ceil(wait_s)))}
    )
