"""Refused requests are logged as aggregates: one line per interval with the count of each
(route, status, type) and the first ``loc`` seen for it, never one line per request (a flood of
bad requests must not become a flood of logs)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

__all__ = ["RejectionLog"]


class RejectionLog:
    """Counts refusals and logs them every ``interval_s`` (see ``run``) and at ``flush``."""

    def __init__(self, logger: logging.Logger, *, interval_s: float) -> None:
        self._log = logger
        self._interval_s = interval_s
        self._counts: dict[tuple[str, int, str], int] = {}
        self._sample_loc: dict[tuple[str, int, str], Sequence[str | int]] = {}

    def record(self, route: str, status: int, type_: str, loc: Sequence[str | int] = ()) -> None:
        reason = (route, status, type_)
        count = self._counts.get(reason)
        if count is None:
            self._counts[reason] = 1
            self._sample_loc[reason] = loc
        else:
            self._counts[reason] = count + 1

    def flush(self) -> None:
        """Log what was counted since the last flush, if anything."""
        if not self._counts:
            return
        counts, samples = self._counts, self._sample_loc
        self._counts, self._sample_loc = {}, {}
        self._log.info(
            "requests rejected",
            extra={
                "total": sum(counts.values()),
                "interval_s": self._interval_s,
                "by_reason": [
                    {"route": r, "status": s, "type": t, "count": n, "sample_loc": samples[r, s, t]}
                    for (r, s, t), n in sorted(counts.items(), key=lambda kv: -kv[1])
                ],
            },
        )

    async def run(self) -> None:
        """Flush every interval until cancelled (then flush once more)."""
        try:
            while True:
                await asyncio.sleep(self._interval_s)
                self.flush()
        finally:
            self.flush()
