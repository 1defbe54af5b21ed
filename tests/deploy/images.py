"""Build the three service images from deploy/Dockerfile, as a user would, with the base image
and the wheelhouse as build arguments."""

from __future__ import annotations

from dataclasses import dataclass

from tests.deploy.engine import REPO, Docker
from tests.deploy.timing import TIMINGS

SERVICES = ("ingest", "curator", "trainer")
IMAGE_PREFIX = "flywheel"
TAG = "deploytest"
_BUILD_TIMEOUT_S = 1800.0


@dataclass(frozen=True)
class BuiltImage:
    service: str
    ref: str
    seconds: float
    size_bytes: int


def build_images(docker: Docker, *, python_image: str, wheelhouse: str) -> dict[str, BuiltImage]:
    """ingest, curator, trainer (in the Dockerfile's order, so each reuses the last's layers)."""
    built = {}
    for service in SERVICES:
        ref = f"{IMAGE_PREFIX}/{service}:{TAG}"
        with TIMINGS.phase(f"build {service} image"):
            docker.run(
                "build",
                "--network",
                "host",
                "--file",
                str(REPO / "deploy" / "Dockerfile"),
                "--target",
                service,
                "--build-arg",
                f"PYTHON_IMAGE={python_image}",
                "--build-arg",
                f"WHEELHOUSE={wheelhouse}",
                "--tag",
                ref,
                str(REPO),
                timeout_s=_BUILD_TIMEOUT_S,
            )
        seconds = TIMINGS.phases[-1][1]
        built[service] = BuiltImage(service, ref, seconds, docker.image_size(ref))
    return built
