"""Ingest throughput and latency, side by side with the raw producer, in one run.

    .venv/bin/python bench/ingest.py [--quick] [--profile]

1. raw: confluent-kafka producer with the service's exact config (acks=all, idempotent,
   linger) sending the same Avro payloads the service would, every ack counted: the
   physical limit of this machine and broker; then the same producer alone at RATE events/s,
   open loop: the broker's own ack latency tail, the floor under the service's open-loop row.
2. batch: ``POST /v1/events`` with BATCH events per request, CONNS_BATCH connections.
3. single: one event per request (the route of its type), CONCURRENCY connections,
   closed loop: requests/s and latency percentiles.
4. open loop: single events at a fixed RATE requests/s; latency measured from each request's
   scheduled send time, so a stall is not hidden (no coordinated omission).
5. The CPU share of validation + Avro encoding: that path timed in-process on the same
   payloads, against the service's CPU per event measured (``/proc``) during phases 2 and 3.

The service runs as its own process (``python -m flywheel_ingest``) as in production. The load
generator is this process: a minimal HTTP/1.1 keep-alive client on uvloop, far cheaper per
request than httpx; its own CPU use is reported because it shares the machine's cores.
``--profile`` runs the service under cProfile and prints where its time goes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pstats
import resource
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import orjson
import uvloop
from confluent_kafka import Producer
from flywheel_common import AvroCodec, KafkaSettings, Topics
from flywheel_common.kafka import ensure_topics, producer_config, wait_for_broker
from flywheel_devkit import LocalKafka, free_port
from flywheel_ingest.auth import hash_api_key
from flywheel_ingest.models import RECORD_NAMES, parse_events, to_record
from flywheel_ingest.settings import LINGER_MS

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from demo.sample import SampleEvent, generate_sample

API_KEY = "bench-key-0123456789abcdef"
TENANT = "bench"
BATCH = 500
CONNS_BATCH = 4
CONCURRENCY = 32
RATE = 500
PARTITIONS = 3
TICKS = os.sysconf("SC_CLK_TCK")


# -- payloads --------------------------------------------------------------------------


@dataclass(frozen=True)
class Payloads:
    singles: list[tuple[str, bytes]]  # (path, body)
    batches: list[bytes]
    avro: list[tuple[str, bytes, bytes]]  # (record name, key, value) for the raw producer


def build_payloads(codec: AvroCodec) -> Payloads:
    sample: list[SampleEvent] = generate_sample(runs_per_tenant=200, tenants=("a", "b"))
    singles = [(e.route, orjson.dumps(e.body)) for e in sample]
    tagged = [{"type": e.kind, **e.body} for e in sample]
    batches = [
        orjson.dumps({"events": (tagged * 2)[i : i + BATCH]}) for i in range(0, len(tagged), BATCH)
    ]
    avro = []
    for e in sample:
        [event] = parse_events(orjson.dumps(e.body), route=e.kind, max_events=1)
        _, record = to_record(event, tenant=TENANT, received_at_ms=time.time_ns() // 1_000_000)
        name = RECORD_NAMES[e.kind]
        avro.append((name, record["run_id"].encode(), codec.encode(name, record)))
    return Payloads(singles, batches, avro)


def validate_encode_cost(payloads: Payloads, codec: AvroCodec) -> tuple[float, float]:
    """CPU seconds per event of parse + validate + to_record + Avro encode: (single, batch)."""

    def run(bodies: list[tuple[str, bytes]]) -> float:
        events = 0
        t0 = time.process_time()
        for route, body in bodies:
            for event in parse_events(body, route=route, max_events=BATCH):  # type: ignore[arg-type]
                _, record = to_record(event, tenant=TENANT, received_at_ms=0)
                codec.encode(RECORD_NAMES[event.type], record)
                events += 1
        return (time.process_time() - t0) / events

    kinds = {"/v1/runs": "run", "/v1/feedback": "feedback", "/v1/edits": "edit"}
    singles = [(kinds[path], body) for path, body in payloads.singles]
    run(singles)  # warm up
    single = min(run(singles) for _ in range(3))
    batch = min(run([("batch", b) for b in payloads.batches]) for _ in range(3))
    return single, batch


# -- raw producer ----------------------------------------------------------------------


def raw_producer(kafka: KafkaSettings, payloads: Payloads, count: int) -> tuple[float, float]:
    """Events/s and CPU seconds per event of the bare producer, every ack awaited."""
    producer = Producer(producer_config(kafka, linger_ms=LINGER_MS))
    topic = {
        "Run": kafka.topics.runs,
        "Feedback": kafka.topics.feedback,
        "Edit": kafka.topics.edits,
    }
    acked = errors = 0

    def on_delivery(err: object, _msg: object) -> None:
        nonlocal acked, errors
        acked += 1
        if err is not None:
            errors += 1

    # Warm-up: metadata, idempotence PID.
    producer.produce(kafka.topics.runs, payloads.avro[0][2], payloads.avro[0][1])
    producer.flush(30)
    avro = payloads.avro
    cpu0, t0 = time.process_time(), time.perf_counter()
    for i in range(count):
        name, key, value = avro[i % len(avro)]
        while True:
            try:
                producer.produce(topic[name], value, key, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.005)
        if i % 1000 == 0:
            producer.poll(0)
    producer.flush(60)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    if errors or acked != count:
        raise RuntimeError(f"raw producer: {acked} acked of {count}, {errors} errors")
    return count / elapsed, cpu / count


def raw_open_loop(
    kafka: KafkaSettings, payloads: Payloads, rate: float, duration: float
) -> list[float]:
    """Ack latencies (s) of the bare producer sending at ``rate`` events/s, each counted from
    its scheduled send time: the broker's own latency tail on this machine, which no service
    in front of it can beat."""
    producer = Producer(producer_config(kafka, linger_ms=LINGER_MS))
    topic = {
        "Run": kafka.topics.runs,
        "Feedback": kafka.topics.feedback,
        "Edit": kafka.topics.edits,
    }
    latencies: list[float] = []
    errors = 0

    def acked(scheduled: float) -> Callable[[object, object], None]:
        def on_delivery(err: object, _msg: object) -> None:
            nonlocal errors
            latencies.append(time.perf_counter() - scheduled)
            errors += err is not None

        return on_delivery

    producer.produce(kafka.topics.runs, payloads.avro[0][2], payloads.avro[0][1])
    producer.flush(30)
    total = int(rate * duration)
    t0 = time.perf_counter()
    for i in range(total):
        scheduled = t0 + i / rate
        while (delay := scheduled - time.perf_counter()) > 0:
            producer.poll(min(delay, 0.001))  # serves acks while waiting
        name, key, value = payloads.avro[i % len(payloads.avro)]
        producer.produce(topic[name], value, key, on_delivery=acked(scheduled))
    producer.flush(60)
    if errors or len(latencies) != total:
        raise RuntimeError(f"raw open loop: {len(latencies)} acked of {total}, {errors} errors")
    return latencies


# -- a minimal HTTP/1.1 keep-alive client ------------------------------------------------


class HttpConnection(asyncio.Protocol):
    """One keep-alive connection; one request in flight at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[int] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        head_end = self.buf.find(b"\r\n\r\n")
        if head_end < 0:
            return
        head = bytes(self.buf[:head_end]).lower()
        cl = head.find(b"content-length:")
        length = int(head[cl + 15 : head.find(b"\r\n", cl) if head.find(b"\r\n", cl) > 0 else None])
        end = head_end + 4 + length
        if len(self.buf) < end:
            return
        status = int(self.buf[9:12])
        del self.buf[:end]
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(status)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection lost"))

    async def request(self, data: bytes) -> int:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return await self.waiter


