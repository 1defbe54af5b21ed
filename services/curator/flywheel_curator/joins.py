"""The curator's durable state: runs waiting to be joined, feedback waiting for its run,
ratings waiting for an opposite rating, and the dedup / cap memory of the filters.

One SQLite file per curator process (WAL mode), so state spills to disk and memory stays
bounded however many runs arrive. Every change made while a micro-batch is processed stays in
one open SQLite transaction that is committed only *after* the batch's Delta commit, together
with the next offset of every topic-partition it covers (``applied``). A crash therefore
leaves the state at or behind the table, never ahead of it, and the consumer re-applies the
gap from Kafka on restart (see ``consumer.py``).

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

__all__ = ["JoinStore", "RatedRun", "StoreKeys", "StoredRun", "TopicPartition"]

TopicPartition = tuple[str, int]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    part INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    body TEXT NOT NULL,
    topic TEXT NOT NULL,
    off INTEGER NOT NULL,
    edited INTEGER NOT NULL DEFAULT 0,
    sampled INTEGER NOT NULL DEFAULT 0,
    kept INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS runs_ts ON runs(ts);
CREATE TABLE IF NOT EXISTS pending (
    run_id TEXT NOT NULL,
    ts INTEGER NOT NULL,
    body TEXT NOT NULL,
    topic TEXT NOT NULL,
    part INTEGER NOT NULL,
    off INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS pending_run ON pending(run_id);
CREATE INDEX IF NOT EXISTS pending_ts ON pending(ts);
-- Pairing facts about a regeneration, waiting for their parent run.
CREATE TABLE IF NOT EXISTS pending_facts (
    run_id TEXT NOT NULL,
    ts INTEGER NOT NULL,
    body TEXT NOT NULL,
    topic TEXT NOT NULL,
    part INTEGER NOT NULL,
    off INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS pending_facts_run ON pending_facts(run_id);
CREATE INDEX IF NOT EXISTS pending_facts_ts ON pending_facts(ts);
-- Regenerations that count as kept if nothing else happens by ``due`` (stream time).
CREATE TABLE IF NOT EXISTS timers (
    run_id TEXT PRIMARY KEY,
    due INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS timers_due ON timers(due);
CREATE TABLE IF NOT EXISTS rated (
    prompt_key TEXT NOT NULL,
    polarity INTEGER NOT NULL,
    run_id TEXT NOT NULL,
    ts INTEGER NOT NULL,
    body TEXT NOT NULL,
    matched INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (prompt_key, run_id)
);
CREATE INDEX IF NOT EXISTS rated_ts ON rated(ts);
-- take_opposite's lookup: without it every rating scans all ratings of its prompt (matched
-- ones included) and sorts them, so the join cost grows with the prompt's history. Partial:
-- only unmatched rows are ever looked up, and matched ones leave the index.
CREATE INDEX IF NOT EXISTS rated_open ON rated(prompt_key, polarity, ts, run_id) WHERE matched=0;
CREATE TABLE IF NOT EXISTS seen (
    ns TEXT NOT NULL,
    key TEXT NOT NULL,
    ts INTEGER NOT NULL,
    PRIMARY KEY (ns, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS counters (
    ns TEXT NOT NULL,
    key TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (ns, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS applied (
    topic TEXT NOT NULL,
    part INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    PRIMARY KEY (topic, part)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


# Keys per ``IN (...)`` query: well under SQLite's default limit of 32,766 parameters.
_IN_CHUNK = 500
_TABLES = ("runs", "pending", "pending_facts", "timers", "rated", "seen", "counters", "applied")
# The pipeline's own memories, which only need to outlive client retries, replays and joins.
_JOIN_NAMESPACES = ("event", "rated", "sft", "fact", "regenerated", "spurned")


@dataclass(frozen=True, slots=True)
class StoredRun:
    """A run as the joins need it, with where it was read."""

    run_id: str
    record: dict[str, Any]
    topic: str
    partition: int
    offset: int
    edited: bool
    sampled: bool
    kept: bool


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
        self._db.executescript(_SCHEMA)
        row = self._db.execute("SELECT value FROM meta WHERE key='identity'").fetchone()
        if row is None:
            self._db.execute("INSERT INTO meta(key, value) VALUES ('identity', ?)", (identity,))
        elif row[0] != identity:
            raise ConfigError(
                f"state file {path} belongs to {row[0]!r}, not {identity!r}; "
                "use another state_dir or delete it"
            )
        self._in_txn = False
        self._load_waiting()

    def _load_waiting(self) -> None:
        # Run ids that may have feedback or facts waiting for them: every run looks itself up
        # there, and nearly none has anything waiting. A superset is harmless (an id whose rows
        # were rolled back or expired costs one query).
        self._waiting = {r[0] for r in self._db.execute("SELECT DISTINCT run_id FROM pending")}
        self._waiting_facts = {
            r[0] for r in self._db.execute("SELECT DISTINCT run_id FROM pending_facts")
        }

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
        for table in _TABLES:
            self._db.execute(f"DELETE FROM {table}")  # noqa: S608 - fixed table names
        self._db.execute("COMMIT")
        self._load_waiting()

    def close(self) -> None:
        self.rollback()
        self._db.close()

    # -- runs ---------------------------------------------------------------------------------

    def put_run(
        self, record: Mapping[str, Any], *, ts: int, topic: str, partition: int, offset: int
    ) -> None:
        self.begin()
        # A re-sent run (same run_id) keeps its flags: it is the same call.
        self._db.execute(
            "INSERT INTO runs(run_id, part, ts, body, topic, off) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(run_id) DO UPDATE SET body=excluded.body, ts=excluded.ts, "
            "topic=excluded.topic, part=excluded.part, off=excluded.off",
            (record["run_id"], partition, ts, _dump(record), topic, offset),
        )

    def get_run(self, run_id: str) -> StoredRun | None:
        row = self._db.execute(
            "SELECT body, topic, part, off, edited, sampled, kept FROM runs WHERE run_id=?",
            (run_id,),
        ).fetchone()
        if row is None:
            return None
        return StoredRun(
            run_id=run_id,
            record=json.loads(row[0]),
            topic=row[1],
            partition=int(row[2]),
            offset=int(row[3]),
            edited=bool(row[4]),
            sampled=bool(row[5]),
            kept=bool(row[6]),
        )

    def mark_run(self, run_id: str, *, flag: str) -> bool:
        """Set ``edited``, ``sampled`` or ``kept`` on a run; False if it was already set
        (or the run is unknown and the flag is not ``edited``)."""
        if flag not in ("edited", "sampled", "kept"):
            raise ConfigError(f"unknown run flag {flag!r}")
        self.begin()
        cur = self._db.execute(
            f"UPDATE runs SET {flag}=1 WHERE run_id=? AND {flag}=0",  # noqa: S608 - checked
            (run_id,),
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
        self._add_waiting(
            "pending", self._waiting, record["run_id"], record, ts, topic, partition, offset
        )

    def pop_pending(self, run_id: str) -> list[tuple[dict[str, Any], str, int, int]]:
        """Feedback that waited for ``run_id``, oldest first: (record, topic, partition, offset)."""
        return self._pop_waiting("pending", self._waiting, run_id)

    def add_pending_fact(
        self,
        run_id: str,
        body: Mapping[str, Any],
        *,
        ts: int,
        topic: str,
        partition: int,
        offset: int,
    ) -> None:
        self._add_waiting(
            "pending_facts", self._waiting_facts, run_id, body, ts, topic, partition, offset
        )

    def pop_pending_facts(self, run_id: str) -> list[tuple[dict[str, Any], str, int, int]]:
        """Facts that waited for ``run_id``, oldest first: (body, topic, partition, offset)."""
        return self._pop_waiting("pending_facts", self._waiting_facts, run_id)

    def _add_waiting(
        self,
        table: str,
        waiting: set[str],
        run_id: str,
        body: Mapping[str, Any],
        ts: int,
        topic: str,
        partition: int,
        offset: int,
    ) -> None:
        self.begin()
        self._db.execute(
            f"INSERT INTO {table}(run_id, ts, body, topic, part, off) "  # noqa: S608 - fixed names
            "VALUES (?, ?, ?, ?, ?, ?)",
            (run_id, ts, _dump(body), topic, partition, offset),
        )
        waiting.add(run_id)

    def _pop_waiting(
        self, table: str, waiting: set[str], run_id: str
    ) -> list[tuple[dict[str, Any], str, int, int]]:
        if run_id not in waiting:
            return []
        waiting.discard(run_id)
        rows = self._db.execute(
            f"SELECT body, topic, part, off FROM {table} WHERE run_id=? "  # noqa: S608
            "ORDER BY ts, off",
            (run_id,),
        ).fetchall()
        if not rows:
            return []
        self.begin()
        self._db.execute(f"DELETE FROM {table} WHERE run_id=?", (run_id,))  # noqa: S608
        return [(json.loads(b), t, int(p), int(o)) for b, t, p, o in rows]

    # -- timers (stream time) ---------------------------------------------------------------------

    def add_timer(self, run_id: str, *, due: int) -> None:
        self.begin()
        self._db.execute(
            "INSERT INTO timers(run_id, due) VALUES (?, ?) ON CONFLICT(run_id) DO NOTHING",
            (run_id, due),
        )

    def pop_due(self, *, now: int) -> list[str]:
        """Runs whose timer is due at stream time ``now``, in due order; their timers go."""
        rows = self._db.execute(
            "SELECT run_id FROM timers WHERE due<=? ORDER BY due, run_id", (now,)
        ).fetchall()
        if not rows:
            return []
        self.begin()
        self._db.execute("DELETE FROM timers WHERE due<=?", (now,))
        return [str(r[0]) for r in rows]

    # -- ratings waiting for an opposite rating ---------------------------------------------------

    def take_opposite(self, prompt_key: str, *, polarity: int, run_id: str) -> RatedRun | None:
        """The oldest unmatched run of the same prompt rated the other way, marked matched."""
        row = self._db.execute(
            "SELECT run_id, body FROM rated WHERE prompt_key=? AND polarity=? AND matched=0 "
            "AND run_id<>? ORDER BY ts, run_id LIMIT 1",
            (prompt_key, -polarity, run_id),
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
        polarity: int,
        run_id: str,
        ts: int,
        body: Mapping[str, Any],
        matched: bool,
    ) -> None:
        self.begin()
        self._db.execute(
            "INSERT INTO rated(prompt_key, polarity, run_id, ts, body, matched) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(prompt_key, run_id) DO NOTHING",
            (prompt_key, polarity, run_id, ts, _dump(body), int(matched)),
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
        if expired or facts:
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
