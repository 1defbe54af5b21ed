"""The filter chain: every filter in order, cheap ones first, reason codes collected, state
recorded only for accepted candidates, toxicity scored in one batch per call.

``run_many(candidates)`` works in three passes:

1. Per candidate, the cheap checks in order (event dedup, length, similarity, PII, exact dedup,
   near-dup, caps). They all run, so a rejected row carries every reason that applies; PII
   redaction rewrites the candidate the later checks see (the ``pair_id`` is that of the
   redacted texts, as stored).
2. The survivors' chosen and rejected texts go to the toxicity scorer in batches.
3. In order, the stateful checks run again (an earlier candidate of the same call may now be a
   duplicate of this one, or have filled its cap), and each accepted candidate is recorded in
   the state, tentatively.

Each stateful filter does a call's work in a ``StatefulBatch``: keys and signatures computed
once for all candidates and looked up together in pass 1; in pass 3 a re-check costs nothing
unless an earlier candidate of the call recorded something it shares (a key, a band, a cap
window), and then gives exactly the verdict a fresh check would.

State contract for the pipeline (see ``FilterState``):
- after the Delta commit that wrote a buffer's rows: ``state.commit()``;
- when a buffer is dropped (a failed commit, a rebalance): ``state.rollback()``;
- on ``ToxicityScorerError`` (fail closed): no verdicts for the call; roll back, commit no
  offsets for the buffer, and stop or back off. Never write the candidates as accepted.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from flywheel_curator.candidate import Candidate, Filter, Verdict
from flywheel_curator.filters.caps import CapState
from flywheel_curator.filters.dedup import KeySet, KeyState
from flywheel_curator.filters.neardup import NearDupIndex
from flywheel_curator.filters.settings import FilterSettings
from flywheel_curator.filters.toxicity import ToxicityFilter

__all__ = ["BatchFilter", "FilterChain", "FilterState", "StatefulBatch", "StatefulFilter"]


@runtime_checkable
class BatchFilter(Protocol):
    """A stateless filter that checks a whole call's candidates at once, sharing work between
    them (PII: each distinct text scanned once); the chain uses ``check_many`` where a filter
    has it."""

    def check_many(self, candidates: Sequence[Candidate]) -> list[Verdict]: ...


class StatefulBatch(Protocol):
    """A stateful filter's work on one ``run_many`` call, by index into its candidates. A
    check gives the rejection, or None for a plain pass."""

    def checks(self) -> Sequence[Verdict | None]:
        """Every candidate against the state as the call found it."""

    def recheck(self, i: int) -> Verdict | None:
        """Against the state with this call's records so far; only for candidates ``checks``
        passed."""

    def record(self, i: int) -> None:
        """Remembers the candidate, tentatively."""


class StatefulFilter(Filter, Protocol):
    """A filter whose ``check`` only looks the candidate up; ``record`` remembers an accepted
    candidate (tentatively, until the state is committed); ``batch`` does both for a call."""

    def record(self, candidate: Candidate) -> None: ...

    def batch(self, candidates: Sequence[Candidate]) -> StatefulBatch: ...


@dataclass(slots=True)
class FilterState:
    """Everything the filters remember, in one injectable object the core keeps consistent with
    the Delta table. Rebuild on start with ``pairs.load(pair_ids)``, ``events.load(event_keys)``,
    ``caps.load(rows)`` and ``near_dup.load(rows)``; then ``commit``/``rollback`` per buffer."""

    pairs: KeyState
    events: KeyState
    near_dup: NearDupIndex
    caps: CapState

    @classmethod
    def in_memory(cls, settings: FilterSettings) -> FilterState:
        nd = settings.near_dup
        return cls(
            pairs=KeySet(max_entries=settings.dedup.max_entries),
            events=KeySet(max_entries=settings.event_dedup.max_entries),
            near_dup=NearDupIndex(
                threshold=nd.threshold,
                num_perm=nd.num_perm,
                bands=nd.bands,
                shingle_words=nd.shingle_words,
                max_entries=nd.max_entries,
            ),
            caps=CapState(window=settings.caps.window, retain_windows=settings.caps.retain_windows),
        )

    def commit(self) -> None:
        """The buffer's rows are in the table: keep what its accepted candidates recorded."""
        self.pairs.commit()
        self.events.commit()
        self.near_dup.commit()
        self.caps.commit()

    def rollback(self) -> None:
        """The buffer was dropped: forget what its candidates recorded."""
        self.pairs.rollback()
        self.events.rollback()
        self.near_dup.rollback()
        self.caps.rollback()


