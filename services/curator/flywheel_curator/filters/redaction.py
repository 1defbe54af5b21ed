"""No raw PII leaves the curator: what a table row, a dead letter's detail and a log line may
hold (DESIGN.md: "No table, log or dead letter ever holds a raw PII value, whatever the
policy").

The PII filter decides what becomes of a candidate (``redact`` rewrites it, ``reject`` drops
it); this module is the last step before anything is written, whatever the filter's policy,
kinds or ``enabled``: every PII kind the detector knows is replaced by ``[KIND]``.

- ``redact_row(row)``: the texts of a row of any curator table (``prompt`` messages,
  ``chosen``, ``rejected``, ``response``, ``detail``).
- ``redact_text(text)``: one text (a dead letter's detail, an error message).
- ``install_log_redaction()``: a filter on the root logger's handlers that redacts every
  record's message, extra fields and traceback; called after ``configure_logging``.

What it cannot see is what the detector misses (names, postal addresses; see pii.py), and a
dead letter's ``payload``: the undecodable bytes themselves, kept so the message can be
replayed.
"""

from __future__ import annotations

import logging
from typing import Any

from flywheel_curator.filters.pii import PiiDetector

__all__ = ["PiiLogFilter", "install_log_redaction", "redact_row", "redact_text"]

_DETECTOR = PiiDetector()
# The text columns of dpo_pairs, rejected_candidates and sft_examples; ``prompt`` is messages.
_TEXT_COLUMNS = ("chosen", "rejected", "response", "detail")
# Attributes every LogRecord has; anything else came from ``extra``.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
}


def redact_text(text: str) -> str:
    """``text`` with every PII finding replaced by ``[KIND]``."""
    return _DETECTOR.redact(text)[0]


def redact_row(row: dict[str, Any]) -> dict[str, Any]:
    """Redacts the row's texts in place and returns it."""
    for column in _TEXT_COLUMNS:
        value = row.get(column)
        if isinstance(value, str):
            row[column] = redact_text(value)
    prompt = row.get("prompt")
    if isinstance(prompt, list):
        row["prompt"] = [
            {**m, "content": redact_text(m["content"])}
            if isinstance(m, dict) and isinstance(m.get("content"), str)
            else m
            for m in prompt
        ]
    return row


class PiiLogFilter(logging.Filter):
    """Redacts a record's message, its extra fields and its traceback. A traceback is moved to
    the ``exc`` field as redacted text (the name the JSON formatter gives it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        record.msg, record.args = redact_text(message), None
        for key, value in list(record.__dict__.items()):
            if key in _STANDARD or key.startswith("_"):
                continue
            text = value if isinstance(value, str) else str(value)
            redacted = redact_text(text)
            if redacted != text:
                setattr(record, key, redacted)
        if record.exc_info:
            record.exc = redact_text(logging.Formatter().formatException(record.exc_info))
            record.exc_info, record.exc_text = None, None
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info)
        return True


def install_log_redaction(logger: logging.Logger | None = None) -> None:
    """Adds a ``PiiLogFilter`` to every handler of ``logger`` (the root logger by default)
    that has none yet: handler filters see the records of every logger that propagates."""
    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(f, PiiLogFilter) for f in handler.filters):
            handler.addFilter(PiiLogFilter())
