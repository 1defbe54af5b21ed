"""The curator's own errors (the filters' are in ``filters/errors.py``).

    FlywheelError                      (flywheel_common.errors)
    ├── ConfigError
    │   └── TopicsReplacedError        the topics under the lake were recreated (or swapped)
    ├── FencedError                    fenced from partitions the group still assigns it
    └── ProduceRefusedError            the broker refused a message for good

    InjectedFault (RuntimeError)       crash tests only: stands for any unexpected error

All three stop the process: retrying the batch cannot cure them. A transient failure
(a lost commit race, a broker away for a while) is retried instead (``consumer.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from flywheel_common.errors import ConfigError, FlywheelError

__all__ = [
    "FencedError",
    "InjectedFault",
    "OffsetGap",
    "ProduceRefusedError",
    "TopicReplaced",
    "TopicsReplacedError",
]


class ProduceRefusedError(FlywheelError):
    """A dead letter, pairing fact or notification was refused for a reason that no retry cures
    (too large, not authorised, an invalid record)."""

    def __init__(self, what: str, reason: str) -> None:
        super().__init__(f"{what} refused by the broker: {reason}")
        self.what = what
        self.reason = reason


class FencedError(FlywheelError):
    """Every commit was fenced for several session timeouts while the group still assigned the
    partitions: something the group does not know of (an offset reset) claimed them."""

    def __init__(self, reason: str) -> None:
        super().__init__(
            f"fenced from partitions the group still assigns to this process ({reason}); "
            "a restart claims them again"
        )


@dataclass(frozen=True, slots=True)
class OffsetGap:
    """One partition whose offset in the lake is past the end of the topic on the broker."""

    topic: str
    partition: int
    lake_offset: int
    high_watermark: int

    def __str__(self) -> str:
        return (
            f"{self.topic}[{self.partition}]: the lake is at offset {self.lake_offset}, "
            f"the topic ends at {self.high_watermark}"
        )


@dataclass(frozen=True, slots=True)
class TopicReplaced:
    """A topic whose id is not the one the lake recorded: deleted and created again."""

    topic: str

    def __str__(self) -> str:
        return f"{self.topic}: not the topic the lake recorded (its id changed)"


class TopicsReplacedError(ConfigError):
    """The lake's record does not match the topics on the broker: they were deleted and
    recreated (or the curator points at another cluster). Reading on would silently skip or
    re-read data, so the curator refuses to start until an operator decides."""

    def __init__(
        self, found: Sequence[OffsetGap | TopicReplaced], *, lake: str, group: str
    ) -> None:
        self.found = tuple(found)
        listed = "; ".join(str(g) for g in self.found)
        super().__init__(
            f"the topics under the lake {lake} were replaced for group {group!r} ({listed}). "
            "Either rebuild the tables into a fresh lake with "
            "`flywheel replay --lake <new lake> --from-beginning`, or continue this lake on the "
            f"new topics with `flywheel data reset-offsets --lake {lake} --group {group} "
            "--reason '<why>'`, which is recorded in the tables' history. "
            "The curator never resets offsets by itself."
        )


class InjectedFault(RuntimeError):
    """Raised at a fault point in ``raise`` mode: an unexpected error in the middle of a batch.
    Deliberately not a FlywheelError, so it takes the path of a bug, not of a known failure."""
