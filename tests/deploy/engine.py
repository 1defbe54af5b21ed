"""The Docker engine the deploy tests drive, through the docker CLI on PATH.

``find_engine`` answers whether an engine answers; as root with none answering it prepares one
the way CI does (``.ci/docker-engine``: the distribution's docker.io, dockerd in the
background) and says why when it cannot.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PREPARE_SCRIPT = REPO / ".ci" / "docker-engine"
_PROBE_TIMEOUT_S = 20.0
_PREPARE_TIMEOUT_S = 600.0


class DockerError(RuntimeError):
    """A docker command failed; carries its output."""


@dataclass(frozen=True)
class Docker:
    """The CLI, with a deadline on every call."""

    binary: str

    def run(
        self,
        *args: str,
        timeout_s: float = 300.0,
        check: bool = True,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        return run_command([self.binary, *args], timeout_s, check=check, env=env)

    def answers(self) -> bool:
        try:
            self.run("info", "--format", "{{.ServerVersion}}", timeout_s=_PROBE_TIMEOUT_S)
        except (DockerError, subprocess.TimeoutExpired):
            return False
        return True

    def image_exists(self, ref: str) -> bool:
        return self.run("image", "inspect", ref, check=False, timeout_s=60).returncode == 0

    def image_size(self, ref: str) -> int:
        out = self.run("image", "inspect", "--format", "{{.Size}}", ref, timeout_s=60).stdout
        return int(out.strip())

    def inspect(self, ref: str) -> dict[str, object]:
        out = self.run("inspect", ref, timeout_s=60).stdout
        found: list[dict[str, object]] = json.loads(out)
        return found[0]


def run_command(
    argv: Sequence[str],
    timeout_s: float,
    *,
    check: bool = True,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """``argv`` with a deadline; a failure raises with the tail of its output."""
    proc = subprocess.run(
        list(argv),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
        env={**os.environ, **env} if env else None,
    )
    if check and proc.returncode != 0:
        raise DockerError(
            f"{' '.join(argv[:6])} ... exited {proc.returncode}:\n"
            f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


def find_engine() -> tuple[Docker | None, str]:
    """(the engine, "") when one answers, else (None, why not)."""
    binary = shutil.which("docker")
    if binary is not None and Docker(binary).answers():
        return Docker(binary), ""
    if os.geteuid() != 0:
        return None, (
            "no Docker engine answers and this process is not root, so it cannot start one "
            "(as root, .ci/docker-engine installs the distribution's docker.io and starts dockerd)"
        )
    try:
        run_command([str(PREPARE_SCRIPT)], _PREPARE_TIMEOUT_S)
    except (DockerError, subprocess.TimeoutExpired, OSError) as exc:
        return (
            None,
            f"no Docker engine answers and {PREPARE_SCRIPT.name} could not start one: {exc}",
        )
    binary = shutil.which("docker")
    if binary is None or not Docker(binary).answers():
        return None, f"{PREPARE_SCRIPT.name} finished but no Docker engine answers"
    return Docker(binary), ""
