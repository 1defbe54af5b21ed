"""The join store: waiting feedback and facts survive a rolled-back pop and a reopen, expire
with the window, and the file refuses another lake's state."""

from __future__ import annotations

from pathlib import Path

import pytest
from flywheel_common.errors import ConfigError
from flywheel_curator.joins import JoinStore


def _feedback(run_id: str) -> dict[str, object]:
    return {"run_id": run_id, "tenant": "t", "kind": "thumbs", "value": -1.0}


def test_a_rolled_back_pop_leaves_the_feedback_waiting(tmp_path: Path) -> None:
    store = JoinStore(tmp_path / "s.sqlite", identity="lake|g")
    store.add_pending(_feedback("r1"), ts=1, topic="fb", partition=0, offset=7)
    store.add_pending_fact(
        "t", "r1", {"fact_id": "f"}, ts=1, topic="pairing", partition=0, offset=3
    )
    store.commit({("fb", 0): 8})
    assert store.pop_pending("t", "r2") == []
    assert [o for *_, o in store.pop_pending("t", "r1")] == [7]
    assert [o for *_, o in store.pop_pending_facts("t", "r1")] == [3]
    store.rollback()  # the batch that popped them was dropped
    assert [o for *_, o in store.pop_pending("t", "r1")] == [7]
    assert [o for *_, o in store.pop_pending_facts("t", "r1")] == [3]
    store.commit({("fb", 0): 9})
    assert store.pop_pending("t", "r1") == [] and store.pop_pending_facts("t", "r1") == []


def test_waiting_entries_survive_a_reopen_and_expire_with_the_window(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    store = JoinStore(path, identity="lake|g")
    store.add_pending(_feedback("old"), ts=1_000, topic="fb", partition=0, offset=1)
    store.add_pending(_feedback("new"), ts=5_000, topic="fb", partition=0, offset=2)
    store.add_timer("t", "child", due=1_500)
    store.commit({("fb", 0): 3})
    store.close()
    store = JoinStore(path, identity="lake|g")
    assert store.pop_due(now=1_499) == []
    assert store.expire(before_ts=2_000) == 1
    assert store.pop_due(now=10_000) == []  # the timer expired with the window
    assert store.pop_pending("t", "old") == []
    assert [o for *_, o in store.pop_pending("t", "new")] == [2]


def test_timers_fire_once_in_due_order() -> None:
    store = JoinStore(None, identity="t")
    store.add_timer("t", "b", due=20)
    store.add_timer("t", "a", due=10)
    store.add_timer("t", "a", due=99)  # a run has one timer
    assert store.pop_due(now=30) == [("t", "a"), ("t", "b")]
    assert store.pop_due(now=100) == []


def test_state_of_another_lake_is_refused(tmp_path: Path) -> None:
    JoinStore(tmp_path / "s.sqlite", identity="lake-a|g").close()
    with pytest.raises(ConfigError, match=r"belongs to 'lake-a\|g'"):
        JoinStore(tmp_path / "s.sqlite", identity="lake-b|g")


def test_store_keys_answer_many_lookups_as_one_at_a_time() -> None:
    from flywheel_curator.filters.dedup import BatchKeyState, contains_many
    from flywheel_curator.joins import StoreKeys

    store = JoinStore(None, identity="t")
    keys = StoreKeys(store, ns="pair_dedup")
    assert isinstance(keys, BatchKeyState)  # the chain takes the batch path
    held = [i * 7919 for i in range(700)]
    for key in held:
        keys.add(key)
    store.commit({})
    asked = [*range(0, 7919 * 1300, 3001), *held[:5], 2**64 - 1]  # > one IN chunk, repeats
    assert keys.contains_many(asked) == [k in keys for k in asked]
    assert contains_many(keys, asked) == [k in set(held) for k in asked]
