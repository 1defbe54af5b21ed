"""Checks that every FLYWHEEL_* variable a deploy file sets names a real settings field.

pydantic-settings ignores unknown variables silently, so a typo in a compose file or manifest
would otherwise deploy with defaults.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic_settings import BaseSettings

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
ENV_EXAMPLE = DEPLOY / "flywheel.env.example"
# ${NAME}, ${NAME:-default}, ${NAME:?error}: what compose interpolates from the environment.
_INTERPOLATED = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?[-?][^}]*)?\}")


def compose_environment() -> dict[str, str]:
    """Every environment variable any service in the compose file sets."""
    doc = yaml.safe_load(COMPOSE.read_text())
    env: dict[str, str] = {}
    for service in doc["services"].values():
        env.update({k: str(v) for k, v in (service.get("environment") or {}).items() if k != "<<"})
    return env


def compose_variables() -> set[str]:
    """The variables the compose file reads from the shell or deploy/.env."""
    return set(_INTERPOLATED.findall(COMPOSE.read_text()))


def documented_variables() -> set[str]:
    """The variables deploy/flywheel.env.example lists (NAME=default lines)."""
    names = set()
    for line in ENV_EXAMPLE.read_text().splitlines():
        name, sep, _ = line.partition("=")
        if sep and not line.startswith("#"):
            names.add(name.strip())
    return names


def unknown_variables(settings: type[BaseSettings], env: dict[str, Any]) -> list[str]:
    prefix = str(settings.model_config.get("env_prefix", ""))
    delimiter = str(settings.model_config.get("env_nested_delimiter") or "__")
    unknown = []
    for name in env:
        if not name.startswith(prefix):
            continue
        model: type[BaseModel] | None = settings
        for part in name[len(prefix) :].lower().split(delimiter):
            fields = model.model_fields if model is not None else {}
            if part not in fields:
                unknown.append(name)
                break
            annotation = fields[part].annotation
            model = (
                annotation
                if isinstance(annotation, type) and issubclass(annotation, BaseModel)
                else None
            )
    return unknown
