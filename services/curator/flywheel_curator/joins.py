"""The curator's durable state: runs waiting to be joined, feedback waiting for its run,
ratings waiting for an opposite rating, and the dedup / cap memory of the filters.

One SQLite file per curator process (WAL mode), so state spills to disk and memory stays
bounded however many runs arrive. Every change made while a micro-batch is processed stays in
one open SQLite transaction that is committed only *after* the batch's Delta commit, together
with the next offset of every topic-partition it covers (``applied``). A crash therefore
leaves the state at or behind the table, never ahead of it, and the consumer re-applies the
gap from Kafka on restart (see ``consumer.py``).

Every join is keyed by tenant as well as by run (``state_schema.py``): a run id is the
client's, so a reference from one tenant never finds another tenant's run; ``find_run`` says
when the run id is held only under another tenant, so the pipeline can refuse the reference.

Entries older than the retention window (by server receive time, so a replay expires the
same entries as the original run) are deleted as stream time advances.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flywheel_common.errors import ConfigError

from flywheel_curator.state_schema import (
    LEGACY_SUFFIX,
    RUN_MARK_NAMESPACES,
    TABLES,
    open_schema,
    run_key,
)

__all__ = ["JoinStore", "RatedRun", "RunLookup", "StoreKeys", "StoredRun", "TopicPartition"]

TopicPartition = tuple[str, int]
Waiting = tuple[dict[str, Any], str, int, int]  # (body, topic, partition, offset)

# Keys per ``IN (...)`` query: well under SQLite's default limit of 32,766 parameters.
_IN_CHUNK = 500
_LEGACY_NAMESPACES = tuple(ns + LEGACY_SUFFIX for ns in RUN_MARK_NAMESPACES)
# The pipeline's own memories, which only need to outlive client retries, replays and joins.
_JOIN_NAMESPACES = ("event", "rated", "fact", *RUN_MARK_NAMESPACES, *_LEGACY_NAMESPACES)
_STREAM_TIME = "stream_time"
_RUN_COLUMNS = "tenant, body, topic, part, off, edited, sampled, kept"


@dataclass(frozen=True, slots=True)
class StoredRun:
    """A run as the joins need it, with where it was read."""

    run_id: str
    tenant: str
    record: dict[str, Any]
    topic: str
    partition: int
    offset: int
    edited: bool
    sampled: bool
    kept: bool


@dataclass(frozen=True, slots=True)
class RunLookup:
    """What the store holds under one run id, as seen by one tenant."""

    run: StoredRun | None  # the tenant's own run
    elsewhere: bool  # another tenant holds a run with this id

    @property
    def cross_tenant(self) -> bool:
        """The id names only another tenant's run: a reference that must not be joined."""
        return self.run is None and self.elsewhere


@dataclass(frozen=True, slots=True)
class RatedRun:
    """One side of a would-be paired outcome: a run's response and the rating it got."""

    run_id: str
    polarity: int  # +1 rated up, -1 rated down
    body: dict[str, Any]


