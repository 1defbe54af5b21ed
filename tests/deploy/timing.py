"""Where the deploy test's wall time goes: named phases, printed at the end of the session."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["TIMINGS", "Timings"]


class Timings:
    def __init__(self) -> None:
        self.phases: list[tuple[str, float]] = []
        self.notes: list[str] = []

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.monotonic()
        try:
            yield
        finally:
            self.phases.append((name, time.monotonic() - start))

    def note(self, line: str) -> None:
        self.notes.append(line)

    def report(self) -> str:
        total = sum(seconds for _, seconds in self.phases)
        width = max((len(name) for name, _ in self.phases), default=10)
        lines = [f"  {name:<{width}}  {seconds:7.1f} s" for name, seconds in self.phases]
        lines.append(f"  {'total':<{width}}  {total:7.1f} s")
        return "\n".join(["deploy test: where the time went", *lines, *self.notes])


TIMINGS = Timings()
