"""deploy/docker-compose.yml driven as a user drives it: ``docker compose`` (the v2 plugin) when
the machine has it, else ``docker-compose`` 1.29; one project per test session, so volumes,
networks and containers never collide with anything else."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.deploy.engine import REPO, Docker, DockerError, run_command

COMPOSE_FILE = REPO / "deploy" / "docker-compose.yml"
TEST_OVERRIDE = Path(__file__).parent / "compose.test.yml"
LAKE_PROBE = Path(__file__).parent / "lake_probe.py"
KAFKA_PROBE = Path(__file__).parent / "kafka_probe.py"


def compose_command(docker: Docker) -> list[str] | None:
    """The compose CLI this machine has: the v2 plugin first, then docker-compose 1.29."""
    if docker.run("compose", "version", check=False, timeout_s=30).returncode == 0:
        return [docker.binary, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


@dataclass
class ComposeStack:
    docker: Docker
    command: list[str]
    env: Mapping[str, str]
    files: Sequence[Path] = (COMPOSE_FILE, TEST_OVERRIDE)
    project: str = field(default_factory=lambda: f"flywheel{uuid.uuid4().hex[:8]}")

    def run(
        self, *args: str, timeout_s: float = 300.0, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        argv = [*self.command, "--project-name", self.project]
        for file in self.files:
            argv += ["--file", str(file)]
        return run_command(
            [*argv, *args], timeout_s, check=check, env=dict(self.env), cwd=COMPOSE_FILE.parent
        )

    def exec(self, service: str, *argv: str, timeout_s: float = 120.0) -> str:
        """``argv`` in the running ``service`` container; its stdout."""
        return self.run("exec", "-T", service, *argv, timeout_s=timeout_s).stdout

    def run_once(self, service: str, *argv: str, timeout_s: float = 180.0) -> str:
        """``argv`` in a fresh container of ``service`` (its image, volumes and environment,
        the entrypoint replaced); its stdout."""
        return self.run(
            "run",
            "--rm",
            "--no-deps",
            "-T",
            "--entrypoint",
            argv[0],
            service,
            *argv[1:],
            timeout_s=timeout_s,
        ).stdout

    def lake(self, *app_ids: str) -> dict[str, Any]:
        """What the lake volume holds, read by the curator image (tests/deploy/lake_probe.py)."""
        out = self.run_once("curator", "python", "-c", LAKE_PROBE.read_text(), *app_ids)
        report: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        return report

    def end_offsets(self, *topics: str) -> dict[str, dict[str, int]]:
        """Every partition's end offset, read by the ingest image (tests/deploy/kafka_probe.py)."""
        out = self.exec("ingest", "python", "-c", KAFKA_PROBE.read_text(), "kafka:9092", *topics)
        ends: dict[str, dict[str, int]] = json.loads(out.strip().splitlines()[-1])
        return ends

    def container_state(self, service: str) -> dict[str, Any]:
        cid = self.run("ps", "-q", service, timeout_s=60).stdout.strip()
        if not cid:
            return {}
        state: dict[str, Any] = self.docker.inspect(cid)["State"]  # type: ignore[assignment]
        return state

    def wait_healthy(self, service: str, *, timeout_s: float) -> None:
        """Until ``service``'s health check passes; its logs in the error when it does not."""
        deadline = time.monotonic() + timeout_s
        status = "no container"
        while time.monotonic() < deadline:
            state = self.container_state(service)
            status = str((state.get("Health") or {}).get("Status", state.get("Status")))
            if status == "healthy":
                return
            time.sleep(1.0)
        raise DockerError(f"{service} not healthy in {timeout_s:.0f} s ({status}):\n{self.logs()}")

    def logs(self, *services: str, tail: int = 80) -> str:
        out = self.run("logs", "--no-color", "--tail", str(tail), *services, check=False)
        return out.stdout[-30_000:] + out.stderr[-2_000:]

    def down(self) -> None:
        self.run("down", "--volumes", "--remove-orphans", "--timeout", "10", timeout_s=300)
