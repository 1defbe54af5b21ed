"""The delivery engine behind both clients: a bounded queue in front, a dispatcher thread behind.

The caller's thread only appends the event (its id already set) to a deque: no lock, no I/O,
no encoding. The dispatcher thread encodes what was queued into the store (memory or spool),
forms batches by count, bytes and linger, hands them to the transport's workers and applies
their answers: acknowledged events are forgotten, refused ones reported, the rest retried
after a backoff that pauses the whole client. It never waits on the network itself, so a
spool is written promptly even while every worker waits on a dead server.

Process hooks: at exit every open client is closed with its ``exit_timeout_s``; in a child
made by ``fork()`` every client starts afresh (see ``_after_fork_in_child``).
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from collections import deque

from flywheel_client._backoff import Backoff
from flywheel_client._config import ClientConfig
from flywheel_client._errors import ClientConfigError
from flywheel_client._events import Event
from flywheel_client._reports import Reporter
from flywheel_client._spool import Spool
from flywheel_client._stats import ClientStats, Counters
from flywheel_client._store import MemoryStore, Store
from flywheel_client._transport import Answer, Job, Transport
from flywheel_client._verdicts import apply_answer
from flywheel_client._wire import encode_event

__all__ = ["Engine"]

log = logging.getLogger("flywheel_client")

_ABSORB_CHUNK = 1000
"""Events encoded per pass: how far the queue may overshoot its bound while a chunk is encoded."""
_IDLE_WAIT_S = 1.0
"""The dispatcher's longest sleep: a safety net for a wake-up lost to a race."""
_MIN_LOOK_S = 0.005
"""Shortest interval between looks at the queue, for ``linger_s=0``."""
_SPOOL_WRITE_S = 0.005
"""With a spool, queued events are written at most this long after the first of them."""
_STOP_RESERVE_S = 0.25
"""Of close()'s timeout, at most this much is kept for stopping the threads."""
_ENGINES: weakref.WeakSet[Engine] = weakref.WeakSet()


