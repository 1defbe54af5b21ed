"""The three images built from deploy/Dockerfile: non-root, each with only its own dependencies,
no build tools, the README's entry points."""

from __future__ import annotations

import re

import pytest

from tests.deploy.conftest import DeployImages
from tests.deploy.engine import Docker

# Image builds happen in the first test that needs them: minutes when cold.
pytestmark = [pytest.mark.deploy, pytest.mark.timeout(2400)]

ENTRY_POINTS = {
    "ingest": "flywheel-ingest",
    "curator": "flywheel-curator",
    "trainer": "flywheel-trainer",
}
# What `flywheel --help` lists in each image: each service brings its own subcommands.
CLI_COMMANDS = {
    "ingest": {"topics"},
    "curator": {"topics", "curate", "replay", "data"},
    "trainer": {"topics", "data", "models"},
}
# Modules an image must not carry: the ingest image is light (no torch, no Delta).
ABSENT_MODULES = {
    "ingest": ("torch", "deltalake", "pyarrow", "transformers"),
    "curator": ("torch", "transformers"),
    "trainer": (),
}


def _run(docker: Docker, image: str, entrypoint: str, *args: str, timeout_s: float = 120) -> str:
    return docker.run(
        "run",
        "--rm",
        "--network",
        "none",
        "--entrypoint",
        entrypoint,
        image,
        *args,
        timeout_s=timeout_s,
    ).stdout


@pytest.mark.parametrize("service", ENTRY_POINTS)
def test_image_runs_as_its_service_user_with_the_readme_entry_point(
    docker_engine: Docker, deploy_images: DeployImages, service: str
) -> None:
    ref = deploy_images.built[service].ref
    config = docker_engine.inspect(ref)["Config"]
    assert config["User"] == "10001:10001"  # type: ignore[index]
    assert config["Entrypoint"] == [ENTRY_POINTS[service]]  # type: ignore[index]
    assert _run(docker_engine, ref, "id", "-u").strip() == "10001"
    listed = _run(docker_engine, ref, "flywheel", "--help")
    commands = set(re.findall(r"^ {4}([a-z]+) ", listed, re.MULTILINE))
    assert CLI_COMMANDS[service] <= commands, listed


@pytest.mark.parametrize("service", ENTRY_POINTS)
def test_image_carries_only_its_own_dependencies(
    docker_engine: Docker, deploy_images: DeployImages, service: str
) -> None:
    ref = deploy_images.built[service].ref
    probe = (
        "import importlib.util, sys; "
        f"print(','.join(m for m in {ABSENT_MODULES[service]!r} if importlib.util.find_spec(m)))"
    )
    assert _run(docker_engine, ref, "python", "-c", probe).strip() == ""


def test_trainer_image_has_no_build_tools_and_the_cuda_torch(
    docker_engine: Docker, deploy_images: DeployImages
) -> None:
    ref = deploy_images.built["trainer"].ref
    tools = _run(docker_engine, ref, "sh", "-c", "command -v gcc cc c++ make uv || true")
    assert tools.strip() == ""
    cuda = _run(docker_engine, ref, "python", "-c", "import torch; print(torch.version.cuda)")
    assert cuda.strip() not in ("", "None"), "the trainer image should carry PyPI's CUDA torch"
