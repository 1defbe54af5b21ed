"""Tenant isolation: no join crosses tenants. Through the real webhook (two API keys, the
ingest app, the broker, the curator) and through ``flywheel curate``: a feedback, an edit or a
regeneration of one tenant that names another tenant's run is dead-lettered as
``cross_tenant_reference``, counted, and never becomes a row under either tenant; feedback
waiting for a run is not joined by another tenant's run of the same id; two tenants using the
same run id each get their own pairs. Also: a version-1 state file is migrated in place."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from flywheel_common.settings import KafkaSettings
from flywheel_curator.filters.settings import FilterSettings, ToxicitySettings
from flywheel_curator.joins import JoinStore
from flywheel_ingest.auth import hash_api_key
from flywheel_ingest.settings import ApiKey, IngestSettings
from prometheus_client import REGISTRY

from tests.curator.conftest import ThreadedCurator, read_table, settings_for, wait_until
from tests.curator.lake_watch import CaughtUp, dead_letters
from tests.curator.tenancy import ACME, GLOBEX, TENANTS, Scenario, build, leaks
from tests.curator.test_cli import flywheel
from tests.ingest.conftest import serve

ROUNDS = 10
KEYS = {ACME: "tenant-key-acme-0123456789", GLOBEX: "tenant-key-globex-0123456789"}
TABLES = ("dpo_pairs", "rejected_candidates", "sft_examples")
NO_TOXICITY = FilterSettings(toxicity=ToxicitySettings(enabled=False))  # slow, beside the point


def _cross_tenant_metric() -> Counter[str]:
    out: Counter[str] = Counter()
    for join in ("feedback", "edit", "kept", "regenerated", "rated"):
        value = REGISTRY.get_sample_value(
            "flywheel_curator_cross_tenant_references_total", {"join": join}
        )
        out[join] = int(value or 0)
    return out


def _post(url: str, scenario_phase: list[tuple[str, dict[str, Any]]]) -> None:
    for tenant in TENANTS:
        events = [
            dict(e, occurred_at=int(time.time() * 1000)) for t, e in scenario_phase if t == tenant
        ]
        headers = {"authorization": f"Bearer {KEYS[tenant]}"}
        with httpx.Client(base_url=url, headers=headers, timeout=30.0) as client:
            resp = client.post("/v1/events", json={"events": events})
        assert resp.status_code == 202, resp.text


def _check_rows(lake: Path, s: Scenario) -> dict[str, int]:
    rows = {table: read_table(lake, table) for table in TABLES}
    leaked = leaks([r for table in TABLES for r in rows[table]], s.runs)
    assert leaked == [], f"{len(leaked)} rows cross tenants: {leaked[:5]}"
    candidates = Counter(r["tenant"] for t in TABLES[:2] for r in rows[t])
    assert candidates == s.candidates, (candidates, s.candidates)
    return {"rows": sum(len(r) for r in rows.values()), "leaked": len(leaked)}


def test_webhook_cross_tenant_references_never_join(
    kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    s = build(ROUNDS)
    keys = tuple(ApiKey(tenant=t, key_sha256=hash_api_key(k)) for t, k in KEYS.items())
    lake = tmp_path / "lake"
    settings = settings_for(kafka_settings, lake, tmp_path / "state", filters=NO_TOXICITY)
    before = _cross_tenant_metric()
    curator = ThreadedCurator(settings).start()
    try:
        with serve(IngestSettings(api_keys=keys, kafka=kafka_settings)) as ingest:
            done = CaughtUp(kafka_settings, lake, settings.group_id)
            _post(ingest.url, s.phase1)
            wait_until(done, timeout=90, what="phase 1 curated")
            _post(ingest.url, s.phase2)
            wait_until(done, timeout=90, what="phase 2 curated")
            done.close()
        # Letters are acknowledged before the batch that read their messages commits.
        letters = dead_letters(kafka_settings, at_least=s.refused.total())
        assert curator.curator is not None
        summary = curator.curator.pipeline.summary
        pending = curator.curator.store.sizes()["pending"]
    finally:
        curator.close()
    reasons = Counter((r["reason"], r["tenant"]) for r in letters)
    assert reasons == {("cross_tenant_reference", GLOBEX): s.refused.total()}, reasons
    assert summary.dlq["cross_tenant_reference"] == s.refused.total()
    assert _cross_tenant_metric() - before == s.refused
    assert pending == s.waiting  # globex's feedback still waits for a run of its own
    figures = _check_rows(lake, s)
    # The figures RELIABILITY.md quotes (pytest -s shows them).
    print(f"webhook: events={s.events} cross_tenant={s.refused.total()} {figures}")  # noqa: T201


def test_curate_cross_tenant_references_never_join(tmp_path: Path) -> None:
    s = build(ROUNDS)
    t0 = int(time.time() * 1000) - 3_600_000
    events = tmp_path / "events.jsonl"
    lines = [
        json.dumps({**e, "tenant": tenant, "occurred_at": t0 + n})
        for n, (tenant, e) in enumerate([*s.phase1, *s.phase2])
    ]
    events.write_text("\n".join(lines) + "\n")
    lake = tmp_path / "lake"
    env_toxicity = {"FLYWHEEL_CURATOR_FILTERS__TOXICITY__ENABLED": "false"}
    out = flywheel("curate", "--input", str(events), "--lake", str(lake), env=_env(env_toxicity))
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout)
    assert summary["dlq"] == {"cross_tenant_reference": s.refused.total()}
    named = [line for line in out.stderr.splitlines() if "cross_tenant_reference" in line]
    assert len(named) == s.refused.total()
    assert all("globex" in line and "acme" not in line for line in named)
    figures = _check_rows(lake, s)
    print(f"curate: events={s.events} cross_tenant={s.refused.total()} {figures}")  # noqa: T201


def _env(extra: dict[str, str]) -> dict[str, str]:
    return {**os.environ, **extra}


# -- a version-1 state file -----------------------------------------------------------------

_V1 = """
CREATE TABLE runs (run_id TEXT PRIMARY KEY, part INTEGER NOT NULL, ts INTEGER NOT NULL,
    body TEXT NOT NULL, topic TEXT NOT NULL, off INTEGER NOT NULL,
    edited INTEGER NOT NULL DEFAULT 0, sampled INTEGER NOT NULL DEFAULT 0,
    kept INTEGER NOT NULL DEFAULT 0);
