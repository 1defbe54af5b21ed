"""The events a client sends, exactly as ``POST /v1/events`` takes them, and their builders.

The wire types mirror the ingest's request models (``Run``, ``Feedback``, ``Edit``), which mirror
``schemas/*.avsc``; ``tests/clients/test_wire_models.py`` checks them against the served OpenAPI
document and the Avro schemas, so the three cannot drift. Builders do only the cheap checks
that catch a wrong call (a rating of 7, an unknown signal); the server validates everything
else, and an event it refuses is reported with its field path (see ``EventsDropped``).

Every event gets its ``event_id`` here, on the caller's thread, before it is queued: retries
and spool replays resend the same id, so downstream deduplication by id makes them harmless.
"""

import math
import os
import time
from collections import deque
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, NotRequired, Required, TypedDict, get_args

from flywheel_client._errors import InvalidEventError

__all__ = [
    "EXPLICIT_KINDS",
    "IMPLICIT_KINDS",
    "ChatMessage",
    "EditEvent",
    "EditOptions",
    "Event",
    "FeedbackEvent",
    "FeedbackKind",
    "FeedbackOptions",
    "ImplicitKind",
    "Prompt",
    "RunEvent",
    "RunOptions",
    "TokenUsage",
    "edit_event",
    "feedback_event",
    "new_event_id",
    "run_event",
]

FeedbackKind = Literal[
    "thumbs",
    "rating",
    "helpful",
    "comment",
    "correction",
    "copy",
    "regenerate",
    "rephrase",
    "follow_up",
    "abandon",
    "cite_click",
    "accept",
    "reject",
    "revert",
    "early_stop",
    "delete_conversation",
    "escalate",
    "dwell",
]
"""Every kind the Feedback schema has (less ``unknown``, which only readers use)."""
ImplicitKind = Literal[
    "copy",
    "regenerate",
    "rephrase",
    "follow_up",
    "abandon",
    "cite_click",
    "accept",
    "reject",
    "revert",
    "early_stop",
    "delete_conversation",
    "escalate",
    "dwell",
]
"""What the user did rather than said: ``signal()`` sends these."""
IMPLICIT_KINDS: frozenset[str] = frozenset(get_args(ImplicitKind))
EXPLICIT_KINDS: frozenset[str] = frozenset(get_args(FeedbackKind)) - IMPLICIT_KINDS


class ChatMessage(TypedDict):
    role: str
    content: str


class TokenUsage(TypedDict):
    prompt: int
    completion: int


Prompt = str | Sequence[ChatMessage]
"""Plain text, or chat messages in order."""
WirePrompt = str | list[ChatMessage]


# -- wire: what goes in the batch body -------------------------------------------------------


class _WireEvent(TypedDict):
    event_id: str
    occurred_at: int  # epoch milliseconds, client clock
    run_id: str
    metadata: NotRequired[dict[str, str]]


class RunEvent(_WireEvent, total=False):
    type: Required[Literal["run"]]
    prompt: Required[WirePrompt]
    response: Required[str]
    model: Required[str]
    model_version: str
    feature: str
    system_prompt_hash: str
    tokens: TokenUsage
    cost_usd: float
    latency_ms: float
    session_id: str
    thread_id: str
    user_id: str
    trace_id: str
    parent_run_id: str


class FeedbackEvent(_WireEvent, total=False):
    type: Required[Literal["feedback"]]
    kind: Required[FeedbackKind]
    value: float
    comment: str
    correction: str
    user_id: str
    session_id: str
    prompt: WirePrompt
    response: str
    model: str
    feature: str


class EditEvent(_WireEvent, total=False):
    type: Required[Literal["edit"]]
    prompt: Required[WirePrompt]
    original: Required[str]
    final: Required[str]
    surface: str
    time_to_edit_ms: int
    user_id: str
    model: str
    model_version: str
    feature: str


Event = RunEvent | FeedbackEvent | EditEvent


# -- options: the optional keyword arguments of the calls ------------------------------------


class _Common(TypedDict, total=False):
    occurred_at: datetime | int  # an aware datetime or epoch milliseconds (default: now)
    metadata: Mapping[str, str]


class RunOptions(_Common, total=False):
    run_id: str  # default: a new UUID, returned by ``log_run``
    model_version: str
    feature: str
    system_prompt_hash: str
    tokens: TokenUsage
    cost_usd: float
    latency_ms: float
    session_id: str
    thread_id: str
    user_id: str
    trace_id: str
    parent_run_id: str  # set on a regeneration: the run the user regenerated away from


class FeedbackOptions(_Common, total=False):
    user_id: str
    session_id: str
    prompt: Prompt  # prompt, response, model, feature: inline copies of the run, for apps
    response: str  # that do not log runs
    model: str
    feature: str


class EditOptions(_Common, total=False):
    surface: str
    time_to_edit_ms: int
    user_id: str
    model: str
    model_version: str
    feature: str


