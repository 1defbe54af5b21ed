"""How a Flywheel process ends.

Arrow's and delta-rs's native thread pools can abort a process that is otherwise done
(SIGABRT, "terminate called without an active exception") when the interpreter tears them down
at exit: apache/arrow#34314, delta-io/delta-rs#2184. We saw it here as a trainer that stopped
cleanly on SIGTERM and still exited -6. Every entry point that may have touched a Delta table
therefore ends with ``exit_process``: by then the service has closed its consumers, producers
and tables itself, so skipping interpreter teardown loses nothing, and the exit code is the one
the program chose.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import NoReturn

__all__ = ["exit_process"]


def exit_process(code: int) -> NoReturn:
    """Flush logs and standard streams, then leave with ``code`` without interpreter teardown."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        # A closed stream or a broken pipe has nothing left to save.
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)
