"""HTTP models of the webhook: what a client may POST, validated from raw bytes by pydantic.

Each event model mirrors its Avro record in ``schemas/`` minus the fields the server sets
(``tenant`` from the API key, ``received_at`` from the server clock); ``event_id`` is optional
(generated when absent). ``tests/ingest/test_models_schema.py`` checks every model against
``SchemaCatalog.load()`` field by field, so the two cannot drift.
"""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_core import from_json

from flywheel_ingest.errors import InvalidBody, PayloadTooLarge

__all__ = [
    "MAX_ID_CHARS",
    "MAX_METADATA_ENTRIES",
    "MAX_METADATA_KEY_CHARS",
    "MAX_METADATA_VALUE_CHARS",
    "MIN_EPOCH_MS",
    "RECORD_NAMES",
    "Accepted",
    "AnyEvent",
    "ChatMessage",
    "Edit",
    "ErrorBody",
    "ErrorDetail",
    "EventBatch",
    "Feedback",
    "FeedbackKind",
    "RouteName",
    "Run",
    "TokenUsage",
    "Unacknowledged",
    "largest_field",
    "new_event_ids",
    "parse_events",
    "to_record",
]

MAX_ID_CHARS = 256
"""Longest run/session/user/... id."""
MAX_METADATA_ENTRIES = 64
MAX_METADATA_KEY_CHARS = 128
MAX_METADATA_VALUE_CHARS = 4096
MIN_EPOCH_MS = 100_000_000_000
"""Smallest integer ``occurred_at`` (1973-03-03): a smaller one is almost surely epoch
*seconds*, which would silently land in 1970; refusing it surfaces the client's bug."""
MAX_EPOCH_MS = 253_402_300_799_999
"""9999-12-31T23:59:59.999Z, the last instant RFC 3339 can write."""
AVRO_LONG_MAX = 2**63 - 1
"""Largest integer an Avro ``long`` holds: the bound of every count and duration."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def _epoch_ms(value: datetime) -> int:
    return (value - _EPOCH) // _MS


def _in_epoch_range(value: datetime) -> datetime:
    # The same range as integer times: before 1973 is almost surely a bug; an offset can
    # push a 9999-12-31 time past what RFC 3339 (and readers) can write in UTC.
    if not MIN_EPOCH_MS <= _epoch_ms(value) <= MAX_EPOCH_MS:
        raise ValueError("time must be between 1973-03-03T09:46:40Z and 9999-12-31T23:59:59.999Z")
    return value


Id = Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS)]
Timestamp = (
    Annotated[AwareDatetime, AfterValidator(_in_epoch_range)]
    | Annotated[int, Field(ge=MIN_EPOCH_MS, le=MAX_EPOCH_MS)]
)
"""RFC 3339 with an offset (``2025-01-31T12:00:00Z``) or integer epoch milliseconds."""
Count = Annotated[int, Field(ge=0, le=AVRO_LONG_MAX)]
"""A non-negative integer that fits an Avro ``long``."""
Amount = Annotated[float, Field(ge=0)]
"""A finite (every model refuses NaN and infinities) non-negative number."""
Metadata = Annotated[
    dict[
        Annotated[str, Field(max_length=MAX_METADATA_KEY_CHARS)],
        Annotated[str, Field(max_length=MAX_METADATA_VALUE_CHARS)],
    ],
    Field(max_length=MAX_METADATA_ENTRIES),
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
"""Avro's ``FeedbackKind`` symbols less ``unknown``, which only readers use."""


class _Model(BaseModel):
    # strict: "5" is not a number and 1 is not a string; forbid: a misspelt field (or a
    # ``tenant`` smuggled into the body) is an error, not silently dropped; no NaN or
    # infinities (JSON has none, but lenient parsers and 1e400 make them).
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, allow_inf_nan=False)


class ChatMessage(_Model):
    """One message of a chat prompt."""

    role: str = Field(min_length=1, max_length=64, description="system, user, assistant or tool")
    content: str


Prompt = Annotated[str, Field(min_length=1)] | Annotated[list[ChatMessage], Field(min_length=1)]
"""Plain text, or chat messages in order."""


class TokenUsage(_Model):
    """Token counts of one LLM call."""

    prompt: Count
    completion: Count


class _Event(_Model):
    event_id: uuid.UUID | None = Field(
        default=None, description="Idempotency key; generated and returned when absent."
    )
    occurred_at: Timestamp = Field(description="Client clock: RFC 3339 or epoch milliseconds.")
    run_id: Id = Field(description="The Kafka key: a run, its feedback and edits share it.")
    metadata: Metadata = Field(default_factory=dict)


