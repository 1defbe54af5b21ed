"""The replay gate: nothing past the lake's offsets is processed while any partition still
re-applies what the lake holds (see flywheel_curator.gate for why)."""

from __future__ import annotations

from flywheel_curator.gate import ReplayGate

RUNS, FACTS = ("runs", 0), ("pairing", 0)


def test_no_replay_admits_everything() -> None:
    gate = ReplayGate()
    gate.begin({RUNS: 5, FACTS: 7}, {RUNS: 5, FACTS: None})
    assert gate.replaying == []
    assert gate.admit(RUNS, 5) and gate.admit(FACTS, 7)


def test_new_territory_waits_for_every_replay() -> None:
    gate = ReplayGate()
    gate.begin({RUNS: 10, FACTS: 3}, {RUNS: 12, FACTS: 4})
    assert gate.admit(FACTS, 3)  # the last replayed fact
    assert not gate.admit(FACTS, 4)  # new: held while runs still replay
    assert not gate.admit(FACTS, 5)
    assert gate.held == {FACTS: 4}
    assert gate.release() == {}
    assert gate.admit(RUNS, 10) and gate.admit(RUNS, 11)
    assert gate.replaying == []
    assert gate.release() == {FACTS: 4}  # rewind to the first held message
    assert gate.admit(FACTS, 4) and gate.admit(RUNS, 12)


def test_a_partition_whose_last_message_never_comes_is_done_by_position() -> None:
    gate = ReplayGate()
    gate.begin({RUNS: 10, FACTS: 3}, {RUNS: 12, FACTS: 3})
    assert not gate.admit(FACTS, 3)
    gate.reached([(RUNS, 12)])
    assert gate.release() == {FACTS: 3}


def test_a_message_past_its_own_end_finishes_that_replay() -> None:
    gate = ReplayGate()
    gate.begin({RUNS: 10}, {RUNS: 12})
    assert gate.admit(RUNS, 15)  # offsets 10-11 were deleted by retention
    assert gate.replaying == []


def test_logical_offsets_and_revoked_partitions_do_not_block() -> None:
    gate = ReplayGate()
    gate.begin({RUNS: -2, FACTS: 0}, {RUNS: 9, FACTS: 2})
    assert gate.replaying == [FACTS]
    assert not gate.admit(RUNS, 9)
    gate.forget([FACTS])
    assert gate.release() == {RUNS: 9}
    gate.begin({RUNS: 0}, {RUNS: 1})
    assert gate.held == {}
