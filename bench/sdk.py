"""The Python SDK against the batch endpoint used directly, side by side in one run.

    .venv/bin/python bench/sdk.py [--quick]

1. direct: ``POST /v1/events`` with pre-built bodies of BATCH events (the events an app's
   calls make, encoded once up front), from MAX_IN_FLIGHT threads on httpx keep-alive
   connections, as a hand-rolled client would: the ceiling for any client of this service.
2. sdk: an app thread calling ``Flywheel.log_run/thumbs/signal`` in a loop with the same
   field values, the SDK batching them (defaults: 500 events or 512 KiB per batch, 2 requests
   in flight, gzip at 16 KiB), ``overflow="block"`` so the app is paced by delivery: events/s
   acknowledged in the steady state, after a warm-up. Once more with gzip off.
3. caller cost: the same calls at a fixed rate below capacity (no backpressure), each timed
   on the caller's thread (``perf_counter_ns``): p50 / p99 / p99.9 in microseconds.

The three throughput phases run in ROUNDS rounds, interleaved, and each row is the median of
its rounds, so that load from elsewhere on the machine falls on all of them alike. The
service runs as its own process (as deployed); the broker is local unless
``KAFKA_BOOTSTRAP_SERVERS`` is set.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import httpx
from flywheel_client import Flywheel
from flywheel_client._calls import Calls
from flywheel_client._wire import batch_body, encode_event
from flywheel_common import KafkaSettings, Topics
from flywheel_common.kafka import ensure_topics, wait_for_broker
from flywheel_devkit import LocalKafka, free_port
from flywheel_ingest.auth import hash_api_key

API_KEY = "bench-sdk-key-0123456789abcdef"
BATCH = 500
MAX_IN_FLIGHT = 2
PARTITIONS = 3
ROUNDS = 3
PROMPT = "How do I export my project to CSV? I tried the settings page and found nothing."
RESPONSE = "Open the project, choose Settings > Export, pick CSV; a link arrives by email."


@contextmanager
def service(kafka: KafkaSettings) -> Iterator[str]:
    port = free_port()
    env = {
        **os.environ,
        "FLYWHEEL_INGEST_PORT": str(port),
        "FLYWHEEL_INGEST_API_KEYS": json.dumps(
            [{"tenant": "bench", "key_sha256": hash_api_key(API_KEY)}]
        ),
        "FLYWHEEL_INGEST_KAFKA": kafka.model_dump_json(),
        "FLYWHEEL_INGEST_RATE_PER_S": "1e12",  # the service, not its rate limiter
        "FLYWHEEL_INGEST_BURST": "1000000000",
        "FLYWHEEL_INGEST_LOGGING__LEVEL": "WARNING",
    }
    proc = subprocess.Popen([sys.executable, "-m", "flywheel_ingest"], env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the ingest service did not become ready")
            time.sleep(0.1)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def app_round(fw: Flywheel) -> int:
    """One round of an app's calls, with fixed field values; returns the events it made."""
    run_id = fw.log_run(prompt=PROMPT, response=RESPONSE, model="llama-3.1-8b", feature="f")
    fw.thumbs(run_id, "down", correction=RESPONSE)
    fw.signal(run_id, "copy")
    return 3


