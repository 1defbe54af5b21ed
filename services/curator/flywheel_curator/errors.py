"""The curator's own errors (the filters' are in ``filters/errors.py``).

    FlywheelError                      (flywheel_common.errors)
    ├── ConfigError
    │   └── LakeAheadOfTopicError      the lake's offsets lie past a topic's end: recreated?
    └── ProduceRefusedError            the broker refused a message for good

    InjectedFault (RuntimeError)       crash tests only: stands for any unexpected error

Both curator errors stop the process: retrying the batch cannot cure them. A transient failure
(a lost commit race, a broker away for a while) is retried instead (``consumer.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from flywheel_common.errors import ConfigError, FlywheelError

__all__ = ["InjectedFault", "LakeAheadOfTopicError", "OffsetGap", "ProduceRefusedError"]


class ProduceRefusedError(FlywheelError):
    """A dead letter, pairing fact or notification was refused for a reason that no retry cures
    (too large, not authorised, an invalid record)."""

    def __init__(self, what: str, reason: str) -> None:
        super().__init__(f"{what} refused by the broker: {reason}")
        self.what = what
        self.reason = reason


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


class LakeAheadOfTopicError(ConfigError):
    """The lake recorded offsets the topics never reached: they were deleted and recreated (or
    the curator points at another cluster). Reading on would silently skip or re-read data, so
    the curator refuses to start until an operator decides."""

    def __init__(self, gaps: Sequence[OffsetGap], *, lake: str, group: str) -> None:
        self.gaps = tuple(gaps)
        listed = "; ".join(str(g) for g in self.gaps)
        super().__init__(
            f"the lake {lake} is ahead of the topics for group {group!r} ({listed}). "
            "The topics were probably recreated. Either rebuild the tables into a fresh lake "
            f"with `flywheel replay --lake <new lake> --from-beginning`, or continue this lake "
            f"on the new topics with `flywheel data reset-offsets --lake {lake} --group {group} "
            "--reason '<why>'`, which is recorded in the tables' history. "
            "The curator never resets offsets by itself."
        )


class InjectedFault(RuntimeError):
    """Raised at a fault point in ``raise`` mode: an unexpected error in the middle of a batch.
    Deliberately not a FlywheelError, so it takes the path of a bug, not of a known failure."""