CREATE INDEX runs_ts ON runs(ts);
CREATE TABLE pending (run_id TEXT NOT NULL, ts INTEGER NOT NULL, body TEXT NOT NULL,
    topic TEXT NOT NULL, part INTEGER NOT NULL, off INTEGER NOT NULL);
CREATE INDEX pending_run ON pending(run_id);
CREATE INDEX pending_ts ON pending(ts);
CREATE TABLE pending_facts (run_id TEXT NOT NULL, ts INTEGER NOT NULL, body TEXT NOT NULL,
    topic TEXT NOT NULL, part INTEGER NOT NULL, off INTEGER NOT NULL);
CREATE INDEX pending_facts_run ON pending_facts(run_id);
CREATE INDEX pending_facts_ts ON pending_facts(ts);
CREATE TABLE timers (run_id TEXT PRIMARY KEY, due INTEGER NOT NULL);
CREATE INDEX timers_due ON timers(due);
CREATE TABLE rated (prompt_key TEXT NOT NULL, polarity INTEGER NOT NULL, run_id TEXT NOT NULL,
    ts INTEGER NOT NULL, body TEXT NOT NULL, matched INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (prompt_key, run_id));
CREATE INDEX rated_ts ON rated(ts);
CREATE INDEX rated_open ON rated(prompt_key, polarity, ts, run_id) WHERE matched=0;
CREATE TABLE seen (ns TEXT NOT NULL, key TEXT NOT NULL, ts INTEGER NOT NULL,
    PRIMARY KEY (ns, key)) WITHOUT ROWID;
