"""The ``flywheel`` command. Each installed service contributes subcommands through the
``flywheel.cli`` entry-point group, so a light environment (no torch) has only the light ones.

An entry point named ``curate`` or ``data.pin`` points at a ``Command``: a callable that
configures its argparse parser and returns the handler to run. Dots nest subcommands.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import EntryPoint, entry_points
from typing import NoReturn, Protocol

from flywheel_common.errors import FlywheelError
from flywheel_common.lifecycle import exit_process

__all__ = ["Command", "Handler", "build_parser", "main"]

Handler = Callable[[argparse.Namespace], int]


class Command(Protocol):
    def __call__(self, parser: argparse.ArgumentParser) -> Handler: ...


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flywheel", description=__doc__.split("\n\n")[0])
    groups: dict[str, argparse._SubParsersAction[argparse.ArgumentParser]] = {}
    top = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    groups[""] = top
    for ep in sorted(entry_points(group="flywheel.cli"), key=lambda e: e.name):
        *path, leaf = ep.name.split(".")
        parent = ""
        for part in path:
            key = f"{parent}.{part}" if parent else part
            if key not in groups:
                sub = groups[parent].add_parser(part, help=f"{part} commands")
                groups[key] = sub.add_subparsers(
                    dest=f"{key}_command", required=True, metavar="COMMAND"
                )
            parent = key
        command = _load_command(ep)
        doc = (command.__doc__ or "").strip()
        sub = groups[parent].add_parser(leaf, help=doc.split("\n")[0], description=doc)
        sub.set_defaults(handler=command(sub))
    return parser


def _load_command(ep: EntryPoint) -> Command:
    """Load a plugin; one that cannot be imported becomes a command that explains why, so a
    broken service never takes the other commands down."""
    try:
        command: Command = ep.load()
    except (ImportError, AttributeError) as exc:
        reason = f"{type(exc).__name__}: {exc}"

        def unavailable(parser: argparse.ArgumentParser) -> Handler:
            """(unavailable in this environment)"""

            def run(args: argparse.Namespace) -> int:
                print(
                    f"flywheel: {ep.name.replace('.', ' ')} is unavailable: {reason}",
                    file=sys.stderr,
                )
                return 2

            return run

        return unavailable
    return command


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except FlywheelError as exc:
        print(f"flywheel: error: {exc}", file=sys.stderr)
        return 2


def entrypoint() -> NoReturn:
    """Console-script entry: see flywheel_common.lifecycle for why the exit is explicit."""
    exit_process(main())


if __name__ == "__main__":
    entrypoint()
