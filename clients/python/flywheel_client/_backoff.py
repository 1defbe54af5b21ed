"""Retry delays: exponential with jitter, never shorter than the server's ``Retry-After``.

One backoff per client, not per batch: when the server is down or busy every batch would fail
alike, so the whole client pauses, and the first success resets the delay.
"""

from __future__ import annotations

import random
import time
from email.utils import parsedate_to_datetime

__all__ = ["Backoff", "parse_retry_after"]

RETRY_AFTER_CAP_S = 600.0
"""A ``Retry-After`` longer than this is read as this: a misconfigured proxy must not park
the client for a day."""


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value).timestamp()
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        seconds = when - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), RETRY_AFTER_CAP_S)


class Backoff:
    """``base * 2**attempt`` capped at ``max_s``, with "equal jitter" (uniform in the upper
    half), so that many clients recovering together spread out without ever retrying at 0."""

    def __init__(self, *, base_s: float, max_s: float, rng: random.Random | None = None) -> None:
        self._base = base_s
        self._max = max_s
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not security
        self.attempt = 0

    def next_delay(self, retry_after_s: float | None = None) -> float:
        ceiling = min(self._max, self._base * 2.0**self.attempt)
        self.attempt += 1
        delay = self._rng.uniform(ceiling / 2, ceiling)
        if retry_after_s is not None:
            # At least what the server asked, plus a little jitter so a crowd told "1 s"
            # does not come back in the same millisecond.
            delay = max(delay, retry_after_s + self._rng.uniform(0, self._base))
        return delay

    def reset(self) -> None:
        self.attempt = 0
