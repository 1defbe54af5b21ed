"""deploy/docker-compose.yml, really run: the built images come up in health order, events sent
to the published ingest port become gold pairs in the lake volume (none lost, none twice, with
the curator killed and restarted mid-stream), a tiny job trains and is recorded, a pinned
version survives ``flywheel data compact --vacuum``, and ``down -v`` leaves nothing behind."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from flywheel_common.lake import txn_app_id
from flywheel_common.settings import Topics
from flywheel_curator.settings import DEFAULT_GROUP
from flywheel_devkit.broker import free_port
from flywheel_ingest.auth import generate_api_key, hash_api_key

from tests.deploy.conftest import DeployImages
from tests.deploy.engine import Docker, DockerError
from tests.deploy.images import IMAGE_PREFIX, TAG
from tests.deploy.stack import ComposeStack, compose_command
from tests.deploy.timing import TIMINGS
from tests.deploy.traffic import EditCase, edit_events, send_edits

# Image builds happen in the first test that needs them: minutes when cold.
pytestmark = [pytest.mark.deploy, pytest.mark.timeout(2400)]

EDITS = 120  # one gold pair each
BATCH = 20  # edits per SDK send (one flush)
KILL_AFTER_BATCHES = 2  # the curator is killed here ...
START_AFTER_BATCHES = 4  # ... and started again here, with events sent while it was down
THRESHOLD = 40  # pairs that trigger the first training job
PAIRS_TIMEOUT_S = 240.0
JOB_TIMEOUT_S = 420.0
# A run not in one of these is finished (flywheel_trainer.training_runs.ACTIVE; this test runs in
# the light environment, which cannot import the trainer).
ACTIVE = {"pending", "launched", "running"}


@dataclass(frozen=True)
class RunningStack:
    compose: ComposeStack
    url: str
    api_key: str


@pytest.fixture(scope="module")
def stack(docker_engine: Docker, deploy_images: DeployImages) -> Iterator[RunningStack]:
    command = compose_command(docker_engine)
    if command is None:
        pytest.skip("neither the compose v2 plugin nor docker-compose is installed")
    api_key = generate_api_key()
    port = free_port()
    env = {
        "FLYWHEEL_IMAGE_PREFIX": IMAGE_PREFIX,
        "FLYWHEEL_VERSION": TAG,
        "FLYWHEEL_PYTHON_IMAGE": deploy_images.bases.python,
        "FLYWHEEL_KAFKA_IMAGE": deploy_images.bases.kafka,
        "FLYWHEEL_KAFKA_HEAP_OPTS": "-Xmx512m -Xms256m",
        "FLYWHEEL_INGEST_API_KEYS": json.dumps(
            [{"tenant": "acme", "key_sha256": hash_api_key(api_key)}]
        ),
        "FLYWHEEL_INGEST_PORT": str(port),
        "FLYWHEEL_TRAINER_THRESHOLD": str(THRESHOLD),
    }
    compose = ComposeStack(docker_engine, command, env)
    TIMINGS.note(f"  compose: {' '.join(command)} (project {compose.project})")
    try:
        with TIMINGS.phase("compose up (until ingest is healthy)"):
            try:
                compose.run("up", "--detach", "--no-build", timeout_s=600)
            except DockerError as exc:
                raise DockerError(f"{exc}\n{compose.logs()}") from exc
            compose.wait_healthy("ingest", timeout_s=180)
        yield RunningStack(compose, f"http://127.0.0.1:{port}", api_key)
    finally:
        with TIMINGS.phase("compose down -v"):
            compose.down()


def test_events_become_gold_pairs_and_a_recorded_job(stack: RunningStack) -> None:
    compose = stack.compose
    with TIMINGS.phase("send events through the SDK (curator killed and restarted)"):
        expected = _send_with_curator_restart(stack, edit_events(EDITS, seed=15))
    with TIMINGS.phase("wait until the curator caught up"):
        lake = _wait_until_caught_up(compose)
    found = Counter(lake["pair_event_ids"])
    lost = expected - set(found)
    duplicated = {event_id: n for event_id, n in found.items() if n > 1}
    TIMINGS.note(
        f"  gold pairs: {len(expected)} sent, {len(lost)} lost, {len(duplicated)} duplicated"
    )
    assert (len(lost), len(duplicated)) == (0, 0), (sorted(lost)[:5], duplicated)
    assert set(found) == expected
    with TIMINGS.phase("wait for a recorded training job"):
        run = _wait_for_a_finished_run(compose)
    assert run["status"] in {"succeeded", "promoted", "rejected", "inconclusive"}, run
    TIMINGS.note(f"  training run {run['run_id']}: {run['status']} on {run['dataset']}")
    status = status_of_stack(compose)
    assert status["topics_ok"], status
    assert status["tables"]["dpo_pairs"]["rows"] == EDITS
    assert any(r["run_id"] == run["run_id"] for r in status["models"])


def test_a_pinned_version_is_never_vacuumed(stack: RunningStack) -> None:
    """``flywheel data pin`` (trainer image) of the current version, more pairs after it, then
    ``flywheel data compact --vacuum`` with no retention (curator image): the compaction
    replaces the pinned version's files, and the vacuum that would delete them is refused."""
    compose = stack.compose
    pinned = int(compose.lake()["dpo_pairs"]["version"])
    with TIMINGS.phase("pin, more pairs, compact --vacuum"):
        compose.exec("trainer", "flywheel", "data", "pin", "--version", str(pinned))
        send_edits(stack.url, stack.api_key, edit_events(BATCH, seed=16))
        before = _wait_until_caught_up(compose)
        refused = compose.run(
            "run",
            "--rm",
            "--no-deps",
            "-T",
            "--entrypoint",
            "flywheel",
            "curator",
            "data",
            "compact",
            "--vacuum",
            "--retention-hours",
            "0",
            "--table",
            "dpo_pairs",
            check=False,
            timeout_s=180,
        )
    assert before["dpo_pairs"]["files"] > 1, before["dpo_pairs"]  # something to compact
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert f"pinned version {pinned}" in refused.stderr
    after = compose.lake()
    assert after["dpo_pairs"]["version"] > before["dpo_pairs"]["version"]  # compacted
    assert after["dpo_pairs"]["files"] == 1
    assert after["dpo_pairs"]["rows"] == EDITS + BATCH
    assert pinned in after["pairs_loadable_versions"]  # and the pinned version still reads


