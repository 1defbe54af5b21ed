"""``flywheel filters evaluate``: the filter chain over labelled candidates, scored.

Each line of the input is one candidate and what should become of it::

    {"source": "edit", "prompt": "How do I reset my password?",
     "chosen": "...", "rejected": "...", "expect": "accept"}

``expect`` is ``"accept"``, ``"reject"`` (for any reason), a reason code (``"toxic_chosen"``)
or a list of them. Optional: ``tenant``, ``feature``, ``user_id``, ``event_time`` (ISO 8601 or
epoch ms), ``event_id``, ``run_id``; ``prompt`` may be chat messages. The chain is the one the
curator's settings describe (``FLYWHEEL_CURATOR_FILTERS__*``), run in file order with fresh
state, so dedup, near-dup and caps act across the file's lines as they would on a stream.

A filter or reason *fires* on a line when it rejects it; the PII filter also fires when it
redacts (policy ``redact``). For each reason: TP lines expected to get it and got it, FN
expected and missed, FP lines expected to be accepted that got it, TN the other accepted
lines; lines expected to be rejected for another reason do not count. Precision TP/(TP+FP),
recall TP/(TP+FN), false-positive rate FP/(FP+TN). The toxicity sweep scores every line
(whatever the other filters said) and counts ``toxic_chosen`` as it would fire at each
``max_score``: its worst chosen piece at or above it (the relative check is not swept).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, get_args

from flywheel_common.errors import ConfigError

from flywheel_curator.candidate import Candidate, KafkaOrigin, PairSource, Verdict
from flywheel_curator.filters import (
    DUPLICATE,
    DUPLICATE_EVENT,
    NEAR_DUPLICATE,
    PII,
    TENANT_CAP,
    TOO_DISSIMILAR,
    TOO_LONG,
    TOO_SHORT,
    TOO_SIMILAR,
    TOXIC_CHOSEN,
    TOXICITY_INCREASE,
    USER_CAP,
    FilterChain,
    redact_text,
)

__all__ = [
    "ACCEPT",
    "FILTER_REASONS",
    "REJECT",
    "Counts",
    "Labelled",
    "Report",
    "evaluate",
    "fired",
    "read_labelled",
]

ACCEPT = "accept"
REJECT = "reject"
# The reason codes each filter gives (its name as in ``FilterChain.names``).
FILTER_REASONS: Mapping[str, frozenset[str]] = {
    "length": frozenset({TOO_SHORT, TOO_LONG}),
    "similarity": frozenset({TOO_SIMILAR, TOO_DISSIMILAR}),
    "pii": frozenset({PII}),
    "event_dedup": frozenset({DUPLICATE_EVENT}),
    "dedup": frozenset({DUPLICATE}),
    "near_dup": frozenset({NEAR_DUPLICATE}),
    "caps": frozenset({USER_CAP, TENANT_CAP}),
    "toxicity": frozenset({TOXIC_CHOSEN, TOXICITY_INCREASE}),
}
_REASONS = frozenset().union(*FILTER_REASONS.values())
_CHOSEN = frozenset({TOXIC_CHOSEN})
_SOURCES: tuple[str, ...] = get_args(PairSource)
_EPOCH = datetime(2025, 1, 1, tzinfo=UTC)
DEFAULT_THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(1, 20))


@dataclass(frozen=True, slots=True)
class Labelled:
    """One input line: the candidate, what should become of it (an empty set: accept;
    ``{"reject"}``: rejected for any reason), and its 1-based line number."""

    candidate: Candidate
    expected: frozenset[str]
    line: int


@dataclass(frozen=True, slots=True)
class Counts:
    tp: int
    fp: int
    fn: int
    tn: int

    @property
    def precision(self) -> float | None:
        return _ratio(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> float | None:
        return _ratio(self.tp, self.tp + self.fn)

    @property
    def fpr(self) -> float | None:
        return _ratio(self.fp, self.fp + self.tn)

    def as_dict(self) -> dict[str, Any]:
        return {
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "tn": self.tn,
            "precision": self.precision,
            "recall": self.recall,
            "fpr": self.fpr,
        }


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


@dataclass(frozen=True, slots=True)
class Report:
    lines: int
    scorer: str
    chain: Counts
    filters: Mapping[str, Counts]
    reasons: Mapping[str, Counts]
    sweep: Sequence[tuple[float, Counts]]
    mismatches: Sequence[Mapping[str, Any]]

    def as_dict(self) -> dict[str, Any]:
        return {
            "lines": self.lines,
            "scorer": self.scorer,
            "chain": self.chain.as_dict(),
            "filters": {name: c.as_dict() for name, c in self.filters.items()},
            "reasons": {name: c.as_dict() for name, c in self.reasons.items()},
            "toxicity_sweep": [{"max_score": t, **c.as_dict()} for t, c in self.sweep],
            "mismatches": list(self.mismatches),
        }


def read_labelled(path: Path) -> list[Labelled]:
    """The labelled lines of ``path``; a bad line is a ``ConfigError`` naming it and the field."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    out: list[Labelled] = []
    for n, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            out.append(_labelled(json.loads(raw), n))
        except (json.JSONDecodeError, ValueError, TypeError, KeyError) as exc:
            raise ConfigError(f"{path}:{n}: {exc}") from exc
    if not out:
        raise ConfigError(f"{path} holds no labelled candidates")
    return out