def direct_bodies(count: int) -> list[bytes]:
    calls = Calls(remember_runs=0)
    events: list[bytes] = []
    for _ in range(count // 3):
        run_id, run = calls.run(
            prompt=PROMPT, response=RESPONSE, model="llama-3.1-8b", options={"feature": "f"}
        )
        events.append(encode_event(run))
        thumbs = calls.thumbs(run_id, "down", comment=None, correction=RESPONSE, options={})
        events.append(encode_event(thumbs))
        events.append(encode_event(calls.signal(run_id, "copy", None, options={})))
    return [batch_body(events[i : i + BATCH]) for i in range(0, len(events), BATCH)]


def direct(url: str, bodies: list[bytes], duration: float) -> float:
    """Events/s acknowledged, MAX_IN_FLIGHT threads posting ready bodies."""
    headers = {"authorization": f"Bearer {API_KEY}", "content-type": "application/json"}
    counted = [0] * MAX_IN_FLIGHT
    stop_at = time.monotonic() + 1.0  # warm-up

    def worker(n: int, measure: bool) -> None:
        with httpx.Client(timeout=30) as client:
            i = n
            while time.monotonic() < stop_at:
                response = client.post(
                    f"{url}/v1/events", content=bodies[i % len(bodies)], headers=headers
                )
                if response.status_code != 202:
                    raise RuntimeError(f"direct: HTTP {response.status_code} {response.text[:200]}")
                if measure:
                    counted[n] += BATCH
                i += MAX_IN_FLIGHT

    for measure in (False, True):
        started = time.monotonic()
        stop_at = started + (duration if measure else 1.0)
        threads = [threading.Thread(target=worker, args=(n, measure)) for n in range(MAX_IN_FLIGHT)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return sum(counted) / (time.monotonic() - started)


def through_sdk(url: str, duration: float, *, gzip: bool) -> tuple[float, float]:
    """Events/s acknowledged in the steady state, and the caller's CPU µs per call."""
    fw = Flywheel(
        url,
        API_KEY,
        overflow="block",
        block_timeout_s=60,
        gzip_min_bytes=16 * 1024 if gzip else None,
        exit_timeout_s=None,
    )
    stop = threading.Event()
    made = [0]
    cpu = [0.0]

    def app() -> None:
        cpu0 = time.thread_time()
        while not stop.is_set():
            made[0] += app_round(fw)
        cpu[0] = time.thread_time() - cpu0

    thread = threading.Thread(target=app)
    thread.start()
    time.sleep(2.0)  # warm-up: the queue fills, batches flow
    delivered0, t0 = fw.stats().delivered, time.monotonic()
    time.sleep(duration)
    rate = (fw.stats().delivered - delivered0) / (time.monotonic() - t0)
    stop.set()
    thread.join()
    if not fw.flush(60):
        raise RuntimeError(f"sdk: not delivered: {fw.stats()}")
    stats = fw.stats()
    fw.close()
    if stats.rejected or stats.dropped_overflow:
        raise RuntimeError(f"sdk: events lost: {stats}")
    return rate, cpu[0] / made[0] * 1e6


def caller_cost(url: str, rate: float, duration: float) -> tuple[list[int], list[int]]:
    """Wall and CPU nanoseconds of each call on the caller's thread, at ``rate`` calls/s
    (open loop). Wall minus CPU is time the thread waited: for the GIL, or for a core."""
    fw = Flywheel(url, API_KEY, exit_timeout_s=None)
    wall: list[int] = []
    cpu: list[int] = []
    calls = [
        lambda: fw.log_run(prompt=PROMPT, response=RESPONSE, model="llama-3.1-8b", feature="f"),
        lambda: fw.thumbs("run-1", "down", correction=RESPONSE),
        lambda: fw.signal("run-1", "copy"),
    ]
    total = int(rate * duration)
    start = time.perf_counter()
    for i in range(total):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        c0, t0 = time.thread_time_ns(), time.perf_counter_ns()
        calls[i % 3]()
        t1, c1 = time.perf_counter_ns(), time.thread_time_ns()
        wall.append(t1 - t0)
        cpu.append(c1 - c0)
    fw.flush(60)
    fw.close()
    warm = len(wall) // 10  # steady state: the first tenth is warm-up
    return wall[warm:], cpu[warm:]


def pct(samples: list[int], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short phases (a smoke run)")
    args = parser.parse_args()
    duration = 4.0 if args.quick else 10.0
    bodies = direct_bodies(30_000)
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    with nullcontext() if bootstrap else LocalKafka(partitions=PARTITIONS) as local:
        servers = bootstrap or local.bootstrap_servers  # type: ignore[union-attr]
        wait_for_broker(KafkaSettings(bootstrap_servers=servers))
        kafka = KafkaSettings(
            bootstrap_servers=servers,
            topics=Topics.with_prefix(f"bench-{uuid.uuid4().hex[:8]}"),
            partitions=PARTITIONS,
        )
        ensure_topics(kafka)
        with service(kafka) as url:
            rounds: dict[str, list[float]] = {"direct": [], "gzip": [], "raw": []}
            cpu: dict[str, list[float]] = {"gzip": [], "raw": []}
            for n in range(ROUNDS):
                rounds["direct"].append(direct(url, bodies, duration))
                for name, gzip in (("gzip", True), ("raw", False)):
                    rate, per_call = through_sdk(url, duration, gzip=gzip)
                    rounds[name].append(rate)
                    cpu[name].append(per_call)
                print(
                    f"round {n + 1}: direct {rounds['direct'][-1]:,.0f} ev/s, sdk "
                    f"{rounds['gzip'][-1]:,.0f} (gzip) / {rounds['raw'][-1]:,.0f} (off)",
                    flush=True,
                )
            sdk_rate = statistics.median(rounds["gzip"])
            cost_rate = min(2000.0, 0.5 * sdk_rate)
            wall, thread_cpu = caller_cost(url, cost_rate, duration)
    baseline = statistics.median(rounds["direct"])
    load_after = Path("/proc/loadavg").read_text().split()[:3]
    print()
    print(f"load average before {' '.join(load_before)}, after {' '.join(load_after)}")
    rows = [
        (f"direct `POST /v1/events`, {BATCH}/request, {MAX_IN_FLIGHT} in flight", "direct"),
        ("SDK, defaults (gzip from 16 KiB)", "gzip"),
        ("SDK, gzip off", "raw"),
    ]
    print(f"| | events/s (median of {ROUNDS}) | x direct | caller CPU us/call |")
    print("|---|---|---|---|")
    for name, key in rows:
        rate = statistics.median(rounds[key])
        per_call = f"{statistics.median(cpu[key]):.1f}" if key in cpu else ""
        print(f"| {name} | {rate:,.0f} | **{rate / baseline:.2f}** | {per_call} |")
    print()
    print(
        f"caller's thread per call at {cost_rate:,.0f} calls/s (log_run, thumbs, signal in turn; "
        f"{len(wall):,} calls): wall p50 **{pct(wall, 0.5):.1f} us**, p99 **{pct(wall, 0.99):.1f}"
        f" us**, p99.9 {pct(wall, 0.999):.1f} us; CPU p50 {pct(thread_cpu, 0.5):.1f} us, "
        f"p99 {pct(thread_cpu, 0.99):.1f} us"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
