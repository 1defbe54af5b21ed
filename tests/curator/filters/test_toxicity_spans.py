"""Toxicity judged on what the user wrote: sentences and edit spans, worst taken, with the
real offline scorer where the claim is about it and a keyword scorer where it is about the
rule."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest
from flywheel_curator.candidate import PairSource
from flywheel_curator.filters import (
    TOXIC_CHOSEN,
    TOXICITY_INCREASE,
    FilterSettings,
    ProfanityCheckScorer,
    ToxicityFilter,
    build_filters,
    pieces_of,
)
from flywheel_curator.filters.spans import sentence_spans

from tests.curator.filters.conftest import candidate

# A long, neutral support answer (six sentences) and abuse to splice into it.
LONG = (
    "To rotate the signing key, generate a new key pair with the command line tool. "
    "Upload the public key in the admin console under Security. "
    "Wait for the cache to refresh, which takes about five minutes. "
    "Then revoke the old key so that no client is locked out. "
    "Check the audit log to confirm that every service picked up the new key. "
    "If a service still uses the old key, restart it and check again."
)
SENTENCES = LONG.split(". ")
ABUSE = [
    "You are a worthless idiot and nobody wants you here.",
    "Shut up, you pathetic loser.",
    "Only a moron would ask this.",
]


def spliced(abuse: str, where: str) -> str:
    if where == "start":
        return f"{abuse} {LONG}"
    if where == "middle":
        return ". ".join(SENTENCES[:3]) + f". {abuse} " + ". ".join(SENTENCES[3:])
    return f"{LONG} {abuse}"


@pytest.fixture(scope="module")
def scorer() -> ProfanityCheckScorer:
    return ProfanityCheckScorer()


def real(scorer: ProfanityCheckScorer) -> ToxicityFilter:
    """The default thresholds (FilterSettings) over the real offline scorer."""
    t = FilterSettings().toxicity
    return ToxicityFilter(
        scorer=scorer,
        max_score=t.max_score,
        relative_margin=t.relative_margin,
        relative_floor=t.relative_floor,
        batch_size=t.scorer_batch,
        max_pieces=t.max_pieces,
    )


@pytest.mark.parametrize("source", ["edit", "correction", "regenerate"])
@pytest.mark.parametrize("where", ["start", "middle", "end"])
@pytest.mark.parametrize("abuse", ABUSE)
def test_abuse_spliced_into_a_long_answer_is_rejected(
    scorer: ProfanityCheckScorer, source: PairSource, where: str, abuse: str
) -> None:
    chosen = spliced(abuse, where)
    # The whole text averages the abuse away: that is the defect being fixed.
    assert scorer.score_many([chosen])[0] < FilterSettings().toxicity.max_score
    verdict = real(scorer).check(candidate(source=source, chosen=chosen, rejected=LONG))
    assert TOXIC_CHOSEN in verdict.reasons
    assert verdict.scores["toxicity"] > 0.9
    assert "sentence" in verdict.detail or "edit span" in verdict.detail


BENIGN_EDITS = [
    LONG.replace("about five minutes", "about ten minutes, longer on a busy cluster"),
    LONG.replace("Upload the public key", "Upload only the public key, never the private one,"),
    LONG + " Thanks for asking, and let me know if anything is unclear.",
    "Before you start, make a backup of the current key. " + LONG,
    LONG.replace("restart it and check again", "restart it, wait a minute and check the log again"),
    LONG.replace(". ", ".\n"),  # one sentence a line
]
BENIGN_CORRECTIONS = [
    "Revenue grew by eight percent this quarter, while costs grew by five percent, so the margin "
    "improved slightly. Most of the growth came from the new subscription plan.",
    "A partition is an ordered, append-only log. A topic is split into several partitions so "
    "that consumers can read in parallel. Each message in a partition has an offset.",
    "Dear Sam, thank you for the invitation. Unfortunately I cannot attend the meeting on "
    "Friday because of a prior commitment. Could we find another time next week?",
    "This steel bottle keeps drinks cold for a day and hot for twelve hours. It is dishwasher "
    "safe, weighs 350 grams and fits most cup holders.",
    LONG,
]


@pytest.mark.parametrize("chosen", BENIGN_EDITS)
def test_long_benign_edits_pass(scorer: ProfanityCheckScorer, chosen: str) -> None:
    verdict = real(scorer).check(candidate(source="edit", chosen=chosen, rejected=LONG))
    assert verdict.accepted, verdict.detail


@pytest.mark.parametrize("chosen", BENIGN_CORRECTIONS)
def test_benign_corrections_pass(scorer: ProfanityCheckScorer, chosen: str) -> None:
    pair = candidate(source="correction", chosen=chosen, rejected="I am not sure.")
    verdict = real(scorer).check(pair)
    assert verdict.accepted, verdict.detail


@pytest.mark.parametrize("where", ["start", "middle", "end"])
def test_a_toxic_span_the_user_removed_never_counts(
    scorer: ProfanityCheckScorer, where: str
) -> None:
    # The model's answer carried the abuse; the user deleted it and fixed a detail.
    rejected = spliced(ABUSE[0], where)
    chosen = LONG.replace("about five minutes", "about ten minutes")
    verdict = real(scorer).check(candidate(source="edit", chosen=chosen, rejected=rejected))
    assert verdict.accepted, verdict.detail
    assert verdict.scores["toxicity"] < 0.25
    assert verdict.scores["toxicity_rejected"] > 0.9  # the removed abuse, on the rejected side


class KeywordScorer:
    """0.97 for "idiot", 0.30 for "meh", 0.01 otherwise; remembers every call."""

    identity = "keyword/1"

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def score_many(self, texts: Sequence[str]) -> Sequence[float]:
        self.calls.append(list(texts))
        return [0.97 if "idiot" in t else 0.30 if "meh" in t.lower() else 0.01 for t in texts]


def keyword_filter(scorer: KeywordScorer, *, batch_size: int = 64) -> ToxicityFilter:
    return ToxicityFilter(
        scorer=scorer,
        max_score=0.5,
        relative_margin=0.05,
        relative_floor=0.25,
        batch_size=batch_size,
    )


def test_relative_check_compares_what_was_added_with_what_was_removed() -> None:
    f = keyword_filter(KeywordScorer())
    kept = "The idiot compiler fails on this file."
    # The user kept the model's rude sentence and changed another one: toxic, yet no increase.
    pair = candidate(chosen=f"{kept} Use flag B.", rejected=f"{kept} Use flag A.")
    assert f.check(pair).reasons == (TOXIC_CHOSEN,)
    # The user added something mildly worse than what was there: below the absolute
    # threshold, above the relative floor, and more than the margin above what they removed.
    mild = candidate(chosen=f"{LONG} Meh, whatever.", rejected=LONG)
    verdict = f.check(mild)
    assert verdict.reasons == (TOXICITY_INCREASE,)
    assert verdict.detail == "added 0.300 > removed 0.010 + 0.05"
    # Replacing something as bad is no increase.
    swap = candidate(chosen=f"{LONG} Meh, fine.", rejected=f"{LONG} Meh, whatever.")
    assert f.check(swap).accepted


def test_corrections_compare_each_side_worst_sentence() -> None:
    f = keyword_filter(KeywordScorer())
    pair = candidate(source="correction", chosen=f"{LONG} Meh.", rejected="I am not sure.")
    assert f.check(pair).detail == "chosen 0.300 > rejected 0.010 + 0.05"
    both = candidate(source="correction", chosen=f"{LONG} Meh.", rejected="Meh. I am not sure.")
    assert f.check(both).accepted


def test_every_backend_gets_the_same_pieces_in_bounded_batches() -> None:
    pairs = [
        candidate(chosen=spliced(ABUSE[i % 3], w), rejected=LONG, event_id=f"e{i}")
        for i, w in enumerate(["start", "middle", "end"] * 3)
    ]
    pairs.append(candidate(source="correction", chosen=LONG, rejected="I am not sure."))
    first, second = KeywordScorer(), KeywordScorer()
    keyword_filter(first, batch_size=5).check_many(pairs)
    keyword_filter(second, batch_size=64).check_many(pairs)
    sent = [t for call in first.calls for t in call]
    assert sent == [t for call in second.calls for t in call]
    assert len(sent) == len(set(sent))  # each distinct piece once
    assert all(len(call) <= 5 for call in first.calls)
    assert len(first.calls) == math.ceil(len(sent) / 5)
    # Every piece of every pair is sent, and nothing else.
    pieces = [pieces_of(p, max_pieces=16) for p in pairs]
    assert set(sent) == {t for p in pieces for t in (*p.chosen.texts, *p.rejected.texts)}


def test_pieces_are_bounded_whatever_the_length() -> None:
    sentence = "This sentence is neutral and says little. "
    long_text = sentence * 400  # 16,800 characters, 400 sentences
    edited = long_text.replace("little", "a lot", 60)
    pieces = pieces_of(candidate(chosen=edited, rejected=long_text), max_pieces=16)
    for side in (pieces.chosen, pieces.rejected):
        assert side.windows == 16
        assert len(side.texts) <= 1 + 16 + 16
        assert side.label(1) == "group of sentences 1 of 16"
    # The windows still cover every sentence: each one's text is in some window.
    covered = "".join(pieces.chosen.texts[1:17])
    assert covered.count("neutral") == 400


def test_sentences_and_edit_spans_by_hand() -> None:
    text = 'Open Settings. Then click "Reset." Version 3.5 is fine!\nNext line'
    assert [text[a:b] for a, b in sentence_spans(text)] == [
        "Open Settings.",
        'Then click "Reset."',
        "Version 3.5 is fine!",
        "Next line",
    ]
    rejected = "one two three four five six seven eight nine ten"
    chosen = "one two three four FIVE six seven eight nine ten"
    p = pieces_of(candidate(chosen=chosen, rejected=rejected), max_pieces=16)
    # The replaced word with two words of context on each side; one sentence: piece 0.
    assert p.chosen.texts == (chosen, "three four FIVE six seven")
    assert p.rejected.texts == (rejected, "three four five six seven")
    assert p.chosen.judged == (0, 1)
    longer = rejected.replace("five", "five X")  # the user deletes "X"
    deleted = pieces_of(candidate(chosen=rejected, rejected=longer), max_pieces=16)
    assert deleted.chosen.texts == (rejected,)  # nothing added: only the touched sentence
    assert deleted.rejected.texts == (longer, "four five X six seven")


def test_other_sources_judge_every_piece() -> None:
    c = candidate(source="paired_outcome", chosen="One. Two.", rejected="Three.")
    p = pieces_of(c, max_pieces=16)
    assert p.chosen.texts == ("One. Two.", "One.", "Two.")
    assert p.chosen.judged == (0, 1, 2)
    assert p.rejected.texts == ("Three.",)


def test_max_pieces_enters_the_config_hash_and_the_filter() -> None:
    assert FilterSettings(toxicity={"max_pieces": 4}).config_hash() != (
        FilterSettings().config_hash()
    )
    chain = build_filters(FilterSettings(toxicity={"max_pieces": 4}), scorer=KeywordScorer())
    assert chain.toxicity is not None
    assert chain.toxicity.max_pieces == 4


@pytest.mark.parametrize(
    "text",
    ["", "   ", "\n\n\n", "....!!!???", "a\n" * 5000, "🎉 " * 3000, "x" * 20_000, "Ok. " * 2000],
)
@pytest.mark.parametrize("source", ["edit", "correction"])
def test_hostile_texts_give_bounded_pieces(text: str, source: PairSource) -> None:
    other = "A plain answer. It has two sentences."
    for chosen, rejected in ((text, other), (other, text), (text, text + " more")):
        p = pieces_of(candidate(source=source, chosen=chosen, rejected=rejected), max_pieces=16)
        for side, whole in ((p.chosen, chosen), (p.rejected, rejected)):
            assert side.texts[0] == whole
            assert len(side.texts) <= 1 + 16 + 16
            assert all(0 <= i < len(side.texts) for i in side.judged)
            assert all(t in whole for t in side.texts)  # pieces are slices of the text
    verdict = keyword_filter(KeywordScorer()).check(candidate(source=source, chosen=text))
    assert verdict.accepted
