"""Commit latency as the tables grow: a soak of the curator's Delta sink, main's path and this
checkout's side by side in one run, then the cold start over the grown tables.

    .venv/bin/python bench/lake_soak.py                  # 2,000 commits per sink
    .venv/bin/python bench/lake_soak.py --commits 400    # quick look

Each commit is one micro-batch through ``DeltaSink.commit``, as the stream writes them:
``--pairs`` rows to dpo_pairs and half as many to rejected_candidates, with the txn versions of
12 topic-partitions. *before* is the sink of ``--base`` (read with ``git show``, imported as a
module): it reloads a table every 100 versions, reads every partition's txn at every commit,
writes a checkpoint inside the commit and compacts nothing. *after* is this checkout's sink: it
claims its partitions, checks txns only when another commit landed, and runs its upkeep
(compaction, checkpoints) between batches, timed apart. The two sinks write two lakes and
alternate commit by commit, so both see the same machine load.

Pairs carry event and curation times spread over the soak's simulated weeks. Cold start is
what a curator does before it consumes: load the tables, read 12 partitions' offsets and
rebuild the near-dup index and caps from dpo_pairs (before: the filter columns of the whole
table; after: ``warmup.read_filter_state``); median of 3 runs, each in a fresh process.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import deltalake
from deltalake import DeltaTable
from flywheel_common.lake import TableName
from flywheel_common.settings import LakeSettings
from flywheel_curator.claims import claim
from flywheel_curator.sink import COMMIT_ORDER, DeltaSink
from flywheel_curator.upkeep import UpkeepSettings

REPO = Path(__file__).resolve().parents[1]
BASE = "d9bb330"  # main when this work began: the sink before owner epochs and upkeep
GROUP = "soak"
TPS = [(f"flywheel.{t}.v1", p) for t in ("runs", "feedback", "edits", "pairing") for p in range(3)]
WINDOW = 200  # commits in the first and last window
STEP = timedelta(minutes=20)  # simulated time between two commits


def legacy_sink(base: str) -> ModuleType:
    """The sink module as it was at ``base``."""
    source = subprocess.run(
        ["git", "show", f"{base}:services/curator/flywheel_curator/sink.py"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    path = Path(tempfile.mkdtemp(prefix="soak-base-")) / "legacy_sink.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("legacy_sink", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def batch(i: int, n_pairs: int, start: datetime) -> dict[TableName, list[dict[str, Any]]]:
    """The rows of commit ``i``: pairs and rejections curated at ``start + i * STEP``."""
    curated = start + i * STEP
    lineage = {
        "event_time": curated - timedelta(minutes=5),
        "curated_at": curated,
        "curator_version": "soak",
        "filter_config_hash": "soak",
    }
    pairs, rejected = [], []
    for j in range(n_pairs):
        k = i * n_pairs + j
        common = {
            "prompt": [{"role": "user", "content": f"Summarise report {k} for the board." * 4}],
            "run_id": f"run-{k}",
            "event_id": f"event-{k}",
            "tenant": f"t{k % 97}",
            "user_hash": f"u{k % 1009}",
            "feature": f"f{k % 5}",
            "kafka_topic": TPS[k % len(TPS)][0],
            "kafka_partition": TPS[k % len(TPS)][1],
            "kafka_offset": k,
            **lineage,
        }
        text = f"Revenue for report {k} went up while costs grew a little less. " * 4
        pairs.append(
            {
                **common,
                "pair_id": f"pair-{k}",
                "chosen": text,
                "rejected": text.upper(),
                "source": "edit",
                "weight": 1.0,
            }
        )
        if j % 2 == 0:
            rejected.append(
                {**common, "candidate_id": f"c-{k}", "source": "edit", "reasons": ["too_similar"]}
            )
    return {"sft_examples": [], "rejected_candidates": rejected, "dpo_pairs": pairs}


class Soaked:
    """One sink writing one lake, with the fence state a curator would keep."""

    def __init__(self, name: str, sink: Any, lake: Path, *, epochs: dict[Any, int] | None) -> None:
        self.name, self.sink, self.lake, self.epochs = name, sink, lake, epochs
        self.known: dict[TableName, dict[Any, int | None]] = {
            t: dict.fromkeys(TPS) for t in COMMIT_ORDER
        }
        self.seconds: list[float] = []
        self.upkeep: list[float] = []

    def commit(self, rows: dict[TableName, list[dict[str, Any]]], i: int) -> None:
        end = {tp: (i + 1) * 100 for tp in TPS}
        extra = {} if self.epochs is None else {"epochs": self.epochs}
        started = time.perf_counter()
        done = self.sink.commit(rows, known=self.known, end=end, **extra)
        self.seconds.append(time.perf_counter() - started)
        for c in done:
            for tp, offset in end.items():
                self.known[c.table][tp] = offset
        if self.epochs is not None:
            started = time.perf_counter()
            if self.sink.upkeep():
                self.upkeep.append(time.perf_counter() - started)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def cold_start(which: str, lake: Path, base: str) -> dict[str, float]:
    """Seconds to a ready curator's state (and of that, reading the table), in a fresh
    process (see ``_cold``)."""
    out = subprocess.run(
        [sys.executable, __file__, "--cold", which, "--lake", str(lake), "--base", base],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, float] = json.loads(out.stdout.splitlines()[-1])
    return result


def _cold(which: str, lake: Path, base: str) -> None:
    from flywheel_curator.filters import FilterSettings
    from flywheel_curator.joins import JoinStore
    from flywheel_curator.pipeline import FILTER_STATE_COLUMNS, build_chain, load_filter_state
    from flywheel_curator.warmup import read_filter_state

    settings = FilterSettings.model_validate({"toxicity": {"enabled": False}})
    chain = build_chain(settings, JoinStore(None, identity="soak"))
    started = time.perf_counter()
    if which == "before":
        sink = legacy_sink(base).DeltaSink(LakeSettings(uri=str(lake)), group=GROUP)
        sink.ensure_tables()
        table = sink.table("dpo_pairs").to_pyarrow_table(columns=list(FILTER_STATE_COLUMNS))
    else:
        sink = DeltaSink(LakeSettings(uri=str(lake)), group=GROUP)
        sink.ensure_tables()
        table = read_filter_state(sink.table("dpo_pairs"), settings, now=datetime.now(tz=UTC))
    read = time.perf_counter() - started
    load_filter_state(chain, table, settings)
    sink.offsets(TPS)
    total = time.perf_counter() - started
    print(json.dumps({"seconds": total, "read": read, "rows": table.num_rows}))


def make_pair(root: Path, name: str, args: argparse.Namespace) -> list[Soaked]:
    """A 'before' and an 'after' sink on fresh lakes under ``root``."""
    legacy = legacy_sink(args.base)
    old = legacy.DeltaSink(LakeSettings(uri=str(root / f"before{name}")), group=GROUP)
    upkeep = UpkeepSettings(log_retention_minutes=args.log_retention_minutes)
    new = DeltaSink(
        LakeSettings(uri=str(root / f"after{name}")), group=GROUP, instance="soak", upkeep=upkeep
    )
    for s in (old, new):
        s.ensure_tables()
    return [
        Soaked("before", old, root / f"before{name}", epochs=None),
        Soaked("after", new, root / f"after{name}", epochs=claim(new, TPS, topics={})),
    ]


def soak(sinks: list[Soaked], args: argparse.Namespace, start: datetime) -> None:
    began = time.perf_counter()
    for i in range(args.commits):
        rows = batch(i, args.pairs, start)
        for s in sinks if i % 2 else reversed(sinks):
            s.commit(rows, i)
        if (i + 1) % 250 == 0:
            print(f"  {i + 1} commits, {time.perf_counter() - began:.0f} s", flush=True)
    print(f"load at the end {os.getloadavg()[0]:.1f}")
    print(
        f"{'':8} {'first p50':>10} {'first p95':>10} {'last p50':>10} {'last p95':>10} "
        f"{'p95 x':>6} {'files':>6}  cold start (of it: read, rows read)"
    )
    for s in sinks:
        first, last = s.seconds[:WINDOW], s.seconds[-WINDOW:]
        files = len(DeltaTable(str(s.lake / "dpo_pairs")).file_uris())
        colds = [cold_start(s.name, s.lake, args.base) for _ in range(3)]
        cold = {k: statistics.median(c[k] for c in colds) for k in ("seconds", "read", "rows")}
        print(
            f"{s.name:8} {pct(first, 0.5):8.1f}ms {pct(first, 0.95):8.1f}ms "
            f"{pct(last, 0.5):8.1f}ms {pct(last, 0.95):8.1f}ms "
            f"{pct(last, 0.95) / pct(first, 0.95):5.2f}x {files:6d}  {cold['seconds']:.2f} s "
            f"({cold['read']:.2f} s, {cold['rows']:.0f} rows)"
        )
    upkeep = sinks[1].upkeep
    if upkeep:
        print(
            f"after: upkeep between batches {len(upkeep)} times, median {pct(upkeep, 0.5):.0f} ms, "
            f"max {max(upkeep) * 1000:.0f} ms, {sum(upkeep) / sum(sinks[1].seconds) * 100:.1f} % "
            "of the commit time"
        )


def side_by_side(grown: list[Soaked], args: argparse.Namespace, start: datetime) -> None:
    """The soak's windows are minutes apart, and machine load drifts: here the grown tables and
    fresh ones take one commit each in turn, so both windows see the same load."""
    root = grown[0].lake.parent
    fresh = make_pair(root, "-fresh", args)
    for s in grown + fresh:
        s.seconds.clear()
    lakes = [grown[0], fresh[0], grown[1], fresh[1]]
    for k in range(WINDOW):
        rows = batch(args.commits + k, args.pairs, start)
        for s in lakes[k % 4 :] + lakes[: k % 4]:
            s.commit(rows, args.commits + k if s in grown else k)
    load = os.getloadavg()[0]
    print(f"\nside by side, {WINDOW} commits to each of four lakes in turn, load {load:.1f}")
    print(
        f"{'':8} {'fresh p50':>10} {'fresh p95':>10} {'grown p50':>10} {'grown p95':>10} "
        f"{'p50 x':>6} {'p95 x':>6}"
    )
    for g, f in zip(grown, fresh, strict=True):
        print(
            f"{g.name:8} {pct(f.seconds, 0.5):8.1f}ms {pct(f.seconds, 0.95):8.1f}ms "
            f"{pct(g.seconds, 0.5):8.1f}ms {pct(g.seconds, 0.95):8.1f}ms "
            f"{pct(g.seconds, 0.5) / pct(f.seconds, 0.5):5.2f}x "
            f"{pct(g.seconds, 0.95) / pct(f.seconds, 0.95):5.2f}x"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--commits", type=int, default=2_000)
    parser.add_argument("--pairs", type=int, default=100, help="dpo_pairs rows per commit")
    parser.add_argument("--base", default=BASE, help="git revision of the 'before' sink")
    parser.add_argument(
        "--log-retention-minutes", type=int, help="the after sink's upkeep.log_retention_minutes"
    )
    parser.add_argument("--cold", choices=["before", "after"], help=argparse.SUPPRESS)
    parser.add_argument("--lake", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cold:
        _cold(args.cold, args.lake, args.base)
        return 0
    root = Path(tempfile.mkdtemp(prefix="lake-soak-"))
    start = datetime.now(tz=UTC) - args.commits * STEP
    print(
        f"{datetime.now(tz=UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, {os.cpu_count()} CPUs, "
        f"load {os.getloadavg()[0]:.1f}, Python {platform.python_version()}, "
        f"deltalake {deltalake.__version__}; {args.commits} commits x {args.pairs} pairs; "
        f"after: log retention {args.log_retention_minutes or 'Delta default'} min"
    )
    sinks = make_pair(root, "", args)
    soak(sinks, args, start)
    side_by_side(sinks, args, start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
