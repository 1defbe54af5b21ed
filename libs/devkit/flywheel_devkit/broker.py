"""A real single-node Kafka (KRaft) broker for tests, the demo and benchmarks.

The Apache Kafka jars come from Maven Central (``mvn dependency:copy-dependencies``) into a
cache outside the checkout (``~/.cache/flywheel/kafka/<version>``, or ``$FLYWHEEL_CACHE``).
``LocalKafka`` formats KRaft storage, starts ``kafka.Kafka`` on free loopback ports, waits until
it answers, and stops it on exit. The JVM is tied to this process with ``PR_SET_PDEATHSIG`` so a
``kill -9`` of the parent leaves no orphan broker behind.

Command line (``flywheel-kafka``): ``fetch`` warms the cache; ``run`` starts a broker in the
foreground, creates the Flywheel topics and stops cleanly on Ctrl-C / SIGTERM.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import fcntl
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

__all__ = ["KAFKA_VERSION", "BrokerError", "LocalKafka", "ensure_kafka_jars", "free_port"]

KAFKA_VERSION = "4.1.1"
LOG4J_VERSION = "2.24.3"
_READY_TIMEOUT_S = 60.0
_STOP_TIMEOUT_S = 20.0
_PR_SET_PDEATHSIG = 1

log = logging.getLogger(__name__)


class BrokerError(RuntimeError):
    """The local broker could not be fetched, formatted or started."""


def cache_root() -> Path:
    # The devkit is a dev tool (no service settings object): its one knob is the cache path.
    root = os.environ.get("FLYWHEEL_CACHE") or Path.home() / ".cache" / "flywheel"
    return Path(root)


_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>io.flywheel</groupId><artifactId>kafka-runtime</artifactId><version>1</version>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId>
      <version>{kafka}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j2-impl</artifactId><version>{log4j}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-core</artifactId><version>{log4j}</version></dependency>
  </dependencies>
</project>
"""

_LOG4J2 = """<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="WARN">
  <Appenders>
    <File name="file" fileName="{log}"><PatternLayout pattern="%d %p %c{{1}} %m%n"/></File>
  </Appenders>
  <Loggers><Root level="WARN"><AppenderRef ref="file"/></Root></Loggers>
</Configuration>
"""


