"""Similarity band: the ratio of chosen and rejected must lie strictly inside
``(min_ratio, max_ratio)``. Below the band the "edit" is an unrelated rewrite; above it the two
sides are the same answer and carry no preference (DESIGN.md, "Pair sources").

Two ratios, named by ``metric``:

- ``levenshtein`` (the default, the owner's rule): ``1 - distance / max(len(a), len(b))`` with
  python-Levenshtein's edit distance, where a substitution costs 1.
- ``indel``: ``Levenshtein.ratio``, ``1 - indel_distance / (len(a) + len(b))``, where a
  substitution costs 2 (a deletion and an insertion) but the sum of both lengths divides.

They agree on same-length texts changed only by substitutions. An insertion or deletion of
``k`` characters into ``n`` scores ``1 - k / (n + k)`` by the first and ``1 - k / (2n + k)`` by
the second: the indel ratio calls a fluency correction that adds a few words "too similar"
(60 characters + 5: 0.923 against 0.960), and a short answer grown into a long one "similar
enough" (3 + 27: 0.100 against 0.182). See docs/curator.md, "Similarity band".
"""

from __future__ import annotations

from collections.abc import Iterable

import Levenshtein
from flywheel_common.errors import ConfigError

from flywheel_curator.candidate import Candidate, PairSource, Verdict
from flywheel_curator.filters.settings import SimilarityMetric

__all__ = ["TOO_DISSIMILAR", "TOO_SIMILAR", "SimilarityFilter", "similarity_ratio"]

TOO_SIMILAR = "too_similar"
TOO_DISSIMILAR = "too_dissimilar"


def similarity_ratio(a: str, b: str, *, metric: SimilarityMetric = "levenshtein") -> float:
    """The ratio ``metric`` names, in [0, 1]; 1.0 for two empty texts."""
    if metric == "indel":
        return float(Levenshtein.ratio(a, b))
    longest = max(len(a), len(b))
    if longest == 0:
        return 1.0
    # (longest - d) / longest, not 1 - d / longest: the band's edges (0.95 = 19/20) then come
    # out as the same floats as the settings' literals.
    return (longest - Levenshtein.distance(a, b)) / longest


class SimilarityFilter:
    """Checks the band for the configured sources; the ratio is kept as the ``similarity``
    score for every candidate it measures, accepted or not, and the detail of a rejection
    names the metric."""

    name = "similarity"

    def __init__(
        self,
        *,
        min_ratio: float,
        max_ratio: float,
        sources: Iterable[PairSource],
        metric: SimilarityMetric = "levenshtein",
    ) -> None:
        if not 0.0 <= min_ratio < max_ratio <= 1.0:
            raise ConfigError(
                f"similarity band needs 0 <= min_ratio < max_ratio <= 1, "
                f"got ({min_ratio}, {max_ratio})"
            )
        if metric not in ("levenshtein", "indel"):
            raise ConfigError(f"similarity metric must be 'levenshtein' or 'indel', got {metric!r}")
        self.min_ratio = min_ratio
        self.max_ratio = max_ratio
        self.sources = frozenset(sources)
        self.metric: SimilarityMetric = metric

    def check(self, candidate: Candidate) -> Verdict:
        if candidate.source not in self.sources:
            return Verdict.accept(candidate)
        ratio = similarity_ratio(candidate.chosen, candidate.rejected, metric=self.metric)
        if ratio >= self.max_ratio:
            return Verdict.reject(
                candidate,
                TOO_SIMILAR,
                f"{self.metric} ratio {ratio:.3f} >= {self.max_ratio}",
                similarity=ratio,
            )
        if ratio <= self.min_ratio:
            return Verdict.reject(
                candidate,
                TOO_DISSIMILAR,
                f"{self.metric} ratio {ratio:.3f} <= {self.min_ratio}",
                similarity=ratio,
            )
        return Verdict.accept(candidate, similarity=ratio)
