"""``flywheel-trainer`` / ``python -m flywheel_trainer``: settings, logging, signals, the loop."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from typing import NoReturn

from flywheel_common.errors import FlywheelError
from flywheel_common.lifecycle import exit_process
from flywheel_common.logs import configure_logging

from flywheel_trainer.launchers import make_launcher
from flywheel_trainer.settings import TrainerSettings
from flywheel_trainer.watcher import Watcher

log = logging.getLogger("flywheel_trainer")


def main() -> int:
    settings = TrainerSettings()
    configure_logging(settings.logging.level, settings.logging.format)
    stop = threading.Event()

    def _stop(signum: int, _frame: FrameType | None) -> None:
        # Running jobs are left alone: they finish and record themselves; a restarted trainer
        # adopts them.
        log.info("stopping", extra={"signal": signal.Signals(signum).name})
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    watcher = Watcher(settings, make_launcher(settings))
    try:
        watcher.run(stop)
    except FlywheelError as exc:
        log.error("trainer failed: %s", exc)
        return 1
    return 0


def entrypoint() -> NoReturn:
    """Console-script entry: see flywheel_common.lifecycle for why the exit is explicit."""
    exit_process(main())


if __name__ == "__main__":
    entrypoint()
