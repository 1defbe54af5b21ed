"""Dedup, near-dup and caps: lookups, tentative records, commit/rollback, restart rebuild."""

from __future__ import annotations

from datetime import timedelta

import pytest
from flywheel_common.errors import ConfigError
from flywheel_curator.filters import (
    DUPLICATE,
    DUPLICATE_EVENT,
    NEAR_DUPLICATE,
    TENANT_CAP,
    USER_CAP,
    CapFilter,
    CapSettings,
    CapState,
    EventDedupFilter,
    ExactDedupFilter,
    KeySet,
    NearDupFilter,
    NearDupIndex,
    NearDupSettings,
    event_key,
    pair_id,
)
from pydantic import ValidationError

from tests.curator.filters.conftest import BASE_TIME, MakeCandidate

LONG_ANSWER = (
    "To rotate the signing key, generate a new key pair with the CLI, upload the public key "
    "in the admin console under Security, wait for the cache to refresh, which takes about "
    "five minutes, and only then revoke the old key so that no client is locked out."
)


# --- exact dedup --------------------------------------------------------------------------


def test_pair_id_normalises_whitespace_not_case(make_candidate: MakeCandidate) -> None:
    a = make_candidate(chosen="Hello   world \n", rejected="x")
    b = make_candidate(chosen="Hello world", rejected="x")
    c = make_candidate(chosen="hello world", rejected="x")
    assert pair_id(a.prompt, a.chosen, a.rejected) == pair_id(b.prompt, b.chosen, b.rejected)
    assert pair_id(a.prompt, a.chosen, a.rejected) != pair_id(c.prompt, c.chosen, c.rejected)


def test_exact_dedup_tentative_then_commit(make_candidate: MakeCandidate) -> None:
    dedup = ExactDedupFilter(state=KeySet(max_entries=100))
    c = make_candidate()
    assert dedup.check(c).accepted
    dedup.record(c)
    # Tentative entries are visible within the batch...
    assert dedup.check(make_candidate(event_id="evt-2")).reasons == (DUPLICATE,)
    dedup.state.commit()
    # ...and after the commit.
    assert dedup.check(make_candidate(event_id="evt-3")).reasons == (DUPLICATE,)


def test_rollback_forgets_tentative_entries(make_candidate: MakeCandidate) -> None:
    state = KeySet(max_entries=100)
    dedup = ExactDedupFilter(state=state)
    committed, dropped = make_candidate(chosen="first answer"), make_candidate(chosen="second")
    dedup.record(committed)
    state.commit()
    dedup.record(dropped)
    state.rollback()
    assert not dedup.check(committed).accepted
    # The dropped buffer is replayed: its candidate must not be a duplicate of itself.
    assert dedup.check(dropped).accepted


def test_exact_dedup_survives_a_restart(make_candidate: MakeCandidate) -> None:
    candidates = [make_candidate(chosen=f"answer number {i}", event_id=f"e{i}") for i in range(50)]
    before = ExactDedupFilter(state=KeySet(max_entries=1000))
    for c in candidates:
        before.record(c)
    before.state.commit()
    # The pair_id column as the sink wrote it; a new process rebuilds its state from it.
    table_pair_ids = [pair_id(c.prompt, c.chosen, c.rejected) for c in candidates]
    after = ExactDedupFilter(state=KeySet(max_entries=1000))
    after.state.load(table_pair_ids)
    assert len(after.state) == 50
    assert all(after.check(c).reasons == (DUPLICATE,) for c in candidates)
    assert after.check(make_candidate(chosen="a new answer")).accepted


def test_event_dedup_counts_a_retry_once_and_rebuilds(make_candidate: MakeCandidate) -> None:
    events = EventDedupFilter(state=KeySet(max_entries=100))
    c = make_candidate()
    events.record(c)
    events.state.commit()
    # A client retry: same event, even if a join produced slightly different text.
    assert events.check(make_candidate(chosen="reworded")).reasons == (DUPLICATE_EVENT,)
    # The same event completing a different pair is not a retry.
    assert events.check(make_candidate(rejected_run_id="run-9")).accepted
    rebuilt = KeySet(max_entries=100)
    rebuilt.load([event_key(c.event_id, c.source, c.run_id, c.chosen_run_id, c.rejected_run_id)])
    assert not EventDedupFilter(state=rebuilt).check(c).accepted


