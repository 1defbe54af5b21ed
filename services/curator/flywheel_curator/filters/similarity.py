"""Similarity band: the Levenshtein (indel) ratio of chosen and rejected must lie strictly
inside ``(min_ratio, max_ratio)``. Below the band the "edit" is an unrelated rewrite; above
it the two sides are the same answer and carry no preference (DESIGN.md, "Pair sources")."""

from __future__ import annotations

from collections.abc import Iterable

import Levenshtein
from flywheel_common.errors import ConfigError

from flywheel_curator.candidate import Candidate, PairSource, Verdict

__all__ = ["TOO_DISSIMILAR", "TOO_SIMILAR", "SimilarityFilter"]

TOO_SIMILAR = "too_similar"
TOO_DISSIMILAR = "too_dissimilar"


class SimilarityFilter:
    """Checks the band for the configured sources; the ratio is kept as the ``similarity``
    score for every candidate it measures, accepted or not."""

    name = "similarity"

    def __init__(
        self, *, min_ratio: float, max_ratio: float, sources: Iterable[PairSource]
    ) -> None:
        if not 0.0 <= min_ratio < max_ratio <= 1.0:
            raise ConfigError(
                f"similarity band needs 0 <= min_ratio < max_ratio <= 1, "
                f"got ({min_ratio}, {max_ratio})"
            )
        self.min_ratio = min_ratio
        self.max_ratio = max_ratio
        self.sources = frozenset(sources)

    def check(self, candidate: Candidate) -> Verdict:
        if candidate.source not in self.sources:
            return Verdict.accept(candidate)
        ratio = Levenshtein.ratio(candidate.chosen, candidate.rejected)
        if ratio >= self.max_ratio:
            return Verdict.reject(
                candidate, TOO_SIMILAR, f"ratio {ratio:.3f} >= {self.max_ratio}", similarity=ratio
            )
        if ratio <= self.min_ratio:
            return Verdict.reject(
                candidate,
                TOO_DISSIMILAR,
                f"ratio {ratio:.3f} <= {self.min_ratio}",
                similarity=ratio,
            )
        return Verdict.accept(candidate, similarity=ratio)
