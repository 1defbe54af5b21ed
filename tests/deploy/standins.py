"""The base images the Dockerfile and the compose file name by default (python:3.11-slim,
apache/kafka:4.1.1), or local stand-ins where the public registry is unreachable.

A stand-in is made from the distribution's packages: a debootstrap minbase root imported as an
image, then Debian's python3.11 (``standins/python``) or Debian's JRE with the devkit's Kafka jars
from Maven Central (``standins/kafka``). Each is tagged with a key of its recipe and saved under
``$FLYWHEEL_CACHE/images``, so it is made again only when its recipe changes, and a fresh
engine loads it in seconds.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from flywheel_devkit.broker import KAFKA_VERSION, cache_root, ensure_kafka_jars

from tests.deploy.engine import Docker, DockerError, run_command
from tests.deploy.timing import TIMINGS

PUBLIC_PYTHON = "python:3.11-slim"
PUBLIC_KAFKA = f"apache/kafka:{KAFKA_VERSION}"
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
RECIPES = Path(__file__).parent / "standins"
_PULL_TIMEOUT_S = 120.0
_DEBOOTSTRAP_TIMEOUT_S = 900.0
_BUILD_TIMEOUT_S = 900.0


class StandinError(RuntimeError):
    """A stand-in base image cannot be made on this machine (the reason says why)."""


@dataclass(frozen=True)
class BaseImages:
    python: str
    kafka: str
    kind: Literal["public", "stand-in"]


def base_images(docker: Docker) -> BaseImages:
    """The public images when present or pullable, else the stand-ins (made or loaded)."""
    if all(_present_or_pulled(docker, ref) for ref in (PUBLIC_PYTHON, PUBLIC_KAFKA)):
        return BaseImages(PUBLIC_PYTHON, PUBLIC_KAFKA, "public")
    images = _cache_dir()
    with _locked(images):
        debian = _debian_root(docker, images)
        python = _standin(docker, images, "python", debian, _recipe_key("python", debian))
        jars = [*sorted(ensure_kafka_jars().glob("*.jar")), _tools_jar()]
        key = _recipe_key("kafka", debian, tuple(jar.name for jar in jars))
        kafka = _standin(docker, images, "kafka", debian, key, jars=jars)
    return BaseImages(python, kafka, "stand-in")


def _present_or_pulled(docker: Docker, ref: str) -> bool:
    if docker.image_exists(ref):
        return True
    try:
        docker.run("pull", "--quiet", ref, timeout_s=_PULL_TIMEOUT_S)
    except (DockerError, subprocess.TimeoutExpired):
        return False
    return True


def _cache_dir() -> Path:
    path = cache_root() / "images"
    path.mkdir(parents=True, exist_ok=True)
    return path


class _locked:
    """One session makes the stand-ins at a time (several test runs may share the cache)."""

    def __init__(self, directory: Path) -> None:
        self._path = directory / ".lock"

    def __enter__(self) -> None:
        self._file = self._path.open("w")
        fcntl.flock(self._file, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        self._file.close()


def _recipe_key(name: str, base: str, extra: tuple[str, ...] = ()) -> str:
    """A short hash of what makes the image: its base, its recipe files, ``extra`` names."""
    digest = hashlib.sha256(f"{name}\0{base}".encode())
    recipe = RECIPES / name
    for file in sorted(p for p in recipe.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(recipe)).encode() + b"\0" + file.read_bytes())
    for item in extra:
        digest.update(item.encode())
    return digest.hexdigest()[:12]


def _load_or_make(docker: Docker, images: Path, ref: str, make: Callable[[], None]) -> str:
    """``ref`` when the engine has it, else loaded from the cache, else made and saved."""
    if docker.image_exists(ref):
        return ref
    saved = images / (ref.replace("/", "_").replace(":", "-") + ".tar")
    if saved.exists():
        with TIMINGS.phase(f"load {ref}"):
            docker.run("load", "--input", str(saved), timeout_s=_BUILD_TIMEOUT_S)
        return ref
    with TIMINGS.phase(f"make {ref}"):
        make()
    partial = saved.with_suffix(".partial")
    docker.run("save", "--output", str(partial), ref, timeout_s=_BUILD_TIMEOUT_S)
    partial.rename(saved)
    return ref


def _debian_root(docker: Docker, images: Path) -> str:
    key = hashlib.sha256(f"minbase {DEBIAN_SUITE} {DEBIAN_MIRROR}".encode()).hexdigest()[:12]
    ref = f"flywheel-standin/debian:{DEBIAN_SUITE}-{key}"

    def make() -> None:
        if os.geteuid() != 0 or shutil.which("debootstrap") is None:
            raise StandinError(
                "the public registry is unreachable and a stand-in base image needs root and "
                "debootstrap (apt-get install debootstrap)"
            )
        with tempfile.TemporaryDirectory(prefix="flywheel-debootstrap-") as root:
            run_command(
                ["debootstrap", "--variant=minbase", DEBIAN_SUITE, root, DEBIAN_MIRROR],
                _DEBOOTSTRAP_TIMEOUT_S,
            )
            tar = subprocess.Popen(["tar", "-C", root, "-c", "."], stdout=subprocess.PIPE)
            imported = subprocess.run(
                [docker.binary, "import", "-", ref],
                stdin=tar.stdout,
                capture_output=True,
                timeout=_BUILD_TIMEOUT_S,
                check=False,
            )
            tar.wait()
            if imported.returncode != 0 or tar.returncode != 0:
                raise StandinError(f"docker import failed: {imported.stderr.decode()[-2000:]}")

    return _load_or_make(docker, images, ref, make)


def _standin(
    docker: Docker, images: Path, name: str, debian: str, key: str, jars: Sequence[Path] = ()
) -> str:
    tag = {"python": "3.11", "kafka": KAFKA_VERSION}[name]
    ref = f"flywheel-standin/{name}:{tag}-{key}"

    def make() -> None:
        with tempfile.TemporaryDirectory(prefix=f"flywheel-{name}-standin-") as tmp:
            context = Path(tmp)
            shutil.copytree(RECIPES / name, context, dirs_exist_ok=True)
            (context / "libs").mkdir()
            for jar in jars:
                shutil.copy2(jar, context / "libs" / jar.name)
            docker.run(
                "build",
                "--quiet",
                "--build-arg",
                f"DEBIAN_IMAGE={debian}",
                "--tag",
                ref,
                str(context),
                timeout_s=_BUILD_TIMEOUT_S,
            )

    return _load_or_make(docker, images, ref, make)


def _tools_jar() -> Path:
    """kafka-tools (``kafka-topics.sh``'s TopicCommand) beside the devkit's jars; its other
    dependencies are already among them."""
    folder = cache_root() / "kafka" / KAFKA_VERSION / "tools"
    jar = folder / f"kafka-tools-{KAFKA_VERSION}.jar"
    if jar.exists():
        return jar
    mvn = shutil.which("mvn")
    if mvn is None:
        raise StandinError("Maven (mvn) is needed to fetch kafka-tools for the Kafka stand-in")
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        run_command(
            [
                mvn,
                "-q",
                "-B",
                "dependency:copy",
                f"-Dartifact=org.apache.kafka:kafka-tools:{KAFKA_VERSION}",
                f"-DoutputDirectory={tmp}",
            ],
            300.0,
            cwd=Path(tmp),
        )
        (Path(tmp) / jar.name).rename(jar)
    return jar
