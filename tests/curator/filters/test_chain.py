from __future__ import annotations

from collections.abc import Sequence

import flywheel_curator.filters as filters_pkg
from flywheel_curator.filters import (
    DUPLICATE,
    DUPLICATE_EVENT,
    PII,
    TOO_DISSIMILAR,
    TOO_SHORT,
    TOXICITY_INCREASE,
    USER_CAP,
    FilterSettings,
    FilterState,
    build_filters,
)

from tests.curator.filters.conftest import MakeCandidate


class CountingScorer:
    identity = "counting/1"

    def __init__(self) -> None:
        self.texts: list[str] = []

    def score_many(self, texts: Sequence[str]) -> Sequence[float]:
        self.texts.extend(texts)
        return [0.9 if "jerk" in t else 0.01 for t in texts]


def chain_with(settings: FilterSettings | None = None, state: FilterState | None = None):  # type: ignore[no-untyped-def]
    scorer = CountingScorer()
    return build_filters(settings or FilterSettings(), state, scorer=scorer), scorer


def test_exported_members() -> None:
    public = {n for n in dir(filters_pkg) if not n.startswith("_")}
    modules = {"build", "caps", "chain", "dedup", "errors", "length", "neardup", "pii", "settings"}
    modules |= {"similarity", "toxicity", "annotations", "spans", "scorers"}
    modules |= {"detoxify_scorer", "judge_scorer", "redaction"}
    assert set(filters_pkg.__all__) == public - modules


def test_good_candidate_accepted_with_scores(make_candidate: MakeCandidate) -> None:
    chain, _ = chain_with()
    verdict = chain.run(make_candidate())
    assert verdict.accepted, verdict
    assert set(verdict.scores) == {"similarity", "toxicity", "toxicity_rejected"}
    assert chain.names == (
        "length",
        "similarity",
        "pii",
        "event_dedup",
        "dedup",
        "near_dup",
        "caps",
        "toxicity",
    )


def test_cheap_reasons_collected_and_toxicity_skipped(make_candidate: MakeCandidate) -> None:
    settings = FilterSettings(pii={"policy": "reject"})
    chain, scorer = chain_with(settings)
    verdict = chain.run(make_candidate(chosen="x", rejected="mail a@b.io please"))
    assert verdict.reasons == (TOO_SHORT, TOO_DISSIMILAR, PII)
    assert scorer.texts == []  # rejected candidates cost no scoring


def test_redaction_happens_before_dedup(make_candidate: MakeCandidate) -> None:
    chain, scorer = chain_with()
    base = "Sure, I sent the invoice to {} this morning, check your inbox."
    a = make_candidate(chosen=base.format("ann@example.com"), event_id="e1")
    b = make_candidate(chosen=base.format("bob@example.com"), event_id="e2")
    first, second = chain.run_many([a, b])
    assert first.accepted
    assert "[EMAIL]" in first.candidate.chosen
    assert "@" not in "".join(scorer.texts)  # the scorer sees redacted text only
    assert second.reasons[0] == DUPLICATE  # same pair once redacted, in the same batch


def test_poisoned_pair_rejected(make_candidate: MakeCandidate) -> None:
    chain, _ = chain_with()
    verdict = chain.run(
        make_candidate(chosen="Reset it yourself, you jerk.", rejected="Open Settings, then Reset.")
    )
    assert TOXICITY_INCREASE in verdict.reasons


def test_retry_and_cap_within_one_batch(make_candidate: MakeCandidate) -> None:
    settings = FilterSettings(caps={"max_per_user": 2}, near_dup={"enabled": False})
    chain, _ = chain_with(settings)
    batch = [
        make_candidate(chosen=f"Answer {i}: open Settings and pick option {i}.", event_id=f"e{i}")
        for i in range(3)
    ]
    retry = batch[0]
    verdicts = chain.run_many([*batch, retry])
    assert [v.accepted for v in verdicts] == [True, True, False, False]
    assert verdicts[2].reasons == (USER_CAP,)
    assert verdicts[3].reasons[0] == DUPLICATE_EVENT


def test_commit_and_rollback_through_the_chain(make_candidate: MakeCandidate) -> None:
    chain, _ = chain_with()
    kept, dropped = make_candidate(event_id="k"), make_candidate(chosen="Other text.", event_id="d")
    assert chain.run(kept).accepted
    chain.commit()
    assert chain.run(dropped).accepted
    chain.rollback()
    assert not chain.run(kept).accepted
    assert chain.run(dropped).accepted  # replayed after the dropped buffer


def test_disabled_filters_do_not_run(make_candidate: MakeCandidate) -> None:
    off = {"enabled": False}
    settings = FilterSettings(
        length=off, similarity=off, toxicity=off, pii=off, dedup=off, event_dedup=off,
        near_dup=off, caps=off,
    )  # fmt: skip
    chain = build_filters(settings)
    assert chain.names == ()
    assert chain.run(make_candidate(chosen="", rejected="")).accepted


def test_config_hash() -> None:
    base = FilterSettings()
    assert base.config_hash() == FilterSettings().config_hash()
    assert len(base.config_hash()) == 16
    assert FilterSettings(similarity={"max_ratio": 0.9}).config_hash() != base.config_hash()
    # Memory bounds and a disabled filter's thresholds decide nothing.
    assert FilterSettings(dedup={"max_entries": 5}).config_hash() == base.config_hash()
    assert (
        FilterSettings(caps={"enabled": False, "max_per_user": 3}).config_hash()
        == FilterSettings(caps={"enabled": False}).config_hash()
    )
    judge = {"base_url": "http://127.0.0.1:1/v1", "model": "m"}
    with_key = FilterSettings(toxicity={"backend": "judge", "judge": {**judge, "api_key": "a"}})
    other_key = FilterSettings(toxicity={"backend": "judge", "judge": {**judge, "api_key": "b"}})
    assert with_key.config_hash() == other_key.config_hash()
    # The chain's hash also names the scorer's model.
    a, _ = chain_with()
    b = build_filters(FilterSettings(), scorer=type("S", (CountingScorer,), {"identity": "v2"})())
    assert a.config_hash() != b.config_hash()
    assert a.config_hash() == chain_with()[0].config_hash()
