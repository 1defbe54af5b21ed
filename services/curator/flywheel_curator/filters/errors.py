"""Errors raised by the filters.

    FlywheelError                      (flywheel_common.errors)
    ├── ConfigError                    bad thresholds, a missing checkpoint: fix the config
    └── FilterError
        └── ToxicityScorerError        the toxicity scorer failed: stop accepting (fail closed)

``ToxicityScorerError`` is never turned into a verdict. A failing scorer means nothing can be
said about the batch, so the pipeline must treat it as fatal for that batch: drop the buffer
(``FilterState.rollback()``), commit no offsets, and stop or back off before retrying. It is
deliberately not a reject either: a rejected row would be written and its offset committed, and
the pair would be lost instead of retried.
"""

from __future__ import annotations

from flywheel_common.errors import FlywheelError

__all__ = ["FilterError", "ToxicityScorerError"]


class FilterError(FlywheelError):
    """A filter could not decide; no verdict exists for the candidate."""


class ToxicityScorerError(FilterError):
    """The toxicity scorer raised, timed out or answered nonsense (NaN, out of [0, 1], wrong
    count). The curator must stop accepting pairs rather than pass them unchecked."""

    def __init__(self, backend: str, reason: str) -> None:
        # A backend's error may quote what it was scoring (a judge echoing its input): the
        # message is printed and logged, so PII in it is redacted.
        from flywheel_curator.filters.redaction import redact_text

        reason = redact_text(reason)
        super().__init__(f"toxicity scorer {backend!r} failed: {reason}")
        self.backend = backend
        self.reason = reason
