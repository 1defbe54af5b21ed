"""Events to candidates: the four pair sources of DESIGN.md and the SFT sampler, as pure
functions of decoded events (and, for the joins, the run they were joined to).

``validate`` decides what goes to the DLQ as ``invalid_event``; everything else here assumes a
validated record.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from flywheel_common.lake import chat_prompt, content_hash
from flywheel_common.topics import EventType

from flywheel_curator.candidate import Candidate, KafkaOrigin, PairSource

__all__ = [
    "NEGATIVE",
    "POSITIVE",
    "RunView",
    "correction_candidate",
    "edit_candidate",
    "event_ts_ms",
    "inline_run",
    "is_kept_signal",
    "is_spurned_signal",
    "paired_candidate",
    "polarity",
    "prompt_key",
    "regenerate_candidate",
    "sft_sampled",
    "user_hash",
    "validate",
]

POSITIVE = 1
NEGATIVE = -1
# A rating of 4-5 is "up", 1-2 is "down" (DESIGN.md: "rating <= 2"); 3 says nothing.
_RATING_UP = 4.0
_RATING_DOWN = 2.0
# Implicit signals that the user kept an answer (DESIGN.md, regenerate row).
_KEPT_KINDS = frozenset({"copy", "accept"})
# ... and that they did not: such an answer is never "kept by default" (no further regenerate).
_SPURNED_KINDS = frozenset(
    {"regenerate", "rephrase", "reject", "revert", "early_stop", "escalate", "abandon"}
)
_MIN_CORRECTION_CHARS = 2


@dataclass(frozen=True, slots=True)
class RunView:
    """What a pair needs from a run; stored in the join state as plain JSON."""

    run_id: str
    tenant: str
    feature: str
    prompt: tuple[Mapping[str, str], ...]
    response: str
    event_time_ms: int
    model: str | None = None
    model_version: str | None = None
    user_id: str | None = None
    parent_run_id: str | None = None
    event_id: str | None = None  # of the Run event, where the run was logged

    @classmethod
    def of_run(cls, record: Mapping[str, Any]) -> RunView:
        return cls(
            run_id=record["run_id"],
            tenant=record["tenant"],
            feature=record.get("feature") or "default",
            prompt=tuple(chat_prompt(record["prompt"])),
            response=record["response"],
            event_time_ms=_ms(record["occurred_at"]),
            model=record.get("model"),
            model_version=record.get("model_version"),
            user_id=record.get("user_id"),
            parent_run_id=record.get("parent_run_id"),
            event_id=record.get("event_id"),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "tenant": self.tenant,
            "feature": self.feature,
            "prompt": [dict(m) for m in self.prompt],
            "response": self.response,
            "event_time_ms": self.event_time_ms,
            "model": self.model,
            "model_version": self.model_version,
            "user_id": self.user_id,
            "parent_run_id": self.parent_run_id,
            "event_id": self.event_id,
        }

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> RunView:
        return cls(
            run_id=body["run_id"],
            tenant=body["tenant"],
            feature=body["feature"],
            prompt=tuple(body["prompt"]),
            response=body["response"],
            event_time_ms=int(body["event_time_ms"]),
            model=body.get("model"),
            model_version=body.get("model_version"),
            user_id=body.get("user_id"),
            parent_run_id=body.get("parent_run_id"),
            event_id=body.get("event_id"),
        )


def _ms(value: datetime | int) -> int:
    if isinstance(value, datetime):
        return int(value.timestamp() * 1000)
    return int(value)


def event_ts_ms(record: Mapping[str, Any]) -> int:
    """Server receive time: the clock the retention window runs on (same on every replay)."""
    return _ms(record["received_at"])


def _dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def validate(event_type: EventType, name: str, record: Mapping[str, Any]) -> str | None:
    """Why a decoded event cannot be used, or None. The reason is written to the DLQ."""
    expected = {"run": "Run", "feedback": "Feedback", "edit": "Edit"}[event_type]
    if name != expected:
        return f"a {name} record on the {event_type} topic"
    for key in ("event_id", "tenant", "run_id"):
        if not str(record.get(key) or "").strip():
            return f"{key} is empty"
    if event_type == "feedback":
        kind, value = record.get("kind"), record.get("value")
        if kind == "thumbs" and value not in (1.0, -1.0):
            return f"thumbs value must be +1 or -1, got {value}"
        if kind == "rating" and (value is None or not 1.0 <= value <= 5.0):
            return f"rating value must be 1..5, got {value}"
    if event_type == "edit" and not record.get("final"):
        return "edit has an empty final version"
    return None


def polarity(feedback: Mapping[str, Any]) -> int:
    """+1 rated up, -1 rated down, 0 neither (explicit ratings only)."""
    kind, value = feedback.get("kind"), feedback.get("value")
    if value is None:
        return 0
    if kind == "thumbs":
        return POSITIVE if value > 0 else NEGATIVE
    if kind == "rating":
        if value >= _RATING_UP:
            return POSITIVE
        if value <= _RATING_DOWN:
            return NEGATIVE
    if kind == "helpful":
        return POSITIVE if value >= 1 else NEGATIVE
    return 0


def is_kept_signal(feedback: Mapping[str, Any]) -> bool:
    """The user kept this answer: copied, accepted or rated it up."""
    return feedback.get("kind") in _KEPT_KINDS or polarity(feedback) == POSITIVE


def is_spurned_signal(feedback: Mapping[str, Any]) -> bool:
    """The user turned away from this answer: rated it down, regenerated, rejected, ..."""
    return feedback.get("kind") in _SPURNED_KINDS or polarity(feedback) == NEGATIVE


def inline_run(feedback: Mapping[str, Any]) -> RunView | None:
    """The run carried inline by a client that does not log runs; no join needed."""
    if feedback.get("prompt") is None or feedback.get("response") is None:
        return None
    return RunView(
        run_id=feedback["run_id"],
        tenant=feedback["tenant"],
        feature=feedback.get("feature") or "default",
        prompt=tuple(chat_prompt(feedback["prompt"])),
        response=feedback["response"],
        event_time_ms=_ms(feedback["occurred_at"]),
        model=feedback.get("model"),
        user_id=feedback.get("user_id"),
    )


def prompt_key(run: RunView) -> str:
    """Paired outcomes are formed within one tenant, feature and prompt."""
    return content_hash(run.tenant, run.feature, [dict(m) for m in run.prompt])


def user_hash(tenant: str, user_id: str | None) -> str | None:
    if not user_id:
        return None
    return hashlib.sha256(f"{tenant}\x00{user_id}".encode()).hexdigest()[:32]


def sft_sampled(run_id: str, rate: float) -> bool:
    """Deterministic in ``run_id``, so a replay samples exactly the same runs."""
    if rate <= 0:
        return False
    digest = hashlib.blake2b(run_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < rate


def _candidate(
    source: PairSource,
    *,
    run: RunView,
    chosen: str,
    rejected: str,
    event: Mapping[str, Any],
    origin: KafkaOrigin,
    chosen_run_id: str | None = None,
    rejected_run_id: str | None = None,
) -> Candidate:
    return Candidate(
        source=source,
        prompt=run.prompt,
        chosen=chosen,
        rejected=rejected,
        run_id=run.run_id,
        event_id=event["event_id"],
        tenant=run.tenant,
        feature=run.feature,
        event_time=_dt(_ms(event["occurred_at"])),
        origin=origin,
        user_id=event.get("user_id") or run.user_id,
        chosen_run_id=chosen_run_id,
        rejected_run_id=rejected_run_id,
        model=run.model,
        model_version=run.model_version,
    )


def edit_candidate(edit: Mapping[str, Any], origin: KafkaOrigin) -> Candidate:
    """chosen = the user's final version, rejected = the model's output."""
    run = RunView(
        run_id=edit["run_id"],
        tenant=edit["tenant"],
        feature=edit.get("feature") or "default",
        prompt=tuple(chat_prompt(edit["prompt"])),
        response=edit["original"],
        event_time_ms=_ms(edit["occurred_at"]),
        model=edit.get("model"),
        model_version=edit.get("model_version"),
        user_id=edit.get("user_id"),
    )
    return _candidate(
        "edit",
        run=run,
        chosen=edit["final"],
        rejected=edit["original"],
        event=edit,
        origin=origin,
        rejected_run_id=run.run_id,
    )


def correction_candidate(
    feedback: Mapping[str, Any], run: RunView, origin: KafkaOrigin
) -> Candidate | None:
    """Thumbs-down, rating <= 2 or an explicit correction, with a substantive correction text."""
    text = (feedback.get("correction") or "").strip()
    negative = feedback.get("kind") == "correction" or polarity(feedback) == NEGATIVE
    if not negative or len(text) < _MIN_CORRECTION_CHARS or text == run.response.strip():
        return None
    return _candidate(
        "correction",
        run=run,
        chosen=text,
        rejected=run.response,
        event=feedback,
        origin=origin,
        rejected_run_id=run.run_id,
    )


def regenerate_candidate(
    kept: RunView, parent: RunView, signal: Mapping[str, Any], origin: KafkaOrigin
) -> Candidate | None:
    """The regenerated answer the user kept over the one they regenerated away from (never
    across tenants: the pipeline refuses such a reference before it gets here)."""
    if (
        kept.tenant != parent.tenant
        or kept.response == parent.response
        or kept.feature != parent.feature
    ):
        return None
    return _candidate(
        "regenerate",
        run=kept,
        chosen=kept.response,
        rejected=parent.response,
        event=signal,
        origin=origin,
        chosen_run_id=kept.run_id,
        rejected_run_id=parent.run_id,
    )


def paired_candidate(
    up: RunView, down: RunView, signal: Mapping[str, Any], origin: KafkaOrigin
) -> Candidate | None:
    """Same tenant, prompt and feature, one response rated up and one rated down."""
    if up.tenant != down.tenant or up.response == down.response:
        return None
    return _candidate(
        "paired_outcome",
        run=up,
        chosen=up.response,
        rejected=down.response,
        event=signal,
        origin=origin,
        chosen_run_id=up.run_id,
        rejected_run_id=down.run_id,
    )


def texts(prompt: Sequence[Mapping[str, str]]) -> list[dict[str, str]]:
    return [{"role": m["role"], "content": m["content"]} for m in prompt]
