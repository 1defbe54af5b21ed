"""Stream time cannot be moved by one event. Events stamped far in the future are
dead-lettered as ``future_event`` before they touch the state; an event far ahead of its
partition in a backlog (still in the past) only moves stream time one step. Afterwards nothing
that waited is lost: runs still join their feedback, feedback still joins its late run, a
regeneration's quiet timer has not fired, and dedup keys still dedup. Through the broker and
the curator, and through ``flywheel curate`` across two files sharing a state file."""

from __future__ import annotations

import json
import os
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flywheel_common.settings import KafkaSettings
from flywheel_curator.filters.settings import FilterSettings, ToxicitySettings
from flywheel_curator.stream_time import StreamClock

from tests.curator.conftest import (
    EventProducer,
    ThreadedCurator,
    edit_event,
    feedback_event,
    read_table,
    run_event,
    settings_for,
    wait_until,
)
from tests.curator.lake_watch import CaughtUp, dead_letters
from tests.curator.test_cli import flywheel

RUNS = 20
HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
STEP_MS = 600_000
FUTURE = 3  # events from the future in ``Story.outliers``
NO_TOXICITY = FilterSettings(toxicity=ToxicitySettings(enabled=False))
CORRECTION = "Revenue increased this quarter and costs increased a bit less, note {i}."


def _now_ms() -> int:
    return int(datetime.now(tz=UTC).timestamp() * 1000)


def _at(ms: int) -> dict[str, datetime]:
    t = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return {"occurred_at": t, "received_at": t}


class Story:
    """A backlog three days old: what waits, the outliers, and what must still join."""

    def __init__(self, t0: int) -> None:
        self.t0 = t0
        ids = [str(uuid.uuid4()) for _ in range(RUNS + 4)]
        self.runs, (self.late, self.parent, self.child, self.skewed) = ids[:RUNS], ids[RUNS:]
        self.edit = edit_event(str(uuid.uuid4()), **_at(t0))
        self.waiting = feedback_event(
            self.late, "thumbs", -1.0, correction=CORRECTION.format(i="late"), **_at(t0)
        )
        self.copy = feedback_event(self.child, "copy", **_at(t0 + 120_000))
        self.corrections = [
            feedback_event(r, "thumbs", -1.0, correction=CORRECTION.format(i=i), **_at(t0 + 60_000))
            for i, r in enumerate(self.runs)
        ]

    def before(self) -> list[tuple[str, dict[str, Any]]]:
        t0 = self.t0
        out = [
            ("run", run_event(r, response=f"Answer {i}.", **_at(t0)))
            for i, r in enumerate(self.runs)
        ]
        out += [("feedback", self.waiting), ("edit", self.edit)]
        out.append(("run", run_event(self.parent, response="Costs went up.", **_at(t0))))
        kept = "Revenue rose this quarter; costs rose a little less than revenue did."
        out.append(
            ("run", run_event(self.child, response=kept, parent_run_id=self.parent, **_at(t0)))
        )
        return out

    def outliers(self, now: int) -> list[tuple[str, dict[str, Any]]]:
        """``FUTURE`` events from the future (dead-lettered) and two days-ahead ones (kept)."""
        future = [
            ("run", run_event(str(uuid.uuid4()), **_at(now + 10 * 365 * DAY_MS))),
            ("feedback", feedback_event(self.runs[0], "thumbs", 1.0, **_at(now + DAY_MS))),
            ("edit", edit_event(str(uuid.uuid4()), **_at(now + 400_000))),
        ]
        skewed = [
            ("run", run_event(self.skewed, **_at(now - HOUR_MS))),
            ("feedback", feedback_event(str(uuid.uuid4()), "copy", **_at(now - 2 * HOUR_MS))),
        ]
        assert len(future) == FUTURE
        return [*future, *skewed]

    def after(self) -> list[tuple[str, dict[str, Any]]]:
        late_run = run_event(self.late, response="The quarter was fine.", **_at(self.t0 + 60_000))
        return [
            *(("feedback", c) for c in self.corrections),
            ("run", late_run),
            ("edit", self.edit),  # the client's retry: same event id
            ("feedback", self.copy),
        ]

    def expected(self) -> dict[str, str]:
        """event_id -> source of every candidate that must be in the lake once."""
        out = {c["event_id"]: "correction" for c in self.corrections}
        out[self.waiting["event_id"]] = "correction"
        out[self.edit["event_id"]] = "edit"
        out[self.copy["event_id"]] = "regenerate"  # the copy, not the quiet timer
        return out


def _candidates(lake: Path) -> Counter[tuple[str, str]]:
    rows = read_table(lake, "dpo_pairs") + read_table(lake, "rejected_candidates")
    return Counter((r["event_id"], r["source"]) for r in rows)


def _lost(found: Counter[tuple[str, str]], want: dict[str, str]) -> tuple[int, int]:
    lost = sum(1 for e, src in want.items() if found[(e, src)] == 0)
    extra = sum(n for key, n in found.items() if key not in want.items()) + sum(
        n - 1 for n in found.values() if n > 1
    )
    return lost, extra


