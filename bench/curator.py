"""Curator throughput, latency and memory, side by side with the raw consumer in one run.

    .venv/bin/python bench/curator.py               # 1,000,000 events
    .venv/bin/python bench/curator.py --quick       # 50,000 events
    .venv/bin/python bench/curator.py --processes 2 # two curators in one group (scale-out)

1. Loads a backlog of N events (runs, feedback, edits in a realistic mix) into fresh topics.
2. Raw limit: one consumer, batched ``consume(1000)`` + Avro decode, over the backlog.
3. Curator: a separate process (or ``--processes N`` of them in one group) catches up on the
   backlog into fresh Delta tables with the default filters; events/s end to end, commits/s,
   share of wall time in Delta commits, peak RSS (VmHWM of the largest process).
4. Visibility: with that curator following, edits are produced at a steady rate; latency runs
   from the broker's acknowledgement (when ingest answers 202) to the row being readable in
   ``dpo_pairs``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer
from deltalake import DeltaTable
from flywheel_common.codec import AvroCodec
from flywheel_common.kafka import ensure_topics, make_producer
from flywheel_common.settings import KafkaSettings, Topics

PROMPTS = [
    "Summarise the quarterly report for the board in three sentences.",
    "Draft a polite reply declining the meeting on Friday.",
    "Explain what a Kafka consumer group rebalance is.",
    "Write a product description for a steel water bottle.",
]


def _event(kind: str, i: int, rng: random.Random) -> tuple[str, dict[str, Any]]:
    now = datetime.now(tz=UTC)
    rid = f"run-{i // 4}"
    base = {
        "event_id": str(uuid.uuid4()),
        "occurred_at": now,
        "received_at": now,
        # Many accounts, as in a multi-tenant deployment: the default per-tenant and per-user
        # caps then protect without starving the measurement (7 tenants hit them at 70k pairs).
        # A run's events share its tenant: joins never cross tenants.
        "tenant": f"t{(i // 4) % 1009}",
    }
    prompt = PROMPTS[i % len(PROMPTS)]
    response = (
        f"Answer {i}: the model says something reasonable about item {rng.randint(0, 10**6)}."
    )
    if kind == "run":
        return "Run", {
            **base,
            "run_id": rid,
            "prompt": prompt,
            "response": response,
            "model": "m",
            "feature": "f",
            "user_id": f"u{i % 20011}",
        }
    if kind == "feedback":
        value = rng.choice([1.0, 1.0, -1.0])
        fb = {**base, "run_id": rid, "kind": "thumbs", "value": value, "user_id": f"u{i % 20011}"}
        if value < 0:
            fb["correction"] = f"A better answer {i}: something more reasonable about item {i}."
        return "Feedback", fb
    return "Edit", {
        **base,
        "run_id": rid,
        "prompt": prompt,
        "original": response,
        "final": f"Answer {i}: the user says something better about item {i}.",
        "feature": "f",
        "user_id": f"u{i % 20011}",
    }


def load_backlog(kafka: KafkaSettings, n: int) -> None:
    codec = AvroCodec()
    producer = make_producer(kafka, linger_ms=20)
    rng = random.Random(1)
    topic = {
        "Run": kafka.topics.runs,
        "Feedback": kafka.topics.feedback,
        "Edit": kafka.topics.edits,
    }
    # Per interaction: a run, then most of the time a thumbs, sometimes an edit.
    kinds = ["run", "feedback", "run", "edit"]
    started = time.perf_counter()
    for i in range(n):
        name, record = _event(kinds[i % 4], i, rng)
        while True:
            try:
                producer.produce(
                    topic[name], codec.encode(name, record), key=record["run_id"].encode()
                )
                break
            except BufferError:
                producer.poll(0.05)
        if i % 10_000 == 0:
            producer.poll(0)
    producer.flush(120)
    print(f"loaded {n:,} events in {time.perf_counter() - started:.1f}s", file=sys.stderr)


def raw_rate(kafka: KafkaSettings, n: int) -> float:
    codec = AvroCodec()
    c = Consumer(
        {
            "bootstrap.servers": kafka.bootstrap_servers,
            "group.id": f"raw-{uuid.uuid4()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    c.subscribe([kafka.topics.runs, kafka.topics.feedback, kafka.topics.edits])
    seen = 0
    started = None
    while seen < n:
        msgs = c.consume(1000, timeout=1.0)
        if msgs and started is None:
            started = time.perf_counter()
        for m in msgs:
            if m.error() is None:
                codec.decode(m.value())
                seen += 1
    elapsed = time.perf_counter() - (started or time.perf_counter())
    c.close()
    return seen / elapsed


def child(args: argparse.Namespace) -> None:
    """Runs in its own process: catch up on the backlog, then report."""
    from flywheel_curator import metrics
    from flywheel_curator.consumer import Curator
    from flywheel_curator.settings import CuratorSettings, StartSettings

    settings = CuratorSettings().model_copy(update={"start": StartSettings(stop_at_end=True)})
    stop = threading.Event()
    curator = Curator(settings)  # imports and the toxicity model load are not throughput
    started_at = time.time()
    started = time.perf_counter()
    if args.profile:
        import cProfile
        import pstats

        with cProfile.Profile() as prof:
            curator.run(stop)
        stats = pstats.Stats(prof, stream=sys.stderr)
        stats.sort_stats("cumulative").print_stats(40)
        stats.sort_stats("tottime").print_stats(30)
    else:
        curator.run(stop)
    wall = time.perf_counter() - started
    commit_s = sum(
        s.value
        for m in metrics.COMMIT_SECONDS.collect()
        for s in m.samples
        if s.name.endswith("_sum")
    )
    print(
        json.dumps(
            {
                "wall_s": wall,
                "started_at": started_at,
                "finished_at": time.time(),
                "commits": curator.commits,
                "commit_s": commit_s,
                "summary": curator.pipeline.summary.as_dict(),
                "rss_peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        )
    )


def catch_up(env: dict[str, str], state: Path, *, processes: int, profile: bool) -> dict[str, Any]:
    """Run the catch-up children (one state directory each) and combine their reports: wall
    time from the first start to the last finish, sums of the counts, the largest RSS."""
    # The children's stderr (the profile, warnings) goes straight to ours; stdout is the report.
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--child", *(["--profile"] if profile else [])],
            env={**env, "FLYWHEEL_CURATOR_STATE_DIR": str(state / f"p{i}")},
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(processes)
    ]
    reports = []
    for proc in procs:
        out, _ = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"curator child exited {proc.returncode}")
        reports.append(json.loads(out.strip().splitlines()[-1]))
    wall = max(r["finished_at"] for r in reports) - min(r["started_at"] for r in reports)
    return {
        "wall_s": wall,
        "commits": sum(r["commits"] for r in reports),
        # Per process: each commits its own partitions, in parallel with the others.
        "commit_s": sum(r["commit_s"] for r in reports) / processes,
        "rss_peak_mib": max(r["rss_peak_mib"] for r in reports),
        "summary": _sum_reports([r["summary"] for r in reports]),
    }


def _sum_reports(parts: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            if isinstance(value, dict):
                out[key] = _sum_reports([out.get(key, {}), value])
            else:
                out[key] = out.get(key, 0) + value
    return out


def curator_env(kafka: KafkaSettings, lake: Path, state: Path, group: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "FLYWHEEL_CURATOR_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
            "FLYWHEEL_CURATOR_KAFKA__TOPICS": kafka.topics.model_dump_json(),
            "FLYWHEEL_CURATOR_LAKE__URI": str(lake),
            "FLYWHEEL_CURATOR_GROUP_ID": group,
            "FLYWHEEL_CURATOR_STATE_DIR": str(state),
            "FLYWHEEL_CURATOR_LOGGING__LEVEL": "WARNING",
        }
    )
    return env


def latency(
    kafka: KafkaSettings, lake: Path, env: dict[str, str], *, rate: int, seconds: float
) -> list[float]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "flywheel_curator"], env=env, stderr=subprocess.DEVNULL
    )
    codec = AvroCodec()
    acked: dict[str, float] = {}
    producer = make_producer(kafka, linger_ms=1)
    seen: dict[str, float] = {}
    stop = threading.Event()

    def poll() -> None:
        # Visible = the file is in the table's latest snapshot; read only files not seen yet.
        import pyarrow.parquet as pq

        root = lake / "dpo_pairs"
        dt = DeltaTable(str(root))
        files = set(dt.get_add_actions(flatten=True).column("path").to_pylist())
        while not stop.is_set():
            dt.update_incremental()
            current = dt.get_add_actions(flatten=True).column("path").to_pylist()
            now = time.time()
            for path in current:
                if path not in files:
                    files.add(path)
                    for e in pq.read_table(root / path, columns=["event_id"]).column(0).to_pylist():
                        seen.setdefault(e, now)
            time.sleep(0.02)

    time.sleep(20)  # let the curator start and join (model load, group join)
    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    rng = random.Random(5)
    end = time.time() + seconds
    i = 10**9
    while time.time() < end:
        _name, rec = _event("edit", i, rng)
        eid = rec["event_id"]
        producer.produce(
            kafka.topics.edits,
            codec.encode("Edit", rec),
            key=rec["run_id"].encode(),
            on_delivery=lambda err, _m, eid=eid: (
                acked.__setitem__(eid, time.time()) if err is None else None
            ),
        )
        producer.poll(0)
        i += 1
        time.sleep(1 / rate)
    producer.flush(30)
    deadline = time.time() + 30
    while time.time() < deadline and not all(e in seen for e in acked):
        time.sleep(0.1)
    stop.set()
    proc.terminate()
    proc.wait(60)
    return sorted(seen[e] - acked[e] for e in acked if e in seen)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="50,000 events")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--profile", action="store_true", help="cProfile the curator (stderr)")
    parser.add_argument(
        "--latency-rate", type=int, default=200, help="edits/s in the latency phase"
    )
    parser.add_argument("--latency-seconds", type=float, default=20)
    parser.add_argument(
        "--processes", type=int, default=1, help="curator processes in one group (catch-up)"
    )
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    n = 50_000 if args.quick else args.events
    from flywheel_devkit import LocalKafka

    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    broker = None if external else LocalKafka(partitions=3, heap="1g").start()
    try:
        bootstrap = external or broker.bootstrap_servers  # type: ignore[union-attr]
        kafka = KafkaSettings(
            bootstrap_servers=bootstrap,
            topics=Topics.with_prefix(f"b{uuid.uuid4().hex[:8]}"),
            partitions=3,
        )
        ensure_topics(kafka, partitions=3)
        load_backlog(kafka, n)
        raw = raw_rate(kafka, n)
        print(f"raw consume(1000)+decode: {raw:,.0f} events/s", file=sys.stderr)
        work = Path(tempfile.mkdtemp(prefix="bench-curator-"))
        lake, state, group = work / "lake", work / "state", f"bench-{uuid.uuid4().hex[:6]}"
        env = curator_env(kafka, lake, state, group)
        stats = catch_up(env, state, processes=args.processes, profile=args.profile)
        rate = n / stats["wall_s"]
        print(f"curator catch-up: {rate:,.0f} events/s", file=sys.stderr)
        # Visibility with one curator that follows on from the first child's state; with more
        # processes it would first rebuild the others' join state, which is not latency.
        lat = (
            latency(
                kafka,
                lake,
                {**env, "FLYWHEEL_CURATOR_STATE_DIR": str(state / "p0")},
                rate=args.latency_rate,
                seconds=args.latency_seconds,
            )
            if args.processes == 1
            else []
        )
        versions = DeltaTable(str(lake / "dpo_pairs")).version()
        report = {
            "events": n,
            "processes": args.processes,
            "raw_consume_decode_events_per_s": round(raw),
            "curator_events_per_s": round(rate),
            "curator_vs_raw": round(rate / raw, 3),
            "commits": stats["commits"],
            "commits_per_s": round(stats["commits"] / stats["wall_s"], 2),
            "commit_time_share": round(stats["commit_s"] / stats["wall_s"], 4),
            "rss_peak_mib": round(stats["rss_peak_mib"]),
            "visibility_p50_s": round(statistics.median(lat), 3) if lat else None,
            "visibility_p99_s": round(lat[int(len(lat) * 0.99) - 1], 3) if lat else None,
            "visibility_samples": len(lat),
            "dpo_pairs_version": versions,
            "summary": stats["summary"],
        }
        print(json.dumps(report, indent=2))
    finally:
        if broker is not None:
            broker.close()


if __name__ == "__main__":
    main()
