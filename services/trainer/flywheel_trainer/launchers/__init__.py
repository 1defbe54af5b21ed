"""Where a job runs. ``local``: a subprocess on this host (its GPU when present).
``kubernetes``: a batch/v1 Job that requests ``nvidia.com/gpu``.

A launcher only starts and observes jobs; whether a job finished, and how, is what the job itself
recorded in the registry. A launcher's state answers the one question the registry cannot: is a
job that has not recorded a result still alive?
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from flywheel_trainer.registry import TrainingRun
from flywheel_trainer.settings import TrainerSettings
from flywheel_trainer.spec import JobSpec

__all__ = ["JobHandle", "JobState", "Launcher", "make_launcher"]

# "unknown": the launcher cannot tell (e.g. a manifest rendered but not submitted); the watcher
# keeps treating the job as alive until the registry says otherwise.
JobState = Literal["running", "exited", "unknown"]


@dataclass(frozen=True, slots=True)
class JobHandle:
    run_id: str
    launcher: str
    ref: str  # pid, or Kubernetes namespace/name


class Launcher(Protocol):
    name: str

    def launch(self, spec: JobSpec) -> JobHandle: ...

    def state(self, handle: JobHandle) -> JobState: ...

    def adopt(self, run: TrainingRun) -> JobHandle:
        """A handle for a job launched by an earlier trainer process."""
        ...


def make_launcher(settings: TrainerSettings) -> Launcher:
    if settings.launcher == "kubernetes":
        from flywheel_trainer.launchers.kubernetes import KubernetesLauncher

        return KubernetesLauncher(settings)
    from flywheel_trainer.launchers.local import LocalLauncher

    return LocalLauncher(settings)
