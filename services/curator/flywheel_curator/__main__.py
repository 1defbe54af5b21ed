"""``python -m flywheel_curator``: build the settings, configure logging, run the consumer
until SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import sys
import threading
from typing import NoReturn

from flywheel_common.errors import FlywheelError
from flywheel_common.lifecycle import exit_process
from flywheel_common.logs import configure_logging
from prometheus_client import start_http_server

from flywheel_curator.consumer import Curator, stop_on_signals
from flywheel_curator.filters import install_log_redaction
from flywheel_curator.settings import CuratorSettings

log = logging.getLogger("flywheel_curator")


def main() -> int:
    settings = CuratorSettings()
    configure_logging(settings.logging.level, settings.logging.format)
    install_log_redaction()  # no PII in any log line (filters/redaction.py)
    if settings.metrics_port is not None:
        start_http_server(settings.metrics_port)
    stop = threading.Event()
    restore = stop_on_signals(stop)
    try:
        Curator(settings).run(stop)
    except FlywheelError as exc:
        print(f"flywheel-curator: {exc}", file=sys.stderr)
        return 2
    except Exception:
        # The batch in progress was abandoned (consumer.py); a supervisor restarts the process.
        log.exception("curator stopped by an unexpected error")
        return 1
    finally:
        restore()
    return 0


def entrypoint() -> NoReturn:
    """Console-script entry: see flywheel_common.lifecycle for why the exit is explicit."""
    exit_process(main())


if __name__ == "__main__":
    entrypoint()
