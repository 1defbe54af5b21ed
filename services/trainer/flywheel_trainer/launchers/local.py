"""The local launcher: the job as a subprocess of this host, its output in ``job.log``.

Liveness across trainer restarts comes from an exclusive ``flock`` on ``job.lock`` in the run's
artifact folder. The launcher takes the lock *before* spawning and hands the locked descriptor
to the child, so from the moment the watcher decides to launch until the job exits the lock is
held by exactly one live process. A restarted trainer that can take the lock therefore knows
the job is dead (or never started) and will never start; one that cannot knows it is running.
The job is detached (its own session, not our child), so it survives and finishes when the
trainer is killed.
"""

from __future__ import annotations

import fcntl
import logging
import os
import subprocess
import sys
from pathlib import Path
from types import TracebackType

from flywheel_trainer.errors import LaunchError
from flywheel_trainer.launchers import JobHandle, JobState
from flywheel_trainer.registry import TrainingRun
from flywheel_trainer.settings import TrainerSettings
from flywheel_trainer.spec import JobSpec

__all__ = ["LOCK_FILE", "LOG_FILE", "LocalLauncher", "RunLock"]

log = logging.getLogger(__name__)

LOCK_FILE = "job.lock"
LOG_FILE = "job.log"
# $0 is the log file, "$@" the job's command line; prints the background job's pid.
_SPAWN = '"$@" </dev/null >>"$0" 2>&1 & echo $!'
_SPAWN_TIMEOUT_S = 30.0


class RunLock:
    """An exclusive, process-lifetime lock on one run's folder."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    @classmethod
    def try_acquire(cls, artifact_dir: Path) -> RunLock | None:
        artifact_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(artifact_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return cls(fd)

    @classmethod
    def inherit(cls, fd: int) -> RunLock:
        """The descriptor a launcher passed down, already locked."""
        return cls(fd)

    @staticmethod
    def is_held(artifact_dir: Path) -> bool:
        probe = RunLock.try_acquire(artifact_dir)
        if probe is None:
            return True
        probe.release()
        return False

    def detach(self) -> None:
        """Close this process's descriptor without unlocking: a child holding a copy keeps
        the lock (flock belongs to the open file description, not to the process)."""
        os.close(self.fd)

    def release(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)

    def __enter__(self) -> RunLock:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


class LocalLauncher:
    name = "local"

    def __init__(self, settings: TrainerSettings) -> None:
        self._settings = settings
        self._dirs: dict[str, Path] = {}

    def launch(self, spec: JobSpec) -> JobHandle:
        folder = Path(spec.artifact_dir)
        spec_path = spec.write(folder)
        lock = RunLock.try_acquire(folder)
        if lock is None:
            raise LaunchError(spec.run_id, f"{folder / LOCK_FILE} is held: the job already runs")
        job = [sys.executable, "-m", "flywheel_trainer.job", "--spec", str(spec_path)]
        job += ["--lock-fd", str(lock.fd)]
        try:
            # The shell starts the job in the background and exits at once, so the job is not
            # our child: it outlives this trainer, is reaped by init, and its liveness is the
            # lock alone, whether this process launched it or a later one adopted it.
            spawned = subprocess.run(  # noqa: S603 - fixed shell snippet, our own interpreter
                ["/bin/sh", "-c", _SPAWN, str(folder / LOG_FILE), *job],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                pass_fds=(lock.fd,),
                start_new_session=True,  # Ctrl-C on the trainer does not reach the job
                timeout=_SPAWN_TIMEOUT_S,
                check=True,
            )
            pid = spawned.stdout.strip()
        except (OSError, subprocess.SubprocessError) as exc:
            lock.release()
            raise LaunchError(spec.run_id, f"cannot start the job process: {exc}") from exc
        lock.detach()
        self._dirs[spec.run_id] = folder
        log.info(
            "job process started",
            extra={"run_id": spec.run_id, "pid": pid, "log": str(folder / LOG_FILE)},
        )
        return JobHandle(spec.run_id, self.name, pid)

    def state(self, handle: JobHandle) -> JobState:
        folder = self._dirs.get(handle.run_id)
        if folder is None:
            return "unknown"
        return "running" if RunLock.is_held(folder) else "exited"

    def adopt(self, run: TrainingRun) -> JobHandle:
        folder = Path(run.artifact_uri) if run.artifact_uri else self._default_dir(run.run_id)
        self._dirs[run.run_id] = folder
        return JobHandle(run.run_id, self.name, run.launcher_ref or "")

    def _default_dir(self, run_id: str) -> Path:
        return Path(self._settings.artifact_store) / run_id