def _merge(first: Verdict, second: Verdict) -> Verdict:
    """``second`` judged ``first.candidate``: one verdict with both reasons and scores."""
    if (
        second.accepted
        and second.candidate is first.candidate
        and not (second.scores or second.detail)
    ):
        return first  # the common case: a plain pass adds nothing
    detail = "; ".join(d for d in (first.detail, second.detail) if d)
    return Verdict(
        candidate=second.candidate,
        accepted=first.accepted and second.accepted,
        reasons=first.reasons + second.reasons,
        detail=detail,
        scores={**first.scores, **second.scores},
    )


class FilterChain:
    """Runs the configured filters; see the module docstring for the passes and the contract."""

    def __init__(
        self,
        *,
        stateless: Sequence[Filter],
        stateful: Sequence[StatefulFilter],
        toxicity: ToxicityFilter | None,
        state: FilterState,
        settings_hash: str,
    ) -> None:
        self.stateless = tuple(stateless)
        self.stateful = tuple(stateful)
        self.toxicity = toxicity
        self.state = state
        identity = toxicity.scorer.identity if toxicity is not None else "none"
        self._config_hash = hashlib.sha256(f"{settings_hash}|{identity}".encode()).hexdigest()[:16]

    @property
    def names(self) -> tuple[str, ...]:
        """Filter names in the order they run (for logs and metrics)."""
        tail = (self.toxicity.name,) if self.toxicity is not None else ()
        return tuple(f.name for f in (*self.stateless, *self.stateful)) + tail

    def config_hash(self) -> str:
        """16 hex digits naming the effective filter configuration and toxicity model; written
        on every row as ``filter_config_hash``."""
        return self._config_hash

    def run(self, candidate: Candidate) -> Verdict:
        return self.run_many([candidate])[0]

    def run_many(self, candidates: Sequence[Candidate]) -> list[Verdict]:
        verdicts = [Verdict.accept(c) for c in candidates]
        for f in self.stateless:
            # Each filter sees the candidates as the filters before it passed them on.
            current = [v.candidate for v in verdicts]
            if isinstance(f, BatchFilter):
                checked = f.check_many(current)
            else:
                checked = [f.check(c) for c in current]
            verdicts = [_merge(v, c) for v, c in zip(verdicts, checked, strict=True)]
        passed = [v.candidate for v in verdicts]
        batches = [f.batch(passed) for f in self.stateful]
        for batch in batches:
            for i, found in enumerate(batch.checks()):
                if found is not None:
                    verdicts[i] = _merge(verdicts[i], found)
        if self.toxicity is not None:
            survivors = [i for i, v in enumerate(verdicts) if v.accepted]
            scored = self.toxicity.check_many([verdicts[i].candidate for i in survivors])
            for i, tox in zip(survivors, scored, strict=True):
                verdicts[i] = _merge(verdicts[i], tox)
        for i, verdict in enumerate(verdicts):
            if verdict.accepted:
                verdicts[i] = self._recheck_and_record(batches, i, verdict)
        return verdicts

    @staticmethod
    def _recheck_and_record(batches: list[StatefulBatch], i: int, verdict: Verdict) -> Verdict:
        for batch in batches:
            found = batch.recheck(i)
            if found is not None:
                verdict = _merge(verdict, found)
        if verdict.accepted:
            for batch in batches:
                batch.record(i)
        return verdict

    def commit(self) -> None:
        self.state.commit()

    def rollback(self) -> None:
        self.state.rollback()
