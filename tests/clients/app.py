"""A client app for the SDK's process tests: it logs events and prints, one JSON line each, the
id of every event as soon as its call returned, and how many the spool holds.

    python tests/clients/app.py URL KEY --count N [--spool PATH] [--then exit|close|hang]
                                [--fork] [--exit-timeout S]

``--then exit`` returns without closing (the exit hook delivers); ``close`` closes with a long
timeout; ``hang`` waits to be killed. ``--fork`` forks halfway: the child logs its own events,
closes and leaves; the parent goes on.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time

from flywheel_client import Flywheel


def say(**fields: object) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def log_events(fw: Flywheel, count: int, tag: str) -> None:
    for i in range(count):
        say(created=fw.signal(f"{tag}-{i}", "copy"), by=tag)
        if i % 50 == 49:
            say(spooled=fw.stats().spooled, by=tag)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("key")
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--spool")
    parser.add_argument("--then", choices=["exit", "close", "hang"], default="close")
    parser.add_argument("--fork", action="store_true")
    parser.add_argument("--exit-timeout", type=float, default=30.0)
    args = parser.parse_args()
    fw = Flywheel(
        args.url,
        args.key,
        spool_path=args.spool,
        linger_s=0.05,
        max_batch_events=100,
        max_queue_events=100_000,
        exit_timeout_s=args.exit_timeout,
        backoff_max_s=1.0,
    )
    half = args.count // 2 if args.fork else args.count
    log_events(fw, half, "parent")
    if args.fork:
        pid = os.fork()
        if pid == 0:
            log_events(fw, args.count - half, "child")
            fw.close(60)
            say(closed="child", stats=repr(fw.stats()))
            os._exit(0)
        log_events(fw, args.count - half, "parent2")
        os.waitpid(pid, 0)
    say(spooled=fw.stats().spooled, by="main", done=True)
    if args.then == "hang":  # tell how much is on disk until killed
        while not threading.Event().wait(0.05):
            say(spooled=fw.stats().spooled)
    if args.then == "close":
        deadline = time.monotonic() + 120
        while not fw.flush(1.0) and time.monotonic() < deadline:
            pass
        say(closed=fw.close(10), stats=repr(fw.stats()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