def ensure_kafka_jars(version: str = KAFKA_VERSION) -> Path:
    """Return a folder of the broker's jars, fetching them with Maven on first use.

    Safe to call from several processes at once (file lock); the folder only appears complete.
    """
    target = cache_root() / "kafka" / version / "lib"
    if (target / ".complete").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / ".complete").exists():
            return target
        mvn = shutil.which("mvn")
        if mvn is None:
            raise BrokerError("Maven (mvn) is needed to fetch the Kafka jars; install it first")
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            pom = Path(tmp) / "pom.xml"
            pom.write_text(_POM.format(kafka=version, log4j=LOG4J_VERSION))
            out = Path(tmp) / "lib"
            log.info("fetching kafka jars", extra={"version": version, "into": str(target)})
            proc = subprocess.run(  # noqa: S603 - fixed argv, no shell
                [
                    mvn,
                    "-q",
                    "-B",
                    "-f",
                    str(pom),
                    "dependency:copy-dependencies",
                    f"-DoutputDirectory={out}",
                    "-DincludeScope=runtime",
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            if proc.returncode != 0:
                raise BrokerError(
                    f"mvn could not fetch Kafka {version}:\n{proc.stdout[-3000:]}"
                    f"{proc.stderr[-3000:]}"
                )
            (out / ".complete").write_text(version)
            if target.exists():
                shutil.rmtree(target)
            out.rename(target)
    return target


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """Runs in the child before exec: deliver SIGKILL to the JVM when its parent dies."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _java() -> str:
    java = shutil.which("java")
    if java is None:
        raise BrokerError("a Java runtime (java, 17+) is needed to run the local Kafka broker")
    return java


class LocalKafka:
    """A single-node KRaft broker on 127.0.0.1. Use as a context manager.

    ``stop()``/``start()`` restart it on the same ports and data, so tests can take the broker
    away and bring it back; ``kill()`` is a ``kill -9``.
    """

    def __init__(
        self,
        *,
        data_dir: Path | None = None,
        port: int | None = None,
        partitions: int = 3,
        heap: str = "1g",
        version: str = KAFKA_VERSION,
    ) -> None:
        self.version = version
        self.port = port or free_port()
        self.controller_port = free_port()
        self.partitions = partitions
        self.heap = heap
        self._owns_dir = data_dir is None
        self.data_dir = data_dir or Path(tempfile.mkdtemp(prefix="flywheel-kafka-"))
        self._proc: subprocess.Popen[bytes] | None = None
        self._formatted = False

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "server.log"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _write_config(self) -> Path:
        logs = self.data_dir / "logs"
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},"
            f"CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(logs),
            "num.partitions": str(self.partitions),
            "auto.create.topics.enable": "false",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "5",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "5",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "log.flush.interval.messages": "9223372036854775807",
        }
        path = self.data_dir / "server.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        (self.data_dir / "log4j2.xml").write_text(_LOG4J2.format(log=self.log_file))
        return path

    def _java_cmd(self, *args: str) -> list[str]:
        lib = ensure_kafka_jars(self.version)
        return [
            _java(),
            "-Xms256m",
            f"-Xmx{self.heap}",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.xml'}",
            "-cp",
            f"{lib}/*",
            *args,
        ]

    def start(self, *, timeout_s: float = _READY_TIMEOUT_S) -> LocalKafka:
        if self.running:
            return self
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self._write_config()
        if not self._formatted and not (self.data_dir / "logs" / "meta.properties").exists():
            # KRaft wants a url-safe base64 UUID (what `random-uuid` prints); it may start with
            # "-", so it is passed as --cluster-id=... rather than as a separate argument.
            cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
            fmt = subprocess.run(  # noqa: S603
                self._java_cmd(
                    "kafka.tools.StorageTool", "format", f"--cluster-id={cid}", "-c", str(config)
                ),
                capture_output=True,
                text=True,
                check=False,
            )
            if fmt.returncode != 0:
                raise BrokerError(f"kafka storage format failed: {fmt.stdout}{fmt.stderr}")
        self._formatted = True
        stdout = open(self.data_dir / "stdout.log", "ab")  # noqa: SIM115 - lives with the process
        self._proc = subprocess.Popen(  # noqa: S603
            self._java_cmd("kafka.Kafka", str(config)),
            stdout=stdout,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
        stdout.close()
        self._wait_ready(timeout_s)
        log.info("kafka up", extra={"bootstrap": self.bootstrap_servers, "pid": self._proc.pid})
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        from confluent_kafka.admin import AdminClient

        deadline = time.monotonic() + timeout_s
        # A plain TCP probe first: librdkafka logs every refused connection loudly.
        while not self._accepts_connections():
            self._check_alive()
            if time.monotonic() > deadline:
                self.kill()
                raise BrokerError(
                    f"kafka did not listen on {self.bootstrap_servers} "
                    f"in {timeout_s}s; see {self.log_file}"
                )
            time.sleep(0.1)
        admin = AdminClient({"bootstrap.servers": self.bootstrap_servers})
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                md = admin.list_topics(timeout=1.0)
                if md.brokers and md.controller_id >= 0:
                    return
            except Exception as exc:  # metadata not ready yet; the deadline bounds the loop
                log.debug("kafka metadata not ready", extra={"error": str(exc)})
            time.sleep(0.1)
        self.kill()
        raise BrokerError(f"kafka did not answer on {self.bootstrap_servers} in {timeout_s}s")

    def _accepts_connections(self) -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(0.5)
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def _check_alive(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            raise BrokerError(
                f"kafka exited with {self._proc.returncode}; see "
                f"{self.data_dir / 'stdout.log'} and {self.log_file}"
            )

    def stop(self, *, timeout_s: float = _STOP_TIMEOUT_S) -> None:
        """Controlled shutdown (SIGTERM), escalating to SIGKILL after ``timeout_s``."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def kill(self) -> None:
        """``kill -9`` the broker (fault injection)."""
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.wait()
        self._proc = None

    def close(self) -> None:
        self.stop()
        if self._owns_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> LocalKafka:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


@contextlib.contextmanager
def _terminate_on_signals() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt so ``with LocalKafka()`` cleans up."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    from flywheel_common.kafka import ensure_topics
    from flywheel_common.settings import KafkaSettings

    parser = argparse.ArgumentParser(prog="flywheel-kafka", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("fetch", help="fetch the broker jars into the cache")
    run = sub.add_parser("run", help="run a broker in the foreground until Ctrl-C")
    run.add_argument("--port", type=int, default=9092)
    run.add_argument("--partitions", type=int, default=3)
    run.add_argument("--data-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.cmd == "fetch":
        print(ensure_kafka_jars())  # noqa: T201 - CLI output
        return 0
    with (
        _terminate_on_signals(),
        LocalKafka(port=args.port, partitions=args.partitions, data_dir=args.data_dir) as kafka,
    ):
        settings = KafkaSettings(
            bootstrap_servers=kafka.bootstrap_servers, partitions=args.partitions
        )
        ensure_topics(settings)
        print(f"kafka {kafka.version} listening on {kafka.bootstrap_servers}", flush=True)  # noqa: T201
        try:
            while kafka.running:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
