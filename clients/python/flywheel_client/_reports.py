"""Dropped events are never silent: each is counted, logged (at most one line per reason every
``WARN_INTERVAL_S``, with the count since the last) and handed to ``on_error``.

Drops seen on a caller's thread (queue full, client closed) are only counted and queued there,
so the call stays cheap; the dispatcher thread reports them (``flush_reports``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Sequence

from flywheel_client._config import ClientConfig
from flywheel_client._errors import DropReason, ErrorDetail, EventsDropped
from flywheel_client._stats import Counters

__all__ = ["WARN_INTERVAL_S", "Reporter"]

log = logging.getLogger("flywheel_client")

WARN_INTERVAL_S = 10.0
_COUNTER: dict[DropReason, str] = {
    "rejected": "rejected",
    "overflow": "dropped_overflow",
    "spool_full": "dropped_spool_full",
    "closed": "dropped_closed",
}


class Reporter:
    def __init__(self, config: ClientConfig, stats: Counters) -> None:
        self._on_error = config.on_error
        self._stats = stats
        self._queued: deque[tuple[DropReason, str]] = deque()
        self._last_log: dict[str, float] = {}
        self._unlogged: dict[str, int] = {}
        self._lock = threading.Lock()  # logs and callbacks may come from two threads at close

    def drop_now(self, reason: DropReason, event_id: str, *, dispatcher_alive: bool) -> None:
        """A caller's thread dropped an event; reported now if no dispatcher will."""
        self._stats.add(**{_COUNTER[reason]: 1})
        self._queued.append((reason, event_id))
        if not dispatcher_alive:
            self.flush_reports()

    def flush_reports(self) -> None:
        if not self._queued:
            return
        by_reason: dict[DropReason, list[str]] = {}
        while self._queued:
            reason, event_id = self._queued.popleft()
            by_reason.setdefault(reason, []).append(event_id)
        for reason, ids in by_reason.items():
            detail = "in-memory queue full" if reason == "overflow" else "client closed"
            self._report(EventsDropped(reason, tuple(ids)), detail)

    def dropped(
        self,
        reason: DropReason,
        event_ids: Sequence[str],
        detail: str,
        *,
        status: int | None = None,
        errors: Sequence[ErrorDetail] = (),
    ) -> None:
        """The dispatcher dropped events: count, log, call back."""
        if not event_ids:
            return
        self._stats.add(**{_COUNTER[reason]: len(event_ids)})
        self._report(
            EventsDropped(reason, tuple(event_ids), status=status, errors=tuple(errors)), detail
        )

    def unencodable(self, event_id: str, exc: Exception) -> None:
        error = ErrorDetail(loc=(), msg=f"not JSON-encodable: {exc}", type="unencodable")
        self.dropped("rejected", [event_id], "not JSON-encodable", errors=[error])

    def retrying(self, status: int | None, error: str | None, delay_s: float) -> None:
        why = f"HTTP {status}" if status is not None else (error or "no answer")
        self._log("retry", f"flywheel client: delivery failed ({why}); retrying in {delay_s:.2f}s")

    def _report(self, dropped: EventsDropped, detail: str) -> None:
        fields = "; ".join(
            f"{'.'.join(map(str, e.loc))} [{e.type}] {e.msg}" for e in dropped.errors[:5]
        )
        self._log(
            dropped.reason,
            f"flywheel client: {len(dropped.event_ids)} event(s) dropped: {dropped.reason} "
            f"({detail}{', HTTP ' + str(dropped.status) if dropped.status else ''})"
            + (f": {fields}" if fields else ""),
        )
        if self._on_error is None:
            return
        try:
            with self._lock:
                self._on_error(dropped)
        except Exception:
            self._stats.add(callback_errors=1)
            log.exception("flywheel client: on_error callback raised")

    def _log(self, key: str, message: str) -> None:
        """One warning per ``key`` every ``WARN_INTERVAL_S``; the ones in between are counted
        and the count is told with the next."""
        now = time.monotonic()
        with self._lock:
            last = self._last_log.get(key)
            if last is not None and now - last < WARN_INTERVAL_S:
                self._unlogged[key] = self._unlogged.get(key, 0) + 1
                return
            self._last_log[key] = now
            skipped = self._unlogged.pop(key, 0)
        suffix = f" (+{skipped} similar since the last warning)" if skipped else ""
        log.warning(message + suffix)
