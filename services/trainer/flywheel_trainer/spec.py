"""``JobSpec``: everything one job needs, written by the watcher as ``spec.json`` in the run's
artifact folder and read by ``python -m flywheel_trainer.job --spec spec.json``. It names a
pinned (table URI, version), never "the latest", and carries no secrets (those come from the
job's environment, like every other setting)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from flywheel_trainer.settings import GateSettings, JobConfig

__all__ = ["SPEC_FILE", "JobSpec"]

SPEC_FILE = "spec.json"


class JobSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    run_id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")  # also a Kubernetes name
    table_uri: str
    dataset_version: int = Field(ge=0)
    registry_uri: str
    artifact_dir: str
    job: JobConfig
    gate: GateSettings
    golden_eval_path: str | None = None
    code_version: str

    def write(self, directory: Path | None = None) -> Path:
        folder = directory or Path(self.artifact_dir)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / SPEC_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(self.model_dump_json(indent=2), encoding="utf-8")
        tmp.replace(path)  # atomic: a job never reads half a spec
        return path

    @classmethod
    def read(cls, path: Path) -> JobSpec:
        return cls.model_validate_json(path.read_text(encoding="utf-8"))
