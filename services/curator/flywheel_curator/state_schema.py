"""The join store's SQLite schema, its version, and the migration of older state files.

Version 2 keys every join by tenant as well as by run: a run id is the client's, so two
tenants may hold the same one, and a reference from one tenant must never find the other's
run. A version-1 file (joins keyed by run id only) is migrated in place, in one SQLite
transaction, when a curator opens it: the tenant of each entry is read from the JSON it stores
(every run, waiting feedback, waiting fact and rating records its tenant). Offsets
(``applied``) are kept as they are, so the state stays at or behind the lake and no replay is
needed; a crash during the migration rolls it back and the next start migrates again.

Run-keyed memories (``regenerated``, ``spurned``, ``sft``) hold a bare run id. Where the store
holds that run, the memory takes its tenant; the others (a run never logged, or not held any
more) move to ``<ns>~legacy`` and match that run id under any tenant until they expire with
the window. They can only withhold a sample or a "kept by default", never make a row.
"""

from __future__ import annotations

import sqlite3

from flywheel_common.errors import ConfigError

__all__ = [
    "LEGACY_SUFFIX",
    "RUN_MARK_NAMESPACES",
    "SCHEMA_VERSION",
    "TABLES",
    "open_schema",
    "run_key",
]

SCHEMA_VERSION = 2
LEGACY_SUFFIX = "~legacy"
# Memories keyed by one run: tenant-scoped since version 2 (see ``run_key``).
RUN_MARK_NAMESPACES = ("regenerated", "spurned", "sft")

