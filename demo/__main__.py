"""``make demo``: run the flywheel locally and show what each stage does.

Today: start Kafka (a local broker, or ``KAFKA_BOOTSTRAP_SERVERS``) and the ingest service,
post a realistic sample of runs, feedback and edits through HTTP, print what landed on each
topic, then run the curator over the topics into a Delta lake (``demo-out/lake``) and show the
gold pairs it accepted and the candidates it rejected, with their reasons. The trainer joins
``STAGES`` as a further step.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import orjson
from flywheel_common import KafkaSettings

from demo.curate import read_tables, run_curator
from demo.ingest import post_sample, read_topics
from demo.sample import generate_sample
from demo.stack import DemoTenant, IngestProcess, ingest_service, kafka_cluster

OUT_DIR = Path("demo-out")
TENANTS = [
    DemoTenant("acme", api_key="demo-acme-key-7d1f0c"),
    DemoTenant(
        "globex",
        api_key="demo-globex-key-93ab2e",
        signing_secret="demo-globex-secret",  # noqa: S106 - a demo tenant's secret
    ),
]
_EXAMPLE_CHARS = 70
T = TypeVar("T")


@dataclass
class Demo:
    """What the stages share: the running pieces and what earlier stages produced."""

    stack: contextlib.ExitStack
    kafka: KafkaSettings | None = None
    ingest: IngestProcess | None = None
    results: dict[str, Any] = field(default_factory=dict)


def need(value: T | None) -> T:
    """A result of an earlier stage; stages run in order, so it is there."""
    if value is None:
        raise RuntimeError("stages ran out of order")
    return value


def say(msg: str = "") -> None:
    print(msg, flush=True)


def stage_kafka(demo: Demo) -> None:
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    say(f"  {'using ' + bootstrap if bootstrap else 'starting a local Kafka 4.1 broker (KRaft)'}")
    demo.kafka = demo.stack.enter_context(kafka_cluster(bootstrap))
    say(f"  broker at {demo.kafka.bootstrap_servers}; topics: {', '.join(demo.kafka.topics.all())}")


def stage_ingest(demo: Demo) -> None:
    ingest = ingest_service(need(demo.kafka), TENANTS, log_dir=OUT_DIR)
    demo.ingest = demo.stack.enter_context(ingest)
    say(f"  flywheel-ingest pid {demo.ingest.pid} at {demo.ingest.url}")
    say(f"  logs: {demo.ingest.log_file}")
    names = [t.name + (" (signs its requests)" if t.signing_secret else "") for t in TENANTS]
    say(f"  tenants: {', '.join(names)}")


def stage_post(demo: Demo) -> None:
    sample = generate_sample()
    shown = [0]

    def progress(done: int, total: int) -> None:
        # A handful of updates, not one line per request.
        if done == total or done - shown[0] >= total // 4:
            shown[0] = done
            say(f"  posted {done}/{total} events")

    report = post_sample(need(demo.ingest).url, sample, TENANTS, progress=progress)
    say(
        f"  {sum(report.accepted.values())} events accepted (202) in {report.requests} "
        f"requests, {report.seconds:.2f}s"
    )
    for key, count in sorted(report.accepted.items()):
        say(f"    {key:<18} {count}")
    say(f"  a bad event is refused: {_compact(report.rejected_example, 200)}")


def stage_show(demo: Demo) -> None:
    for summary in read_topics(need(demo.kafka)):
        say(f"  {summary.topic}: {summary.count} events")
        if summary.count:
            say(f"    by tenant: {dict(sorted(summary.by_tenant.items()))}")
            if summary.by_detail:
                say(
                    f"    by {_detail_name(summary.topic)}: {dict(summary.by_detail.most_common())}"
                )
            say(f"    e.g. {_compact(summary.example, 400)}")


def stage_curate(demo: Demo) -> None:
    lake = OUT_DIR / "lake"
    shutil.rmtree(lake, ignore_errors=True)
    say(f"  flywheel replay --from-beginning --lake {lake}  (logs: {OUT_DIR / 'curator.log'})")
    summary = run_curator(need(demo.kafka), lake=lake, log_file=OUT_DIR / "curator.log")
    say(f"  candidates by source: {summary.get('candidates', {})}")
    tables = read_tables(lake)
    for name, table in tables.items():
        say(f"  {name}: {table.rows} rows (Delta version {table.version})")
        for label, counts in table.breakdown.items():
            say(f"    by {label}: {counts}")
    example = tables["dpo_pairs"].example
    if example:
        say("  a gold pair:")
        for key in ("source", "prompt", "chosen", "rejected", "similarity", "kafka_offset"):
            say(f"    {key:<12} {_compact({key: example[key]}, 110)[len(key) + 4 : -1]}")


STAGES: list[tuple[str, Callable[[Demo], None]]] = [
    ("Kafka", stage_kafka),
    ("Ingest service", stage_ingest),
    ("Client apps post runs, feedback and edits", stage_post),
    ("What landed on each topic", stage_show),
    ("Curator: gold DPO pairs into Delta Lake, exactly once", stage_curate),
]


def _detail_name(topic: str) -> str:
    return "feature" if ".runs." in f".{topic}" else "kind" if "feedback" in topic else "surface"


def _compact(record: dict[str, Any] | None, limit: int) -> str:
    """One line of JSON with long strings cut, for a terminal."""

    def cut(value: Any) -> Any:
        if isinstance(value, str) and len(value) > _EXAMPLE_CHARS:
            return value[: _EXAMPLE_CHARS - 1] + "…"
        if isinstance(value, datetime):
            return value.astimezone(UTC).isoformat(timespec="milliseconds")
        if isinstance(value, dict):
            return {k: cut(v) for k, v in value.items() if v not in (None, {}, [])}
        if isinstance(value, list):
            return [cut(v) for v in value]
        return value

    text = orjson.dumps(cut(record)).decode()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def main() -> int:
    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        demo = Demo(stack)
        try:
            for i, (title, stage) in enumerate(STAGES, 1):
                say(f"[{i}/{len(STAGES)}] {title}")
                t0 = time.monotonic()
                stage(demo)
                say(f"  ({time.monotonic() - t0:.1f}s)")
        except KeyboardInterrupt:
            say("\ninterrupted; stopping")
            return 130
        finally:
            say("stopping the services and the broker")
    say(f"done in {time.monotonic() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
