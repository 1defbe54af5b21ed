"""A SQLite spool: events stay on disk until the server has them, across outages and restarts.

One process owns one spool file at a time, through an ``flock`` on ``<file>.lock`` that the
kernel releases when the process dies, even by SIGKILL. A second process given the same path
(a forked worker, a second instance) takes the next free slot, ``<file>.1``, ``<file>.2``...;
every owner adopts the events of slots that no live process holds, so what a dead process
left behind is sent by the next one to start, whichever slot it gets.

WAL journal with ``synchronous=NORMAL``: a committed write survives the process being killed;
after a power loss the last transactions may be gone (no fsync per write, by choice: it would
cost milliseconds per batch).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from flywheel_client._errors import ClientConfigError
from flywheel_client._store import Pending, fill_batch

__all__ = ["MAX_SLOTS", "Spool"]

MAX_SLOTS = 64
"""Processes that can share one spool path at once."""
_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    body BLOB NOT NULL,
    created_at REAL NOT NULL
)
"""
_EVICT_CHUNK = 256


def _slot(path: Path, n: int) -> Path:
    return path if n == 0 else path.with_name(f"{path.name}.{n}")


def _try_lock(slot: Path) -> int | None:
    fd = os.open(f"{slot}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _connect(slot: Path) -> sqlite3.Connection:
    db = sqlite3.connect(slot, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA busy_timeout=5000")
    db.execute(_SCHEMA)
    return db


class Spool:
    """The spool slot this process owns (see the module's docstring)."""

    def __init__(self, path: str | Path, *, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        base = Path(path)
        try:
            base.parent.mkdir(parents=True, exist_ok=True)
            for n in range(MAX_SLOTS):
                fd = _try_lock(_slot(base, n))
                if fd is not None:
                    break
            else:
                raise ClientConfigError(f"all {MAX_SLOTS} slots of spool {base} are in use")
            self.path = _slot(base, n)
            self._lock_fd = fd
            self._db = _connect(self.path)
            self.adopted = self._adopt_orphans(base, mine=n)
            count, size = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(body)), 0) FROM events"
            ).fetchone()
        except (OSError, sqlite3.Error) as exc:
            raise ClientConfigError(f"cannot open spool {base}: {exc}") from exc
        self._count: int = count
        self._bytes: int = size
        self._in_flight: dict[int, int] = {}  # key -> body bytes

    def _adopt_orphans(self, base: Path, *, mine: int) -> int:
        """Move the events of slots no live process holds into this one; returns how many."""
        adopted = 0
        for n in range(MAX_SLOTS):
            slot = _slot(base, n)
            if n == mine or not slot.exists():
                continue
            fd = _try_lock(slot)
            if fd is None:  # a live process owns it
                continue
            try:
                _connect(slot).close()  # recovers its WAL, if a dead owner left one
                self._db.execute("ATTACH DATABASE ? AS orphan", (str(slot),))
                self._db.execute("BEGIN IMMEDIATE")
                cursor = self._db.execute(
                    "INSERT OR IGNORE INTO main.events (event_id, body, created_at) "
                    "SELECT event_id, body, created_at FROM orphan.events ORDER BY seq"
                )
                adopted += cursor.rowcount
                self._db.execute("DELETE FROM orphan.events")
                self._db.execute("COMMIT")
                self._db.execute("DETACH DATABASE orphan")
                for suffix in ("", "-wal", "-shm"):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(f"{slot}{suffix}")
            finally:
                os.close(fd)  # the lock file stays: unlinking it would race another opener
        return adopted

    @property
    def ready(self) -> int:
        return self._count - len(self._in_flight)

    @property
    def ready_bytes(self) -> int:
        return self._bytes - sum(self._in_flight.values())

    @property
    def held(self) -> int:
        return self._count

    @property
    def in_memory(self) -> int:
        return 0

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def add(self, items: Sequence[tuple[str, bytes]]) -> list[str]:
        if not items:
            return []
        now = time.time()
        self._db.execute("BEGIN")
        try:
            before = self._db.total_changes
            self._db.executemany(
                "INSERT OR IGNORE INTO events (event_id, body, created_at) VALUES (?, ?, ?)",
                [(event_id, body, now) for event_id, body in items],
            )
            # OR IGNORE: an id already here (a replay) is neither stored nor counted twice.
            inserted = self._db.total_changes - before
            self._count += inserted
            self._bytes += sum(len(body) for _, body in items) if inserted == len(items) else 0
            if inserted != len(items):
                self._recount()
            evicted = self._evict() if self._bytes > self._max_bytes else []
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            self._recount()
            raise
        return evicted

    def _recount(self) -> None:
        self._count, self._bytes = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(body)), 0) FROM events"
        ).fetchone()

    def _evict(self) -> list[str]:
        """Delete the oldest events not in flight until the spool fits its bound."""
        evicted: list[str] = []
        while self._bytes > self._max_bytes:
            rows = self._db.execute(
                "SELECT seq, event_id, LENGTH(body) FROM events "
                "WHERE seq NOT IN (SELECT value FROM json_each(?)) ORDER BY seq LIMIT ?",
                (json.dumps(list(self._in_flight)), _EVICT_CHUNK),
            ).fetchall()
            if not rows:
                break
            doomed: list[int] = []
            for seq, event_id, size in rows:
                if self._bytes <= self._max_bytes:
                    break
                doomed.append(seq)
                evicted.append(event_id)
                self._bytes -= size
                self._count -= 1
            self._db.execute(
                "DELETE FROM events WHERE seq IN (SELECT value FROM json_each(?))",
                (json.dumps(doomed),),
            )
        return evicted

    def take(self, max_events: int, max_bytes: int) -> list[Pending]:
        if self.ready <= 0:
            return []
        rows = self._db.execute(
            "SELECT seq, event_id, body FROM events "
            "WHERE seq NOT IN (SELECT value FROM json_each(?)) ORDER BY seq LIMIT ?",
            (json.dumps(list(self._in_flight)), max_events),
        ).fetchall()
        batch = fill_batch((Pending(*row) for row in rows), max_events, max_bytes)
        for item in batch:
            self._in_flight[item.key] = len(item.body)
        return batch

    def finish(self, batch: Iterable[Pending]) -> None:
        keys = [item.key for item in batch if item.key in self._in_flight]
        if not keys:
            return
        self._db.execute(
            "DELETE FROM events WHERE seq IN (SELECT value FROM json_each(?))", (json.dumps(keys),)
        )
        for key in keys:
            self._bytes -= self._in_flight.pop(key)
            self._count -= 1

    def release(self, batch: Iterable[Pending]) -> None:
        for item in batch:
            self._in_flight.pop(item.key, None)

    def close(self) -> None:
        self._in_flight.clear()
        self._db.close()
        os.close(self._lock_fd)

    def abandon(self) -> None:
        """Drop this handle in a forked child without touching the parent's file or lock:
        SQLite forbids using (closing included) a connection across ``fork()``, and closing
        the inherited lock descriptor would not release the parent's lock anyway."""
        _ABANDONED.append(self._db)
        with contextlib.suppress(OSError):
            os.close(self._lock_fd)


_ABANDONED: list[sqlite3.Connection] = []
"""Connections inherited over ``fork()``: kept referenced so they are never closed here."""
