"""The compose file's variables reach the ingest and curator settings."""

from __future__ import annotations

from flywheel_curator.settings import CuratorSettings
from flywheel_ingest.settings import IngestSettings

from tests.deploy_env import compose_environment, unknown_variables


def test_compose_sets_only_real_ingest_and_curator_settings() -> None:
    env = compose_environment()
    assert any(k.startswith("FLYWHEEL_INGEST_") for k in env)
    assert any(k.startswith("FLYWHEEL_CURATOR_") for k in env)
    assert unknown_variables(IngestSettings, env) == []
    assert unknown_variables(CuratorSettings, env) == []


def test_the_check_catches_a_typo() -> None:
    env = {"FLYWHEEL_CURATOR_LAKE__URL": "/lake", "FLYWHEEL_CURATOR_STATEDIR": "/s"}
    assert unknown_variables(CuratorSettings, env) == list(env)
