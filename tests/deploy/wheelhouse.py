"""The wheelhouse the images are built from here: every wheel uv.lock names for the three
services (plus uv and the build backend), downloaded once on the host into
``$FLYWHEEL_CACHE/wheels`` and served to ``docker build`` over loopback HTTP.

Why not let the build reach PyPI: inside containers TLS to the registries only verifies with
the host's CA bundle, and a bundle (or any credential) passed into a build stays in the image
history. The images install with ``--require-hashes`` against the lock's hashes either way.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import re
import shutil
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from flywheel_devkit.broker import cache_root

from tests.deploy.engine import REPO, run_command

SERVICES = ("flywheel-ingest", "flywheel-curator", "flywheel-trainer")
# A fixed port keeps the WHEELHOUSE build argument, and so docker's layer cache, stable.
WHEELHOUSE_PORT = 38513
_DOWNLOAD_TIMEOUT_S = 1800.0


def _uv() -> Path:
    """The uv the Makefile installs (same version as the Dockerfile's UV_VERSION)."""
    version = _dockerfile_uv_version()
    uv = cache_root() / "tools" / f"uv-{version}" / "bin" / "uv"
    if not uv.exists():
        found = shutil.which("uv")
        if found is None:
            raise FileNotFoundError(f"uv {version} not found at {uv} nor on PATH (make setup)")
        return Path(found)
    return uv


def _dockerfile_uv_version() -> str:
    text = (REPO / "deploy" / "Dockerfile").read_text()
    match = re.search(r"^ARG UV_VERSION=(\S+)$", text, re.MULTILINE)
    if match is None:
        raise ValueError("deploy/Dockerfile has no ARG UV_VERSION=...")
    return match.group(1)


def _requirements(uv: Path, package: str) -> str:
    env = {"UV_CACHE_DIR": str(cache_root() / "uv"), "UV_PYTHON_DOWNLOADS": "never"}
    return run_command(
        [
            str(uv),
            "export",
            "--frozen",
            "--no-dev",
            "--no-emit-workspace",
            "--no-header",
            "--package",
            package,
        ],
        120.0,
        env=env,
        cwd=REPO,
    ).stdout


def ensure_wheelhouse() -> Path:
    """The wheelhouse folder, complete for the current lock (downloads what is missing)."""
    uv = _uv()
    folder = cache_root() / "wheels"
    folder.mkdir(parents=True, exist_ok=True)
    requirements = [_requirements(uv, package) for package in SERVICES]
    extras = [f"uv=={_dockerfile_uv_version()}", "hatchling"]
    key = hashlib.sha256("\0".join([*requirements, *extras]).encode()).hexdigest()[:16]
    marker = folder / f".complete-{key}"
    if marker.exists():
        return folder
    pip = uv.parent / "pip"
    files = []
    for package, text in zip(SERVICES, requirements, strict=True):
        path = folder / f".requirements-{package}.txt"
        path.write_text(text)
        files += ["-r", str(path)]
    common = [str(pip), "download", "--quiet", "--only-binary=:all:", "--dest", str(folder)]
    run_command([*common, "--no-deps", "--require-hashes", *files], _DOWNLOAD_TIMEOUT_S)
    run_command([*common, *extras], _DOWNLOAD_TIMEOUT_S)
    marker.write_text("\n".join(extras))
    return folder


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


@contextmanager
def served(folder: Path) -> Iterator[str]:
    """``folder`` as a find-links URL on 127.0.0.1 (builds use ``--network host``)."""
    port = WHEELHOUSE_PORT if _port_free(WHEELHOUSE_PORT) else 0
    handler = functools.partial(_QuietHandler, directory=os.fspath(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=server.serve_forever, name="wheelhouse", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
