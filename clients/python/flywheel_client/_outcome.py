"""What the server's answer to a batch means for each of its events.

``POST /v1/events`` is all-or-nothing: a 4xx stores nothing and names the events at fault by
index (``loc = ["body", "events", i, ...]``). Those are refused for good and reported; the
others were refused only because they shared the request, so they are sent again at once.
Network errors, 5xx and 429 are retried after a backoff; a 503 may list the events the broker
did store (``stored_event_ids``), which are then done.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from flywheel_client._errors import ErrorDetail

__all__ = ["RETRYABLE", "Verdict", "classify", "parse_errors"]

RETRYABLE = frozenset({408, 429, 500, 502, 503, 504})
"""Statuses that say "not now", not "never"."""
_SNIPPET_CHARS = 200


@dataclass(frozen=True, slots=True)
class Verdict:
    """Positions in the batch, by what happens to them next."""

    delivered: tuple[int, ...] = ()
    rejected: tuple[tuple[int, tuple[ErrorDetail, ...]], ...] = ()
    resend: tuple[int, ...] = ()  # not at fault: send again now
    retry: tuple[int, ...] = ()  # send again after a backoff
    too_large: bool = False  # 413 for the request as a whole: send smaller batches
    status: int | None = None


def parse_errors(status: int, content: bytes) -> list[ErrorDetail]:
    """The ``{"errors": [...]}`` of an answer; a non-JSON one (a proxy's page) becomes one
    error that quotes its start."""
    try:
        doc: Any = json.loads(content)
        return [
            ErrorDetail(loc=tuple(e.get("loc", ())), msg=str(e["msg"]), type=str(e["type"]))
            for e in doc["errors"]
        ]
    except (ValueError, TypeError, KeyError, AttributeError):
        snippet = content[:_SNIPPET_CHARS].decode("utf-8", "replace")
        return [ErrorDetail(loc=(), msg=f"HTTP {status}: {snippet}", type="http_error")]


def _event_index(error: ErrorDetail, count: int) -> int | None:
    loc = error.loc
    if len(loc) >= 3 and loc[0] == "body" and loc[1] == "events":
        index = loc[2]
        if isinstance(index, int) and 0 <= index < count:
            return index
    return None


def classify(
    status: int | None, content: bytes, event_ids: Sequence[str], *, stored: Mapping[str, int]
) -> Verdict:
    """The fate of each event of a batch answered ``status`` (``None``: no answer at all).

    ``stored`` maps event id -> position, used to read a 503's ``stored_event_ids``.
    """
    everyone = tuple(range(len(event_ids)))
    if status is None:
        return Verdict(retry=everyone)
    if 200 <= status < 300:
        return Verdict(delivered=everyone, status=status)
    if status in RETRYABLE:
        done = _stored(content, stored) if status == 503 else set()
        return Verdict(
            delivered=tuple(sorted(done)),
            retry=tuple(i for i in everyone if i not in done),
            status=status,
        )
    errors = parse_errors(status, content)
    at_fault: dict[int, list[ErrorDetail]] = {}
    general: list[ErrorDetail] = []
    for error in errors:
        index = _event_index(error, len(event_ids))
        if index is None:
            general.append(error)
        else:
            at_fault.setdefault(index, []).append(error)
    if not at_fault:
        if status == 413 and len(event_ids) > 1:
            return Verdict(too_large=True, resend=everyone, status=status)
        return Verdict(rejected=tuple((i, tuple(errors)) for i in everyone), status=status)
    return Verdict(
        rejected=tuple((i, tuple(e)) for i, e in sorted(at_fault.items())),
        resend=tuple(i for i in everyone if i not in at_fault),
        status=status,
    )


def _stored(content: bytes, positions: Mapping[str, int]) -> set[int]:
    try:
        ids = json.loads(content).get("stored_event_ids") or []
    except (ValueError, AttributeError):
        return set()
    if not isinstance(ids, list):
        return set()
    return {positions[i] for i in ids if isinstance(i, str) and i in positions}
