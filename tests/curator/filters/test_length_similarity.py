from __future__ import annotations

import pytest
from flywheel_common.errors import ConfigError
from flywheel_curator.filters import (
    TOO_DISSIMILAR,
    TOO_LONG,
    TOO_SHORT,
    TOO_SIMILAR,
    FilterSettings,
    LengthFilter,
    LengthSettings,
    SimilarityFilter,
    SimilaritySettings,
    build_filters,
    similarity_ratio,
)
from pydantic import ValidationError

from tests.curator.filters.conftest import MakeCandidate


@pytest.fixture
def length() -> LengthFilter:
    return LengthFilter(min_chars=3, max_chars=10, max_prompt_chars=30)


@pytest.mark.parametrize(
    ("chosen", "rejected", "reason"),
    [
        ("abc", "abcdefghij", None),  # both bounds inclusive
        ("ab", "abcdef", TOO_SHORT),
        ("abcdef", "ab", TOO_SHORT),
        ("   ab    ", "abcdef", TOO_SHORT),  # padding does not count
        ("abcdefghijk", "abcdef", TOO_LONG),
        ("abcdef", "abcdefghijk", TOO_LONG),
    ],
)
def test_length_bounds(
    length: LengthFilter,
    make_candidate: MakeCandidate,
    chosen: str,
    rejected: str,
    reason: str | None,
) -> None:
    verdict = length.check(make_candidate(chosen=chosen, rejected=rejected))
    assert verdict.accepted is (reason is None)
    assert verdict.reasons == (() if reason is None else (reason,))


def test_length_prompt_ceiling(length: LengthFilter, make_candidate: MakeCandidate) -> None:
    prompt = ({"role": "system", "content": "x" * 25}, {"role": "user", "content": "y" * 6})
    verdict = length.check(make_candidate(chosen="abcd", rejected="abce", prompt=prompt))
    assert verdict.reasons == (TOO_LONG,)
    assert verdict.detail.startswith("prompt")


def test_length_bad_config() -> None:
    with pytest.raises(ConfigError, match="min_chars"):
        LengthFilter(min_chars=10, max_chars=5, max_prompt_chars=1)
    with pytest.raises(ValidationError, match="exceeds max_chars"):
        LengthSettings(min_chars=10, max_chars=5)


def test_similarity_band(make_candidate: MakeCandidate) -> None:
    band = SimilarityFilter(min_ratio=0.10, max_ratio=0.95, sources=["edit"])
    ok = band.check(make_candidate())
    assert ok.accepted
    assert 0.10 < ok.scores["similarity"] < 0.95

    same = band.check(
        make_candidate(chosen="Hello there, friend.", rejected="Hello there, friend!")
    )
    assert same.reasons == (TOO_SIMILAR,)
    assert same.scores["similarity"] >= 0.95

    unrelated = band.check(make_candidate(chosen="aaaa", rejected="zzzz"))
    assert unrelated.reasons == (TOO_DISSIMILAR,)


def test_similarity_boundaries_are_strict(make_candidate: MakeCandidate) -> None:
    # ratio("ab", "ac") = 1 - 1/2 = 0.5 exactly (indel: 1 - 2/4, the same): on either edge of
    # the band it is rejected.
    c = make_candidate(chosen="ab", rejected="ac")
    assert SimilarityFilter(min_ratio=0.5, max_ratio=0.9, sources=["edit"]).check(c).reasons == (
        TOO_DISSIMILAR,
    )
    assert SimilarityFilter(min_ratio=0.1, max_ratio=0.5, sources=["edit"]).check(c).reasons == (
        TOO_SIMILAR,
    )
    assert SimilarityFilter(min_ratio=0.49, max_ratio=0.51, sources=["edit"]).check(c).accepted


def test_similarity_only_for_configured_sources(make_candidate: MakeCandidate) -> None:
    band = SimilarityFilter(min_ratio=0.1, max_ratio=0.95, sources=["edit"])
    verdict = band.check(make_candidate(source="paired_outcome", chosen="same", rejected="same"))
    assert verdict.accepted
    assert "similarity" not in verdict.scores


def test_similarity_bad_config() -> None:
    with pytest.raises(ConfigError, match="min_ratio < max_ratio"):
        SimilarityFilter(min_ratio=0.9, max_ratio=0.1, sources=["edit"])
    with pytest.raises(ValidationError, match="must be below max_ratio"):
        SimilaritySettings(min_ratio=0.5, max_ratio=0.5)
    with pytest.raises(ValidationError):
        SimilaritySettings(max_ratio=1.5)


