"""``flywheel-ingest``: serve the webhook (default), or ``hash-key`` to print the configured form
of an API key. Settings come from ``FLYWHEEL_INGEST_*`` (see ``settings``).

SIGTERM and SIGINT stop it cleanly: the server stops accepting, finishes the requests in
flight, then the publisher waits (bounded) for queued events to be acknowledged.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from types import FrameType

from flywheel_common import configure_logging

from flywheel_ingest.auth import generate_api_key, hash_api_key


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="flywheel-ingest", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("serve", help="serve the webhook (the default)")
    hk = sub.add_parser("hash-key", help="print an API key's SHA-256 (a new key when none given)")
    hk.add_argument("key", nargs="?", help="the key; a fresh random key when omitted")
    args = parser.parse_args(argv)
    if args.command == "hash-key":
        key = args.key or generate_api_key()
        if not args.key:
            print(f"key:        {key}")
        print(f"key_sha256: {hash_api_key(key)}")
        return 0
    return serve()


def serve() -> int:
    # Imported here so that `hash-key` needs no settings and starts instantly.
    import uvicorn

    from flywheel_ingest.app import create_app
    from flywheel_ingest.settings import IngestSettings

    settings = IngestSettings()
    configure_logging(settings.logging.level, settings.logging.format)
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings),
            host=settings.host,
            port=settings.port,
            loop="uvloop",
            http="httptools",
            lifespan="on",
            log_config=None,  # our JSON logging, configured above
            access_log=settings.access_log,
            # X-Forwarded-For only changes the client address, which only the access log
            # shows; without it, the middleware is per-request cost for nothing.
            proxy_headers=settings.access_log,
            server_header=False,
        )
    )

    # uvicorn handles SIGTERM/SIGINT itself (graceful stop), then re-raises the signal to the
    # handler it found installed: this one, so the process exits 0 after a clean stop.
    def stopped(signum: int, frame: FrameType | None) -> None:
        pass

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stopped)
    server.run()
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
