"""Toxicity of what the user wrote, absolutely and relative to what they replaced, behind a
pluggable scorer (``scorers.py``).

Each side of a candidate is cut into pieces (``spans.py``): the whole text, its sentences,
and for an edit the spans the user inserted, replaced or deleted. A side's score is its worst
piece, so one abusive sentence is not averaged away by a long neutral answer around it.

A pair is rejected when its chosen text's worst piece scores at least ``max_score``
(``toxic_chosen``), or when what the user added scores at least ``relative_floor`` and more than
``relative_margin`` above what they removed (``toxicity_increase``): a pair that teaches the
model to prefer the more toxic answer is the poisoning case, and it is caught even while both
sides sit below the absolute threshold. For an edit "added" is the inserted and replaced spans
and the sentences the edit touched, "removed" the same on the rejected side; for the other
sources, every piece of the chosen and of the rejected text. The floor keeps scorer noise out:
profanity_check scores ordinary prose 0.01-0.11 (a terse rejected "Databases." 0.025 against a
fine chosen title 0.089), so without it the check threw away real corrections whose only
fault was being longer than the answer they replaced.

Cost: every distinct piece of a call is scored once, in chunks of ``batch_size``, by any
backend; a side has at most ``max_pieces`` sentence windows and as many edit spans.

Fail closed: if the scorer raises, times out or answers nonsense (NaN, out of [0, 1], the
wrong number of scores), the filter raises ``ToxicityScorerError`` and gives no verdict. The
pipeline must not accept, reject or commit anything from that batch (see ``errors.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from flywheel_common.errors import ConfigError

from flywheel_curator.candidate import Candidate, Verdict
from flywheel_curator.filters.errors import ToxicityScorerError
from flywheel_curator.filters.scorers import ToxicityScorer
from flywheel_curator.filters.settings import DEFAULT_MAX_PIECES
from flywheel_curator.filters.spans import CandidatePieces, SidePieces, pieces_of

__all__ = ["TOXICITY_INCREASE", "TOXIC_CHOSEN", "ToxicityFilter", "ToxicityMeasure"]

TOXIC_CHOSEN = "toxic_chosen"
TOXICITY_INCREASE = "toxicity_increase"


@dataclass(frozen=True, slots=True)
class ToxicityMeasure:
    """A candidate's scores: each side's worst piece (``chosen`` is written as ``toxicity``,
    ``rejected`` as ``toxicity_rejected``), and the worst of what the user ``added`` and
    ``removed`` (0.0 when nothing). ``worst`` names the chosen side's worst piece."""

    chosen: float
    rejected: float
    added: float
    removed: float
    worst: str