_RUN_KEYS = RunOptions.__optional_keys__
_FEEDBACK_KEYS = FeedbackOptions.__optional_keys__
_EDIT_KEYS = EditOptions.__optional_keys__
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


class _IdSource:
    """Event ids made 256 at a time from one ``os.urandom`` call and handed out by a deque
    (``pop`` is atomic, so no lock): a system call per id would release the GIL on every
    call, and on a busy process getting it back can cost the caller milliseconds."""

    _BATCH = 256

    def __init__(self) -> None:
        self._ids: deque[str] = deque()

    def reset(self) -> None:
        """A forked child must never hand out ids its parent may also use."""
        self._ids = deque()

    def take(self) -> str:
        try:
            return self._ids.pop()
        except IndexError:
            self._ids.extend(self._make())
            return self._ids.pop()

    def _make(self) -> list[str]:
        hexed = os.urandom(16 * self._BATCH).hex()
        ids = []
        for i in range(0, 32 * self._BATCH, 32):
            h = hexed[i : i + 32]
            # Version 4 (the 13th digit) and the RFC 4122 variant (10xx in the 17th).
            variant = "89ab"[int(h[16], 16) & 3]
            ids.append(f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{variant}{h[17:20]}-{h[20:]}")
        return ids


_IDS = _IdSource()
os.register_at_fork(after_in_child=_IDS.reset)


def new_event_id() -> str:
    """A random (version 4) UUID in its canonical text form."""
    return _IDS.take()


def _epoch_ms(value: datetime | int | None) -> int:
    if value is None:
        return time.time_ns() // 1_000_000
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise InvalidEventError("occurred_at must be timezone-aware (or epoch milliseconds)")
        return (value - _EPOCH) // _MS
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise InvalidEventError(f"occurred_at must be a datetime or epoch ms, not {value!r}")


def _id(name: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidEventError(f"{name} must be a non-empty string, not {value!r}")
    return value


def _prompt(value: Prompt) -> WirePrompt:
    # Copied now: the event is serialized later, on the sender thread, and the caller may
    # mutate its list after the call returns.
    if isinstance(value, str):
        return value
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _apply(event: dict[str, Any], options: Mapping[str, Any], allowed: frozenset[str]) -> None:
    """Copy the optional fields that are set into ``event``; refuse unknown ones."""
    if not options:
        return
    unknown = options.keys() - allowed
    if unknown:
        raise TypeError(f"unexpected keyword argument(s): {', '.join(sorted(unknown))}")
    for key, value in options.items():
        if value is None or key == "occurred_at" or key == "run_id":
            continue
        if key == "prompt":
            value = _prompt(value)
        elif key in ("metadata", "tokens"):
            value = dict(value)
        elif key in ("cost_usd", "latency_ms") and not (
            isinstance(value, int | float) and math.isfinite(value) and value >= 0
        ):
            raise InvalidEventError(f"{key} must be a finite number >= 0, not {value!r}")
        event[key] = value


def run_event(
    *, prompt: Prompt, response: str, model: str, options: RunOptions
) -> tuple[str, RunEvent]:
    """A Run and its run id (``options['run_id']`` or a new UUID)."""
    run_id = options.get("run_id") or new_event_id()
    event: dict[str, Any] = {
        "type": "run",
        "event_id": new_event_id(),
        "occurred_at": _epoch_ms(options.get("occurred_at")),
        "run_id": _id("run_id", run_id),
        "prompt": _prompt(prompt),
        "response": response,
        "model": _id("model", model),
    }
    _apply(event, options, _RUN_KEYS)
    return run_id, event  # type: ignore[return-value]  # built to RunEvent's shape above


def feedback_event(
    run_id: str,
    kind: FeedbackKind,
    *,
    value: float | None = None,
    comment: str | None = None,
    correction: str | None = None,
    options: FeedbackOptions,
) -> FeedbackEvent:
    """A Feedback; the caller has checked that ``value`` fits ``kind``."""
    event: dict[str, Any] = {
        "type": "feedback",
        "event_id": new_event_id(),
        "occurred_at": _epoch_ms(options.get("occurred_at")),
        "run_id": _id("run_id", run_id),
        "kind": kind,
    }
    if value is not None:
        event["value"] = float(value)
    if comment is not None:
        event["comment"] = comment
    if correction is not None:
        event["correction"] = correction
    _apply(event, options, _FEEDBACK_KEYS)
    return event  # type: ignore[return-value]  # built to FeedbackEvent's shape above


def edit_event(
    run_id: str, *, prompt: Prompt, original: str, final: str, options: EditOptions
) -> EditEvent:
    event: dict[str, Any] = {
        "type": "edit",
        "event_id": new_event_id(),
        "occurred_at": _epoch_ms(options.get("occurred_at")),
        "run_id": _id("run_id", run_id),
        "prompt": _prompt(prompt),
        "original": original,
        "final": final,
    }
    _apply(event, options, _EDIT_KEYS)
    return event  # type: ignore[return-value]  # built to EditEvent's shape above
