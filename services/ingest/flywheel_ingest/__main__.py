"""``flywheel-ingest``: serve the webhook (default), or ``hash-key`` to print the configured form
of an API key. Settings come from ``FLYWHEEL_INGEST_*`` (see ``settings``).

SIGTERM and SIGINT stop it cleanly: the server stops accepting, finishes the requests in
flight, then the publisher waits (bounded) for queued events to be acknowledged.

A configuration error exits with status 2 and names the fields that are wrong, never their
values: an API key pasted where its hash belongs, or a signing secret, must not reach a log.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from types import FrameType
from typing import TYPE_CHECKING

from flywheel_common import configure_logging

from flywheel_ingest.auth import generate_api_key, hash_api_key

if TYPE_CHECKING:
    from flywheel_ingest.settings import IngestSettings


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


def _settings() -> IngestSettings | None:
    """The settings from the environment, or None after printing what is wrong with them."""
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    from flywheel_ingest.settings import IngestSettings

    try:
        return IngestSettings()
    except ValidationError as exc:
        # Locations and messages only: ``str(exc)`` would print each wrong input value.
        for error in exc.errors(include_url=False, include_input=False, include_context=False):
            where = ".".join(str(part) for part in error["loc"]) or "settings"
            print(f"flywheel-ingest: bad setting {where}: {error['msg']}", file=sys.stderr)
    except SettingsError as exc:
        # Its message names the variable, not the value; the cause (a JSON error) may quote it.
        print(f"flywheel-ingest: bad settings: {exc}", file=sys.stderr)
    return None


def serve() -> int:
    # Imported here so that `hash-key` needs no settings and starts instantly.
    import uvicorn

    from flywheel_ingest.app import create_app
    from flywheel_ingest.server import server_config

    settings = _settings()
    if settings is None:
        return 2
    configure_logging(settings.logging.level, settings.logging.format)
    app = create_app(settings)
    server = uvicorn.Server(server_config(app, settings, on_refused=app.record_refused_connection))

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