def test_keyset_memory_is_bounded_oldest_first() -> None:
    keys = KeySet(max_entries=1000)
    keys.load(range(1000))
    for k in range(1000, 1500):
        keys.add(k)
    keys.commit()
    assert len(keys) == 1000
    assert 0 not in keys
    assert 499 not in keys
    assert 500 in keys
    assert 1499 in keys
    with pytest.raises(ConfigError):
        KeySet(max_entries=0)


# --- near-dup ----------------------------------------------------------------------------


def index(max_entries: int = 1000) -> NearDupIndex:
    return NearDupIndex(
        threshold=0.8, num_perm=64, bands=16, shingle_words=3, max_entries=max_entries
    )


def test_near_duplicates_caught_distinct_texts_pass(make_candidate: MakeCandidate) -> None:
    nd = NearDupFilter(index=index(), scope="feature")
    original = make_candidate(chosen=LONG_ANSWER, rejected="Just revoke the old key.")
    assert nd.check(original).accepted
    nd.record(original)
    nd.index.commit()
    tweaked = make_candidate(
        chosen=LONG_ANSWER.replace("about five minutes", "about 5 minutes"),
        rejected="Just revoke the old key.",
    )
    verdict = nd.check(tweaked)
    assert verdict.reasons == (NEAR_DUPLICATE,)
    other = make_candidate(
        chosen="Export the report as CSV from the Billing page, then filter by month.",
        rejected="Just revoke the old key.",
    )
    assert nd.check(other).accepted
    # Chosen and rejected are tagged apart: the swapped preference is not a duplicate.
    assert nd.check(
        make_candidate(chosen="Just revoke the old key.", rejected=LONG_ANSWER)
    ).accepted


def test_near_dup_scope(make_candidate: MakeCandidate) -> None:
    ix = index()
    per_feature = NearDupFilter(index=ix, scope="feature")
    per_feature.record(make_candidate(chosen=LONG_ANSWER, feature="a"))
    ix.commit()
    assert per_feature.check(make_candidate(chosen=LONG_ANSWER, feature="b")).accepted
    assert not per_feature.check(make_candidate(chosen=LONG_ANSWER, feature="a")).accepted


def test_near_dup_memory_is_bounded_and_rollback_restores(make_candidate: MakeCandidate) -> None:
    ix = index(max_entries=10)
    nd = NearDupFilter(index=ix, scope="global")
    first = make_candidate(chosen=LONG_ANSWER + " 0")
    nd.record(first)
    ix.commit()
    buckets_after_one = len(ix._buckets)
    for i in range(1, 10):
        nd.record(make_candidate(chosen=f"Unrelated answer {i}: " + "lorem ipsum " * i))
    ix.commit()
    assert len(ix) == 10
    assert not nd.check(first).accepted
    # The 11th entry evicts the oldest (first); a rollback brings it back.
    nd.record(make_candidate(chosen="Something else entirely, about cats and their naps."))
    assert len(ix) == 10
    assert nd.check(first).accepted
    ix.rollback()
    assert not nd.check(first).accepted
    for i in range(100):
        nd.record(make_candidate(chosen=f"Yet another distinct answer number {i} " * 3))
    ix.commit()
    assert len(ix) == 10
    assert len(ix._buckets) <= 10 * ix.bands
    assert buckets_after_one <= ix.bands


def test_near_dup_rebuild_after_restart(make_candidate: MakeCandidate) -> None:
    ix = index()
    ix.load([("support-chat", LONG_ANSWER, "Just revoke the old key.")])
    nd = NearDupFilter(index=ix, scope="feature")
    c = make_candidate(chosen=LONG_ANSWER, rejected="Just revoke the old key.")
    assert nd.check(c).reasons == (NEAR_DUPLICATE,)


def test_near_dup_bad_config() -> None:
    with pytest.raises(ConfigError, match="bands"):
        NearDupIndex(threshold=0.8, num_perm=64, bands=7, shingle_words=3, max_entries=10)
    with pytest.raises(ValidationError, match="must divide"):
        NearDupSettings(num_perm=64, bands=7)


# --- caps --------------------------------------------------------------------------------


def caps(max_user: int | None = 2, max_tenant: int | None = 3) -> CapFilter:
    state = CapState(window=timedelta(hours=1), retain_windows=2)
    return CapFilter(state=state, max_per_user=max_user, max_per_tenant=max_tenant)


