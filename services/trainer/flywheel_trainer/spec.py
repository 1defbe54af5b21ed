"""``JobSpec``: everything one job needs, written by the watcher as ``spec.json`` in the run's
artifact folder and read by ``python -m flywheel_trainer.job --spec spec.json``. It names pinned
(table URI, version) pairs, never "the latest", and carries no secrets (those come from the
job's environment, like every other setting)."""

from __future__ import annotations

import hashlib
import json
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
    # kto_examples at a pinned version; None when the table did not exist at launch.
    kto_table_uri: str | None = None
    kto_version: int | None = Field(default=None, ge=0)
    registry_uri: str
    artifact_dir: str
    job: JobConfig
    gate: GateSettings
    # The golden set: a Delta table at a pinned version, or a JSONL file pinned by its SHA-256.
    golden_uri: str | None = None
    golden_version: int | None = Field(default=None, ge=0)
    golden_eval_path: str | None = None
    golden_sha256: str | None = None
    code_version: str

    def config_hash(self) -> str:
        """What determines the trained model: the data (URIs and versions, split seed inside
        the recipe), the method, hyper-parameters and base model (the recipe), and the code."""
        parts = {
            "recipe": self.job.model_dump(mode="json"),
            "pairs": [self.table_uri, self.dataset_version],
            # Read by DPO jobs too: its prompt groups take part in the held-out split.
            "kto": [self.kto_table_uri, self.kto_version],
            "code_version": self.code_version,
        }
        blob = json.dumps(parts, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def golden_label(self) -> str:
        """Where the golden set was read from, pinned; or "none"."""
        if self.golden_uri is not None:
            return f"{self.golden_uri}@{self.golden_version}"
        if self.golden_eval_path is not None:
            return f"{self.golden_eval_path} (sha256 {(self.golden_sha256 or '?')[:12]})"
        return "none"

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
