"""The compose file is valid for the compose this machine has (no engine needed): alone with
its required secret, merged with the deploy test's override, and refused without the secret."""

from __future__ import annotations

import shutil

import pytest

from tests.deploy.engine import Docker, run_command
from tests.deploy.stack import COMPOSE_FILE, TEST_OVERRIDE, compose_command


def _compose() -> list[str]:
    docker = shutil.which("docker")
    command = compose_command(Docker(docker)) if docker else shutil.which("docker-compose")
    if not command:
        pytest.skip("neither the compose v2 plugin nor docker-compose is installed")
    return command if isinstance(command, list) else [command]


@pytest.mark.parametrize("files", [(COMPOSE_FILE,), (COMPOSE_FILE, TEST_OVERRIDE)])
def test_compose_accepts_the_file(files: tuple[object, ...]) -> None:
    argv = [*_compose(), "--project-name", "flywheel"]
    for file in files:
        argv += ["--file", str(file)]
    out = run_command(
        [*argv, "config", "--services"],
        60.0,
        env={"FLYWHEEL_INGEST_API_KEYS": "[]"},
        cwd=COMPOSE_FILE.parent,
    )
    services = set(out.stdout.split())
    assert {"kafka", "topics", "ingest", "curator", "trainer"} <= services


def test_compose_refuses_to_run_without_api_keys() -> None:
    proc = run_command(
        [*_compose(), "--file", str(COMPOSE_FILE), "config"],
        60.0,
        check=False,
        env={"FLYWHEEL_INGEST_API_KEYS": ""},
        cwd=COMPOSE_FILE.parent,
    )
    assert proc.returncode != 0
    assert "FLYWHEEL_INGEST_API_KEYS" in proc.stdout + proc.stderr
