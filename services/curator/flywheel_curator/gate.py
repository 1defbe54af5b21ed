"""Holds new messages back while the curator re-applies what the lake already holds.

After a restart the consumer re-reads ``[S, D)`` of each partition: state it lost, for rows the
lake already has (``consumer.py``). A row is skipped there when all of its ingredients lie below
the lake's offsets, which is only sound if the replay forms each row no later than the batch
that commits its last ingredient. Partitions are fetched independently, though: without a gate
a fact past ``D`` on one partition can be read (and committed, pending) before the run it joins
is replayed on another, and the row formed then has every ingredient below the offsets and is
wrongly skipped (found by the crash test: regenerate pairs were lost). So until every
partition has replayed up to its ``D``, the first message past ``D`` on any partition pauses that
partition; when the last replay completes, held partitions are rewound to that message and
resumed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

__all__ = ["ReplayGate"]

TP = tuple[str, int]


class ReplayGate:
    """Which messages may be processed now; knows nothing of Kafka (the consumer pauses,
    seeks and resumes)."""

    def __init__(self) -> None:
        self._until: dict[TP, int] = {}  # partitions still replaying -> their D
        self._held: dict[TP, int] = {}  # paused partitions -> first offset not processed

    def begin(self, starts: Mapping[TP, int], ends: Mapping[TP, int | None]) -> list[TP]:
        """Start a replay from ``starts`` up to ``ends`` (negative starts are Kafka's logical
        offsets: nothing to replay). Returns the partitions that were held, to resume."""
        released = list(self._held)
        self._held.clear()
        self._until = {}
        for tp, start in starts.items():
            end = ends.get(tp)
            if end is not None and 0 <= start < end:
                self._until[tp] = end
        return released

    @property
    def replaying(self) -> list[TP]:
        return list(self._until)

    @property
    def held(self) -> Mapping[TP, int]:
        return self._held

    def admit(self, tp: TP, offset: int) -> bool:
        """True to process the message now; False to hold it (the caller pauses ``tp``)."""
        if not self._until and not self._held:
            return True
        if tp in self._held:
            return False
        until = self._until.get(tp)
        if until is not None and offset < until:
            if offset + 1 >= until:
                del self._until[tp]
            return True
        # Past this partition's D: new territory, allowed once no partition is replaying.
        self._until.pop(tp, None)
        if not self._until:
            return True
        self._held[tp] = offset
        return False

    def reached(self, positions: Iterable[tuple[TP, int]]) -> None:
        """Consumer positions: a partition whose position passed its D is done replaying even
        if its last message never arrives (deleted by retention, a transaction marker)."""
        for tp, position in positions:
            until = self._until.get(tp)
            if until is not None and position >= until:
                del self._until[tp]

    def release(self) -> dict[TP, int]:
        """Once no partition is replaying: the held partitions and where to rewind them."""
        if self._until:
            return {}
        held, self._held = self._held, {}
        return held

    def forget(self, tps: Iterable[TP]) -> None:
        """Partitions no longer assigned."""
        for tp in tps:
            self._until.pop(tp, None)
            self._held.pop(tp, None)
