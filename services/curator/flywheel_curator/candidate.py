"""The values that flow through the curator: a ``Candidate`` pair, and the ``Verdict`` a filter
gives it. Filters are pure functions of a candidate (plus, for dedup and caps, an explicit
state object), so the same code serves the stream, ``flywheel curate`` and the tests."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Literal, Protocol

__all__ = [
    "Candidate",
    "Filter",
    "KafkaOrigin",
    "PairSource",
    "Verdict",
]

PairSource = Literal["edit", "correction", "regenerate", "paired_outcome"]


@dataclass(frozen=True, slots=True)
class KafkaOrigin:
    """Where the event that completed this candidate was read (the exactly-once audit trail)."""

    topic: str
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class Candidate:
    """A would-be DPO pair, before filtering. ``prompt`` is chat messages."""

    source: PairSource
    prompt: tuple[Mapping[str, str], ...]
    chosen: str
    rejected: str
    run_id: str
    event_id: str
    tenant: str
    feature: str
    event_time: datetime
    origin: KafkaOrigin
    user_id: str | None = None
    chosen_run_id: str | None = None
    rejected_run_id: str | None = None
    model: str | None = None
    model_version: str | None = None

    def with_texts(self, *, chosen: str, rejected: str) -> Candidate:
        """A copy with new texts (e.g. after PII redaction)."""
        return replace(self, chosen=chosen, rejected=rejected)


@dataclass(frozen=True, slots=True)
class Verdict:
    """A filter's answer. ``reasons`` are stable reason codes (``too_short``, ``toxic_chosen``,
    ``pii``, ``duplicate``, ...) written to ``rejected_candidates``; ``scores`` are measurements
    kept on the row either way (``similarity``, ``toxicity``, ``toxicity_rejected``).
    ``candidate`` is the candidate to pass on: a filter may rewrite it (PII redaction)."""

    candidate: Candidate
    accepted: bool
    reasons: tuple[str, ...] = ()
    detail: str = ""
    scores: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def accept(cls, candidate: Candidate, **scores: float) -> Verdict:
        return cls(candidate=candidate, accepted=True, scores=scores)

    @classmethod
    def reject(
        cls, candidate: Candidate, reason: str, detail: str = "", **scores: float
    ) -> Verdict:
        return cls(
            candidate=candidate, accepted=False, reasons=(reason,), detail=detail, scores=scores
        )


class Filter(Protocol):
    """One check on a candidate. ``name`` is used in logs, metrics and the filter-config hash."""

    name: str

    def check(self, candidate: Candidate) -> Verdict: ...