def test_user_cap_per_window(make_candidate: MakeCandidate) -> None:
    cap = caps()
    for i in range(2):
        c = make_candidate(event_id=f"e{i}")
        assert cap.check(c).accepted
        cap.record(c)
    third = make_candidate(event_id="e3", event_time=BASE_TIME + timedelta(minutes=59))
    assert cap.check(third).reasons == (USER_CAP,)
    # Another user of the same tenant still has room; the next window starts afresh.
    assert cap.check(make_candidate(user_id="user-2")).accepted
    assert cap.check(make_candidate(event_time=BASE_TIME + timedelta(hours=1))).accepted


def test_tenant_cap_counts_all_users(make_candidate: MakeCandidate) -> None:
    cap = caps(max_user=None, max_tenant=3)
    for i in range(3):
        cap.record(make_candidate(user_id=f"u{i}"))
    assert cap.check(make_candidate(user_id="u9")).reasons == (TENANT_CAP,)
    assert cap.check(make_candidate(user_id=None)).reasons == (TENANT_CAP,)
    assert cap.check(make_candidate(tenant="globex")).accepted


def test_caps_rollback_commit_and_rebuild(make_candidate: MakeCandidate) -> None:
    cap = caps(max_user=1, max_tenant=None)
    c = make_candidate()
    cap.record(c)
    cap.state.rollback()
    assert cap.check(c).accepted
    cap.record(c)
    cap.state.commit()
    assert cap.check(c).reasons == (USER_CAP,)
    rebuilt = caps(max_user=1, max_tenant=None)
    rebuilt.state.load([("acme", "user-1", BASE_TIME)])
    assert rebuilt.check(c).reasons == (USER_CAP,)


def test_backdating_cannot_escape_the_cap(make_candidate: MakeCandidate) -> None:
    cap = caps(max_user=1, max_tenant=None)
    now = BASE_TIME + timedelta(hours=10)
    cap.record(make_candidate(event_time=now))
    cap.state.commit()
    # Two windows are retained (now's and the one before); anything older is counted against
    # the oldest retained one, so inventing ever older event times buys nothing.
    ancient = make_candidate(event_time=BASE_TIME - timedelta(days=30))
    assert cap.state.window_of(ancient.event_time) == cap.state.window_of(now - timedelta(hours=1))
    assert cap.check(ancient).accepted
    cap.record(ancient)
    assert cap.check(make_candidate(event_time=BASE_TIME - timedelta(days=9))).reasons == (
        USER_CAP,
    )
    cap.state.commit()
    # Windows that fall out of retention leave memory: one tenant key and one user key remain.
    cap.record(make_candidate(event_time=now + timedelta(hours=5)))
    cap.state.commit()
    assert len(cap.state) == 2


def test_caps_bad_config() -> None:
    with pytest.raises(ConfigError):
        CapState(window=timedelta(0), retain_windows=1)
    with pytest.raises(ConfigError, match="max_per_user"):
        CapFilter(
            state=CapState(window=timedelta(hours=1), retain_windows=1),
            max_per_user=0,
            max_per_tenant=None,
        )
    with pytest.raises(ValidationError, match="window must be positive"):
        CapSettings(window=timedelta(seconds=-1))
    with pytest.raises(ValidationError):
        CapSettings(max_per_user=0)


def test_keyset_matches_a_reference_set_under_random_batches() -> None:
    import random

    rng = random.Random(3)
    keys = KeySet(max_entries=10**6)
    committed: set[int] = set()
    pending: set[int] = set()
    for _ in range(300):
        for _ in range(rng.randint(0, 40)):
            k = rng.randrange(2000)
            keys.add(k)
            pending.add(k)
        if rng.random() < 0.7:
            keys.commit()
            committed |= pending
        else:
            keys.rollback()
        pending.clear()
        probe = rng.sample(range(2000), 50)
        assert [k in keys for k in probe] == [k in committed for k in probe]
    keys.load(f"{k:016x}" + "0" * 48 for k in range(5000, 5100))
    assert 5050 in keys
    assert len(keys) == len(committed) + 100


# --- batching: the fast paths answer as the plain ones -------------------------------------


def test_pair_id_and_event_key_are_content_hash() -> None:
    from flywheel_common.lake.tables import content_hash
    from flywheel_curator.filters.dedup import normalize_text as norm

    texts = ["", " a  b ", 'quote " back \\ slash', "tab\tnl\nnul\x00", "é e\u0301 İ ΑΣ"]
    for text in [*texts, "🎉 \u2028"]:
        prompt = ({"role": "user", "content": text}, {"content": text + "?"})
        messages = [[m.get("role", ""), norm(m["content"])] for m in prompt]
        expected = content_hash("dpo_pair/v1", messages, norm(text), norm(text[::-1]))
        assert pair_id(prompt, text, text[::-1]) == expected
        parts = (text, "edit", "run-1", None, text)
        assert event_key(*parts) == content_hash("event/v1", *parts)