# Hand-computed: "levenshtein" is 1 - distance / max(len), "indel" is 1 - indel / (len + len).
SIXTY = "Restart the service after you change the configuration file."  # 60 characters
RATIOS = [
    # Substitutions only, same length: both metrics agree. distance 1, indel 2.
    ("ab", "ac", 1 / 2, 1 - 2 / 4),
    # 5 characters appended to 60 (a fluency fix that adds a word): 1 - 5/65 vs 1 - 5/125.
    (SIXTY + " Done", SIXTY, 60 / 65, 1 - 5 / 125),
    # A 3-character answer grown to 30: 1 - 27/30 vs 1 - 27/33.
    ("abc" + "x" * 27, "abc", 3 / 30, 1 - 27 / 33),
    # kitten -> sitting: distance 3 (2 substitutions, 1 insertion), indel 5 over 13 characters.
    ("sitting", "kitten", 1 - 3 / 7, 1 - 5 / 13),
    # Nothing in common, lengths 4 and 8: both 0.
    ("zzzzzzzz", "aaaa", 0.0, 0.0),
    # Two empty texts are the same text.
    ("", "", 1.0, 1.0),
]


@pytest.mark.parametrize(("chosen", "rejected", "levenshtein", "indel"), RATIOS)
def test_similarity_ratios_by_hand(
    chosen: str, rejected: str, levenshtein: float, indel: float
) -> None:
    assert len(SIXTY) == 60
    assert similarity_ratio(chosen, rejected) == pytest.approx(levenshtein, abs=1e-12)
    assert similarity_ratio(chosen, rejected, metric="indel") == pytest.approx(indel, abs=1e-12)


def test_the_owner_rule_keeps_a_fluency_fix_the_indel_ratio_drops(
    make_candidate: MakeCandidate,
) -> None:
    # 0.923 by the owner's rule (kept) against 0.960 by the indel ratio (>= 0.95: too similar).
    fix = make_candidate(chosen=SIXTY + " Done", rejected=SIXTY)
    owner = SimilarityFilter(min_ratio=0.10, max_ratio=0.95, sources=["edit"])
    indel = SimilarityFilter(min_ratio=0.10, max_ratio=0.95, sources=["edit"], metric="indel")
    kept = owner.check(fix)
    assert kept.accepted
    assert kept.scores["similarity"] == pytest.approx(60 / 65)
    dropped = indel.check(fix)
    assert dropped.reasons == (TOO_SIMILAR,)
    assert dropped.detail == "indel ratio 0.960 >= 0.95"


def test_the_owner_rule_drops_a_rewrite_the_indel_ratio_keeps(
    make_candidate: MakeCandidate,
) -> None:
    # 3/30 = 0.100 by the owner's rule (<= 0.10: a rewrite) against 0.182 by the indel ratio.
    grown = make_candidate(chosen="abc" + "x" * 27, rejected="abc")
    owner = SimilarityFilter(min_ratio=0.10, max_ratio=0.95, sources=["edit"])
    indel = SimilarityFilter(min_ratio=0.10, max_ratio=0.95, sources=["edit"], metric="indel")
    verdict = owner.check(grown)
    assert verdict.reasons == (TOO_DISSIMILAR,)
    assert verdict.detail == "levenshtein ratio 0.100 <= 0.1"
    assert indel.check(grown).accepted


def test_similarity_metric_setting_reaches_the_filter_and_the_hash(
    make_candidate: MakeCandidate,
) -> None:
    assert SimilaritySettings().metric == "levenshtein"
    fix = make_candidate(chosen=SIXTY + " Done", rejected=SIXTY)
    indel = FilterSettings(similarity={"metric": "indel"})
    assert indel.config_hash() != FilterSettings().config_hash()
    off = {"enabled": False}
    only_band = {
        name: off
        for name in ("toxicity", "pii", "dedup", "event_dedup", "near_dup", "caps", "length")
    }
    assert build_filters(FilterSettings(**only_band)).run(fix).accepted
    assert build_filters(FilterSettings(**only_band, similarity={"metric": "indel"})).run(
        fix
    ).reasons == (TOO_SIMILAR,)
    with pytest.raises(ValidationError, match="metric"):
        SimilaritySettings(metric="jaro")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="metric"):
        SimilarityFilter(min_ratio=0.1, max_ratio=0.9, sources=["edit"], metric="jaro")  # type: ignore[arg-type]
