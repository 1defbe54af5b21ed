from __future__ import annotations

import pytest
from flywheel_common.errors import ConfigError
from flywheel_curator.filters import (
    TOO_DISSIMILAR,
    TOO_LONG,
    TOO_SHORT,
    TOO_SIMILAR,
    LengthFilter,
    LengthSettings,
    SimilarityFilter,
    SimilaritySettings,
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
    # ratio("ab", "ac") = 1 - 2/4 = 0.5 exactly: on either edge of the band it is rejected.
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