class Run(_Event):
    """One LLM call made by a client application."""

    type: Literal["run"] = "run"
    prompt: Prompt
    response: str
    model: Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS)]
    model_version: Id | None = None
    feature: Id = "default"
    system_prompt_hash: Id | None = None
    tokens: TokenUsage | None = None
    cost_usd: Amount | None = None
    latency_ms: Amount | None = None
    session_id: Id | None = None
    thread_id: Id | None = None
    user_id: Id | None = None
    trace_id: Id | None = None
    parent_run_id: Id | None = None


# Kinds that need a value, with its range; every other kind takes none.
_VALUE_RANGE: dict[str, tuple[float, float]] = {
    "thumbs": (-1.0, 1.0),
    "rating": (1.0, 5.0),
    "helpful": (0.0, 1.0),
    "dwell": (0.0, float("inf")),
}
_DISCRETE_VALUES: dict[str, tuple[float, ...]] = {"thumbs": (-1.0, 1.0), "helpful": (0.0, 1.0)}


class Feedback(_Event):
    """A user's explicit or implicit reaction to one run."""

    type: Literal["feedback"] = "feedback"
    kind: FeedbackKind
    # validate_default: the checks below also run when the field is absent, and their errors
    # point at the field (a model-level validator would report an empty loc).
    value: float | None = Field(
        default=None,
        validate_default=True,
        description="thumbs: +1 or -1; rating: 1 to 5; helpful: 1 or 0; dwell: milliseconds.",
    )
    comment: str | None = Field(default=None, validate_default=True)
    correction: str | None = Field(default=None, validate_default=True)
    user_id: Id | None = None
    session_id: Id | None = None
    prompt: Prompt | None = None
    response: str | None = None
    model: Id | None = None
    feature: Id | None = None

    @field_validator("value")
    @classmethod
    def _value_fits_kind(cls, value: float | None, info: ValidationInfo) -> float | None:
        kind = info.data.get("kind")
        if kind is None:  # kind itself was invalid and is reported on its own
            return value
        bounds = _VALUE_RANGE.get(kind)
        if bounds is None:
            if value is not None:
                raise ValueError(f"feedback of kind {kind!r} takes no value")
        elif value is None:
            raise ValueError(f"feedback of kind {kind!r} needs a value")
        elif not bounds[0] <= value <= bounds[1]:
            raise ValueError(f"{value} is out of range for kind {kind!r}: {bounds}")
        elif kind in _DISCRETE_VALUES and value not in _DISCRETE_VALUES[kind]:
            raise ValueError(f"kind {kind!r} takes one of {_DISCRETE_VALUES[kind]}")
        return value

    @field_validator("comment", "correction")
    @classmethod
    def _text_of_its_kind(cls, text: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("kind") == info.field_name and not text:
            raise ValueError(f"feedback of kind {info.field_name!r} needs {info.field_name} text")
        return text


class Edit(_Event):
    """The golden delta: the user rewrote the model's answer."""

    type: Literal["edit"] = "edit"
    prompt: Prompt
    original: str
    final: str
    surface: Id | None = None
    time_to_edit_ms: Count | None = None
    user_id: Id | None = None
    model: Id | None = None
    model_version: Id | None = None
    feature: Id | None = None


AnyEvent = Annotated[Run | Feedback | Edit, Field(discriminator="type")]

RECORD_NAMES: dict[str, str] = {"run": "Run", "feedback": "Feedback", "edit": "Edit"}
"""Event ``type`` -> Avro record name."""

RouteName = Literal["run", "feedback", "edit", "batch"]
"""What an event route accepts: one event of a type, or a batch."""


class EventBatch(_Model):
    """``POST /v1/events``: mixed events, each tagged with its ``type``."""

    # The count bound is enforced by the app from settings (413); this one only keeps the
    # model honest about what an empty batch means.
    events: list[AnyEvent] = Field(min_length=1)


class Accepted(_Model):
    """202: every event was acknowledged by the broker."""

    event_ids: list[str] = Field(description="One per posted event, in order.")


class ErrorDetail(_Model):
    loc: list[str | int] = Field(description="Path of the wrong field, e.g. body.events.3.kind")
    msg: str
    type: str


class ErrorBody(_Model):
    """Every 4xx/5xx answer."""

    errors: list[ErrorDetail]


class Unacknowledged(ErrorBody):
    """503: not every event is known to be stored; retry the others with the same ids."""

    event_ids: list[str] = Field(description="The id of every posted event, in order.")
    stored_event_ids: list[str] = Field(
        description="Those the broker acknowledged: stored; a retry of them is deduplicated."
    )


def to_record(
    event: Run | Feedback | Edit, *, tenant: str, received_at_ms: int, event_id: str | None = None
) -> tuple[str, dict[str, Any]]:
    """The Avro record of ``event``: server fields filled, ``event_id`` generated if absent
    (``event_id`` lets a caller supply ids it generated in bulk).

    Returns the event id and the record.
    """
    # The models are flat apart from ChatMessage and TokenUsage, so copying ``__dict__`` is
    # the whole dump, at a fraction of ``model_dump()``'s cost on the hot path (the models
    # forbid extra fields, so ``__dict__`` holds exactly the declared ones).
    record = dict(event.__dict__)
    del record["type"]
    prompt = record.get("prompt")
    if isinstance(prompt, list):
        record["prompt"] = [message.__dict__ for message in prompt]
    tokens = record.get("tokens")
    if tokens is not None:
        record["tokens"] = tokens.__dict__
    if event.event_id is not None:
        event_id = str(event.event_id)
    elif event_id is None:
        event_id = str(uuid.uuid4())
    record["event_id"] = event_id
    occurred = event.occurred_at
    record["occurred_at"] = occurred if isinstance(occurred, int) else _epoch_ms(occurred)
    record["tenant"] = tenant
    record["received_at"] = received_at_ms
    return event_id, record


_SINGLE: dict[str, type[Run | Feedback | Edit]] = {"run": Run, "feedback": Feedback, "edit": Edit}


def parse_events(body: bytes, *, route: RouteName, max_events: int) -> list[Run | Feedback | Edit]:
    """Validate a request body (raw bytes) into its events.

    Raises:
        InvalidBody: 400 if the body is not JSON, 422 with every wrong field otherwise.
        PayloadTooLarge: a batch holds more than ``max_events`` events.
    """
    try:
        if route == "batch":
            events: list[Run | Feedback | Edit] = EventBatch.model_validate_json(body).events
        else:
            events = [_SINGLE[route].model_validate_json(body)]
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False, include_context=False)
        if any(e["type"] == "json_invalid" for e in errors):
            raise InvalidBody(
                [{"loc": ["body"], "msg": errors[0]["msg"], "type": "json_invalid"}], status=400
            ) from None
        # The parser that validated: it read this body, so it reads it again (a stricter one
        # would refuse NaN or 2**64 that the validator reported as a field error).
        doc = from_json(body, allow_inf_nan=True)
        details: list[dict[str, Any]] = []
        for e in errors:
            detail = {"loc": ["body", *_json_path(e["loc"], doc)], "msg": e["msg"]}
            detail["type"] = e["type"]
            if detail not in details:  # two union branches may fail the same way
                details.append(detail)
        raise InvalidBody(details, status=422) from None
    if len(events) > max_events:
        raise PayloadTooLarge(
            f"a batch holds at most {max_events} events, this one {len(events)}",
            loc=("body", "events"),
            type="too_many_events",
        )
    return events


def _json_path(loc: tuple[str | int, ...], doc: Any) -> list[str | int]:
    """``loc`` as a path in the client's JSON: pydantic adds union branch labels
    (``datetime``, ``run``, ``list[ChatMessage]``) that name no field; drop them."""
    path: list[str | int] = []
    node = doc
    for i, part in enumerate(loc):
        if isinstance(node, dict) and isinstance(part, str):
            if part in node:
                node = node[part]
                path.append(part)
            elif i == len(loc) - 1:  # an absent field of this object
                path.append(part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
            path.append(part)
    return path


def new_event_ids(count: int) -> list[str]:
    """``count`` random (version 4) UUIDs from one ``os.urandom`` call, not one per id."""
    raw = os.urandom(16 * count)
    return [str(uuid.UUID(bytes=raw[i : i + 16], version=4)) for i in range(0, 16 * count, 16)]


def largest_field(event: BaseModel) -> str:
    """The name of ``event``'s largest field by its JSON size: what an oversized event's 413
    points at."""
    sizes = {
        name: len(orjson.dumps(value)) for name, value in event.model_dump(mode="json").items()
    }
    return max(sizes, key=sizes.__getitem__)
