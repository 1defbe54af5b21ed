"""The compose file's variables reach the ingest and curator settings, and every variable it
reads is documented."""

from __future__ import annotations

from flywheel_curator.settings import CuratorSettings
from flywheel_ingest.settings import IngestSettings

from tests.deploy_env import (
    compose_environment,
    compose_variables,
    documented_variables,
    unknown_variables,
)


def test_compose_sets_only_real_ingest_and_curator_settings() -> None:
    env = compose_environment()
    assert any(k.startswith("FLYWHEEL_INGEST_") for k in env)
    assert any(k.startswith("FLYWHEEL_CURATOR_") for k in env)
    assert unknown_variables(IngestSettings, env) == []
    assert unknown_variables(CuratorSettings, env) == []


def test_the_check_catches_a_typo() -> None:
    env = {"FLYWHEEL_CURATOR_LAKE__URL": "/lake", "FLYWHEEL_CURATOR_STATEDIR": "/s"}
    assert unknown_variables(CuratorSettings, env) == list(env)


def test_every_compose_variable_is_documented_in_one_place() -> None:
    """deploy/flywheel.env.example lists exactly what the compose file reads (plus the
    project name compose itself takes from it)."""
    assert compose_variables() - documented_variables() == set()
    assert documented_variables() - compose_variables() == {"COMPOSE_PROJECT_NAME"}
