"""The curator's one settings object (``FLYWHEEL_CURATOR_*``, ``__`` for nesting), built once
in ``main()`` or by the CLI and passed down."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Literal

from flywheel_common.settings import KafkaSettings, LakeSettings, LoggingSettings
from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from flywheel_curator.filters.settings import FilterSettings
from flywheel_curator.sink import FaultPoint
from flywheel_curator.upkeep import UpkeepSettings

__all__ = [
    "BatchSettings",
    "CuratorSettings",
    "FaultSettings",
    "StartSettings",
    "StreamTimeSettings",
    "UpkeepSettings",
]

DEFAULT_GROUP = "flywheel-curator"
# DESIGN.md asks for micro-batches of about a second or 5,000 rows: a pair is visible within
# ~1 s, and a handful of commits per second stays under 2 % of wall time.
DEFAULT_BATCH_ROWS = 5_000
DEFAULT_BATCH_SECONDS = 1.0
DEFAULT_CONSUME_BATCH = 1_000
# A feedback may arrive up to a week after its run (ratings given later from history).
DEFAULT_JOIN_WINDOW_S = 7 * 24 * 3600.0
DEFAULT_SFT_RATE = 0.01
# A regeneration with no further regenerate (and no thumbs-down, reject, ...) within this much
# stream time counts as kept (DESIGN.md, regenerate row).
DEFAULT_REGENERATE_QUIET_S = 600.0
DEFAULT_SESSION_TIMEOUT_MS = 10_000
# An event received more than this ahead of the curator's clock is dead-lettered: NTP keeps
# hosts within a second; five minutes is the usual tolerance for a skewed one (signatures too).
DEFAULT_MAX_AHEAD_OF_WALL_S = 300.0
# One event moves its partition's stream time at most this far (plus the wall time elapsed):
# the default quiet period, so one outlier in a backlog cannot fire a "no further regenerate"
# timer more than one period early, nor expire joins more than that early.
DEFAULT_MAX_STEP_S = DEFAULT_REGENERATE_QUIET_S


def _instance_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class BatchSettings(BaseModel):
    """When a micro-batch is committed: whichever of ``max_rows`` consumed events and
    ``max_seconds`` comes first."""

    model_config = ConfigDict(frozen=True)

    max_rows: int = Field(default=DEFAULT_BATCH_ROWS, ge=1)
    max_seconds: float = Field(default=DEFAULT_BATCH_SECONDS, gt=0)
    consume_batch: int = Field(default=DEFAULT_CONSUME_BATCH, ge=1)


class StartSettings(BaseModel):
    """Where to start a partition the tables have never seen (no txn yet): the first offset,
    the latest, or the first at or after a timestamp. A replay into a fresh table sets these."""

    model_config = ConfigDict(frozen=True)

    mode: Literal["earliest", "latest", "timestamp", "offset"] = "earliest"
    timestamp_ms: int | None = None
    offset: int | None = Field(default=None, ge=0)
    # Stop once every partition reached the end it had when the curator started (replays).
    stop_at_end: bool = False


class StreamTimeSettings(BaseModel):
    """How far one event may move stream time (the clock of the join window and the quiet
    period; see ``stream_time.py``)."""

    model_config = ConfigDict(frozen=True)

    max_ahead_of_wall_s: float = Field(default=DEFAULT_MAX_AHEAD_OF_WALL_S, gt=0)
    max_step_s: float = Field(default=DEFAULT_MAX_STEP_S, gt=0)


class FaultSettings(BaseModel):
    """Fault injection for the crash tests: at the named points, with ``probability``, SIGKILL
    this process (``kill``), raise an unexpected exception (``raise``) or SIGSTOP it until
    someone sends SIGCONT (``stop``: a zombie paused at that point), at most ``max_faults``
    times. Never set in production."""

    model_config = ConfigDict(frozen=True)

    crash_at: tuple[FaultPoint, ...] = ()
    probability: float = Field(default=0.0, ge=0.0, le=1.0)
    mode: Literal["kill", "raise", "stop"] = "kill"
    max_faults: int | None = Field(default=None, ge=1)


class CuratorSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="FLYWHEEL_CURATOR_", env_nested_delimiter="__", frozen=True, extra="ignore"
    )

    kafka: KafkaSettings = KafkaSettings()
    lake: LakeSettings = LakeSettings()
    logging: LoggingSettings = LoggingSettings()
    filters: FilterSettings = FilterSettings()
    batch: BatchSettings = BatchSettings()
    start: StartSettings = StartSettings()
    stream_time: StreamTimeSettings = StreamTimeSettings()
    faults: FaultSettings = FaultSettings()
    upkeep: UpkeepSettings = UpkeepSettings()

    group_id: str = DEFAULT_GROUP
    instance_id: str = Field(default_factory=_instance_id)
    # Static group membership (Kafka ``group.instance.id``): a restarted curator with the same
    # id takes its partitions back at once instead of waiting out the session timeout.
    static_member_id: str | None = None
    # Local disk for the join / dedup state; one curator process per directory.
    state_dir: Path = Path("./curator-state")
    join_window_s: float = Field(default=DEFAULT_JOIN_WINDOW_S, gt=0)
    sft_sample_rate: float = Field(default=DEFAULT_SFT_RATE, ge=0.0, le=1.0)
    # 0 turns the "no further regenerate" signal off (only copy, accept and rate-up count).
    regenerate_quiet_s: float = Field(default=DEFAULT_REGENERATE_QUIET_S, ge=0.0)
    session_timeout_ms: int = Field(default=DEFAULT_SESSION_TIMEOUT_MS, ge=1_000)
    state_cache_kib: int = Field(default=16_384, ge=256)
    metrics_port: int | None = None