def http_request(path: str, body: bytes) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nhost: bench\r\nauthorization: Bearer {API_KEY}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    ).encode() + body


async def connect(port: int) -> HttpConnection:
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_connection(HttpConnection, "127.0.0.1", port)
    return proto


@dataclass
class LoadResult:
    requests: int
    events: int
    elapsed: float
    latencies: list[float]
    non_202: int
    service_cpu: float
    loadgen_cpu: float
    service_threads: dict[str, float]

    def pct(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def proc_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and its live children (a server may fork workers)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    total = (int(fields[11]) + int(fields[12])) / TICKS
    for task in Path(f"/proc/{pid}/task").iterdir():
        children = (task / "children").read_text().split()
        total += sum(proc_cpu(int(child)) for child in children)
    return total


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds by thread name (librdkafka's threads are ``rdk:*``)."""
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except FileNotFoundError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        name = "rdk:broker" if name.startswith("rdk:b") else name
        fields = stat.rsplit(")", 1)[1].split()
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / TICKS
    return out


def thread_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0) > 0}


def self_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


async def closed_loop(
    port: int, requests: list[tuple[bytes, int]], conns: int, duration: float, pid: int
) -> LoadResult:
    """``conns`` connections, each sending its next request as soon as the last is answered."""
    connections = [await connect(port) for _ in range(conns)]
    latencies: list[float] = []
    counts = {"requests": 0, "events": 0, "bad": 0}
    stop_at = 0.0

    async def worker(conn: HttpConnection, offset: int) -> None:
        i = offset
        while time.perf_counter() < stop_at:
            data, events = requests[i % len(requests)]
            i += conns
            t0 = time.perf_counter()
            status = await conn.request(data)
            latencies.append(time.perf_counter() - t0)
            counts["requests"] += 1
            if status == 202:
                counts["events"] += events
            else:
                counts["bad"] += 1

    # Warm-up, then the measured window.
    stop_at = time.perf_counter() + min(1.0, duration / 3)
    await asyncio.gather(*(worker(c, n) for n, c in enumerate(connections)))
    latencies.clear()
    counts.update(requests=0, events=0, bad=0)
    threads0 = thread_cpu(pid)
    svc0, gen0, t0 = proc_cpu(pid), self_cpu(), time.perf_counter()
    stop_at = t0 + duration
    await asyncio.gather(*(worker(c, n) for n, c in enumerate(connections)))
    elapsed = time.perf_counter() - t0
    result = LoadResult(
        counts["requests"],
        counts["events"],
        elapsed,
        latencies,
        counts["bad"],
        proc_cpu(pid) - svc0,
        self_cpu() - gen0,
        thread_delta(threads0, thread_cpu(pid)),
    )
    for c in connections:
        assert c.transport is not None
        c.transport.close()
    return result