_DDL = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT NOT NULL,
    tenant TEXT NOT NULL,
    part INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    body TEXT NOT NULL,
    topic TEXT NOT NULL,
    off INTEGER NOT NULL,
    edited INTEGER NOT NULL DEFAULT 0,
    sampled INTEGER NOT NULL DEFAULT 0,
    kept INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, tenant)
);
CREATE INDEX IF NOT EXISTS runs_ts ON runs(ts);
CREATE TABLE IF NOT EXISTS pending (
    run_id TEXT NOT NULL,
    tenant TEXT NOT NULL,
    ts INTEGER NOT NULL,
    body TEXT NOT NULL,
    topic TEXT NOT NULL,
    part INTEGER NOT NULL,
    off INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS pending_run ON pending(run_id, tenant);
CREATE INDEX IF NOT EXISTS pending_ts ON pending(ts);
-- Pairing facts about a regeneration, waiting for their parent run (of the fact's tenant).
CREATE TABLE IF NOT EXISTS pending_facts (
    run_id TEXT NOT NULL,
    tenant TEXT NOT NULL,
    ts INTEGER NOT NULL,
    body TEXT NOT NULL,
    topic TEXT NOT NULL,
    part INTEGER NOT NULL,
    off INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS pending_facts_run ON pending_facts(run_id, tenant);
CREATE INDEX IF NOT EXISTS pending_facts_ts ON pending_facts(ts);
-- Regenerations that count as kept if nothing else happens by ``due`` (stream time).
CREATE TABLE IF NOT EXISTS timers (
    run_id TEXT NOT NULL,
    tenant TEXT NOT NULL,
    due INTEGER NOT NULL,
    PRIMARY KEY (run_id, tenant)
);
CREATE INDEX IF NOT EXISTS timers_due ON timers(due);
-- prompt_key hashes the tenant already; the column makes the join say so.
CREATE TABLE IF NOT EXISTS rated (
    prompt_key TEXT NOT NULL,
    tenant TEXT NOT NULL,
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

TABLES = ("runs", "pending", "pending_facts", "timers", "rated", "seen", "counters", "applied")

# Version 1 -> 2: the tables that gained a tenant, and where each row's tenant is written.
_TENANT_OF = {
    "runs": "json_extract(body, '$.tenant')",
    "pending": "json_extract(body, '$.tenant')",
    "pending_facts": "json_extract(body, '$.tenant')",
    "rated": "json_extract(body, '$.fact.tenant')",
}
_V1_INDEXES = ("runs_ts", "pending_run", "pending_ts", "pending_facts_run", "pending_facts_ts")
_V1_INDEXES_RATED = ("rated_ts", "rated_open")


def run_key(tenant: str, run_id: str) -> str:
    """The key of a run-keyed memory: a run is named by its tenant and its id."""
    return f"{tenant}\x00{run_id}"


def open_schema(db: sqlite3.Connection) -> None:
    """Create the schema in a new file, migrate an older one, refuse a newer one."""
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if "runs" not in tables:
        db.execute("BEGIN IMMEDIATE")
        _run_script(db, _DDL)
        _set_version(db)
        db.execute("COMMIT")
        return
    row = db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
    version = 1 if row is None else int(row[0])
    if version > SCHEMA_VERSION:
        raise ConfigError(
            f"the state file has schema version {version}; this curator knows up to "
            f"{SCHEMA_VERSION} (a newer curator wrote it): run that version, or use another "
            "state_dir"
        )
    if version < SCHEMA_VERSION:
        _migrate_v1(db)


def _run_script(db: sqlite3.Connection, script: str) -> None:
    # Not executescript: it commits any open transaction first, and a migration must be one.
    code = "\n".join(line for line in script.splitlines() if not line.lstrip().startswith("--"))
    for statement in code.split(";"):
        if statement.strip():
            db.execute(statement)


def _set_version(db: sqlite3.Connection) -> None:
    db.execute(
        "INSERT INTO meta(key, value) VALUES ('schema', ?) "
        "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
        (str(SCHEMA_VERSION),),
    )


def _migrate_v1(db: sqlite3.Connection) -> None:
    db.execute("BEGIN IMMEDIATE")
    try:
        for index in (*_V1_INDEXES, *_V1_INDEXES_RATED):
            db.execute(f"DROP INDEX IF EXISTS {index}")
        for table in (*_TENANT_OF, "timers"):
            db.execute(f"ALTER TABLE {table} RENAME TO {table}_v1")
        _run_script(db, _DDL)
        for table, tenant in _TENANT_OF.items():
            columns = [r[1] for r in db.execute(f"PRAGMA table_info({table}_v1)")]
            names = ", ".join(columns)
            db.execute(
                f"INSERT INTO {table}(tenant, {names}) "  # noqa: S608 - fixed names
                f"SELECT COALESCE({tenant}, ''), {names} FROM {table}_v1"
            )
        # A timer belongs to a run this store holds; one whose run is gone could never fire.
        db.execute(
            "INSERT INTO timers(run_id, tenant, due) SELECT t.run_id, r.tenant, t.due "
            "FROM timers_v1 t JOIN runs r ON r.run_id = t.run_id"
        )
        for table in (*_TENANT_OF, "timers"):
            db.execute(f"DROP TABLE {table}_v1")
        _migrate_run_marks(db)
        _set_version(db)
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _migrate_run_marks(db: sqlite3.Connection) -> None:
    marks = ", ".join(f"'{ns}'" for ns in RUN_MARK_NAMESPACES)
    rows = db.execute(
        f"SELECT s.ns, s.key, s.ts, r.tenant FROM seen s "  # noqa: S608 - fixed names
        f"LEFT JOIN runs r ON r.run_id = s.key WHERE s.ns IN ({marks})"
    ).fetchall()
    db.execute(f"DELETE FROM seen WHERE ns IN ({marks})")  # noqa: S608 - fixed names
    db.executemany(
        "INSERT OR IGNORE INTO seen(ns, key, ts) VALUES (?, ?, ?)",
        [
            (ns, run_key(tenant, key), ts) if tenant is not None else (ns + LEGACY_SUFFIX, key, ts)
            for ns, key, ts, tenant in rows
        ],
    )