class SetKeys:
    """A ``KeyState`` without ``contains_many`` (as a store-backed one may be)."""

    def __init__(self) -> None:
        self.keys: set[int] = set()
        self.lookups = 0

    def __contains__(self, key: int) -> bool:
        self.lookups += 1
        return key in self.keys

    def add(self, key: int) -> None:
        self.keys.add(key)

    def commit(self) -> None: ...

    def rollback(self) -> None: ...

    def load(self, keys: object) -> None: ...

    def __len__(self) -> int:
        return len(self.keys)


def test_dedup_batches_look_each_key_up_once(make_candidate: MakeCandidate) -> None:
    from flywheel_curator.filters import FilterSettings, FilterState, build_filters

    # The band is off: "answer 0" is a rewrite of the 80-character rejected text.
    off = {"enabled": False}
    settings = FilterSettings(near_dup=off, toxicity=off, similarity=off)
    state = FilterState.in_memory(settings)
    state.pairs, state.events = SetKeys(), SetKeys()
    chain = build_filters(settings, state)
    batch = [make_candidate(chosen=f"answer {i % 3}", event_id=f"e{i}") for i in range(6)]
    verdicts = chain.run_many(batch)
    assert [v.accepted for v in verdicts] == [True, True, True, False, False, False]
    assert all(v.reasons == (DUPLICATE,) for v in verdicts[3:])
    assert state.pairs.lookups == 3  # distinct pairs, once each; the re-checks ask nobody
    assert state.events.lookups == 6


def test_keyset_contains_many_matches_contains() -> None:
    keys = KeySet(max_entries=100)
    keys.load(range(0, 40, 2))
    keys.add(41)
    keys.add(4)  # already committed
    probe = [0, 1, 4, 41, 38, 39, 99, 41]
    assert keys.contains_many(probe) == [k in keys for k in probe]
    keys.commit()
    assert len(keys) == 21
    assert keys.contains_many(probe) == [k in keys for k in probe]


def _reference_signature(ix: NearDupIndex, chosen: str, rejected: str) -> list[int]:
    """The per-pair MinHash as first written: the batched one must match it bit for bit."""
    import numpy as np
    from flywheel_curator.filters import neardup

    def grams(wh: np.ndarray, tag: np.uint32, k: int) -> np.ndarray:  # type: ignore[type-arg]
        n = len(wh)
        if n == 0:
            return np.array([neardup._EMPTY ^ tag], dtype=np.uint32)
        k = min(k, n)
        g = wh[: n - k + 1] ^ tag
        for j in range(1, k):
            g = g * neardup._GRAM_MULT + wh[j : n - k + 1 + j]
        return g

    hashes, starts = neardup._word_hashes(f"{chosen}\n{rejected}".lower().encode("utf-8"))
    split = int(np.searchsorted(starts, len(chosen.lower().encode("utf-8"))))
    k = ix.shingle_words
    h = np.concatenate(
        [
            grams(hashes[:split], neardup._TAG_CHOSEN, k),
            grams(hashes[split:], neardup._TAG_REJECTED, k),
        ]
    )
    return list((ix._a * h + ix._b).min(axis=1).tolist())


@pytest.mark.parametrize("shingle_words", [1, 3, 5])
def test_batched_signatures_match_one_pair_at_a_time(shingle_words: int) -> None:
    import random

    rng = random.Random(shingle_words)
    words = ["a", "Bb", "ΑΣ", "straße", "İ", "日本語", "x" * 300, "123", "_", "e\u0301", "🎉"]
    seps = [" ", "\n", ", ", "-", ""]

    def text() -> str:
        n = rng.choice([0, 1, 2, 3, 4, 10, 40])
        return "".join(rng.choice(words) + rng.choice(seps) for _ in range(n))

    ix = NearDupIndex(
        threshold=0.8, num_perm=32, bands=8, shingle_words=shingle_words, max_entries=4
    )
    pairs = [(text(), text()) for _ in range(300)]
    sigs = ix.signatures(pairs)
    for (chosen, rejected), sig in zip(pairs, sigs, strict=True):
        assert sig.tolist() == _reference_signature(ix, chosen, rejected)