class Engine:
    """See the module docstring. Every public method may be called from any thread."""

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self._spooling = config.spool_path is not None
        self.stats = Counters()
        self._closed = False
        # Opened now, so that a bad spool path fails the constructor rather than a later call.
        self._store: Store | None = self._open_store()
        self._reset_runtime()
        _ENGINES.add(self)
        if self._store.held:  # a spool with events of an earlier run: send them now
            self._start()

    def _open_store(self) -> Store:
        if self.config.spool_path is None:
            return MemoryStore()
        spool = Spool(self.config.spool_path, max_bytes=self.config.spool_max_bytes)
        if spool.adopted:
            log.info("flywheel client: adopted %d events of a dead process's spool", spool.adopted)
        return spool

    def _reset_runtime(self) -> None:
        """Everything that must be new in a forked child: queue, locks, threads, state."""
        self._ingress: deque[Event] = deque()
        self._changed = threading.Condition(threading.Lock())
        self._wake = threading.Event()
        self._answers: deque[Answer] = deque()
        self._start_lock = threading.Lock()
        self._dispatcher: threading.Thread | None = None
        self._transport: Transport | None = None
        self._reporter = Reporter(self.config, self.stats)
        self._backoff = Backoff(base_s=self.config.backoff_base_s, max_s=self.config.backoff_max_s)
        self._running = False
        self._stopping = False
        self._close_deadline: float | None = None
        self._waiters = 0  # callers blocked for room, and flushers
        self._flushing = 0
        self._held = 0  # events past the queue: in the store, or being encoded into it
        self._memory_held = 0  # of which in memory
        self._pause_until = 0.0
        self._pending_since: float | None = None  # when the oldest ready event became ready
        self._last_look = time.monotonic()  # when the dispatcher last took the queued events
        self._in_flight = 0
        self._max_events = self.config.max_batch_events
        self._max_bytes = self.config.max_batch_bytes

    # -- the caller's side ------------------------------------------------------------------

    def put(self, event: Event, *, block: bool = True) -> bool:
        """Queue ``event``, or drop it (counted and reported).

        With the queue full, policy ``drop`` drops it and ``block`` waits up to
        ``block_timeout_s`` first. Returns False only for ``block=False`` under policy
        ``block`` with the queue full: nothing happened, and the caller should call again
        from a thread that may wait. After ``close()`` every event is dropped.
        """
        if self._closed:
            self._reporter.drop_now("closed", event["event_id"], dispatcher_alive=False)
            return True
        if len(self._ingress) + self._memory_held >= self.config.max_queue_events:
            blocking = self.config.overflow == "block"
            if blocking and not block:
                return False
            if not (blocking and self._wait_for_room()):
                self._reporter.drop_now("overflow", event["event_id"], dispatcher_alive=True)
                return True
        self._ingress.append(event)
        if not self._running:
            self._start()
        n = len(self._ingress)
        # Woken for a full batch; else the dispatcher looks every linger_s by itself. With a
        # spool, woken for the first event too, so that it is on disk within milliseconds.
        if (n >= self._max_events or (n == 1 and self._spooling)) and not self._wake.is_set():
            self._wake.set()
        return True

    def _wait_for_room(self) -> bool:
        deadline = time.monotonic() + self.config.block_timeout_s
        with self._changed:
            self._waiters += 1
            try:
                while len(self._ingress) + self._memory_held >= self.config.max_queue_events:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or self._closed:
                        return False
                    self._wake.set()
                    self._changed.wait(remaining)
            finally:
                self._waiters -= 1
        return True

    def _start(self) -> None:
        with self._start_lock:
            if self._running or self._closed:
                return
            if self._store is None:  # a forked child: a spool slot of its own
                try:
                    self._store = self._open_store()
                except ClientConfigError:
                    log.exception("flywheel client: no spool slot after fork; memory only")
                    self._store = MemoryStore()
            self._transport = Transport(self.config, self._on_answer)
            self._dispatcher = threading.Thread(
                target=self._run,
                args=(self._store, self._transport),
                name="flywheel-client",
                daemon=True,
            )
            self._running = True
            self._dispatcher.start()

    def _on_answer(self, answer: Answer) -> None:  # on a worker thread
        self._answers.append(answer)
        self._wake.set()

    def snapshot(self) -> ClientStats:
        return self.stats.snapshot(queued=len(self._ingress) + self._held)

    # -- flush and close --------------------------------------------------------------------

    def flush(self, timeout_s: float) -> bool:
        """Send everything queued now, linger or not; True when all of it was delivered or
        refused within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            self._flushing += 1
            self._waiters += 1
            try:
                self._wake.set()
                while self._ingress or self._held:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or not self._running:
                        return False
                    self._changed.wait(min(remaining, _IDLE_WAIT_S))
            finally:
                self._flushing -= 1
                self._waiters -= 1
        return True

    def close(self, timeout_s: float) -> bool:
        """Stop taking events, deliver what is queued within ``timeout_s``, stop the threads;
        returns within the timeout even when the server is down. True when everything was
        delivered; what is left is reported ``closed`` (memory) or stays in the spool."""
        deadline = time.monotonic() + timeout_s
        with self._start_lock:
            if self._closed:
                return not (self._ingress or self._held)
            self._closed = True
            self._close_deadline = deadline
        if not self._running:
            if self._store is not None:
                self._store.close()
            return True
        # Keep a little of the time for stopping, so that what is left is reported (or left
        # in the spool) before close() returns.
        delivered = self.flush(timeout_s - min(_STOP_RESERVE_S, timeout_s / 5))
        self._stopping = True
        self._wake.set()
        if self._dispatcher is not None:
            self._dispatcher.join(max(0.0, deadline - time.monotonic()))
        if self._transport is not None:
            self._transport.stop(max(0.0, deadline - time.monotonic()))
        return delivered

    # -- the dispatcher thread --------------------------------------------------------------

    def _run(self, store: Store, transport: Transport) -> None:
        if store.held:  # left by an earlier process: due at once
            self._pending_since = float("-inf")
        self._held = store.held
        while not self._stopping:
            self._wake.wait(self._next_wait(store))
            self._wake.clear()
            if self._spooling and not (self._answers or self._stopping):
                # Coalesce spool writes: one transaction per _SPOOL_WRITE_S at most.
                gap = self._last_look + _SPOOL_WRITE_S - time.monotonic()
                if gap > 0:
                    time.sleep(gap)
            try:
                self._absorb(store)
                while self._answers:
                    self._apply(store, self._answers.popleft())
                if not self._stopping:
                    self._dispatch(store, transport)
            except Exception:  # a bug, or a broken spool: keep going, loudly
                log.exception("flywheel client: dispatcher error")
                self._wake.wait(self.config.backoff_base_s)
            self._held = store.held
            self._memory_held = store.in_memory
            self._reporter.flush_reports()
            if self._waiters:
                with self._changed:
                    self._changed.notify_all()
        self._finish(store)

    def _next_wait(self, store: Store) -> float:
        now = time.monotonic()
        if self._answers or len(self._ingress) >= self._max_events:
            return 0.0
        # Queued events are not signalled one by one (that would cost each call a thread
        # switch), so look at the queue every linger, or sooner while a spool write is due.
        waits = [_IDLE_WAIT_S, self._last_look + max(self.config.linger_s, _MIN_LOOK_S) - now]
        if self._ingress and (self._spooling or self._flushing):
            waits.append(self._last_look + _SPOOL_WRITE_S - now)
        if store.ready and self._in_flight < self.config.max_in_flight:
            if now < self._pause_until:
                waits.append(self._pause_until - now)
            elif self._flushing:
                return 0.0
            elif self._pending_since is not None:
                waits.append(self._pending_since + self.config.linger_s - now)
        return max(0.0, min(waits))

    def _absorb(self, store: Store) -> None:
        previous, self._last_look = self._last_look, time.monotonic()
        while self._ingress:
            count = min(len(self._ingress), _ABSORB_CHUNK)
            # Counted before they leave the queue, so flush() never sees them nowhere.
            self._held = store.held + count
            self._memory_held = store.in_memory + count
            items: list[tuple[str, bytes]] = []
            for _ in range(count):
                event = self._ingress.popleft()
                try:
                    items.append((event["event_id"], encode_event(event)))
                except (TypeError, ValueError) as exc:
                    self._reporter.unencodable(event["event_id"], exc)
            was_ready = store.ready
            try:
                evicted = store.add(items)
            except Exception as exc:  # disk full, I/O error: these events are lost; say so
                log.exception("flywheel client: spool write failed")
                self._reporter.dropped("spool_full", [i for i, _ in items], f"write failed: {exc}")
                continue
            if isinstance(store, Spool):
                self.stats.add(spooled=len(items))
            if evicted:
                self._reporter.dropped("spool_full", evicted, "spool full, oldest dropped")
            if not was_ready and store.ready:
                # They were queued after the previous look: their linger runs from there.
                self._pending_since = previous
            self._memory_held = store.in_memory

    def _dispatch(self, store: Store, transport: Transport) -> None:
        now = time.monotonic()
        if now < self._pause_until:
            return
        while self._in_flight < self.config.max_in_flight and store.ready:
            lingered = self._pending_since is not None and (
                now >= self._pending_since + self.config.linger_s
            )
            full = store.ready >= self._max_events or store.ready_bytes >= self._max_bytes
            if not (full or lingered or self._flushing):
                return
            timeout = self.config.request_timeout_s
            if self._close_deadline is not None:  # closing: no request outlives close()
                timeout = max(0.001, min(timeout, self._close_deadline - now))
            self._in_flight += 1
            self.stats.add(requests=1)
            transport.submit(Job(store.take(self._max_events, self._max_bytes), timeout))
            if not store.ready:
                self._pending_since = None

    def _apply(self, store: Store, answer: Answer) -> None:
        self._in_flight -= 1
        self.stats.add(bytes_sent=answer.wire_bytes)
        applied = apply_answer(store, answer, self._reporter, self.stats)
        now = time.monotonic()
        if applied.retry:
            self._pause_until = now + self._backoff.next_delay(applied.retry_after_s)
            self._reporter.retrying(answer.status, answer.error, self._pause_until - now)
        elif applied.progress:
            self._backoff.reset()
        if applied.shrink_to is not None:
            self._max_events, self._max_bytes = applied.shrink_to
        if store.ready and (self._pending_since is None or applied.resend):
            # Put back: these events already waited their linger.
            self._pending_since = float("-inf")

    def _finish(self, store: Store) -> None:
        """Closing: events still in memory are lost, and reported; a spool keeps them."""
        if isinstance(store, MemoryStore):
            left = [item.event_id for item in store.drain()]
            self._reporter.dropped("closed", left, "close() timed out before delivery")
        store.close()
        self._held = store.held if isinstance(store, Spool) else 0
        self._memory_held = 0
        self._reporter.flush_reports()
        self._running = False
        with self._changed:
            self._changed.notify_all()

    # -- fork -------------------------------------------------------------------------------

    def after_fork_in_child(self) -> None:
        """The child starts empty: the parent's queued events are the parent's to send, its
        threads do not exist here, and its spool slot and sockets stay the parent's."""
        if isinstance(self._store, Spool):
            self._store.abandon()
            self._store = None
        elif self._store is not None:
            self._store = MemoryStore()
        if self._transport is not None:
            self._transport.abandon()
        self.stats = Counters()
        self._reset_runtime()


def _after_fork_in_child() -> None:
    for engine in list(_ENGINES):
        engine.after_fork_in_child()


def _close_all_at_exit() -> None:
    for engine in list(_ENGINES):
        if engine.config.exit_timeout_s is not None:
            engine.close(engine.config.exit_timeout_s)


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_close_all_at_exit)
