"""Fixtures of the deploy tests: a Docker engine (prepared as CI does when this is root), the
base images (public or stand-ins), and the three service images built from deploy/Dockerfile.
Where the time went is printed at the end of the session."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.deploy.engine import Docker, find_engine
from tests.deploy.images import BuiltImage, build_images
from tests.deploy.standins import BaseImages, StandinError, base_images
from tests.deploy.timing import TIMINGS
from tests.deploy.wheelhouse import ensure_wheelhouse, served


@dataclass(frozen=True)
class DeployImages:
    bases: BaseImages
    built: dict[str, BuiltImage]


@pytest.fixture(scope="session")
def docker_engine() -> Docker:
    with TIMINGS.phase("docker engine"):
        docker, why = find_engine()
    if docker is None:
        pytest.skip(why)
    return docker


@pytest.fixture(scope="session")
def deploy_images(docker_engine: Docker) -> Iterator[DeployImages]:
    try:
        with TIMINGS.phase("base images"):
            bases = base_images(docker_engine)
    except StandinError as exc:
        pytest.skip(str(exc))
    with TIMINGS.phase("wheelhouse"):
        folder = ensure_wheelhouse()
    with served(folder) as url:
        built = build_images(docker_engine, python_image=bases.python, wheelhouse=url)
    for image in built.values():
        TIMINGS.note(f"  image {image.ref}: {image.size_bytes / 1e6:,.0f} MB")
    TIMINGS.note(f"  base images: {bases.kind} ({bases.python}, {bases.kafka})")
    yield DeployImages(bases, built)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if TIMINGS.phases:
        terminalreporter.write_sep("-", "deploy timings")
        terminalreporter.write_line(TIMINGS.report())
