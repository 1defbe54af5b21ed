"""Checks that every FLYWHEEL_* variable a deploy file sets names a real settings field.

pydantic-settings ignores unknown variables silently, so a typo in a compose file or manifest
would otherwise deploy with defaults.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic_settings import BaseSettings

COMPOSE = Path(__file__).resolve().parents[1] / "deploy" / "docker-compose.yml"


def compose_environment() -> dict[str, str]:
    """Every environment variable any service in the compose file sets."""
    doc = yaml.safe_load(COMPOSE.read_text())
    env: dict[str, str] = {}
    for service in doc["services"].values():
        env.update({k: str(v) for k, v in (service.get("environment") or {}).items() if k != "<<"})
    env.update(doc.get("x-kafka-env", {}))
    return env


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