class JoinStore:
    """SQLite-backed state. Not thread-safe; one per curator process.

    ``identity`` names what the state belongs to (lake URI and consumer group): a file made
    for another lake or group is refused rather than silently mixed in.
    """

    def __init__(self, path: Path | None, *, identity: str, cache_kib: int = 16_384) -> None:
        self.path = path
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: transactions are explicit (begin/commit), never implicit.
        self._db = sqlite3.connect(
            ":memory:" if path is None else str(path),
            isolation_level=None,
            check_same_thread=False,  # built by one thread, then used by the loop's thread only
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        # A negative cache_size is KiB: the page cache is the only memory the state uses.
        self._db.execute(f"PRAGMA cache_size=-{int(cache_kib)}")
        self._check_identity(identity)  # before any migration: never touch another's file
        open_schema(self._db)
        self._db.execute(
            "INSERT INTO meta(key, value) VALUES ('identity', ?) ON CONFLICT(key) DO NOTHING",
            (identity,),
        )
        self._in_txn = False
        self._load_waiting()

    def _check_identity(self, identity: str) -> None:
        if not self._db.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'"
        ).fetchone():
            return
        row = self._db.execute("SELECT value FROM meta WHERE key='identity'").fetchone()
        if row is not None and row[0] != identity:
            raise ConfigError(
                f"state file {self.path} belongs to {row[0]!r}, not {identity!r}; "
                "use another state_dir or delete it"
            )

    def _load_waiting(self) -> None:
        # Run ids that may have feedback or facts waiting for them: every run looks itself up
        # there, and nearly none has anything waiting. A superset is harmless (an id whose rows
        # were rolled back or expired costs one query).
        self._waiting = self._keys_of("pending")
        self._waiting_facts = self._keys_of("pending_facts")
        marks = ", ".join("?" * len(_LEGACY_NAMESPACES))
        self._legacy_marks = bool(
            self._db.execute(
                f"SELECT 1 FROM seen WHERE ns IN ({marks}) LIMIT 1",  # noqa: S608 - placeholders
                _LEGACY_NAMESPACES,
            ).fetchone()
        )

    def _keys_of(self, table: str) -> set[tuple[str, str]]:
        query = f"SELECT DISTINCT tenant, run_id FROM {table}"  # noqa: S608 - fixed names
        return {(str(t), str(r)) for t, r in self._db.execute(query)}

    # -- transactions -------------------------------------------------------------------------

    def begin(self) -> None:
        if not self._in_txn:
            self._db.execute("BEGIN")
            self._in_txn = True

    def commit(self, applied: Mapping[TopicPartition, int]) -> None:
        """Make the batch's changes durable along with the offsets they cover."""
        self.begin()
        self._db.executemany(
            "INSERT INTO applied(topic, part, next_offset) VALUES (?, ?, ?) "
            "ON CONFLICT(topic, part) DO UPDATE SET next_offset=excluded.next_offset",
            [(t, p, o) for (t, p), o in applied.items()],
        )
        self._db.execute("COMMIT")
        self._in_txn = False

    def rollback(self) -> None:
        if self._in_txn:
            self._db.execute("ROLLBACK")
            self._in_txn = False
            self._load_waiting()  # pops that were rolled back are waiting again

    def applied(self, tp: TopicPartition) -> int | None:
        row = self._db.execute(
            "SELECT next_offset FROM applied WHERE topic=? AND part=?", tp
        ).fetchone()
        return None if row is None else int(row[0])

    def reset(self) -> None:
        """Forget everything (the state was ahead of the table, e.g. after a Delta restore)."""
        self.rollback()
        self._db.execute("BEGIN")
        for table in TABLES:
            self._db.execute(f"DELETE FROM {table}")  # noqa: S608 - fixed table names
        self._db.execute("DELETE FROM meta WHERE key=?", (_STREAM_TIME,))
        self._db.execute("COMMIT")
        self._load_waiting()

    def stream_time(self) -> int:
        """The stream time committed with the state (0 if none)."""
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (_STREAM_TIME,)).fetchone()
        return 0 if row is None else int(row[0])

    def set_stream_time(self, ts: int) -> None:
        """Stream time as of this batch, committed (or rolled back) with it."""
        self.begin()
        self._db.execute(
            "INSERT INTO meta(key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
            (_STREAM_TIME, str(ts)),
        )

    def close(self) -> None:
        self.rollback()
        self._db.close()

    # -- runs ---------------------------------------------------------------------------------

    def put_run(
        self, record: Mapping[str, Any], *, ts: int, topic: str, partition: int, offset: int
    ) -> None:
        self.begin()
        # A re-sent run (same tenant and run_id) keeps its flags: it is the same call.
        self._db.execute(
            "INSERT INTO runs(run_id, tenant, part, ts, body, topic, off) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(run_id, tenant) DO UPDATE SET body=excluded.body, ts=excluded.ts, "
            "topic=excluded.topic, part=excluded.part, off=excluded.off",
            (record["run_id"], record["tenant"], partition, ts, _dump(record), topic, offset),
        )

    def find_run(self, tenant: str, run_id: str) -> RunLookup:
        """The tenant's run ``run_id``, and whether another tenant holds that id too."""
        run: StoredRun | None = None
        elsewhere = False
        for row in self._db.execute(
            f"SELECT {_RUN_COLUMNS} FROM runs WHERE run_id=?",  # noqa: S608 - fixed names
            (run_id,),
        ):
            if row[0] == tenant:
                run = _stored_run(run_id, row)
            else:
                elsewhere = True
        return RunLookup(run, elsewhere)

    def get_run(self, tenant: str, run_id: str) -> StoredRun | None:
        row = self._db.execute(
            f"SELECT {_RUN_COLUMNS} FROM runs WHERE run_id=? AND tenant=?",  # noqa: S608
            (run_id, tenant),
        ).fetchone()
        return None if row is None else _stored_run(run_id, row)

    def tenants_holding(self, run_id: str) -> set[str]:
        """The tenants with a run ``run_id`` (nearly always none or one)."""
        return {
            str(r[0]) for r in self._db.execute("SELECT tenant FROM runs WHERE run_id=?", (run_id,))
        }

    def mark_run(self, tenant: str, run_id: str, *, flag: str) -> bool:
        """Set ``edited``, ``sampled`` or ``kept`` on the tenant's run; False if it was
        already set or the run is unknown."""
        if flag not in ("edited", "sampled", "kept"):
            raise ConfigError(f"unknown run flag {flag!r}")
        self.begin()
        cur = self._db.execute(
            f"UPDATE runs SET {flag}=1 WHERE run_id=? AND tenant=? AND {flag}=0",  # noqa: S608
            (run_id, tenant),
        )
        return cur.rowcount > 0

    # -- feedback waiting for its run, and facts waiting for their parent run ----------------------

    def add_pending(
        self,
        record: Mapping[str, Any],
        *,
        ts: int,
        topic: str,
        partition: int,
        offset: int,
    ) -> None:
        """Feedback waiting for its tenant's run ``record["run_id"]``."""
        key = (record["tenant"], record["run_id"])
        self._add_waiting("pending", self._waiting, key, record, ts, topic, partition, offset)

    def pop_pending(self, tenant: str, run_id: str) -> list[Waiting]:
        """Feedback that waited for the tenant's run ``run_id``, oldest first."""
        return self._pop_waiting("pending", self._waiting, (tenant, run_id))

    def add_pending_fact(
        self,
        tenant: str,
        run_id: str,
        body: Mapping[str, Any],
        *,
        ts: int,
        topic: str,
        partition: int,
        offset: int,
    ) -> None:
        """A fact waiting for the tenant's run ``run_id`` (a regeneration's parent)."""
        key = (tenant, run_id)
        table, waiting = "pending_facts", self._waiting_facts
        self._add_waiting(table, waiting, key, body, ts, topic, partition, offset)

    def pop_pending_facts(self, tenant: str, run_id: str) -> list[Waiting]:
        """Facts that waited for the tenant's run ``run_id``, oldest first."""
        return self._pop_waiting("pending_facts", self._waiting_facts, (tenant, run_id))

    def _add_waiting(
        self,
        table: str,
        waiting: set[tuple[str, str]],
        key: tuple[str, str],
        body: Mapping[str, Any],
        ts: int,
        topic: str,
        partition: int,
        offset: int,
    ) -> None:
        self.begin()
        tenant, run_id = key
        self._db.execute(
            f"INSERT INTO {table}(run_id, tenant, ts, body, topic, part, off) "  # noqa: S608
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (run_id, tenant, ts, _dump(body), topic, partition, offset),
        )
        waiting.add(key)

    def _pop_waiting(
        self, table: str, waiting: set[tuple[str, str]], key: tuple[str, str]
    ) -> list[Waiting]:
        if key not in waiting:
            return []
        waiting.discard(key)
        tenant, run_id = key
        rows = self._db.execute(
            f"SELECT body, topic, part, off FROM {table} WHERE run_id=? AND tenant=? "  # noqa: S608
            "ORDER BY ts, off",
            (run_id, tenant),
        ).fetchall()
        if not rows:
            return []
        self.begin()
        self._db.execute(
            f"DELETE FROM {table} WHERE run_id=? AND tenant=?",  # noqa: S608 - fixed names
            (run_id, tenant),
        )
        return [(json.loads(b), t, int(p), int(o)) for b, t, p, o in rows]

    # -- timers (stream time) ---------------------------------------------------------------------

    def add_timer(self, tenant: str, run_id: str, *, due: int) -> None:
        self.begin()
        self._db.execute(
            "INSERT INTO timers(run_id, tenant, due) VALUES (?, ?, ?) "
            "ON CONFLICT(run_id, tenant) DO NOTHING",
            (run_id, tenant, due),
        )

    def pop_due(self, *, now: int) -> list[tuple[str, str]]:
        """(tenant, run_id) of the runs whose timer is due at stream time ``now``, in due
        order; their timers go."""
        rows = self._db.execute(
            "SELECT tenant, run_id FROM timers WHERE due<=? ORDER BY due, run_id, tenant", (now,)
        ).fetchall()
        if not rows:
            return []
        self.begin()
        self._db.execute("DELETE FROM timers WHERE due<=?", (now,))
        return [(str(t), str(r)) for t, r in rows]

    # -- ratings waiting for an opposite rating ---------------------------------------------------

    def take_opposite(
        self, prompt_key: str, *, tenant: str, polarity: int, run_id: str
    ) -> RatedRun | None:
        """The oldest unmatched run of the tenant's same prompt rated the other way, marked
        matched."""
        row = self._db.execute(
            "SELECT run_id, body FROM rated WHERE prompt_key=? AND polarity=? AND matched=0 "
            "AND tenant=? AND run_id<>? ORDER BY ts, run_id LIMIT 1",
            (prompt_key, -polarity, tenant, run_id),
        ).fetchone()
        if row is None:
            return None
        self.begin()
        self._db.execute(
            "UPDATE rated SET matched=1 WHERE prompt_key=? AND run_id=?", (prompt_key, row[0])
        )
        return RatedRun(run_id=row[0], polarity=-polarity, body=json.loads(row[1]))

    def add_rated(
        self,
        prompt_key: str,
        *,
        tenant: str,
        polarity: int,
        run_id: str,
        ts: int,
        body: Mapping[str, Any],
        matched: bool,
    ) -> None:
        self.begin()
        self._db.execute(
            "INSERT INTO rated(prompt_key, tenant, polarity, run_id, ts, body, matched) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(prompt_key, run_id) DO NOTHING",
            (prompt_key, tenant, polarity, run_id, ts, _dump(body), int(matched)),
        )

    # -- dedup and caps (namespaced so each filter keeps its own memory) -------------------------

    def add_seen(self, ns: str, key: str, *, ts: int) -> bool:
        """Remember ``key``; True if it was new."""
        self.begin()
        cur = self._db.execute(
            "INSERT INTO seen(ns, key, ts) VALUES (?, ?, ?) ON CONFLICT(ns, key) DO NOTHING",
            (ns, key, ts),
        )
        return cur.rowcount > 0

    def seen_among(self, ns: str, keys: Sequence[str]) -> set[str]:
        """Which of ``keys`` are remembered under ``ns``."""
        found: set[str] = set()
        for i in range(0, len(keys), _IN_CHUNK):
            chunk = keys[i : i + _IN_CHUNK]
            marks = ",".join("?" * len(chunk))
            found.update(
                r[0]
                for r in self._db.execute(
                    f"SELECT key FROM seen WHERE ns=? AND key IN ({marks})",  # noqa: S608
                    (ns, *chunk),
                )
            )
        return found

    def is_seen(self, ns: str, key: str) -> bool:
        row = self._db.execute("SELECT 1 FROM seen WHERE ns=? AND key=?", (ns, key)).fetchone()
        return row is not None

    def add_run_mark(self, ns: str, tenant: str, run_id: str, *, ts: int) -> bool:
        """Remember something about the tenant's run (``regenerated``, ``spurned``, ``sft``);
        True if it was new."""
        if self._legacy_marks and self.is_seen(ns + LEGACY_SUFFIX, run_id):
            return False
        return self.add_seen(ns, run_key(tenant, run_id), ts=ts)

    def has_run_mark(self, ns: str, tenant: str, run_id: str) -> bool:
        if self.is_seen(ns, run_key(tenant, run_id)):
            return True
        # A version-1 memory of a run whose tenant was not known (``state_schema.py``).
        return self._legacy_marks and self.is_seen(ns + LEGACY_SUFFIX, run_id)

    def count(self, ns: str, key: str) -> int:
        row = self._db.execute("SELECT n FROM counters WHERE ns=? AND key=?", (ns, key)).fetchone()
        return 0 if row is None else int(row[0])

    def increment(self, ns: str, key: str, by: int = 1) -> int:
        self.begin()
        self._db.execute(
            "INSERT INTO counters(ns, key, n) VALUES (?, ?, ?) "
            "ON CONFLICT(ns, key) DO UPDATE SET n=n+excluded.n",
            (ns, key, by),
        )
        return self.count(ns, key)

    # -- retention ------------------------------------------------------------------------------

    def expire(self, *, before_ts: int) -> int:
        """Drop joins older than ``before_ts`` (ms); returns how many feedbacks gave up waiting.

        Filter dedup memory and caps are kept: a duplicate is a duplicate however late.
        """
        self.begin()
        self._db.execute("DELETE FROM runs WHERE ts<?", (before_ts,))
        self._db.execute("DELETE FROM rated WHERE ts<?", (before_ts,))
        # The pipeline's own memories expire with the window; the filters' namespaces are kept.
        marks = ", ".join("?" for _ in _JOIN_NAMESPACES)
        self._db.execute(
            f"DELETE FROM seen WHERE ns IN ({marks}) AND ts<?",  # noqa: S608 - placeholders
            (*_JOIN_NAMESPACES, before_ts),
        )
        facts = self._db.execute("DELETE FROM pending_facts WHERE ts<?", (before_ts,)).rowcount
        self._db.execute("DELETE FROM timers WHERE due<?", (before_ts,))
        expired = self._db.execute("DELETE FROM pending WHERE ts<?", (before_ts,)).rowcount
        if expired or facts or self._legacy_marks:
            self._load_waiting()
        return int(expired)

    def sizes(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for table in ("runs", "pending", "pending_facts", "timers", "rated", "seen"):
            out[table] = int(
                self._db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # noqa: S608
            )
        return out

    def iter_applied(self) -> Iterator[tuple[TopicPartition, int]]:
        for t, p, o in self._db.execute("SELECT topic, part, next_offset FROM applied"):
            yield (str(t), int(p)), int(o)


def _stored_run(run_id: str, row: Sequence[Any]) -> StoredRun:
    tenant, body, topic, part, off, edited, sampled, kept = row
    return StoredRun(
        run_id=run_id,
        tenant=str(tenant),
        record=json.loads(body),
        topic=str(topic),
        partition=int(part),
        offset=int(off),
        edited=bool(edited),
        sampled=bool(sampled),
        kept=bool(kept),
    )


def _dump(record: Mapping[str, Any]) -> str:
    return json.dumps(record, separators=(",", ":"), default=str, ensure_ascii=False)


class StoreKeys:
    """A filter ``KeyState`` (exact / event dedup) kept in the join store: durable, on disk
    rather than in memory, and committed or rolled back with the store's batch transaction,
    so dedup survives restarts and stays consistent with the table."""

    def __init__(self, store: JoinStore, *, ns: str) -> None:
        self._store = store
        self._ns = ns

    def __contains__(self, key: int) -> bool:
        return self._store.is_seen(self._ns, _hex(key))

    def contains_many(self, keys: Sequence[int]) -> list[bool]:
        """``[k in self for k in keys]`` in a few queries (the chain's batch lookup)."""
        hexed = [_hex(k) for k in keys]
        found = self._store.seen_among(self._ns, hexed)
        return [h in found for h in hexed]

    def add(self, key: int) -> None:
        self._store.add_seen(self._ns, _hex(key), ts=0)

    def commit(self) -> None:
        """Committed with the store (after the Delta commit)."""

    def rollback(self) -> None:
        """Rolled back with the store."""

    def load(self, keys: Iterable[str | int]) -> None:
        for key in keys:
            self.add(key if isinstance(key, int) else int(key[:16], 16))

    def __len__(self) -> int:
        row = self._store._db.execute(
            "SELECT count(*) FROM seen WHERE ns=?", (self._ns,)
        ).fetchone()
        return int(row[0])


def _hex(key: int) -> str:
    return f"{key & 0xFFFF_FFFF_FFFF_FFFF:016x}"
