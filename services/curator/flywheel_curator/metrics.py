"""Prometheus metrics of the curator. Every message is counted somewhere: consumed, then
either skipped as already committed, dead-lettered, or turned into state and rows."""

from __future__ import annotations

from functools import lru_cache

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "ACCEPTED",
    "BATCHES_DROPPED",
    "CANDIDATES",
    "COMMITS",
    "COMMIT_SECONDS",
    "CONSUMED",
    "CROSS_TENANT",
    "DLQ",
    "DUPLICATE_EVENTS",
    "FACTS_UNKNOWN",
    "FUTURE_EVENTS",
    "JOIN_EXPIRED",
    "JOIN_MISSES",
    "JOIN_PENDING",
    "MISROUTED_RUNS",
    "REJECTED",
    "REPLAYED_ROWS_SKIPPED",
    "ROWS_WRITTEN",
    "SFT",
    "STATE_ROWS",
    "STREAM_TIME_HELD_BACK",
    "UPKEEP_SECONDS",
    "labeled",
]

CONSUMED = Counter("flywheel_curator_consumed", "Messages consumed", ["topic"])
DLQ = Counter("flywheel_curator_dlq", "Messages sent to the dead-letter topic", ["reason"])
DUPLICATE_EVENTS = Counter("flywheel_curator_duplicate_events", "Events whose event_id was seen")
FACTS_UNKNOWN = Counter(
    "flywheel_curator_facts_unknown", "Pairing facts of a kind this curator does not know"
)
MISROUTED_RUNS = Counter(
    "flywheel_curator_misrouted_runs",
    "Sampled runs not in the partition Kafka's default partitioner gives their key",
)
CANDIDATES = Counter("flywheel_curator_candidates", "Candidate pairs formed", ["source"])
ACCEPTED = Counter("flywheel_curator_pairs_accepted", "Pairs accepted", ["source"])
REJECTED = Counter("flywheel_curator_pairs_rejected", "Candidates rejected", ["reason"])
SFT = Counter("flywheel_curator_sft_sampled", "Runs sampled into sft_examples")
JOIN_PENDING = Counter("flywheel_curator_join_pending", "Feedback that waited for its run")
JOIN_EXPIRED = Counter("flywheel_curator_join_expired", "Feedback whose run never came in time")
CROSS_TENANT = Counter(
    "flywheel_curator_cross_tenant_references",
    "Events and pairing facts refused for naming another tenant's run",
    ["join"],
)
FUTURE_EVENTS = Counter(
    "flywheel_curator_future_events",
    "Events and pairing facts refused for a receive time too far ahead of the wall clock",
)
STREAM_TIME_HELD_BACK = Counter(
    "flywheel_curator_stream_time_held_back",
    "Events that would have moved stream time further than one event may",
)
JOIN_MISSES = Counter("flywheel_curator_join_misses", "Joins that found nothing", ["join"])
COMMITS = Counter("flywheel_curator_commits", "Delta commits", ["table"])
COMMIT_SECONDS = Histogram(
    "flywheel_curator_commit_seconds",
    "Time in one Delta commit",
    ["table"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
UPKEEP_SECONDS = Histogram(
    "flywheel_curator_upkeep_seconds",
    "Time in one round of table upkeep (compaction, checkpoint), between batches",
    ["table"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
ROWS_WRITTEN = Counter("flywheel_curator_rows_written", "Rows committed", ["table"])
REPLAYED_ROWS_SKIPPED = Counter(
    "flywheel_curator_replayed_rows_skipped",
    "Rows re-derived on replay that the table already holds",
    ["table"],
)
BATCHES_DROPPED = Counter(
    "flywheel_curator_batches_dropped", "Micro-batches dropped and re-read", ["reason"]
)
STATE_ROWS = Gauge("flywheel_curator_state_rows", "Rows in the join state", ["kind"])


@lru_cache(maxsize=4096)
def labeled(metric: Counter, value: str) -> Counter:
    """``metric.labels(value)``, cached: the hot path counts every message and candidate, and
    ``labels()`` takes a lock and builds a key each time."""
    return metric.labels(value)