def status_of_stack(compose: ComposeStack) -> dict[str, Any]:
    """The hook for ``flywheel status`` (being written by another engineer): until it exists,
    the stack's state from ``flywheel topics list``, the lake's tables and
    ``flywheel models list``. Once it lands, call it here and compare."""
    topics = compose.run(
        "exec",
        "-T",
        "ingest",
        "flywheel",
        "topics",
        "list",
        "--bootstrap-servers",
        "kafka:9092",
        check=False,
        timeout_s=120,
    )
    lake = compose.lake()
    models = json.loads(compose.exec("trainer", "flywheel", "models", "list", "--json"))
    return {
        "topics_ok": topics.returncode == 0,
        "topics": topics.stdout,
        "tables": {name: lake[name] for name in ("dpo_pairs", "training_runs")},
        "models": models,
    }


def _send_with_curator_restart(stack: RunningStack, cases: list[EditCase]) -> set[str]:
    """Send ``cases`` in batches of ``BATCH`` edits, killing the curator and starting it again
    between batches; the edits' event ids."""
    sent: set[str] = set()
    for number, start in enumerate(range(0, len(cases), BATCH)):
        if number == KILL_AFTER_BATCHES:
            stack.compose.run("kill", "-s", "SIGKILL", "curator", timeout_s=60)
        if number == START_AFTER_BATCHES:
            stack.compose.run("start", "curator", timeout_s=120)
        sent.update(send_edits(stack.url, stack.api_key, cases[start : start + BATCH]))
    assert stack.compose.container_state("curator").get("Running") is True
    return sent


def _wait_until_caught_up(compose: ComposeStack) -> dict[str, Any]:
    """Until the curator's offsets in the lake (Delta txn per topic-partition) reach the end of
    every partition the events went to: then every pair it will ever write is there, and so is
    any duplicate a restart could have caused."""
    topics = Topics()
    ends = compose.end_offsets(topics.runs, topics.edits)
    wanted = {
        txn_app_id(DEFAULT_GROUP, topic, int(partition)): end
        for topic, partitions in ends.items()
        for partition, end in partitions.items()
    }
    deadline = time.monotonic() + PAIRS_TIMEOUT_S
    behind = dict(wanted)
    while time.monotonic() < deadline:
        lake = compose.lake(*wanted)
        offsets = lake.get("txn") or {}
        behind = {app: end for app, end in wanted.items() if (offsets.get(app) or 0) < end}
        if not behind:
            return lake
        time.sleep(2.0)
    pytest.fail(
        f"the curator did not catch up in {PAIRS_TIMEOUT_S:.0f} s: {behind}\n"
        f"{compose.logs('curator')}"
    )


def _wait_for_a_finished_run(compose: ComposeStack) -> dict[str, Any]:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    runs: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        runs = json.loads(compose.exec("trainer", "flywheel", "models", "list", "--json"))
        done = [r for r in runs if r["status"] not in ACTIVE]
        if done:
            return done[0]
        time.sleep(3.0)
    pytest.fail(
        f"no finished training run after {JOB_TIMEOUT_S:.0f} s: {runs}\n{compose.logs('trainer')}"
    )