def test_far_future_and_skewed_events_lose_nothing_waiting(
    kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    lake = tmp_path / "lake"
    settings = settings_for(
        kafka_settings,
        lake,
        tmp_path / "state",
        filters=NO_TOXICITY,
        join_window_s=DAY_MS / 1000,
        regenerate_quiet_s=HOUR_MS / 1000,
    )
    story = Story(_now_ms() - 3 * DAY_MS)
    producer = EventProducer(kafka_settings)
    curator = ThreadedCurator(settings).start()
    done = CaughtUp(kafka_settings, lake, settings.group_id)
    try:
        for phase in (story.before(), story.outliers(_now_ms()), story.after()):
            for event_type, record in phase:
                producer.send(event_type, record)
            producer.flush()
            wait_until(done, timeout=90, what="curated")
        assert curator.curator is not None
        summary = curator.curator.pipeline.summary
    finally:
        done.close()
        curator.close()
    letters = dead_letters(kafka_settings, at_least=FUTURE)
    assert Counter(r["reason"] for r in letters) == {"future_event": FUTURE}
    assert summary.dlq["future_event"] == FUTURE
    assert summary.stream_time_held_back >= 1
    assert summary.duplicate_events == 1 and summary.pending_expired == 0
    lost, extra = _lost(_candidates(lake), story.expected())
    assert (lost, extra) == (0, 0)
    print(  # noqa: T201 - the figures RELIABILITY.md quotes (pytest -s shows them)
        f"stream: events={len(producer.delivered)} future={FUTURE} "
        f"held_back={summary.stream_time_held_back} lost_joins={lost} extra_rows={extra}"
    )


def _line(event_type: str, record: dict[str, Any]) -> str:
    out = {k: v for k, v in record.items() if v is not None}
    for key in ("occurred_at", "received_at"):
        out[key] = int(out[key].timestamp() * 1000)
    return json.dumps({"type": event_type, **out})


def test_curate_keeps_what_waits_across_a_future_event(tmp_path: Path) -> None:
    """Two files through one state file: on today's main the first file's far-future line
    fires every timer and expires every waiting join at its end, committed."""
    story = Story(_now_ms() - 30 * DAY_MS)
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    outliers = story.outliers(_now_ms())
    first.write_text("\n".join(_line(t, r) for t, r in [*story.before(), *outliers]) + "\n")
    second.write_text("\n".join(_line(t, r) for t, r in story.after()) + "\n")
    lake, state = tmp_path / "lake", tmp_path / "state.sqlite"
    env = {
        **os.environ,
        "FLYWHEEL_CURATOR_FILTERS__TOXICITY__ENABLED": "false",
        "FLYWHEEL_CURATOR_JOIN_WINDOW_S": str(DAY_MS / 1000),
        "FLYWHEEL_CURATOR_REGENERATE_QUIET_S": str(HOUR_MS / 1000),
    }
    summaries = []
    for path in (first, second):
        out = flywheel(
            "curate", "--input", str(path), "--lake", str(lake), "--state", str(state), env=env
        )
        assert out.returncode == 0, out.stderr[-3000:]
        summaries.append(json.loads(out.stdout))
    assert summaries[0]["dlq"] == {"future_event": FUTURE}
    assert summaries[0]["stream_time_held_back"] >= 1
    assert summaries[0]["candidates"] == {"edit": 1}
    assert summaries[1]["duplicate_events"] == 1
    lost, extra = _lost(_candidates(lake), story.expected())
    assert (lost, extra) == (0, 0)
    print(  # noqa: T201 - the figures RELIABILITY.md quotes (pytest -s shows them)
        f"curate: events={len(story.before()) + len(outliers) + len(story.after())} "
        f"future={FUTURE} held_back={summaries[0]['stream_time_held_back']} "
        f"lost_joins={lost} extra_rows={extra}"
    )


# -- the clock itself ---------------------------------------------------------------------------


def test_an_event_from_the_future_is_refused_against_the_wall_clock() -> None:
    clock = StreamClock(max_ahead_of_wall_ms=300_000, max_step_ms=STEP_MS, wall=lambda: 10**12)
    assert clock.too_far_ahead(10**12 + 300_000) is None
    assert clock.too_far_ahead(10**12 + 300_001) == (10**12, 300_000)
    assert StreamClock(wall=lambda: 0).too_far_ahead(10**15) is None  # unbounded


def test_one_event_moves_stream_time_one_step_and_a_real_gap_is_confirmed() -> None:
    wall = [10**13]
    clock = StreamClock(max_ahead_of_wall_ms=None, max_step_ms=STEP_MS, wall=lambda: wall[0])
    t0 = 10**12
    assert clock.advance(("runs", 0), t0)
    assert not clock.advance(("runs", 0), t0 + 3 * DAY_MS)  # a lone outlier in a backlog
    assert clock.now == t0 + STEP_MS and clock.held_back == 1
    assert clock.advance(("runs", 0), t0 + 1_000)  # the partition goes on where it was
    assert clock.now == t0 + STEP_MS
    assert not clock.advance(("runs", 1), t0 + DAY_MS)  # a partition new to this process
    assert clock.now == t0 + 2 * STEP_MS  # ... starts from stream time
    # After a quiet night, the first event is held back and its neighbour confirms the jump.
    assert not clock.advance(("runs", 0), t0 + 8 * HOUR_MS)
    assert clock.advance(("runs", 0), t0 + 8 * HOUR_MS + 5_000)
    assert clock.now == t0 + 8 * HOUR_MS
    # Live: the wall clock moved as much as the events did, so nothing is held back.
    wall[0] += DAY_MS
    assert clock.advance(("runs", 0), t0 + 8 * HOUR_MS + DAY_MS)
    assert clock.now == t0 + 8 * HOUR_MS + DAY_MS


def test_an_unbounded_clock_is_the_newest_time_read() -> None:
    clock = StreamClock()
    for ts in (5, 3, 10**15, 7):
        assert clock.advance(("t", 0), ts)
    assert clock.now == 10**15