def _labelled(obj: Any, n: int) -> Labelled:
    if not isinstance(obj, dict):
        raise TypeError(f"a line must be a JSON object, not {type(obj).__name__}")
    source = obj.get("source")
    if source not in _SOURCES:
        raise ValueError(f"'source' must be one of {list(_SOURCES)}, not {source!r}")
    for field in ("chosen", "rejected"):
        if not isinstance(obj.get(field), str):
            raise ValueError(f"{field!r} must be a string")
    candidate = Candidate(
        source=source,
        prompt=_prompt(obj.get("prompt", "")),
        chosen=obj["chosen"],
        rejected=obj["rejected"],
        run_id=str(obj.get("run_id", f"line-{n}")),
        event_id=str(obj.get("event_id", f"line-{n}")),
        tenant=str(obj.get("tenant", "evaluate")),
        feature=str(obj.get("feature", "default")),
        event_time=_time(obj.get("event_time"), n),
        origin=KafkaOrigin("labelled", 0, n),
        user_id=None if obj.get("user_id") is None else str(obj["user_id"]),
    )
    return Labelled(candidate, _expected(obj.get("expect")), n)


def _prompt(value: Any) -> tuple[Mapping[str, str], ...]:
    if isinstance(value, str):
        return ({"role": "user", "content": value},)
    if isinstance(value, list) and all(
        isinstance(m, dict) and isinstance(m.get("content"), str) for m in value
    ):
        return tuple({"role": str(m.get("role", "user")), "content": m["content"]} for m in value)
    raise ValueError("'prompt' must be a string or a list of {role, content} messages")


def _time(value: Any, n: int) -> datetime:
    if value is None:
        return _EPOCH + timedelta(seconds=n)  # one line a second
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value / 1000, tz=UTC)
    parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _expected(value: Any) -> frozenset[str]:
    labels = [value] if isinstance(value, str) else value
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        raise ValueError("'expect' must be 'accept', 'reject', a reason code or a list of them")
    unknown = set(labels) - _REASONS - {ACCEPT, REJECT}
    if unknown or (ACCEPT in labels and len(labels) > 1):
        raise ValueError(
            f"'expect' {labels} is not 'accept', 'reject' or reason codes {sorted(_REASONS)}"
        )
    return frozenset() if labels == [ACCEPT] else frozenset(labels)


def fired(verdict: Verdict) -> frozenset[str]:
    """The reasons a verdict gives; ``pii`` too when the PII filter redacted."""
    reasons = set(verdict.reasons)
    if "redacted=" in verdict.detail:
        reasons.add(PII)
    return frozenset(reasons)


def _counts(
    pairs: Iterable[tuple[frozenset[str], frozenset[str]]], codes: frozenset[str]
) -> Counts:
    """Counts for ``codes`` over (expected, fired) pairs; an empty ``codes``: caught at all."""
    tp = fp = fn = tn = 0
    for expected, got in pairs:
        hit = bool(got & codes) if codes else bool(got)
        if not expected:
            fp, tn = fp + hit, tn + (not hit)
        elif (expected & codes) if codes else True:
            tp, fn = tp + hit, fn + (not hit)
    return Counts(tp, fp, fn, tn)


def evaluate(
    chain: FilterChain,
    labelled: Sequence[Labelled],
    *,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
) -> Report:
    """Runs ``chain`` over the candidates in order and scores its verdicts."""
    verdicts = chain.run_many([x.candidate for x in labelled])
    pairs = [(x.expected, fired(v)) for x, v in zip(labelled, verdicts, strict=True)]
    seen = {r for expected, got in pairs for r in expected | got} & _REASONS
    sweep: list[tuple[float, Counts]] = []
    if chain.toxicity is not None:
        # As the chain saw them (redacted); scored whatever the other filters said.
        measures = chain.toxicity.measure_many([v.candidate for v in verdicts])
        for t in thresholds:
            at_t = [
                (x.expected, _CHOSEN if m.chosen >= t else frozenset())
                for x, m in zip(labelled, measures, strict=True)
            ]
            sweep.append((t, _counts(at_t, _CHOSEN)))
    mismatches = [
        {"line": x.line, "expected": sorted(x.expected) or [ACCEPT], "got": sorted(got),
         "detail": redact_text(v.detail)}
        for x, v, (_, got) in zip(labelled, verdicts, pairs, strict=True)
        if _wrong(x.expected, got)
    ]  # fmt: skip
    return Report(
        lines=len(labelled),
        scorer=chain.toxicity.scorer.identity if chain.toxicity is not None else "none",
        chain=_counts(pairs, frozenset()),
        filters={name: _counts(pairs, FILTER_REASONS[name]) for name in chain.names},
        reasons={r: _counts(pairs, frozenset({r})) for r in sorted(seen)},
        sweep=sweep,
        mismatches=mismatches,
    )


def _wrong(expected: frozenset[str], got: frozenset[str]) -> bool:
    if not expected:
        return bool(got)
    if expected == {REJECT}:
        return not got
    return not expected <= got