async def open_loop(
    port: int, requests: list[tuple[bytes, int]], rate: float, duration: float, pid: int
) -> LoadResult:
    """Requests at fixed times ``t0 + i/rate``; latency counts from the scheduled time."""
    idle = [await connect(port) for _ in range(16)]
    latencies: list[float] = []
    counts = {"requests": 0, "bad": 0}
    # All kept, not only the pending ones: every task's outcome is awaited below.
    tasks: list[asyncio.Task[None]] = []

    async def one(data: bytes, scheduled: float) -> None:
        conn = None
        while idle and conn is None:
            conn = idle.pop()
            # uvicorn closes a connection idle past its keep-alive timeout; skip those.
            if conn.transport is None or conn.transport.is_closing():
                conn = None
        if conn is None:
            conn = await connect(port)
        try:
            status = await conn.request(data)
        except (ConnectionError, RuntimeError):  # closed under us: a failed request
            counts["requests"] += 1
            counts["bad"] += 1
            return
        latencies.append(time.perf_counter() - scheduled)
        idle.append(conn)
        counts["requests"] += 1
        if status != 202:
            counts["bad"] += 1

    total = int(rate * duration)
    threads0 = thread_cpu(pid)
    svc0, gen0, t0 = proc_cpu(pid), self_cpu(), time.perf_counter()
    for i in range(total):
        scheduled = t0 + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(requests[i % len(requests)][0], scheduled)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - t0
    result = LoadResult(
        counts["requests"],
        counts["requests"],
        elapsed,
        latencies,
        counts["bad"],
        proc_cpu(pid) - svc0,
        self_cpu() - gen0,
        thread_delta(threads0, thread_cpu(pid)),
    )
    for c in idle:
        assert c.transport is not None
        c.transport.close()
    return result


# -- the service -----------------------------------------------------------------------


