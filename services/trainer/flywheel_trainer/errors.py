"""The trainer's errors, children of Flywheel's tree (``flywheel_common.errors``).

FlywheelError
├── ConfigError
│   ├── RunNotFoundError      no run with that id in training_runs
│   └── RegistryStateError    the asked transition does not fit the registry's state
├── LakeError
│   └── SnapshotError         a pinned table version could not be read
└── JobError                  a training job could not run or did not finish
    └── LaunchError           a launcher could not start or observe a job
"""

from __future__ import annotations

from flywheel_common.errors import ConfigError, FlywheelError, LakeError

__all__ = [
    "JobError",
    "LaunchError",
    "RegistryStateError",
    "RunNotFoundError",
    "SnapshotError",
]


class RunNotFoundError(ConfigError):
    def __init__(self, run_id: str) -> None:
        super().__init__(f"no training run {run_id!r} in the registry")
        self.run_id = run_id


class RegistryStateError(ConfigError):
    """E.g. promoting a run that has no adapter, or rolling back with no previous champion."""


class SnapshotError(LakeError):
    def __init__(self, table_uri: str, version: int | None, reason: str) -> None:
        at = f"@{version}" if version is not None else ""
        super().__init__(f"cannot read {table_uri}{at}: {reason}")
        self.table_uri = table_uri
        self.version = version


class JobError(FlywheelError):
    """A training job failed; ``run_id`` names it in the registry."""

    def __init__(self, run_id: str, reason: str) -> None:
        super().__init__(f"job {run_id}: {reason}")
        self.run_id = run_id
        self.reason = reason


class LaunchError(JobError):
    """The launcher could not start, find or poll the job."""