CREATE TABLE counters (ns TEXT NOT NULL, key TEXT NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY (ns, key)) WITHOUT ROWID;
CREATE TABLE applied (topic TEXT NOT NULL, part INTEGER NOT NULL, next_offset INTEGER NOT NULL,
    PRIMARY KEY (topic, part));
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def _v1_file(path: Path) -> None:
    """A state file as the curator before tenant-keyed joins left it."""
    db = sqlite3.connect(path)
    db.executescript(_V1)
    run = {"run_id": "x", "tenant": ACME, "response": "r"}
    db.execute("INSERT INTO meta VALUES ('identity', 'lake|g')")
    db.execute("INSERT INTO runs VALUES ('x', 0, 10, ?, 'runs', 4, 1, 0, 0)", (json.dumps(run),))
    feedback = {"run_id": "y", "tenant": GLOBEX, "kind": "copy"}
    db.execute("INSERT INTO pending VALUES ('y', 11, ?, 'fb', 0, 5)", (json.dumps(feedback),))
    fact = {"fact_id": "f", "tenant": GLOBEX, "kind": "kept"}
    db.execute(
        "INSERT INTO pending_facts VALUES ('w', 12, ?, 'pairing', 0, 6)", (json.dumps(fact),)
    )
    db.execute("INSERT INTO timers VALUES ('x', 99)")
    db.execute("INSERT INTO timers VALUES ('gone', 50)")  # its run expired: cannot fire
    rated = {"fact": {"tenant": ACME}, "read_at": ["pairing", 0, 7]}
    db.execute("INSERT INTO rated VALUES ('k', 1, 'x', 13, ?, 0)", (json.dumps(rated),))
    for ns, key in [("spurned", "x"), ("sft", "inline"), ("event", "e1"), ("pair_dedup", "ab")]:
        db.execute("INSERT INTO seen VALUES (?, ?, 14)", (ns, key))
    db.execute("INSERT INTO applied VALUES ('runs', 0, 5)")
    db.commit()
    db.close()


def test_a_version_1_state_file_is_migrated_with_its_tenants(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    _v1_file(path)
    store = JoinStore(path, identity="lake|g")
    lookup = store.find_run(ACME, "x")
    assert lookup.run is not None and lookup.run.edited and not lookup.elsewhere
    assert store.find_run(GLOBEX, "x").cross_tenant
    assert store.pop_pending(ACME, "y") == []
    assert [o for *_, o in store.pop_pending(GLOBEX, "y")] == [5]
    assert [o for *_, o in store.pop_pending_facts(GLOBEX, "w")] == [6]
    assert store.pop_due(now=100) == [(ACME, "x")]
    assert store.take_opposite("k", tenant=GLOBEX, polarity=-1, run_id="z") is None
    assert store.take_opposite("k", tenant=ACME, polarity=-1, run_id="z") is not None
    assert store.has_run_mark("spurned", ACME, "x") and not store.has_run_mark(
        "spurned", GLOBEX, "x"
    )
    # An inline run's sample: its tenant is unknown, so it withholds a sample from any tenant.
    assert not store.add_run_mark("sft", GLOBEX, "inline", ts=15)
    assert store.is_seen("event", "e1") and store.is_seen("pair_dedup", "ab")
    assert store.applied(("runs", 0)) == 5  # the offsets stay: no replay
    store.rollback()
    store.close()
    again = JoinStore(path, identity="lake|g")  # idempotent
    assert again.find_run(ACME, "x").run is not None
    again.close()
    assert sqlite3.connect(path).execute(
        "SELECT value FROM meta WHERE key='schema'"
    ).fetchone() == ("2",)
