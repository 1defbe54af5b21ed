"""The compose file's variables reach the trainer settings."""

from __future__ import annotations

from flywheel_trainer.settings import TrainerSettings

from tests.deploy_env import compose_environment, unknown_variables


def test_compose_sets_only_real_trainer_settings() -> None:
    env = compose_environment()
    assert any(k.startswith("FLYWHEEL_TRAINER_") for k in env)
    assert unknown_variables(TrainerSettings, env) == []