@contextmanager
def service(kafka: KafkaSettings, *, profile_to: Path | None) -> Iterator[tuple[int, int]]:
    port = free_port()
    env = {
        **os.environ,
        "FLYWHEEL_INGEST_PORT": str(port),
        "FLYWHEEL_INGEST_API_KEYS": json.dumps(
            [{"tenant": TENANT, "key_sha256": hash_api_key(API_KEY)}]
        ),
        "FLYWHEEL_INGEST_KAFKA": kafka.model_dump_json(),
        # The bench measures the service, not its rate limiter.
        "FLYWHEEL_INGEST_RATE_PER_S": "1e12",
        "FLYWHEEL_INGEST_BURST": "1000000000",
        "FLYWHEEL_INGEST_LOGGING__LEVEL": "WARNING",
    }
    argv = [sys.executable]
    if profile_to is None:
        argv += ["-m", "flywheel_ingest"]
    else:
        # thread_time: the event loop thread's CPU, not wall time (the machine is shared).
        argv += [
            "-c",
            "import cProfile, time\n"
            "from flywheel_ingest.__main__ import main\n"
            "p = cProfile.Profile(time.thread_time)\n"
            "p.runcall(main, [])\n"
            f"p.dump_stats({str(profile_to)!r})\n",
        ]
    proc = subprocess.Popen(argv, env=env)
    try:
        import httpx

        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the ingest service did not become ready")
            time.sleep(0.1)
        yield port, proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def print_profile(path: Path) -> None:
    stats = pstats.Stats(str(path))
    total = stats.total_tt  # type: ignore[attr-defined]
    groups = {
        "pydantic validation": ("pydantic",),
        "avro encode": ("fastavro", "codec.py"),
        "kafka produce/poll": ("confluent_kafka", "cimpl", "publisher.py", "produce", "poll"),
        "http server (uvicorn/httptools)": ("uvicorn", "httptools"),
        "framework (starlette)": ("starlette",),
        "asyncio / uvloop": ("asyncio", "uvloop", "<built-in method select", "epoll"),
        "startup (imports, dataclasses)": ("builtins.compile", "marshal", "<frozen"),
        "metrics": ("prometheus_client",),
        "json (orjson)": ("orjson",),
    }
    shares = dict.fromkeys(groups, 0.0)
    other = 0.0
    for (file, _line, func), (_cc, _nc, tt, _ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        where = f"{file}:{func}"
        for name, needles in groups.items():
            if any(n in where for n in needles):
                shares[name] += tt
                break
        else:
            other += tt
    print(f"\nservice profile (cProfile, event-loop thread CPU, {total:.1f}s in all):")
    for name, tt in sorted(shares.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<34} {100 * tt / total:5.1f} %")
    print(f"  {'other':<34} {100 * other / total:5.1f} %")
    print("\ntop functions by own time:")
    stats.sort_stats("tottime").print_stats(15)


# -- main ------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short phases (a smoke run)")
    parser.add_argument("--profile", action="store_true", help="profile the service (cProfile)")
    args = parser.parse_args()
    duration = 3.0 if args.quick else 10.0
    raw_count = 50_000 if args.quick else 300_000

    codec = AvroCodec()
    payloads = build_payloads(codec)
    single_cost, batch_cost = validate_encode_cost(payloads, codec)
    load_before = Path("/proc/loadavg").read_text().split()[:3]

    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    with LocalKafka(partitions=PARTITIONS) if not bootstrap else _nothing() as local:
        servers = bootstrap or local.bootstrap_servers  # type: ignore[union-attr]
        wait_for_broker(KafkaSettings(bootstrap_servers=servers))
        kafka = KafkaSettings(
            bootstrap_servers=servers,
            topics=Topics.with_prefix(f"bench-{uuid.uuid4().hex[:8]}"),
            partitions=PARTITIONS,
        )
        ensure_topics(kafka)
        print(f"broker {servers}; load average before: {' '.join(load_before)}", flush=True)

        raw_rate, raw_cpu = raw_producer(kafka, payloads, raw_count)
        print(f"raw producer: {raw_rate:,.0f} events/s", flush=True)
        raw_lat = sorted(raw_open_loop(kafka, payloads, RATE, duration))

        profile_to = Path(tempfile.mkdtemp()) / "ingest.prof" if args.profile else None
        with service(kafka, profile_to=profile_to) as (port, pid):
            singles = [(http_request(p, b), 1) for p, b in payloads.singles]
            batches = [(http_request("/v1/events", b), BATCH) for b in payloads.batches]
            loop = uvloop.new_event_loop()
            try:
                batch = loop.run_until_complete(
                    closed_loop(port, batches, CONNS_BATCH, duration, pid)
                )
                print(f"batch: {batch.events / batch.elapsed:,.0f} events/s", flush=True)
                single = loop.run_until_complete(
                    closed_loop(port, singles, CONCURRENCY, duration, pid)
                )
                print(f"single: {single.requests / single.elapsed:,.0f} req/s", flush=True)
                fixed = loop.run_until_complete(open_loop(port, singles, RATE, duration, pid))
            finally:
                loop.close()
        if profile_to is not None:
            print_profile(profile_to)

    load_after = Path("/proc/loadavg").read_text().split()[:3]
    batch_rate = batch.events / batch.elapsed
    single_rate = single.requests / single.elapsed
    fixed_rate = fixed.requests / fixed.elapsed
    svc_batch = batch.service_cpu / max(batch.events, 1)
    svc_single = single.service_cpu / max(single.events, 1)
    rows = [
        ("raw producer (acks=all, idempotent)", f"{raw_rate:,.0f} ev/s", "1.00", "", "", "", ""),
        (
            f"raw producer, open loop at {RATE} ev/s",
            "",
            "",
            f"{raw_lat[len(raw_lat) // 2] * 1000:.1f}",
            f"{raw_lat[int(0.99 * len(raw_lat))] * 1000:.1f}",
            "",
            "",
        ),
        (
            f"POST /v1/events ({BATCH}/req, {CONNS_BATCH} conns)",
            f"{batch_rate:,.0f} ev/s",
            f"{batch_rate / raw_rate:.2f}",
            f"{batch.pct(0.5):.0f}",
            f"{batch.pct(0.99):.0f}",
            f"{batch.service_cpu / batch.elapsed:.2f}",
            f"{batch.loadgen_cpu / batch.elapsed:.2f}",
        ),
        (
            f"single events, closed loop ({CONCURRENCY} conns)",
            f"{single_rate:,.0f} req/s",
            f"{single_rate / raw_rate:.2f}",
            f"{single.pct(0.5):.1f}",
            f"{single.pct(0.99):.1f}",
            f"{single.service_cpu / single.elapsed:.2f}",
            f"{single.loadgen_cpu / single.elapsed:.2f}",
        ),
        (
            f"single events, open loop at {RATE} req/s",
            f"{fixed_rate:,.0f} req/s",
            f"{fixed_rate / raw_rate:.2f}",
            f"{fixed.pct(0.5):.1f}",
            f"{fixed.pct(0.99):.1f}",
            f"{fixed.service_cpu / fixed.elapsed:.2f}",
            f"{fixed.loadgen_cpu / fixed.elapsed:.2f}",
        ),
    ]
    head = ("", "throughput", "x raw", "p50 ms", "p99 ms", "svc cores", "loadgen cores")
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    print()
    for row in [head, *rows]:
        print(
            "  ".join(
                str(c).ljust(w) if i == 0 else str(c).rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    bad = batch.non_202 + single.non_202 + fixed.non_202
    print(
        f"\nnon-202 answers: {bad}; max open-loop latency {max(fixed.latencies) * 1000:.1f} ms; "
        f"single-event p99.9 {single.pct(0.999):.1f} ms"
    )
    print(
        "CPU per event: raw producer "
        f"{raw_cpu * 1e6:.1f} us; service batch {svc_batch * 1e6:.1f} us, "
        f"single {svc_single * 1e6:.1f} us"
    )
    print(
        "validation + Avro encoding (same payloads, in-process): "
        f"{batch_cost * 1e6:.1f} us/event in a batch = {100 * batch_cost / svc_batch:.0f} % of "
        f"the service's CPU per batched event; {single_cost * 1e6:.1f} us/event single = "
        f"{100 * single_cost / svc_single:.0f} % of its CPU per single request"
    )
    for label, res in (("batch", batch), ("single", single), ("open loop", fixed)):
        per_thread = sorted(res.service_threads.items(), key=lambda kv: -kv[1])
        shares = ", ".join(
            f"{name} {100 * cpu / res.service_cpu:.0f} %" for name, cpu in per_thread
        )
        print(f"service CPU by thread, {label}: {shares}")
    print(f"load average after: {' '.join(load_after)}; cores: {os.cpu_count()}")
    return 0


@contextmanager
def _nothing() -> Iterator[None]:
    yield None


if __name__ == "__main__":
    sys.exit(main())
