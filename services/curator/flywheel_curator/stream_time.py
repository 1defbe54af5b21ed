"""Stream time: the clock of the join window and of the regenerate quiet period, which no
single event can move far.

Stream time is the newest server receive time (``received_at``) the process has read, so a
replay expires the same entries as the original run. Taken naively, one event stamped far in
the future (a skewed ingest clock, a topic replayed from elsewhere) would move it at once, and
the next expiry would delete every waiting join and dedup memory, committed. Two bounds:

- **Ahead of the wall clock** (``max_ahead_of_wall``): an event received later than this
  curator's clock plus the bound cannot be true. ``check`` refuses it; the caller
  dead-letters it before it touches any state.
- **Ahead of the partition** (``max_step``): an event may move its partition's time at most
  ``max_step`` past where the partition was, plus the wall time elapsed since. In a live
  stream that is never binding (time elapses as events arrive); in a backlog it is, and the
  event there cannot be told from the first event after a quiet spell, so it is kept and only
  stream time is held back. The partition's next event confirms a jump (it lands within
  ``max_step`` of it): a real gap costs one event, a lone outlier moves time by ``max_step``.

Stream time is not stored: after a restart it is rebuilt from the events replayed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass

__all__ = ["StreamClock", "wall_ms"]


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(slots=True)
class _Mark:
    ts: int  # the partition's time (stream time it may claim)
    wall: int  # wall clock when ``ts`` last moved
    suspect: int | None = None  # a jump past ``max_step`` that waits for confirmation


class StreamClock:
    """Stream time over several sources (topic-partitions); ``None`` bounds are off."""

    def __init__(
        self,
        *,
        max_ahead_of_wall_ms: int | None = None,
        max_step_ms: int | None = None,
        wall: Callable[[], int] = wall_ms,
    ) -> None:
        self.max_ahead_of_wall_ms = max_ahead_of_wall_ms
        self.max_step_ms = max_step_ms
        self._wall = wall
        self.now = 0
        self.held_back = 0  # events that would have moved stream time further
        self._marks: dict[Hashable, _Mark] = {}

    def too_far_ahead(self, ts: int) -> tuple[int, int] | None:
        """(wall clock, bound) when ``ts`` is further ahead of the wall clock than allowed."""
        if self.max_ahead_of_wall_ms is None:
            return None
        wall = self._wall()
        return (wall, self.max_ahead_of_wall_ms) if ts > wall + self.max_ahead_of_wall_ms else None

    def advance(self, source: Hashable, ts: int) -> bool:
        """Account an accepted event of ``source`` received at ``ts``; False when it was held
        back (further ahead of its partition than one event may move stream time)."""
        step = self.max_step_ms
        if step is None or self.now == 0:
            self.now = max(self.now, ts)
            if step is not None:
                self._marks[source] = _Mark(ts, self._wall())
            return True
        wall = self._wall()
        mark = self._marks.get(source)
        if mark is None:  # a partition new to this process starts from stream time
            mark = self._marks[source] = _Mark(min(ts, self.now), wall)
        held = False
        if ts <= mark.ts + step + max(0, wall - mark.wall):
            moved, mark.suspect = ts, None
        elif mark.suspect is not None and abs(ts - mark.suspect) <= step:
            moved, mark.suspect = min(ts, mark.suspect), None  # two neighbours agree: a real gap
        else:
            moved, mark.suspect, held = mark.ts + step + max(0, wall - mark.wall), ts, True
            self.held_back += 1
        if moved > mark.ts:
            mark.ts, mark.wall = moved, wall
        self.now = max(self.now, mark.ts)
        return not held