class ToxicityFilter:
    """Scores the pieces of chosen and rejected in batches; rejects toxic or
    more-toxic-than-rejected pairs.

    ``check_many`` scores a whole batch's distinct pieces in ``batch_size`` chunks (the
    pipeline should call it once per buffer); ``check`` is the one-candidate form;
    ``measure_many`` gives the scores without a verdict. All raise ``ToxicityScorerError``
    instead of answering when the scorer fails.
    """

    name = "toxicity"

    def __init__(
        self,
        *,
        scorer: ToxicityScorer,
        max_score: float,
        relative_margin: float,
        relative_floor: float,
        batch_size: int = 64,
        max_pieces: int = DEFAULT_MAX_PIECES,
    ) -> None:
        if (
            not 0.0 < max_score <= 1.0
            or not 0.0 <= relative_margin < 1.0
            or not 0.0 <= relative_floor <= max_score
            or batch_size < 1
            or max_pieces < 1
        ):
            raise ConfigError(
                "toxicity needs 0 < max_score <= 1, 0 <= relative_margin < 1, "
                "0 <= relative_floor <= max_score, batch_size >= 1, max_pieces >= 1; got "
                f"{max_score}, {relative_margin}, {relative_floor}, {batch_size}, {max_pieces}"
            )
        self.relative_floor = relative_floor
        self.scorer = scorer
        self.max_score = max_score
        self.relative_margin = relative_margin
        self.batch_size = batch_size
        self.max_pieces = max_pieces

    def check(self, candidate: Candidate) -> Verdict:
        return self.check_many([candidate])[0]

    def check_many(self, candidates: Sequence[Candidate]) -> list[Verdict]:
        measures = self.measure_many(candidates)
        return [self.verdict(c, m) for c, m in zip(candidates, measures, strict=True)]

    def measure_many(self, candidates: Sequence[Candidate]) -> list[ToxicityMeasure]:
        """Every candidate's scores. Each distinct piece is scored once: a run's response is
        the rejected side of its correction, its edit and its paired outcome alike."""
        pieces = [pieces_of(c, max_pieces=self.max_pieces) for c in candidates]
        unique = list(
            dict.fromkeys(t for p in pieces for side in (p.chosen, p.rejected) for t in side.texts)
        )
        score_of = dict(zip(unique, self.score_many(unique), strict=True))
        return [_measure(p, score_of) for p in pieces]

    def score_many(self, texts: Sequence[str]) -> list[float]:
        """Scores ``texts`` in chunks and checks every answer; raises ``ToxicityScorerError``."""
        backend = self._backend_name()
        scores: list[float] = []
        for start in range(0, len(texts), self.batch_size):
            chunk = texts[start : start + self.batch_size]
            try:
                answer = [float(s) for s in self.scorer.score_many(chunk)]
            except ToxicityScorerError:
                raise
            except Exception as exc:
                # Fail closed: whatever went wrong, no score means no verdict.
                raise ToxicityScorerError(backend, f"{type(exc).__name__}: {exc}") from exc
            if len(answer) != len(chunk):
                raise ToxicityScorerError(backend, f"{len(answer)} scores for {len(chunk)} texts")
            bad = [s for s in answer if not 0.0 <= s <= 1.0]  # NaN and inf fail it too
            if bad:
                raise ToxicityScorerError(backend, f"scores outside [0, 1]: {bad[:3]}")
            scores.extend(answer)
        return scores

    def _backend_name(self) -> str:
        try:
            return self.scorer.identity
        except Exception:  # an identity that raises must not hide the scorer's own failure
            return type(self.scorer).__name__

    def verdict(self, candidate: Candidate, m: ToxicityMeasure) -> Verdict:
        """The verdict on a candidate's measure."""
        scores = {"toxicity": m.chosen, "toxicity_rejected": m.rejected}
        # Added pieces are chosen pieces, so added <= chosen: below the floor (which is at
        # most max_score), the candidate is clean. The common case.
        if m.chosen < self.relative_floor:
            return Verdict(candidate=candidate, accepted=True, scores=scores)
        reasons: list[str] = []
        details: list[str] = []
        if m.chosen >= self.max_score:
            reasons.append(TOXIC_CHOSEN)
            details.append(f"chosen {m.chosen:.3f} >= {self.max_score} ({m.worst})")
        if m.added >= self.relative_floor and m.added > m.removed + self.relative_margin:
            reasons.append(TOXICITY_INCREASE)
            what = ("added", "removed") if candidate.source == "edit" else ("chosen", "rejected")
            details.append(
                f"{what[0]} {m.added:.3f} > {what[1]} {m.removed:.3f} + {self.relative_margin}"
            )
        if not reasons:
            return Verdict(candidate=candidate, accepted=True, scores=scores)
        return Verdict(
            candidate=candidate,
            accepted=False,
            reasons=tuple(reasons),
            detail="; ".join(details),
            scores=scores,
        )


def _measure(pieces: CandidatePieces, score_of: dict[str, float]) -> ToxicityMeasure:
    chosen = [score_of[t] for t in pieces.chosen.texts]
    rejected = [score_of[t] for t in pieces.rejected.texts]
    worst = max(range(len(chosen)), key=chosen.__getitem__)
    return ToxicityMeasure(
        chosen=chosen[worst],
        rejected=max(rejected),
        added=_judged(pieces.chosen, chosen),
        removed=_judged(pieces.rejected, rejected),
        worst=pieces.chosen.label(worst),
    )


def _judged(side: SidePieces, scores: list[float]) -> float:
    return max((scores[i] for i in side.judged), default=0.0)
